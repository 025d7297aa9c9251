"""Durable writes: a file appears complete under its name, or not at all.

The one way this project writes its files (checkpoints, sidecars, best_model.pt, the token
cache, exported weights, downloads, CLI outputs): write a hidden temporary file in the
same folder, flush and fsync it, give it its final name atomically, fsync the folder.
`write_atomically` is the common case; `PendingFile` is the same steps for a writer that
learns the final name only at the end, `write_folder_atomically` for a set of files
(a Hugging Face folder) that other libraries write by path.
A crash at any moment leaves the previous state, or the new complete file, plus at most a
hidden `.NAME.PID-HOST.tmp` that readers never pick up; its name says which process on which
machine wrote it, so a cleanup can tell an abandoned one from another machine's write in
progress (`temp_file_owner`). Imports nothing heavy: usable from the data layer and the
checkpoint layer alike.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"
# `.NAME.PID-HOST.tmp`, or `.NAME.PID.tmp` as written before temp names carried the machine.
_TEMP_NAME_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:-(?P<host>[0-9a-f]{8}))?\.tmp$")


@functools.lru_cache(maxsize=1)
def host_id() -> str:
    """8 hex digits naming this machine (its host name and this boot): a process id means
    something only on the machine that gave it out."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()
    except OSError:
        boot = ""
    return hashlib.sha1(f"{socket.gethostname()}|{boot}".encode()).hexdigest()[:8]


def temp_path(final_path: Path) -> Path:
    """Hidden temporary name in the same folder (same file system, so the rename is atomic).
    The process id and the machine keep two writers of the same name apart."""
    return final_path.with_name(f".{final_path.name}.{os.getpid()}-{host_id()}{TEMP_SUFFIX}")


@dataclass(frozen=True)
class TempOwner:
    """Who wrote a temporary file: the final name it was for, the process, the machine
    (`host_id()`; None for names written before temp names carried it)."""

    final_name: str
    pid: int
    host: str | None


def temp_file_owner(path: Path) -> TempOwner | None:
    """The writer of a `temp_path` name; None for any other name (a user's `.notes.tmp`)."""
    match = _TEMP_NAME_RE.match(Path(path).name)
    if match is None:
        return None
    return TempOwner(match["name"], int(match["pid"]), match["host"])


def temp_file_pid(path: Path) -> int | None:
    """The writer's process id in a `temp_path` name; None for anything else."""
    owner = temp_file_owner(path)
    return owner.pid if owner is not None else None


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


class PendingFile:
    """A file being written under a temporary name, published under its final name only
    once complete: `write_atomically`'s steps for a writer that knows the final name only
    at the end (the token cache's file is named by the sha256 of what it holds).

        with PendingFile(temporary) as pending:
            pending.handle.write(...)
            pending.publish(final_path)

    Leaving the block without a publish (an error, Ctrl-C, `replace=False` refused)
    closes and deletes the temporary file.
    """

    def __init__(self, temporary: Path) -> None:
        self.temporary = Path(temporary)
        self.handle: BinaryIO = open(self.temporary, "wb")  # noqa: SIM115 (closed by sync/discard)
        self._published = False

    def sync(self) -> None:
        """Flush and fsync the content and close the file: it is complete on disk. Called by
        `publish`; call it earlier to see a full disk before choosing the final name."""
        if not self.handle.closed:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()

    def publish(self, final_path: Path, replace: bool = True) -> bool:
        """Give the synced file its final name and fsync the folder. `replace=False`: an
        existing `final_path` is left alone and False returned (the temporary is deleted
        when the block ends)."""
        self.sync()
        self._published = _publish(self.temporary, final_path, replace)
        if self._published:
            fsync_directory(final_path.parent)
        return self._published

    def discard(self) -> None:
        """Close and delete the temporary file (nothing is published). Closing flushes, and
        can fail again on a full disk: the file is deleted all the same."""
        try:
            self.handle.close()
        finally:
            self.temporary.unlink(missing_ok=True)

    def __enter__(self) -> PendingFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._published:
            self.discard()


def write_atomically(final_path: Path, write: Callable[[BinaryIO], object],
                     replace: bool = True,
                     before_publish: Callable[[], None] | None = None,
                     temporary: Path | None = None) -> bool:
    """Call `write(file)` on a temporary file, fsync it and publish it as `final_path`.

    `replace=False`: leave an existing `final_path` alone and return False.
    `before_publish`: called between the fsync and the rename (a test hook).
    `temporary`: a fixed temporary name instead of `temp_path(final_path)` (a download's
    `NAME.part`, which the next try overwrites instead of leaving another process's).
    """
    with PendingFile(temporary or temp_path(final_path)) as pending:
        write(pending.handle)
        pending.sync()
        if before_publish is not None:
            before_publish()
        return pending.publish(final_path, replace)


def write_folder_atomically(folder: Path, write: Callable[[Path], object]) -> list[str]:
    """Call `write(staging)` to write a set of files into a hidden temporary folder beside
    `folder`, then fsync each one and move it into `folder` (created if missing; a file of
    the same name is replaced) and fsync `folder`: an interrupted writer leaves none of the
    set there, and libraries that write by path (`save_pretrained`) can fill the staging
    folder. The staging folder is removed either way. Returns the names moved in, sorted.
    Flat sets of files only (no subfolders)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as staging:
        write(Path(staging))
        names = sorted(os.listdir(staging))
        for name in names:
            _fsync_file(Path(staging, name))
        for name in names:
            os.replace(Path(staging, name), folder / name)
    fsync_directory(folder)
    return names


def _fsync_file(path: Path) -> None:
    """Make a file written by someone else's code (closed, maybe never fsynced) durable."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def copy_atomically(source: Path, target: Path, replace: bool = True) -> bool:
    """Copy `source` to `target` the durable way (never a half-copied `target`);
    `replace=False`: an existing `target` is left alone and False returned."""
    with open(source, "rb") as reader:
        return write_atomically(
            target, lambda out: shutil.copyfileobj(reader, out, length=16 << 20), replace)


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """`data` as the durable content of `path` (small files: metadata, indexes)."""
    write_atomically(path, lambda out: out.write(data))


def link_atomically(source: Path, target: Path) -> bool:
    """Make `target` a hard link to `source`, replacing it atomically (a reader sees the
    old file or the new one); False where the file system has no hard links."""
    temporary = temp_path(target)
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        return False
    try:
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)
    return True


def check_writable_folder(folder: str | Path) -> None:
    """Raise an OSError naming `folder` when files cannot be created in it (or, while it
    does not exist yet, in the nearest folder above it that does): a read-only file system
    (EROFS) or no permission (EACCES). Creates nothing: on Google Drive a probe file would
    land in Drive's trash. A full disk is not detected here (writers fall back for it)."""
    path = Path(folder).expanduser().absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or os.access(existing, os.W_OK | os.X_OK):
        return
    code = errno.EROFS if _read_only(existing) else errno.EACCES
    raise OSError(code, os.strerror(code), str(folder))


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # Windows has no statvfs
        return False


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
