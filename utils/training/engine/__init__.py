"""Training engine: Trainer, crash-safe checkpoints, recovery, loading, distributed.

Names are imported lazily (PEP 562) so that `import utils.training.engine` stays cheap and
a module that is not needed (e.g. distributed) is never imported.
"""

from __future__ import annotations

import importlib
from typing import Any

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
    "CheckpointError": "errors",
    "CheckpointWriteError": "errors",
    "CorruptCheckpointError": "errors",
    "NoCheckpointsError": "errors",
    "UnsafeCheckpointError": "errors",
    "ArchitectureMismatchError": "errors",
    "ModelNotInitializedError": "errors",
    "TrainingDivergedError": "errors",
    "TrainingOutOfMemoryError": "errors",
    "validation_loss": "evaluation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
