"""Checkpoint errors. Each message says what is wrong and how to fix it.

They live apart from loading.py so that checkpoint writing, recovery and loading raise the
same types, and the notebook can catch `CheckpointError` once and print its guidance.
"""

from __future__ import annotations


class CheckpointError(Exception):
    """Base class: a checkpoint could not be found, read, trusted or used."""


class ModelNotInitializedError(CheckpointError):
    """Weights were to be loaded into a model that does not exist yet."""


class NoCheckpointsError(CheckpointError):
    """The checkpoint folder holds no usable checkpoint."""


class ArchitectureMismatchError(CheckpointError):
    """The checkpoint's tensors do not fit the model (missing / unexpected / wrong-shape keys)."""


class CorruptCheckpointError(CheckpointError):
    """The file is empty, truncated, not a checkpoint, or its contents are inconsistent."""


class UnsafeCheckpointError(CheckpointError):
    """The file's pickle would run code; refused unless explicitly trusted."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, permissions); earlier ones are intact."""
