"""Loading GPT-2 weights: our streaming loader vs the usual approach, small and xl shapes.

    python bench/pretrained.py [--sizes small,xl] [--repeats 3] [--workdir /tmp/...] [--save]

Random weights with GPT-2's exact shapes are written once as a Hugging Face folder
(config.json + model.safetensors) in a temporary folder (gpt2-xl: 6.2 GB; deleted at the
end). Each measurement runs in a fresh process:

* ours: `load_openai_gpt2(folder)`: meta-device skeleton, safetensors read tensor by tensor,
  converted (transpose / Q-K-V split) and assigned; memory checked first.
* usual: `GPTModel(config)` (random init), `GPT2LMHeadModel.from_pretrained(folder)`, then
  copy every converted tensor into the model (strict), as nanoGPT and llm.c do.

Reported: median wall time of the load (after imports), and the memory the load adds:
peak RSS minus RSS after imports. After the timed part, the "ours" process also loads HF's
model and runs `compare_outputs` on a prompt (not counted in time or memory).
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

AIM_SPEEDUP = 3.0
AIM_MEMORY_RATIO = 1.3
PROMPT = "Hello, my name is"


# ----------------------------------------------------------------- weights on disk


def write_random_hf_folder(size: str, folder: Path) -> float:
    """config.json + model.safetensors with random GPT-2 `size` weights; returns GB written.

    Written one tensor at a time (`write_safetensors`), so writing 6.2 GB needs a few
    hundred MB of RAM, not 6.2 GB.
    """
    import torch

    from utils.config import GPT2_CONFIGS
    from utils.pretrained.huggingface import expected_hf_shapes, write_safetensors
    from utils.pretrained.mapping import to_hf_config

    config = GPT2_CONFIGS[size]
    folder.mkdir(parents=True, exist_ok=True)
    to_hf_config(config, architectures=["GPT2LMHeadModel"]).save_pretrained(folder)
    shapes = expected_hf_shapes(config)
    generator = torch.Generator().manual_seed(0)
    tensors = ((name, torch.randn(shape, generator=generator) * 0.02)
               for name, shape in shapes.items())
    write_safetensors(tensors, shapes, folder / "model.safetensors")
    return 4 * sum(torch.Size(shape).numel() for shape in shapes.values()) / 1e9


# ------------------------------------------------------------- measured processes


def measure_ours(folder: str, verify: bool) -> dict:
    import torch

    from utils.pretrained.huggingface import load_openai_gpt2

    torch.set_grad_enabled(False)
    rss_after_imports = current_rss_mb()
    start = time.perf_counter()
    model, _ = load_openai_gpt2(folder)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "added_mb": peak_rss_mb() - rss_after_imports}
    if verify:
        from transformers import GPT2LMHeadModel

        from utils.pretrained.verify import compare_outputs
        from utils.tokenizer import get_tokenizer

        hf_model = GPT2LMHeadModel.from_pretrained(folder).eval()
        match, max_diff = compare_outputs(model, hf_model, get_tokenizer("byte"), PROMPT)
        result.update(match=match, max_diff=max_diff)
    return result


def measure_usual(folder: str) -> dict:
    import torch
    from transformers import GPT2LMHeadModel

    from utils.model import GPTModel
    from utils.pretrained.huggingface import read_hf_config
    from utils.pretrained.mapping import iter_converted

    rss_after_imports = current_rss_mb()
    start = time.perf_counter()
    config = read_hf_config(Path(folder))
    model = GPTModel(config)
    hf_model = GPT2LMHeadModel.from_pretrained(folder)
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for key, tensor in iter_converted(hf_model.state_dict(), config.number_of_layers):
            parameters[key].copy_(tensor)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "added_mb": peak_rss_mb() - rss_after_imports}


# --------------------------------------------------------------------------- main


def bench_size(size: str, workdir: Path, repeats: int) -> dict:
    folder = workdir / size
    written_gb = write_random_hf_folder(size, folder)
    ours = [run_isolated("bench.pretrained:measure_ours", str(folder), i == 0)
            for i in range(repeats)]
    usual = [run_isolated("bench.pretrained:measure_usual", str(folder)) for _ in range(repeats)]
    shutil.rmtree(folder)
    weights_mb = written_gb * 1e9 / 2**20
    median = statistics.median
    return {
        "size": size, "weights_mb": weights_mb, "repeats": repeats,
        "ours_s": median(r["seconds"] for r in ours), "usual_s": median(r["seconds"] for r in usual),
        "ours_mb": median(r["added_mb"] for r in ours),
        "usual_mb": median(r["added_mb"] for r in usual),
        "match": ours[0]["match"], "max_diff": ours[0]["max_diff"],
    }


def markdown(rows: list[dict], load: tuple[float, float]) -> str:
    lines = [
        "## Loading pretrained GPT-2 weights (bench/pretrained.py)", "",
        f"Command: `{command_line()}`  ", f"Machine: {machine_info()}  ",
        f"Load average (1 min) at start / end: {load[0]:.1f} / {load[1]:.1f}", "",
        "Random weights with GPT-2's shapes, saved locally as safetensors. Each number is the "
        "median over separate processes; memory is peak RSS minus RSS after imports.", "",
        "| size | weights (MB) | ours (s) | usual (s) | speedup | ours added (MB) | "
        "usual added (MB) | ours / weights | compare_outputs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| gpt2-{r['size']} | {r['weights_mb']:.0f} | {r['ours_s']:.2f} | {r['usual_s']:.2f} "
            f"| {r['usual_s'] / r['ours_s']:.1f}x | {r['ours_mb']:.0f} | {r['usual_mb']:.0f} | "
            f"{r['ours_mb'] / r['weights_mb']:.2f} | match={r['match']} "
            f"(max diff {r['max_diff']:.1e}) |")
    lines += ["", "Both approaches read every byte and transpose every Conv1D weight into "
                  "nn.Linear's [out, in] layout; ours skips the random initialisation, the "
                  "second model and its copy, and overlaps reading with converting.", "",
              f"Aim: at least {AIM_SPEEDUP:.0f}x faster than the usual approach, and added "
                  f"memory at most {AIM_MEMORY_RATIO}x the weights' size for gpt2-xl shapes."]
    xl = next((r for r in rows if r["size"] == "xl"), None)
    if xl is None:
        lines.append("Not judged: gpt2-xl was not part of this run.")
    else:
        speedup, ratio = xl["usual_s"] / xl["ours_s"], xl["ours_mb"] / xl["weights_mb"]
        met = speedup >= AIM_SPEEDUP and ratio <= AIM_MEMORY_RATIO
        lines.append(f"gpt2-xl: {speedup:.1f}x faster, added memory {ratio:.2f}x the weights: "
                     f"**{verdict(met)}**.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="small,xl", help="comma-separated GPT-2 sizes")
    parser.add_argument("--repeats", type=int, default=3,
                        help="processes per approach for sizes below xl (xl: 1, it is 6.2 GB)")
    parser.add_argument("--workdir", default=None, help="where to write the random weights")
    parser.add_argument("--save", action="store_true", help="write bench/results/pretrained.md")
    args = parser.parse_args(argv)
    rows, load_start = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench_pretrained_") as workdir:
        for size in args.sizes.split(","):
            repeats = 1 if size == "xl" else args.repeats
            rows.append(bench_size(size, Path(workdir), repeats))
            print(f"done: {size}", file=sys.stderr)
    section = markdown(rows, (load_start, os.getloadavg()[0]))
    print(section)
    if args.save:
        print(f"saved {save_section('pretrained', section)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
