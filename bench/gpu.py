"""GPU training throughput: our Trainer against a plain PyTorch loop over the same model.

    python bench/gpu.py [--steps 30] [--compile both|on|off] [--save]
    python bench/gpu.py --device cpu --preset tiny --batch 2 --context 64 --compile off
        (a dry run of the same code on a CPU: checks the script, measures nothing useful)

Model: GPT-2 small (124M), batch 12 x 1024 tokens per optimizer step (nanoGPT's gpt2 shapes
without gradient accumulation), the precision `precision="auto"` picks for the card (bf16
from compute capability 8.0, fp16 + GradScaler below), TF32 on, fused AdamW, clipping 1.0,
dropout 0, with and without `torch.compile`. The floor is the loop nanoGPT's train.py runs:
forward under autocast, loss, (scaled) backward, clipping, optimizer step, no host sync
until the end. Contenders alternate in the same process (warm-up steps first, then timed
steps between two `torch.cuda.synchronize()`), so their ratio is fair even if clocks
drift. MFU = tokens/s x FLOPs per token (6N + 12·L·H·Q·T) / the card's dense peak
(utils/training/engine/throughput.py's table).

Aims (issue 10): >= 45% MFU in bf16 on A100/H100; the Trainer costs < 3% over the floor.
On a machine without CUDA it prints that it was skipped and why, and exits 0 (and --save
keeps any earlier section).

With `--nanogpt DIR` (a karpathy/nanoGPT checkout) it runs nanoGPT's own train.py and our
CLI side by side instead (bench/side_by_side.py: same token file, same shapes, both at their
defaults and both eager; section `gpu_nanogpt`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import command_line, machine_info, publish_section  # noqa: E402


def skip_reason(device: str) -> str | None:
    """Why this bench cannot run on `device`, or None when it can."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        built = torch.version.cuda or "no CUDA (a CPU-only build)"
        return (f"bench/gpu.py skipped: no CUDA device here (torch.cuda.is_available() is "
                f"False; torch {torch.__version__} built with {built}). Run it on a GPU "
                f"runtime (Colab: Runtime > Change runtime type > GPU).")
    return None


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device) -> int:
    """Start a new peak; returns the bytes allocated now (0 off CUDA)."""
    import torch

    if device.type != "cuda":
        return 0
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_memory_above(device, base: int) -> float:
    """GiB of the peak since `reset_peak_memory` above `base` (0 off CUDA)."""
    import torch

    if device.type != "cuda":
        return 0.0
    return (torch.cuda.max_memory_allocated(device) - base) / 2**30


def print_profile(run, device, steps: int = 5) -> None:
    """The kernels of `steps` steps of `run`, by total device time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as recorded:
        run(steps)
        sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(recorded.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=70))


def plain_loop(model, batches, choice, optimizer, grad_clip: float):
    """nanoGPT's step: autocast forward + loss, scaled backward, clip, step; no host sync."""
    import torch

    from utils.training.engine.trainer import language_model_loss

    scaler = choice.grad_scaler()
    parameters = [p for p in model.parameters() if p.requires_grad]

    def run(steps: int) -> None:
        for _ in range(steps):
            inputs, targets = next(batches)
            with choice.autocast():
                loss = language_model_loss(model, inputs, targets)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, grad_clip, foreach=True)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

    return run


