"""`google.colab.drive` stand-in: `mount` links `<mountpoint>/MyDrive` to a local folder,
`flush_and_unmount` removes the link (the files stay in the folder, as on Drive)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

MYDRIVE_ENV = "COLAB_STUB_MYDRIVE"
_mounted: list[Path] = []


def _my_drive() -> Path:
    folder = os.environ.get(MYDRIVE_ENV)
    if not folder:
        folder = tempfile.mkdtemp(prefix="colab-stub-mydrive-")
        os.environ[MYDRIVE_ENV] = folder
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)


def mount(mountpoint: str, force_remount: bool = False, timeout_ms: int = 120000,
          readonly: bool = False) -> None:
    """Like Colab's: afterwards `<mountpoint>/MyDrive` is the stand-in Drive folder."""
    link = Path(mountpoint) / "MyDrive"
    if link.is_symlink() and not force_remount:
        print(f"Drive already mounted at {mountpoint}; to attempt to forcibly remount, call "
              "drive.mount(\"...\", force_remount=True).")
        return
    if link.is_symlink():
        link.unlink()
    if link.exists():
        raise ValueError(f"Mountpoint must not already contain files: {link}")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(_my_drive(), target_is_directory=True)
    _mounted.append(Path(mountpoint))
    print(f"Mounted at {mountpoint}")


def flush_and_unmount(timeout_ms: int = 86400000) -> None:
    """Like Colab's: the mount point no longer shows Drive (a disconnected Drive)."""
    while _mounted:
        link = _mounted.pop() / "MyDrive"
        if link.is_symlink():
            link.unlink()
