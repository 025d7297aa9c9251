"""The floor for bench/side_by_side.py: our GPTModel trained by a bare loop, in a process of
its own, on the same token folder and shapes as the CLI run it is compared with.

    python bench/floor_loop.py --data FOLDER --layers 12 --heads 12 --dim 768 --context 1024 \
        --batch 16 --steps 100 --log-interval 10 --device cuda --compile off

The loop is the one nanoGPT's train.py runs: batches gathered from the memmapped train.bin
(pinned and copied without blocking on CUDA), forward under the precision "auto" picks,
(scaled) backward, clipping 1.0, fused AdamW, the loss read only at log lines. It prints
nanoGPT's line format (`iter N: loss X`), so the same reader times it. What the CLI takes
beyond this floor is what the CLI and the Trainer cost around the model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train.bin")
    for name, default in (("layers", 12), ("heads", 12), ("dim", 768), ("context", 1024),
                          ("batch", 16), ("steps", 100), ("log-interval", 10)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile", choices=("on", "off"), default="off")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from utils.config import ModelConfig, TrainingConfig
    from utils.data import BatchLoader
    from utils.model import GPTModel
    from utils.training.engine.evaluation import language_model_loss
    from utils.training.engine.optim import build_optimizer
    from utils.training.engine.precision import resolve_precision, tf32_matmuls

    device = torch.device(args.device)
    choice = resolve_precision(device, "auto")
    torch.manual_seed(1337)
    config = ModelConfig(vocab_size=50257, context_length=args.context,
                         embedding_dimension=args.dim, number_of_heads=args.heads,
                         number_of_layers=args.layers, dropout_rate=0.0, use_attention_bias=True)
    model = GPTModel(config).to(device)
    runnable = torch.compile(model) if args.compile == "on" else model
    optimizer = build_optimizer(model, TrainingConfig(device=str(device)), device)
    scaler = choice.grad_scaler()
    tokens = np.memmap(args.data / "train.bin", dtype=np.uint16, mode="r")
    loader = BatchLoader(tokens, args.batch, args.context, seed=0)
    pin = device.type == "cuda"

    def batch():
        inputs, targets = next(loader)
        if pin:
            inputs, targets = inputs.pin_memory(), targets.pin_memory()
        return inputs.to(device, non_blocking=pin), targets.to(device, non_blocking=pin)

    parameters = list(model.parameters())
    inputs, targets = batch()
    with tf32_matmuls(device):
        for step in range(args.steps + 1):
            with choice.autocast():
                loss = language_model_loss(runnable, inputs, targets)
            inputs, targets = batch()  # the next batch is queued while this step computes
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, 1.0, foreach=True)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if step % args.log_interval == 0:
                print(f"iter {step}: loss {loss.item():.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
