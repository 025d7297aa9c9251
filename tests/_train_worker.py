"""A tiny training run used by the kill-and-resume tests (run as a script or imported).

    python tests/_train_worker.py CHECKPOINT_DIR OUT_FILE [--resume auto|none|latest]
                                  [--lr LR] [--step-sleep SECONDS] [--hold FILE]
                                  [--log-to NAMES] [--log-interval N] [--sample-every N]
                                  [--keep-last N] [--keep-best N]

The same command run twice is what "Run all" after a crash does: `--resume auto` (the
Trainer's default) continues the matching run. Prints `step N` after every optimizer step
(the tests kill it at chosen steps), `held after step N` when it starts waiting while
`--hold`'s file exists and, when it reaches the end, saves the final parameters and metrics
history to OUT_FILE.
Everything is seeded and single-threaded, so two runs compute bit for bit the same thing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from utils.config import ModelConfig, TrainingConfig  # noqa: E402
from utils.model import GPTModel  # noqa: E402

MODEL = ModelConfig(vocab_size=64, context_length=16, embedding_dimension=32,
                    number_of_heads=2, number_of_layers=2, dropout_rate=0.2)
STEPS = 24


def tokens() -> tuple[np.ndarray, np.ndarray]:
    data = np.random.default_rng(1234).integers(0, MODEL.vocab_size, 6000).astype(np.uint16)
    return data[:5000], data[5000:]


def make_trainer(checkpoint_dir: str | Path, steps: int = STEPS, dropout: float | None = None,
                 **overrides):
    """Model and Trainer as every run of the test builds them."""
    import dataclasses

    from utils.training.engine.trainer import Trainer

    torch.manual_seed(0)
    config = MODEL if dropout is None else dataclasses.replace(MODEL, dropout_rate=dropout)
    model = GPTModel(config)
    settings = dict(max_steps=steps, warmup_steps=4, learning_rate=3e-3,
                    min_learning_rate=3e-4, batch_size=4, gradient_accumulation_steps=2,
                    eval_interval=1, eval_batches=2, checkpoint_interval=3,
                    checkpoint_dir=str(checkpoint_dir), keep_last=2, keep_best=1, seed=7,
                    device="cpu")  # bitwise comparisons with in-process CPU runs
    settings.update(overrides)
    train, val = tokens()
    return Trainer(model, TrainingConfig(**settings), train, val, tokenizer_name="byte",
                   progress=False)


def step_reporter(sleep: float = 0.02, hold: str | None = None):
    def report_step(record: dict) -> None:
        print(f"step {record['step']}", flush=True)
        time.sleep(sleep)  # so a test's kill or fault lands within the next step or two
        if hold and Path(hold).exists():  # the test decides when this run may go on
            print(f"held after step {record['step']}", flush=True)
            while Path(hold).exists():
                time.sleep(0.05)
    return report_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint_dir")
    parser.add_argument("out")
    parser.add_argument("--resume", choices=["auto", "none", "latest"], default="none")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--step-sleep", type=float, default=0.02)
    parser.add_argument("--hold", help="after each step, wait while this file exists")
    # reporting settings: none of them changes the weights (nor the run's fingerprint)
    parser.add_argument("--log-to", default="")
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument("--sample-every", type=int, default=0)
    parser.add_argument("--keep-last", type=int, default=2)
    parser.add_argument("--keep-best", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from utils.checkpoint_errors import CheckpointError

    trainer = make_trainer(args.checkpoint_dir, learning_rate=args.lr, log_to=args.log_to,
                           log_interval=args.log_interval, sample_every=args.sample_every,
                           sample_prompt="0 1",  # bytes below the model's vocabulary of 64
                           keep_last=args.keep_last, keep_best=args.keep_best)
    trainer.callbacks.append(step_reporter(args.step_sleep, args.hold))
    try:
        history = trainer.fit(resume_from=None if args.resume == "none" else args.resume)
    except CheckpointError as error:
        print(f"error: {error}", flush=True)
        raise SystemExit(2) from None
    torch.save({"model": trainer.model.state_dict(), "history": history,
                "finished_before": trainer.finished, "run_id": trainer.run_id}, args.out)
    print("done", flush=True)


if __name__ == "__main__":
    main()


def make_ddp_comparable_trainer(checkpoint_dir: str | Path, batch_size: int, steps: int = 10,
                                device: str = "cpu"):
    """No dropout and a constant learning rate, so 2 ranks x batch b train like 1 x 2b,
    and a run stopped at any max_steps continues like a longer one."""
    return make_trainer(checkpoint_dir, steps=steps, batch_size=batch_size,
                        gradient_accumulation_steps=1, warmup_steps=0, learning_rate=1e-3,
                        min_learning_rate=1e-3, checkpoint_interval=5, eval_interval=5,
                        keep_last=None, keep_full=None,  # resumed from step 5: kept whole
                        dropout=0.0, device=device)
