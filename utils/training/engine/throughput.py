"""Tokens per second and model FLOPs utilisation (MFU).

FLOPs per token are counted as in the PaLM paper (appendix B) and nanoGPT's `estimate_mfu`:
6N for the weights (2 for the forward multiply-add, 4 for the two backward products) plus
12·L·H·Q·T for attention's two [T, T] products per head (QKᵀ and the weighted sum of V,
forward and backward), where N counts the parameters without the position embedding (a
lookup, no product; the tied head's product counts through the token embedding), L layers,
H heads, Q the head dimension and T the context length.

MFU = achieved FLOP/s / the device's peak. GPUs: a table of dense tensor-core peaks from the
vendors' data sheets, matched on `torch.cuda.get_device_name`. Training reports MFU only
there: a CPU has no data sheet number that torch reaches, and a peak measured on a shared
CPU (`measured_cpu_peak`, the best of a few square `torch.mm`; the benchmarks use it) is
often below what the model's own products reach, which would read as more than 100%.
A utilisation above 100% means the peak or the FLOP count does not fit the device, so it is
not reported at all.
"""

from __future__ import annotations

import re
import time
from typing import Any

import torch
from torch import nn

# Dense (no sparsity) peak FLOP/s per precision. The 16-bit entries are what the issue
# names; fp32 is the TF32 tensor-core rate on Ampere and later (TF32 is enabled on CUDA),
# the plain fp32 rate on the T4. Patterns match whole words: "L4" must not match "L40S".
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 494.5e12},  # H100's SXM tensor cores
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 494.5e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 60e12},
    "T4": {"bf16": 65e12, "fp16": 65e12, "fp32": 8.1e12},  # bf16 never runs natively here
}
CPU_MM_SIZE = 1024  # 2 GFLOP per product: a good rate, and well under a second on 2 cores

_cpu_peak_cache: dict[tuple[torch.dtype, int], float] = {}


def flops_per_token(parameters: int, layers: int, heads: int, head_dimension: int,
                    context_length: int) -> int:
    """Training FLOPs (forward + backward) per token: 6N + 12·L·H·Q·T.

    `parameters` is N: the model's parameters without the position embedding.
    """
    return 6 * parameters + 12 * layers * heads * head_dimension * context_length


def model_flops_per_token(model: nn.Module, context_length: int | None = None) -> int:
    """`flops_per_token` of a GPTModel (bare, compiled or DDP-wrapped) or a Hugging Face
    GPT-2; `context_length` defaults to the model's own (the sequences trained on)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):  # DDP, torch.compile
        model = getattr(model, "module", None) or model._orig_mod
    config = model.config

    def get(*names: str) -> int:  # our ModelConfig's name, else Hugging Face's
        return next(getattr(config, n) for n in names if hasattr(config, n))

    layers = get("number_of_layers", "n_layer")
    heads = get("number_of_heads", "n_head")
    width = get("embedding_dimension", "n_embd")
    context = context_length or get("context_length", "n_positions")
    total = sum(p.numel() for p in model.parameters())  # a tied head is one parameter
    position = width * get("context_length", "n_positions")
    return flops_per_token(total - position, layers, heads, width // heads, context)


def gpu_peak_flops(device_name: str, precision: str) -> float | None:
    """The table's dense peak for a CUDA device name and "fp32"/"bf16"/"fp16"; None for a
    card the table does not know (MFU is then not reported rather than made up)."""
    for card, peaks in GPU_PEAK_FLOPS.items():
        if re.search(rf"\b{card}\b", device_name, flags=re.IGNORECASE):
            return peaks[precision]
    return None


def cpu_peak_flops(dtype: torch.dtype = torch.float32, size: int = CPU_MM_SIZE,
                   repeats: int = 3) -> float:
    """The best FLOP/s of a square `torch.mm` in `dtype` with this process's torch threads,
    measured once per (dtype, thread count) per process."""
    key = (dtype, torch.get_num_threads())
    if key not in _cpu_peak_cache:
        # a generator of its own: drawing from the global one would shift a training
        # run's dropout masks and break bitwise resumes
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator).to(dtype)
        b = torch.randn(size, size, generator=generator).to(dtype)
        out = torch.mm(a, b)  # warm-up; also the output buffer, so no page faults are timed
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - start)
        _cpu_peak_cache[key] = 2 * size**3 / best
    return _cpu_peak_cache[key]


def peak_flops(device: str | torch.device, precision: str = "fp32") -> tuple[float | None, str]:
    """`(data-sheet peak FLOP/s or None, where it comes from)` for the device training runs
    on: a GPU of the table; None (no MFU) for other GPUs, CPUs and MPS."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name, precision)
        if peak is None:
            return None, f"{name} is not in the peak table: no MFU"
        return peak, f"{name} {precision} dense peak {peak / 1e12:g} TFLOP/s (data sheet)"
    return None, f"no data-sheet peak for {device.type}: no MFU"


def measured_cpu_peak(precision: str = "fp32") -> tuple[float, str]:
    """`(FLOP/s, how it was measured)` of this CPU now, for benchmarks that compare runs."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    peak = cpu_peak_flops(dtype)
    return peak, (f"measured {CPU_MM_SIZE}x{CPU_MM_SIZE} {precision} torch.mm, "
                  f"{torch.get_num_threads()} threads: {peak / 1e9:.1f} GFLOP/s")


def mfu(tokens_per_second: float, flops_per_token_: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]; None without a peak, or above 1 (then the peak or
    the FLOP count does not describe this device, and no number is better than a wrong one)."""
    if not peak:
        return None
    utilisation = tokens_per_second * flops_per_token_ / peak
    return utilisation if utilisation <= 1.0 else None


class ThroughputMeter:
    """Tokens/s and MFU over a window of optimizer steps.

    `mark(steps_done)` is called only where the loop syncs anyway (at log intervals): the
    time between two marks covers the GPU's queued work once the loss has been read, so no
    extra synchronisation is needed for an honest rate.
    """

    def __init__(self, tokens_per_step: int, flops_per_token_: int, peak: float | None,
                 clock: Any = time.perf_counter) -> None:
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token_
        self.peak = peak
        self._clock = clock
        self._last_time: float | None = None
        self._last_steps = 0
        self.tokens_per_second: float | None = None
        self.mfu: float | None = None

    def start(self, steps_done: int = 0) -> None:
        self._last_time, self._last_steps = self._clock(), steps_done

    def mark(self, steps_done: int) -> dict[str, float | None]:
        """Rates since the previous mark (or `start`); returns {"tokens_per_s", "mfu"}."""
        now = self._clock()
        if self._last_time is None:
            self.start(steps_done)
            return self.rates()
        seconds, steps = now - self._last_time, steps_done - self._last_steps
        if steps > 0 and seconds > 0:
            self.tokens_per_second = steps * self.tokens_per_step / seconds
            self.mfu = mfu(self.tokens_per_second, self.flops_per_token, self.peak)
        self._last_time, self._last_steps = now, steps_done
        return self.rates()

    def rates(self) -> dict[str, float | None]:
        return {"tokens_per_s": self.tokens_per_second, "mfu": self.mfu}
