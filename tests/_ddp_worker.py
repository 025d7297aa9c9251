"""Run under `torchrun --nproc_per_node=2` by tests/test_distributed.py.

    torchrun ... tests/_ddp_worker.py CHECKPOINT_DIR OUT [latest] [--device cuda]

Trains from scratch into CHECKPOINT_DIR, or with `latest` resumes its newest checkpoint
(written by a single process, for the resume test). One training per torchrun job, as
`python -m utils train` does. Rank 0 saves the final parameters and history to OUT.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from tests._train_worker import make_ddp_comparable_trainer  # noqa: E402


def run(checkpoint_dir: str, out: str, resume: str | None, device: str) -> None:
    trainer = make_ddp_comparable_trainer(checkpoint_dir, batch_size=2, device=device)
    history = trainer.fit(resume_from=resume)
    if int(os.environ["RANK"]) == 0:
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
        torch.save({"model": trainer.model.cpu().state_dict(), "history": history,
                    "world_size": trainer.world_size, "backend": backend}, out)


if __name__ == "__main__":
    torch.set_num_threads(1)
    arguments = sys.argv[1:]
    device = "cpu"
    if "--device" in arguments:
        at = arguments.index("--device")
        device = arguments[at + 1]
        del arguments[at:at + 2]
    checkpoint_dir, out, *resume = arguments
    run(checkpoint_dir, out, resume[0] if resume else None, device)
