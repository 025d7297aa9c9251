"""Training engine: Trainer, crash-safe checkpoints, recovery, loading, distributed.

Names are imported lazily (PEP 562) so that `import utils.training.engine` stays cheap and
a module that is not needed (e.g. distributed) is never imported.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> its module: an engine module, or a full name for the bottom layer's errors.
_EXPORTS = {
    "Trainer": "trainer",
    "CheckpointWriter": "writer",
    "save_checkpoint": "checkpoint",
    "checkpoint_filename": "checkpoint",
    "CheckpointInfo": "recovery",
    "CheckpointWarning": "recovery",
    "list_checkpoints": "recovery",
    "latest_checkpoint": "recovery",
    "recover_training_results": "recovery",
    "list_runs": "recovery",
    "select_checkpoint": "recovery",
    "load_pretrained_model": "loading",
    "load_model_weights": "loading",
    "CheckpointError": "utils.checkpoint_errors",
    "CheckpointWriteError": "utils.checkpoint_errors",
    "CorruptCheckpointError": "utils.checkpoint_errors",
    "NoCheckpointsError": "utils.checkpoint_errors",
    "UnsafeCheckpointError": "utils.checkpoint_errors",
    "ArchitectureMismatchError": "utils.checkpoint_errors",
    "ModelNotInitializedError": "utils.checkpoint_errors",
    "TrainingDivergedError": "utils.checkpoint_errors",
    "TrainingOutOfMemoryError": "utils.checkpoint_errors",
    "validation_loss": "evaluation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        home = _EXPORTS[name]
        module = importlib.import_module(home if "." in home else f"{__name__}.{home}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
