"""Errors a user can cause, and the one list of them that the command line and notebook use.

`UserError` is bad input noticed by our own code (a flag out of range, a file that would be
overwritten). `user_error_types()` adds the library's errors that also mean "the input is
wrong, here is the fix" (a bad setting, a checkpoint that cannot be used, a missing file).
The command line prints these as one line `error: ...` (exit code 2), the notebook as its
guidance; anything else is a bug and keeps its traceback.

This module imports nothing heavy, and nothing of ours at import time, so any module (the
checkpoint layer included) can import it without a cycle.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the command line or a notebook form field; the message says the fix."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types that count as user errors (their message is shown, not a traceback).

    `ValueError` covers `ConfigError`, `InsufficientMemoryError`, `WeightMappingError` and
    the other "this value cannot be used" errors; `CheckpointError` covers every checkpoint
    that cannot be found, read, trusted or used. `TypeError`, `KeyError` and the like are
    bugs, not user errors. `TrainingDivergedError` (the loss became NaN) names the setting
    to change, and so does `TrainingOutOfMemoryError` (CUDA ran out of memory while
    training); `MemoryError` means the chosen sizes do not fit this machine.
    """
    from utils.config import ConfigError
    from utils.training.engine.errors import (
        CheckpointError,
        TrainingDivergedError,
        TrainingOutOfMemoryError,
    )

    return (UserError, ConfigError, CheckpointError, TrainingDivergedError,
            TrainingOutOfMemoryError, ValueError,
            FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError, MemoryError)
