"""Checkpoint and training errors. Each message says what is wrong and how to fix it.

The bottom layer: this module imports nothing, so everything that reads, writes, recovers
or loads a checkpoint (the engine, `utils.reading`, the data and weights formats) raises the
same types, and the notebook can catch `CheckpointError` once and print its guidance.
`utils.errors.user_error_types()` counts them as the user's errors.
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


class InsufficientStorageError(CheckpointWriteError):
    """The checkpoints a run would keep do not fit in the free space of their folder; said
    before the first step, with the settings that make them fit."""


# Finer kinds of the errors above, so a caller (and the bad-file tests) can tell a missing
# file from a truncated one from a photo. Catching the base class still catches them all.

class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path (or a manual override) names no file."""


class EmptyCheckpointError(CorruptCheckpointError):
    """The file has zero bytes (a write that never happened, or a failed copy)."""


class TruncatedCheckpointError(CorruptCheckpointError):
    """The file starts like a checkpoint but ends early (an interrupted copy or download)."""


class NotACheckpointError(CorruptCheckpointError):
    """The file is some other kind of file: an image, text, JSON, HTML, a folder, ..."""


class UnrecognizedCheckpointError(CorruptCheckpointError):
    """The file loads, but its contents are no checkpoint format we know (no state dict)."""


class NotResumableError(CheckpointError):
    """The file holds model weights but not the training state a resume restores."""


class CheckpointConfigError(CorruptCheckpointError):
    """The model config is missing from the checkpoint or cannot build a model."""


class InvalidWeightsError(CorruptCheckpointError):
    """The weights hold NaN/Inf or are not floating point."""


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or Inf; no checkpoint was written from that state."""


class TrainingOutOfMemoryError(RuntimeError):
    """CUDA ran out of memory while training; the message names the setting to change and
    every checkpoint written before is intact."""


class RunInUseError(CheckpointError):
    """Another process is training the same run in the same folder right now."""


class RunNotFoundError(CheckpointError, LookupError):
    """A run id that names no run in the checkpoint folder; the message lists the runs there."""


class RunMismatchError(CheckpointError):
    """A run was asked to continue on other data than it was trained on."""

