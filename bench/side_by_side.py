"""Ours against nanoGPT's own `train.py`, side by side on one GPU: the same token file, the
same shapes, both as a user runs them (`python -m utils train` and `python train.py`).

    python bench/gpu.py --nanogpt ~/nanoGPT [--batch 16] [--steps 100] [--rounds 1]
    python bench/gpu.py --nanogpt ~/nanoGPT --device cpu --layers 2 --heads 2 --dim 64 \
        --context 64 --batch 4 --steps 40 --compile off     (a CPU dry run of the plumbing)

nanoGPT is run from the checkout the user gives (never copied here): a scratch folder holds
its `configurator.py` (train.py reads it from the working directory) and `data/bench/`
(train.bin / val.bin, uint16 GPT-2 ids of the built-in corpus), and train.py runs there with
nanoGPT's defaults except the shapes (`--batch_size --block_size --n_layer ...`),
`--gradient_accumulation_steps=1` and `--log_interval` (so both report at the same steps).
Ours trains on the same folder (a nanoGPT data folder is one of our inputs) with its
defaults except the same shapes and log interval.

Both are given a long step budget (`--budget`, as a real run has: it is what
`compile="auto"` decides on) and are stopped once they have logged `--steps` steps. The
rate is the wall time between two log lines, from step `--from-step` to the last: ours'
from the timestamps of its metrics log (written at each log line), nanoGPT's from when its
`iter N:` lines arrive. Peak GPU memory: the most `nvidia-smi` reports for the process
(context and allocator cache included, the same way for both). MFU = tokens/s x our FLOPs
per token (6N + 12·L·H·Q·T, GPT-2's 50,257 vocabulary for both) / the card's peak.

A third process, the floor (bench/floor_loop.py), trains our model with a bare loop on the
same tokens: what the CLI takes beyond it is what the CLI and the Trainer cost around the
model (the data path, per-step bookkeeping, logging, the metrics log).

Aims (issue 17), on one GPU: ours >= 1.1x nanoGPT's tokens/s with both at their defaults
(compile on for nanoGPT, "auto" for us), >= 1.0x with both eager, peak memory no more than
nanoGPT's, and the same loss curve within noise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import REPO_ROOT, verdict

NANOGPT_LINE = re.compile(r"^iter (\d+): loss ([0-9.naninf]+)")
SPEED_AIM_DEFAULTS, SPEED_AIM_EAGER = 1.1, 1.0


@dataclass
class Shapes:
    layers: int = 12
    heads: int = 12
    dim: int = 768
    context: int = 1024
    batch: int = 16


@dataclass
class RunResult:
    """One process: (step, seconds since start) at each log line, losses, peak memory."""

    name: str
    marks: list[tuple[int, float]] = field(default_factory=list)
    losses: dict[int, float] = field(default_factory=dict)
    peak_memory_mib: float | None = None
    output_tail: str = ""

    def step_seconds(self, from_step: int) -> float | None:
        """Seconds per step between the first log line at or after `from_step` and the last."""
        marks = [(s, t) for s, t in self.marks if s >= from_step]
        if len(marks) < 2 or marks[-1][0] == marks[0][0]:
            return None
        (first_step, first_t), (last_step, last_t) = marks[0], marks[-1]
        return (last_t - first_t) / (last_step - first_step)


def nanogpt_missing(folder: Path) -> str | None:
    """Why `folder` is not a nanoGPT checkout this bench can run; None when it is."""
    for name in ("train.py", "model.py", "configurator.py"):
        if not (folder / name).is_file():
            return (f"--nanogpt {folder}: no {name} there; pass a checkout of "
                    "karpathy/nanoGPT (git clone https://github.com/karpathy/nanoGPT)")
    return None


def write_token_folder(folder: Path, min_tokens: int) -> tuple[int, int]:
    """nanoGPT's data layout (train.bin / val.bin, uint16) with GPT-2 ids of the built-in
    corpus, repeated up to `min_tokens` training tokens; returns (train, val) sizes."""
    import numpy as np

    from utils.data.sources import builtin_documents
    from utils.tokenizer import get_tokenizer

    tokenizer = get_tokenizer("gpt2")
    ids = np.array(tokenizer.encode("\n\n".join(builtin_documents())), dtype=np.uint16)
    split = int(len(ids) * 0.9)
    train, val = ids[:split], ids[split:]
    train = np.tile(train, -(-min_tokens // len(train)))
    folder.mkdir(parents=True, exist_ok=True)
    train.tofile(folder / "train.bin")
    val.tofile(folder / "val.bin")
    return len(train), len(val)


def nanogpt_command(nanogpt: Path, shapes: Shapes, compile_: bool, device: str, budget: int,
                    log_interval: int) -> list[str]:
    dtype = "float32" if device == "cpu" else "bfloat16"
    return [sys.executable, str(nanogpt / "train.py"), "--dataset=bench",
            f"--batch_size={shapes.batch}", f"--block_size={shapes.context}",
            f"--n_layer={shapes.layers}", f"--n_head={shapes.heads}", f"--n_embd={shapes.dim}",
            "--gradient_accumulation_steps=1", f"--max_iters={budget}",
            f"--lr_decay_iters={budget}", f"--eval_interval={budget}", "--eval_iters=1",
            f"--log_interval={log_interval}", f"--compile={compile_}", f"--device={device}",
            f"--dtype={dtype}", "--always_save_checkpoint=False", "--out_dir=out"]


def ours_command(data: Path, checkpoints: Path, shapes: Shapes, compile_: str, device: str,
                 budget: int, log_interval: int) -> list[str]:
    return [sys.executable, "-m", "utils", "train", "--data", str(data),
            "--layers", str(shapes.layers), "--heads", str(shapes.heads),
            "--dim", str(shapes.dim), "--context", str(shapes.context),
            "--batch-size", str(shapes.batch), "--max-steps", str(budget),
            "--eval-interval", str(budget), "--eval-batches", "1",
            "--log-interval", str(log_interval), "--compile", compile_, "--device", device,
            "--dropout", "0", "--checkpoint-dir", str(checkpoints), "--new-run",
            "--no-progress"]


class GpuMemoryPoller:
    """The most GPU memory `nvidia-smi` reports for a process while it runs (MiB)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        if shutil.which("nvidia-smi"):
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                      "--format=csv,noheader,nounits"], capture_output=True,
                                     text=True, timeout=5).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            for line in out.splitlines():
                pid, _, used = line.partition(",")
                if pid.strip() == str(self.pid) and used.strip().isdigit():
                    self.peak = max(self.peak or 0, float(used))

    def stop(self) -> float | None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        return self.peak


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()  # SIGTERM: no checkpoint on the way out (our Ctrl-C writes one)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_nanogpt(nanogpt: Path, workdir: Path, shapes: Shapes, compile_: bool, device: str,
                budget: int, steps: int, log_interval: int, timeout: float) -> RunResult:
    command = nanogpt_command(nanogpt, shapes, compile_, device, budget, log_interval)
    return run_printing(f"nanoGPT, compile={compile_}", command, workdir, steps, timeout)


