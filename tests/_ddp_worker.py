"""Run under `torchrun --nproc_per_node=2` by tests/test_distributed.py.

    torchrun ... tests/_ddp_worker.py FRESH_DIR FRESH_OUT RESUME_DIR RESUME_OUT

Job 1 trains from scratch into FRESH_DIR; job 2 resumes the newest checkpoint in
RESUME_DIR (written by a single process). Rank 0 saves each job's final parameters and
history to the OUT files.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from tests._train_worker import make_ddp_comparable_trainer  # noqa: E402


def run(checkpoint_dir: str, out: str, resume: str | None) -> None:
    trainer = make_ddp_comparable_trainer(checkpoint_dir, batch_size=2)
    history = trainer.fit(resume_from=resume)
    if int(os.environ["RANK"]) == 0:
        torch.save({"model": trainer.model.state_dict(), "history": history,
                    "world_size": trainer.world_size}, out)


if __name__ == "__main__":
    torch.set_num_threads(1)
    fresh_dir, fresh_out, resume_dir, resume_out = sys.argv[1:5]
    run(fresh_dir, fresh_out, None)
    run(resume_dir, resume_out, "latest")