def device_batches(tokens, batch: int, context: int, device, seed: int = 0):
    """Random windows, pinned and copied without blocking on CUDA (as a good loop does)."""
    from utils.data import BatchLoader

    loader = BatchLoader(tokens, batch, context, seed=seed)
    pin = device.type == "cuda"
    while True:
        inputs, targets = next(loader)
        if pin:
            inputs, targets = inputs.pin_memory(), targets.pin_memory()
        yield (inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (dry run)")
    parser.add_argument("--preset", default="small", help="GPT2_CONFIGS preset (default small)")
    parser.add_argument("--batch", type=int, default=12, help="sequences per step")
    parser.add_argument("--context", type=int, default=1024, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--compile", choices=("both", "on", "off"), default="both")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="vocabulary (default GPT-2's 50257; nanoGPT pads to 50304)")
    parser.add_argument("--profile", action="store_true",
                        help="print the CUDA kernels of 5 Trainer steps by total time")
    parser.add_argument("--save", action="store_true", help="write bench/results/gpu.md")
    side = parser.add_argument_group("side by side with nanoGPT (--nanogpt DIR)")
    side.add_argument("--nanogpt", type=Path, default=None,
                      help="a karpathy/nanoGPT checkout: run its train.py and our CLI")
    side.add_argument("--budget", type=int, default=20_000,
                      help="step budget both are given (what compile='auto' decides on); "
                           "both are stopped after --steps (default 20000)")
    side.add_argument("--from-step", type=int, default=30,
                      help="steady state starts here (default 30)")
    side.add_argument("--log-interval", type=int, default=10, help="both log every N steps")
    side.add_argument("--layers", type=int, default=None, help="model size (default: preset)")
    side.add_argument("--heads", type=int, default=None)
    side.add_argument("--dim", type=int, default=None)
    side.add_argument("--timeout", type=float, default=600,
                      help="seconds one process may take (default 600)")
    args = parser.parse_args(argv)

    reason = skip_reason(args.device)
    if reason:
        print(reason)
        return 0
    if args.save and not args.device.startswith("cuda"):
        raise SystemExit("--save records GPU figures; a --device cpu dry run is not saved")
    if args.nanogpt is not None:
        return nanogpt_side_by_side(args)

    import numpy as np
    import torch

    from utils.config import ModelConfig, TrainingConfig
    from utils.model import GPTModel
    from utils.model.memory import training_memory
    from utils.training.engine.precision import resolve_precision, tf32_matmuls
    from utils.training.engine.throughput import model_flops_per_token, peak_flops
    from utils.training.engine.trainer import Trainer, build_optimizer

    device = torch.device(args.device)
    choice = resolve_precision(device, "auto")
    # the floor gets TF32 as the Trainer does (which sets it itself around its steps)
    tf32_matmuls(device).__enter__()
    print(f"precision: {choice.name} ({choice.reason})")
    sizes = {"vocab_size": args.vocab_size} if args.vocab_size else {}
    config = ModelConfig.from_preset(args.preset, context_length=max(args.context, 1),
                                     dropout_rate=0.0, **sizes)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, 4_000_000).astype(np.uint16)
    training = TrainingConfig(max_steps=10**6, batch_size=args.batch, warmup_steps=10,
                              eval_interval=10**6, checkpoint_dir=None, device=str(device),
                              precision=choice.name, grad_clip=1.0)
    compile_modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.compile]
    tokens_per_step = args.batch * args.context
    rows = []
    for compiled in compile_modes:
        torch.manual_seed(0)
        floor_model = GPTModel(config).to(device)
        trainer_model = GPTModel(config)
        trainer_model.load_state_dict(floor_model.state_dict())
        flops = model_flops_per_token(floor_model, args.context)
        peak, peak_source = peak_flops(device, choice.name)

        runnable = torch.compile(floor_model) if compiled else floor_model
        optimizer = build_optimizer(floor_model, training, device)
        floor = plain_loop(runnable, device_batches(tokens, args.batch, args.context, device),
                           choice, optimizer, training.grad_clip)
        trainer = Trainer(trainer_model, TrainingConfig.from_dict(
            {**training.to_dict(), "compile": compiled}), tokens, progress=False)

        def trainer_run(steps: int, trainer=trainer) -> None:
            # fit() is the real loop (compile, DDP wrap, progress, logging): run it in slices
            trainer.fit(stop_at_step=trainer.global_step + steps)

        warm = {}
        # The Trainer warms up first: with compile on, whoever runs first pays the
        # compilation (Dynamo's cache serves the same model class to the other), and the
        # Trainer's is the figure users meet (it also prints it).
        for name, run in (("trainer", trainer_run), ("floor", floor)):
            sync(device)
            start = time.perf_counter()
            run(args.warmup)
            sync(device)
            warm[name] = time.perf_counter() - start
        times: dict[str, list[float]] = {"floor": [], "trainer": []}
        step_memory: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, run in (("floor", floor), ("trainer", trainer_run)):
                sync(device)
                base = reset_peak_memory(device)
                start = time.perf_counter()
                run(args.steps)
                sync(device)
                times[name].append((time.perf_counter() - start) / args.steps)
                step_memory[name] = peak_memory_above(device, base)
        planned = training_memory(config, args.batch, args.context, choice.name)
        estimate = (planned.gradients + planned.activations + planned.head) / 2**30
        for name in ("floor", "trainer"):
            step_s = statistics.median(times[name])
            rate = tokens_per_step / step_s
            rows.append({"compile": compiled, "loop": name, "step_ms": step_s * 1e3,
                         "tokens_per_s": rate, "mfu": rate * flops / peak if peak else None,
                         "warmup_s": warm[name], "memory_gib": step_memory[name],
                         "estimate_gib": estimate})
        print(f"peak: {peak_source}")
        if args.profile:
            print_profile(trainer_run, device)
        del floor_model, trainer_model, trainer, optimizer, runnable
        if device.type == "cuda":
            torch.cuda.empty_cache()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU dry run"
    lines = [
        "## GPU training throughput (bench/gpu.py)",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {name}; {machine_info()}",
        "",
        f"GPT-2 {args.preset} ({config.number_of_layers} layers, {config.embedding_dimension} "
        f"wide), batch {args.batch} x {args.context} tokens, {choice.name} ({choice.reason}), "
        f"fused AdamW, clipping 1.0, dropout 0. Median of {args.rounds} rounds of "
        f"{args.steps} steps, floor and Trainer alternating; warm-up = the first "
        f"{args.warmup} steps (with compile on, the Trainer's includes the compilation; the "
        f"floor then reuses Dynamo's cache).",
        "",
        "Step GiB: what a step allocates above the memory held between steps (weights, "
        "AdamW state, the other contender's model): `torch.cuda.max_memory_allocated` minus "
        "`memory_allocated` before the round. Estimate: gradients + activations + output "
        "head of `utils.model.memory.training_memory`, what `check_memory` and the "
        "out-of-memory advice plan with.",
        "",
        "| compile | loop | step (ms) | tokens/s | MFU | vs floor | warm-up (s) | step GiB | "
        "estimate GiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for compiled in compile_modes:
        pair = [r for r in rows if r["compile"] == compiled]
        floor_rate = pair[0]["tokens_per_s"]
        for r in pair:
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
            lines.append(f"| {'on' if compiled else 'off'} | {r['loop']} | {r['step_ms']:.1f} | "
                         f"{r['tokens_per_s']:,.0f} | {mfu} | "
                         f"{r['tokens_per_s'] / floor_rate:.3f} | {r['warmup_s']:.1f} | "
                         f"{r['memory_gib']:.1f} | {r['estimate_gib']:.1f} |")
    lines += ["", "Aims: >= 45% MFU bf16 on A100/H100 (gpt2-small); the Trainer within 3% of "
              "the floor (vs floor >= 0.97)."]
    publish_section("gpu", "\n".join(lines), args.save)
    return 0


def nanogpt_side_by_side(args: argparse.Namespace) -> int:
    """`--nanogpt DIR`: nanoGPT's train.py and our CLI, alternating processes."""
    import tempfile

    from bench.side_by_side import Shapes, nanogpt_missing, report_lines, side_by_side
    from utils.config import GPT2_CONFIGS, PRESET_ALIASES

    missing = nanogpt_missing(args.nanogpt)
    if missing:
        print(missing)
        return 2
    preset = GPT2_CONFIGS[PRESET_ALIASES.get(args.preset, args.preset)]
    shapes = Shapes(layers=args.layers or preset.number_of_layers,
                    heads=args.heads or preset.number_of_heads,
                    dim=args.dim or preset.embedding_dimension, context=args.context,
                    batch=args.batch)
    steps = max(args.steps, args.from_step + 2 * args.log_interval)
    modes = {"both": ["defaults", "eager"], "on": ["defaults"], "off": ["eager"]}[args.compile]
    peak, name = None, "CPU dry run"
    if args.device.startswith("cuda"):
        import torch

        from utils.training.engine.throughput import gpu_peak_flops

        name = torch.cuda.get_device_name(0)
        peak = gpu_peak_flops(name, "bf16")
    with tempfile.TemporaryDirectory(prefix="side_by_side_") as workdir:
        rows = side_by_side(args.nanogpt.resolve(), Path(workdir), shapes, args.device, modes,
                            steps, args.from_step, args.budget, args.rounds, args.log_interval,
                            args.timeout)
    lines = ["## Side by side with nanoGPT's train.py (bench/gpu.py --nanogpt)", "",
             f"Command: `{command_line()}`  ", f"Machine: {name}; {machine_info()}", "",
             f"{shapes.layers} layers, {shapes.heads} heads, {shapes.dim} wide, batch "
             f"{shapes.batch} x {shapes.context} tokens, gradient accumulation 1, the built-in "
             f"corpus as GPT-2 ids (nanoGPT's data layout, one file for both). defaults: "
             f"nanoGPT compile=True, ours compile='auto'; eager: both off. Both given "
             f"{args.budget} steps, stopped after {steps}; rate over steps {args.from_step}-"
             f"{steps} (wall time between log lines), median of {args.rounds} round(s) of "
             f"alternating processes. nanoGPT: no biases, vocabulary padded to 50304 (its "
             f"defaults); ours: GPT-2's biases, 50257 ids (padded inside the model on CUDA). "
             f"MFU with the same FLOPs per token for both.", ""]
    lines += report_lines(rows, shapes, peak)
    publish_section("gpu_nanogpt", "\n".join(lines), args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