def run_floor(data: Path, shapes: Shapes, compile_: bool, device: str, steps: int,
              log_interval: int, timeout: float) -> RunResult:
    """Our model in a bare loop (bench/floor_loop.py) on the same tokens and shapes."""
    command = [sys.executable, str(REPO_ROOT / "bench" / "floor_loop.py"), "--data", str(data),
               "--layers", str(shapes.layers), "--heads", str(shapes.heads),
               "--dim", str(shapes.dim), "--context", str(shapes.context),
               "--batch", str(shapes.batch), "--steps", str(steps),
               "--log-interval", str(log_interval), "--device", device,
               "--compile", "on" if compile_ else "off"]
    return run_printing(f"floor, compile={compile_}", command, REPO_ROOT, steps, timeout)


def run_printing(name: str, command: list[str], cwd: Path, steps: int,
                 timeout: float) -> RunResult:
    """Run `command`, stamping its `iter N: loss X` lines as they arrive; stop it after
    step `steps` (or `timeout` seconds)."""
    result = RunResult(name)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    memory = GpuMemoryPoller(process.pid)
    tail: list[str] = []
    try:
        for line in process.stdout:
            tail = (tail + [line])[-40:]
            match = NANOGPT_LINE.match(line)
            if match:
                step = int(match.group(1))
                result.marks.append((step, time.perf_counter() - start))
                result.losses[step] = float(match.group(2))
                if step >= steps:
                    break
            if time.perf_counter() - start > timeout:
                break
    finally:
        _stop(process)
        result.peak_memory_mib = memory.stop()
        result.output_tail = "".join(tail)
    return result


def _metrics_records(checkpoints: Path) -> list[dict]:
    records = []
    for path in checkpoints.glob("metrics_*.jsonl"):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line torn by the stop
            if isinstance(record, dict) and record.get("kind") == "train":
                records.append(record)
    return records


def run_ours(data: Path, checkpoints: Path, shapes: Shapes, compile_: str, device: str,
             budget: int, steps: int, log_interval: int, timeout: float) -> RunResult:
    from datetime import datetime

    result = RunResult(f"ours, compile={compile_}")
    command = ours_command(data, checkpoints, shapes, compile_, device, budget, log_interval)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO_ROOT),
                                                        os.environ.get("PYTHONPATH"))))}
    log = checkpoints.parent / f"{checkpoints.name}.log"
    start = time.perf_counter()
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=output,
                                   stderr=subprocess.STDOUT, text=True, env=env)
        memory = GpuMemoryPoller(process.pid)
        try:
            while process.poll() is None and time.perf_counter() - start < timeout:
                if any(r.get("step", 0) >= steps for r in _metrics_records(checkpoints)):
                    break
                time.sleep(0.2)
        finally:
            _stop(process)
            result.peak_memory_mib = memory.stop()
    records = sorted(_metrics_records(checkpoints), key=lambda r: r["step"])
    if records:
        first = datetime.fromisoformat(records[0]["timestamp"])
        for record in records:
            seconds = (datetime.fromisoformat(record["timestamp"]) - first).total_seconds()
            result.marks.append((int(record["step"]), seconds))
            result.losses[int(record["step"])] = float(record["train_loss"])
    result.output_tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    return result


