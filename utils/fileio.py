"""Durable writes: a file appears complete under its name, or not at all.

The one way this project writes files that must survive a crash (checkpoints, sidecars,
best_model.pt, the token cache's metadata): write a hidden temporary file in the
same folder, flush and fsync it, give it its final name atomically, fsync the folder.
A crash at any moment leaves the previous state, or the new complete file, plus at most a
hidden `.NAME.PID.tmp` that readers never pick up. Imports nothing heavy: usable from the
data layer and the checkpoint layer alike.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"


def temp_path(final_path: Path) -> Path:
    """Hidden temporary name in the same folder (same file system, so the rename is atomic).
    The process id keeps two writers of the same name apart."""
    return final_path.with_name(f".{final_path.name}.{os.getpid()}{TEMP_SUFFIX}")


def temp_file_pid(path: Path) -> int | None:
    """The writer's process id in a `temp_path` name (`.NAME.PID.tmp`); None for anything
    else (the older `.NAME.tmp`)."""
    parts = path.name[:-len(TEMP_SUFFIX)].rsplit(".", 1)
    return int(parts[1]) if len(parts) == 2 and parts[1].isdigit() else None


def fsync_directory(directory: Path) -> None:
    """Make a rename durable; some file systems (and Windows) cannot open folders: skip there."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(temporary: Path, final_path: Path, replace: bool) -> bool:
    """Give the finished temporary file its final name. With `replace=False` an existing
    file is never replaced (returns False instead): a hard link fails atomically when the
    name is taken; where links are unsupported (some network mounts) a check comes first."""
    if replace:
        os.replace(temporary, final_path)
        return True
    try:
        os.link(temporary, final_path)
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                               errno.EMLINK, errno.ENOSYS):
            raise
        if final_path.exists():
            return False
        os.replace(temporary, final_path)
        return True
    temporary.unlink(missing_ok=True)
    return True


def write_atomically(final_path: Path, write: Callable[[BinaryIO], object],
                     replace: bool = True,
                     before_publish: Callable[[], None] | None = None) -> bool:
    """Call `write(file)` on a temporary file, fsync it and publish it as `final_path`.

    `replace=False`: leave an existing `final_path` alone and return False.
    `before_publish`: called between the fsync and the rename (a test hook).
    """
    temporary = temp_path(final_path)
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if before_publish is not None:
            before_publish()
        published = _publish(temporary, final_path, replace)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if not published:
        temporary.unlink(missing_ok=True)
        return False
    fsync_directory(final_path.parent)
    return True


def copy_atomically(source: Path, target: Path) -> None:
    """Copy `source` to `target` the durable way (never a half-copied `target`)."""
    with open(source, "rb") as reader:
        write_atomically(target, lambda out: shutil.copyfileobj(reader, out, length=16 << 20))


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """`data` as the durable content of `path` (small files: metadata, indexes)."""
    write_atomically(path, lambda out: out.write(data))


# Where Google Drive is mounted in Colab; UTILS_DRIVE_ROOT adds another (tests, stand-ins),
# and so does the notebook's GPT2_DRIVE_MOUNT_POINT (where Cell 1 and Cell 5 mount it).
DRIVE_ROOTS = ("/content/drive",)
DRIVE_ROOT_ENV = "UTILS_DRIVE_ROOT"
NOTEBOOK_MOUNT_ENV = "GPT2_DRIVE_MOUNT_POINT"


def on_google_drive(path: str | Path) -> bool:
    """Whether `path` is on a Google Drive mount (its files go through Drive's client)."""
    roots = [*DRIVE_ROOTS, *filter(None, [os.environ.get(DRIVE_ROOT_ENV),
                                          os.environ.get(NOTEBOOK_MOUNT_ENV)])]
    resolved = str(Path(path).absolute())
    return any(resolved == root or resolved.startswith(root.rstrip("/") + "/")
               for root in roots)
