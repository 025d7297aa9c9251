"""Training: `Trainer`, checkpoints and recovery (see `utils.training.engine`).

`from utils.training import Trainer, list_checkpoints, recover_training_results` works;
the names load on first use so `import utils.training` does not import torch.
"""

from __future__ import annotations

from typing import Any

from utils.training.engine import __all__  # noqa: F401  (same public names)


def __getattr__(name: str) -> Any:
    from utils.training import engine

    return getattr(engine, name)