def flops_per_token(shapes: Shapes, vocab: int = 50257) -> int:
    from utils.config import ModelConfig
    from utils.model.memory import parameter_count
    from utils.training.engine.throughput import flops_per_token as count

    config = ModelConfig(vocab_size=vocab, context_length=shapes.context,
                         embedding_dimension=shapes.dim, number_of_heads=shapes.heads,
                         number_of_layers=shapes.layers, dropout_rate=0.0,
                         use_attention_bias=True)
    n = parameter_count(config) - shapes.context * shapes.dim
    return count(n, shapes.layers, shapes.heads, shapes.dim // shapes.heads, shapes.context)


def side_by_side(nanogpt: Path, workdir: Path, shapes: Shapes, device: str, modes: list[str],
                 steps: int, from_step: int, budget: int, rounds: int, log_interval: int,
                 timeout: float) -> list[dict]:
    """Alternating processes (nanoGPT, ours) per compile mode and round; one row per
    contender and mode with the median rate over rounds."""
    data = workdir / "data" / "bench"
    write_token_folder(data, min_tokens=shapes.batch * shapes.context * (steps + 10))
    shutil.copy(nanogpt / "configurator.py", workdir / "configurator.py")
    (workdir / "out").mkdir(exist_ok=True)
    rows = []
    for mode in modes:  # "defaults" or "eager"
        compiled = mode == "defaults"
        runs: dict[str, list[RunResult]] = {"nanoGPT": [], "ours": [], "floor": []}
        for index in range(rounds):
            runs["nanoGPT"].append(run_nanogpt(nanogpt, workdir, shapes, compiled, device,
                                               budget, steps, log_interval, timeout))
            folder = workdir / f"ours_{mode}_{index}"
            runs["ours"].append(run_ours(data, folder, shapes, "auto" if compiled else "off",
                                         device, budget, steps, log_interval, timeout))
            runs["floor"].append(run_floor(data, shapes, compiled, device, steps,
                                           log_interval, timeout))
        for name, results in runs.items():
            rates = [r.step_seconds(from_step) for r in results]
            rates = [r for r in rates if r]
            if not rates:
                raise RuntimeError(f"{name} ({mode}) logged no steps from {from_step} on:\n"
                                   f"{results[-1].output_tail}")
            late = [loss for r in results for s, loss in r.losses.items() if s >= from_step]
            memories = [r.peak_memory_mib for r in results if r.peak_memory_mib]
            rows.append({"mode": mode, "who": name, "step_s": statistics.median(rates),
                         "loss": statistics.mean(late) if late else None,
                         "memory_mib": max(memories) if memories else None})
    return rows


def report_lines(rows: list[dict], shapes: Shapes, peak: float | None) -> list[str]:
    tokens_per_step = shapes.batch * shapes.context
    flops = flops_per_token(shapes)
    lines = ["| mode | who | ms/step | tokens/s | MFU | vs nanoGPT | mean logged loss | "
             "peak GPU MiB |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    verdicts = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        pair = {r["who"]: r for r in rows if r["mode"] == mode}
        base = tokens_per_step / pair["nanoGPT"]["step_s"]
        for who in [w for w in ("nanoGPT", "ours", "floor") if w in pair]:
            r = pair[who]
            rate = tokens_per_step / r["step_s"]
            mfu = f"{rate * flops / peak:.1%}" if peak else "n/a"
            loss = f"{r['loss']:.4f}" if r["loss"] is not None else "n/a"
            memory = f"{r['memory_mib']:,.0f}" if r["memory_mib"] else "n/a"
            lines.append(f"| {mode} | {who} | {r['step_s'] * 1e3:.1f} | {rate:,.0f} | {mfu} | "
                         f"{rate / base:.2f}x | {loss} | {memory} |")
        if "floor" in pair:
            over = pair["ours"]["step_s"] / pair["floor"]["step_s"] - 1
            verdicts.append(f"{mode}: the CLI takes {over:+.1%} per step over the bare loop "
                            f"on our model (ms: {pair['ours']['step_s'] * 1e3:.1f} vs "
                            f"{pair['floor']['step_s'] * 1e3:.1f})")
        ratio = pair["nanoGPT"]["step_s"] / pair["ours"]["step_s"]
        aim = SPEED_AIM_DEFAULTS if mode == "defaults" else SPEED_AIM_EAGER
        verdicts.append(f"{mode}: ours {ratio:.2f}x nanoGPT's tokens/s (aim >= {aim}x): "
                        f"**{verdict(ratio >= aim)}**")
        ours_mem, their_mem = pair["ours"]["memory_mib"], pair["nanoGPT"]["memory_mib"]
        if ours_mem and their_mem:
            verdicts.append(f"{mode}: peak memory {ours_mem:,.0f} vs {their_mem:,.0f} MiB "
                            f"(aim: no more): **{verdict(ours_mem <= their_mem)}**")
    return lines + [""] + [f"- {line}" for line in verdicts]
