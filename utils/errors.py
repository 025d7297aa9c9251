"""Errors a user can cause, and the one list of them that the command line and notebook use.

`UserError` is bad input noticed by our own code (a flag out of range, a file that would be
overwritten). `user_error_types()` adds the library's errors that also mean "the input is
wrong, here is the fix" (a bad setting, a checkpoint that cannot be used, a missing file).
The command line prints these as one line `error: ...` (exit code 2), the notebook as its
guidance; anything else is a bug and keeps its traceback. An `OSError` is always the user's
path, disk or network (a name too long, a read-only or full disk, a link loop, a lost
mount): `describe_os_error` says which path, what went wrong and the fix, in one line.

This module imports nothing heavy, and nothing of ours at import time, so any module (the
checkpoint layer included) can import it without a cycle.
"""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """Bad input from the command line or a notebook form field; the message says the fix."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types that count as user errors (their message is shown, not a traceback).

    `ValueError` covers `ConfigError`, `InsufficientMemoryError`, `WeightMappingError` and
    the other "this value cannot be used" errors; `CheckpointError` covers every checkpoint
    that cannot be found, read, trusted or used. `TypeError`, `KeyError` and the like are
    bugs, not user errors. `TrainingDivergedError` (the loss became NaN) names the setting
    to change, and so does `TrainingOutOfMemoryError` (CUDA ran out of memory while
    training); `MemoryError` means the chosen sizes do not fit this machine. Every
    `OSError` is a path, disk or network the user chose (`describe_os_error` words it).
    """
    from utils.checkpoint_errors import (
        CheckpointError,
        TrainingDivergedError,
        TrainingOutOfMemoryError,
    )
    from utils.config import ConfigError

    return (UserError, ConfigError, CheckpointError, TrainingDivergedError,
            TrainingOutOfMemoryError, ValueError, OSError, MemoryError)


# errno -> (what it means for the path, the fix). What a user's path or disk can cause.
_LOST_MOUNT = ("the disk or network mount it is on stopped answering",
               "reconnect it (in Colab: mount Google Drive again), then run again")
OS_ERROR_FIXES: dict[int, tuple[str, str]] = {
    errno.ENAMETOOLONG: ("a file or folder name in it is longer than the file system allows "
                         "(usually 255 bytes per name)", "choose shorter names"),
    errno.EROFS: ("it is on a read-only file system",
                  "choose a folder on a writable disk"),
    errno.ENOSPC: ("the disk is full", "free some space or choose a folder on another disk"),
    errno.EDQUOT: ("the disk quota is used up",
                   "free space in the quota (on Google Drive: empty its trash) or choose "
                   "another disk"),
    errno.EFBIG: ("the file would be larger than this file system allows",
                  "choose a folder on another disk"),
    errno.ELOOP: ("its symbolic links form a loop (or are nested too deep)",
                  "give the path of the real file or folder"),
    errno.EACCES: ("permission denied", "choose a path you may use, or change its permissions"),
    errno.EPERM: ("the operation is not permitted there",
                  "choose a path you may use, or change its permissions"),
    errno.ENOENT: ("it does not exist", "check the path"),
    errno.ENOTDIR: ("a part of it is a file, not a folder", "check the path"),
    errno.EISDIR: ("it is a folder, not a file", "give a file"),
    errno.EEXIST: ("it already exists", "choose another name"),
    errno.ENXIO: ("it is a FIFO or device that nothing is connected to",
                  "give a regular file"),
    errno.EIO: ("the disk or mount reported an input/output error", _LOST_MOUNT[1]),
    errno.ENOTCONN: _LOST_MOUNT,
    errno.ESTALE: _LOST_MOUNT,
    errno.ENODEV: _LOST_MOUNT,
    errno.ETIMEDOUT: _LOST_MOUNT,
    errno.EMFILE: ("too many files are open", "close other programs or raise the limit "
                   "(ulimit -n)"),
    errno.ENFILE: ("too many files are open on this machine", "close other programs"),
}


def describe_os_error(error: OSError) -> str:
    """One line for an OSError: the path, what went wrong and the fix.

    An error that carries our own message (a library that already said the cause and the
    fix, e.g. `OSError(errno.ELOOP, "cannot read data path ...; pass ...")`) keeps it; an
    error without an errno (`FileNotFoundError("...")`) is its text.
    """
    code, reason = error.errno, error.strerror
    if code is None or not reason:
        return " ".join(str(error).split()) or type(error).__name__
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    where = " -> ".join(paths)
    if reason != os.strerror(code):  # a message of ours: it names the cause and the fix
        text = reason if not where or where in reason else f"{where}: {reason}"
        return " ".join(text.split())
    meaning, fix = OS_ERROR_FIXES.get(code, ("", ""))
    text = f"{where}: " if where else ""
    text += f"{meaning} ({reason})" if meaning else reason
    if fix:
        text += f". Fix: {fix}"
    return " ".join(text.split())
