"""Loading a gpt2-small checkpoint: `load_pretrained_model` vs the usual recipe.

    python bench/loading.py [--repeats 5] [--workdir /tmp/...] [--save]

Two checkpoints with random weights and gpt2-small's shapes are written once to a temporary
folder (deleted at the end): one with the model only, and a full training checkpoint that
also holds AdamW's state (two more copies of the weights), as Cell 32 writes them.
Each measurement runs in a fresh process (bench.common.run_isolated), alternating methods:

* ours: `load_pretrained_model(path, device="cpu")`: model built on the meta device (no
  initialisation), file memory-mapped (`weights_only=True, mmap=True`), tensors assigned,
  head re-tied, every weight checked for NaN/Inf (which reads every weight page).
* usual recipe (torch.load then load_state_dict into a new model): `torch.load(path, map_location="cpu", weights_only=True)`, `GPTModel(config)`
  (random init), `model.load_state_dict(checkpoint["model_state_dict"])`, `eval()`.

Reported: median wall time of the load (after imports) and the memory it adds, peak RSS
minus RSS after imports. The file is in the page cache for both (it was just written).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    command_line,
    current_rss_mb,
    machine_info,
    peak_rss_mb,
    run_isolated,
    save_section,
    verdict,
)

AIM_SPEEDUP = 5.0
AIM_MEMORY_RATIO = 0.6


# ----------------------------------------------------------------- checkpoints on disk

def write_checkpoints(folder: Path) -> dict[str, Path]:
    """gpt2-small random weights: a model-only checkpoint and a full training checkpoint."""
    import torch

    from utils.config import ModelConfig
    from utils.model import GPTModel

    config = ModelConfig.from_preset("gpt2")
    torch.manual_seed(0)
    model = GPTModel(config)
    metadata = {"format_version": 1, "config": config.to_dict(), "epoch": 1,
                "global_step": 1000, "train_loss": 3.2, "val_loss": 3.4, "learning_rate": 6e-4,
                "timestamp": "2025-11-22T06:54:55"}
    paths = {"model only": folder / "model_only.pt", "with AdamW state": folder / "training.pt"}
    torch.save({"model_state_dict": model.state_dict(), **metadata}, paths["model only"])
    parameters = list(model.parameters())
    optimizer_state = {
        "state": {i: {"step": torch.tensor(1000.0), "exp_avg": torch.randn_like(p) * 1e-3,
                      "exp_avg_sq": torch.rand_like(p) * 1e-6} for i, p in enumerate(parameters)},
        "param_groups": [{"lr": 6e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1,
                          "params": list(range(len(parameters)))}],
    }
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer_state,
                **metadata}, paths["with AdamW state"])
    return paths


# ------------------------------------------------------------- measured processes

def measure_ours(path: str) -> dict:
    import torch

    from utils.training.engine.loading import load_pretrained_model

    torch.set_grad_enabled(False)
    rss_after_imports = current_rss_mb()
    start = time.perf_counter()
    model, checkpoint = load_pretrained_model(path, device="cpu")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "added_mb": peak_rss_mb() - rss_after_imports,
            "check": float(model.final_norm.scale.sum())}


def measure_seed000(path: str) -> dict:
    import torch

    from utils.config import ModelConfig
    from utils.model import GPTModel

    torch.set_grad_enabled(False)
    rss_after_imports = current_rss_mb()
    start = time.perf_counter()
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = GPTModel(ModelConfig.from_dict(checkpoint["config"]))
    model.load_state_dict(checkpoint["model_state_dict"])
    model.eval()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "added_mb": peak_rss_mb() - rss_after_imports,
            "check": float(model.final_norm.scale.sum())}


# --------------------------------------------------------------------------- main

def bench_checkpoint(name: str, path: Path, repeats: int) -> dict:
    ours, seed = [], []
    for _ in range(repeats):  # alternate, so a busy moment hits both methods alike
        ours.append(run_isolated("bench.loading:measure_ours", str(path)))
        seed.append(run_isolated("bench.loading:measure_seed000", str(path)))
    if {r["check"] for r in ours} != {r["check"] for r in seed}:
        raise RuntimeError("the two methods loaded different weights")
    median = statistics.median
    return {"name": name, "file_mb": path.stat().st_size / 2**20, "repeats": repeats,
            "ours_s": median(r["seconds"] for r in ours),
            "seed_s": median(r["seconds"] for r in seed),
            "ours_mb": median(r["added_mb"] for r in ours),
            "seed_mb": median(r["added_mb"] for r in seed)}


def markdown(rows: list[dict], load_before: tuple[float, ...], load_after: tuple[float, ...]
             ) -> str:
    lines = [
        "## Loading a checkpoint (bench/loading.py)", "",
        f"Command: `{command_line()}`  ", f"Machine: {machine_info()}  ",
        f"Load average (1/5/15 min) before: {'/'.join(f'{x:.1f}' for x in load_before)}, "
        f"after: {'/'.join(f'{x:.1f}' for x in load_after)}", "",
        "gpt2-small shapes (124M parameters, random weights), loaded onto the CPU. Medians over "
        f"{rows[0]['repeats']} fresh processes per method, alternating; memory is peak RSS "
        "minus RSS after imports. *ours*: `load_pretrained_model` (meta device, mmap, "
        "assign, NaN/Inf check); *usual recipe*: `torch.load` + `GPTModel(config)` + "
        "`load_state_dict`.", "",
        "| checkpoint | file (MB) | ours (s) | usual (s) | speedup | ours added (MB) | "
        "usual added (MB) | memory ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['file_mb']:.0f} | {r['ours_s']:.3f} | {r['seed_s']:.3f} | "
            f"{r['seed_s'] / r['ours_s']:.1f}x | {r['ours_mb']:.0f} | {r['seed_mb']:.0f} | "
            f"{r['ours_mb'] / r['seed_mb']:.2f} |")
    lines += ["", f"Aim: at least {AIM_SPEEDUP:.0f}x faster and at most {AIM_MEMORY_RATIO}x the "
                  "added memory, for every checkpoint above."]
    verdicts = []
    for r in rows:
        speedup, ratio = r["seed_s"] / r["ours_s"], r["ours_mb"] / r["seed_mb"]
        met = speedup >= AIM_SPEEDUP and ratio <= AIM_MEMORY_RATIO
        verdicts.append(met)
        lines.append(f"{r['name']}: {speedup:.1f}x faster, {ratio:.2f}x the memory: "
                     f"**{verdict(met)}**.")
    lines += ["", "Ours keeps about one copy of the weights (the memory-mapped file pages, all "
              "read by the NaN/Inf check); the usual recipe holds the randomly initialised model and "
              "the loaded dict (plus the optimizer state, which it reads too) at once. Most of "
              "the usual recipe's time is the random initialisation that the loaded weights then "
              "overwrite."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="processes per method")
    parser.add_argument("--workdir", default=None, help="where to write the checkpoints")
    parser.add_argument("--save", action="store_true", help="write bench/results/loading.md")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench_loading_", dir=args.workdir))
    try:
        load_before = os.getloadavg()
        paths = write_checkpoints(workdir)
        rows = [bench_checkpoint(name, path, args.repeats) for name, path in paths.items()]
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = markdown(rows, load_before, load_after)
    print(text)
    if args.save:
        print(f"saved {save_section('loading', text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
