"""Whether training runs through `torch.compile`, and why.

`compile="auto"` (the default) compiles where it pays back its warm-up:

- CPU and MPS: eager. Inductor's CPU kernels need a C++ compiler, compiling takes tens of
  seconds, and a CPU step is mostly large matrix products that compiling does not speed up
  (bench/train.py's recipe: ~26 s of warm-up to save ~3 s).
- CUDA below compute capability 7.0 (P100, K80): eager; Triton, which inductor's GPU
  kernels are written in, needs 7.0.
- CUDA from 7.0 (T4, V100, A100, L4, H100, ...): on when the run is long enough that the
  time compiling saves outweighs the warm-up, estimated before the first step from the
  model's FLOPs and the card's peak (`throughput.py`): an eager step runs at about
  `EAGER_MFU` of the peak, compiled steps save `COMPILED_SAVING` of that, and compiling
  costs `WARMUP_S`. The run's whole step budget counts, not what is left of it, so a
  resumed session decides as the first one did (the same kernels: resuming stays exact).

An explicit True / False wins. `choose_compile` is a pure function of what it is given, so
every branch is tested on a CPU with the device's properties passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Triton (inductor's GPU kernels) supports compute capability 7.0 (Volta) and later.
TRITON_MIN_CAPABILITY = (7, 0)
# Measured: compiling GPT-2 small took ~24 s on an H100 host (bench/gpu.py, docs/benchmarks.md);
# Colab's 2-vCPU hosts compile more slowly, so the estimate leans to the safe side.
WARMUP_S = 40.0
# nanoGPT's own train.py on an H200, GPT-2 small at 16 x 1024: 42.8 ms/step eager, 34.4 ms
# compiled (issue 17): compiled steps take about a fifth less time.
COMPILED_SAVING = 0.2
# What an eager GPT-2 step reaches of a GPU's dense peak (33% for nanoGPT on an H200,
# issue 17); small models reach less, which only makes "auto" more careful.
EAGER_MFU = 0.3
# A card missing from throughput.GPU_PEAK_FLOPS is assumed to have a T4's fp16 peak.
UNKNOWN_GPU_PEAK_FLOPS = 65e12


@dataclass(frozen=True)
class CompileChoice:
    """`enabled`: whether to compile; `reason`: one line for people."""

    enabled: bool
    reason: str


def choose_compile(requested: bool | str, device_type: str,
                   capability: tuple[int, int] | None = None, *, steps: int = 0,
                   flops_per_step: float = 0.0, peak_flops: float | None = None) -> CompileChoice:
    """The compile decision for `requested` (True, False or "auto") on `device_type`.

    For "auto" on CUDA: `capability` is the card's compute capability, `steps` the run's
    optimizer steps, `flops_per_step` the training FLOPs of one step and `peak_flops` the
    card's dense peak in the training precision (None: not in the table).
    """
    if requested is True:
        return CompileChoice(True, "compile=True")
    if requested is False:
        return CompileChoice(False, "compile=False")
    if device_type != "cuda":
        return CompileChoice(False, f"auto: eager on {device_type} (compiling pays on CUDA "
                                    "GPUs; on a CPU its warm-up outweighs what it saves)")
    if capability is not None and tuple(capability) < TRITON_MIN_CAPABILITY:
        return CompileChoice(False, f"auto: eager (compute capability "
                                    f"{capability[0]}.{capability[1]}; torch.compile's GPU "
                                    f"kernels need {TRITON_MIN_CAPABILITY[0]}.0)")
    peak = peak_flops or UNKNOWN_GPU_PEAK_FLOPS
    eager_step_s = flops_per_step / (peak * EAGER_MFU)
    saved_s = steps * eager_step_s * COMPILED_SAVING
    estimate = (f"{steps:,} steps of ~{eager_step_s * 1e3:.0f} ms eager would save "
                f"~{saved_s:.0f} s compiled")
    if saved_s > WARMUP_S:
        return CompileChoice(True, f"auto: on ({estimate}, more than the ~{WARMUP_S:.0f} s "
                                   "warm-up)")
    return CompileChoice(False, f"auto: eager ({estimate}, less than the ~{WARMUP_S:.0f} s "
                                "warm-up; compile=True forces it)")


def resolve_compile(requested: bool | str, device: torch.device, *, steps: int,
                    flops_per_step: float, precision: str) -> CompileChoice:
    """`choose_compile` with the device's own properties (asked only on CUDA)."""
    capability, peak = None, None
    if device.type == "cuda" and requested == "auto":
        from utils.training.engine.throughput import gpu_peak_flops

        capability = torch.cuda.get_device_capability(device)
        peak = gpu_peak_flops(torch.cuda.get_device_name(device), precision)
    return choose_compile(requested, device.type, capability, steps=steps,
                          flops_per_step=flops_per_step, peak_flops=peak)


_compile_problems: dict[str, str | None] = {}  # per device type: compiling is tried once


def _compile_probe(x: torch.Tensor) -> torch.Tensor:
    return x * 2 + 1


def compile_problem(device: torch.device | str) -> str | None:
    """Why `torch.compile` cannot build kernels for `device` here (one line), or None when
    it can: a one-line function is compiled and run once per device type (the CPU's kernels
    need a C++ compiler, a GPU's need Triton)."""
    device = torch.device(device)
    if device.type not in _compile_problems:
        try:
            torch.compile(_compile_probe, dynamic=False)(torch.ones(4, device=device))
            _compile_problems[device.type] = None
        except Exception as error:  # InductorError, BackendCompilerFailed, ...: all say why
            lines = [line for line in str(error).splitlines() if line.strip()]
            _compile_problems[device.type] = (f"{type(error).__name__}: {lines[0]}" if lines
                                              else type(error).__name__)
    return _compile_problems[device.type]


def compile_unavailable_warning(requested: bool | str, device: torch.device,
                                problem: str) -> str:
    """What training says when compiling was asked for but `compile_problem` found why its
    kernels cannot be built here (training goes on without it)."""
    return (f"WARNING: compile={requested!r}, but torch.compile cannot build kernels on "
            f"{device} here ({problem}); training without it. Install a C++ compiler (g++) "
            "for CPU kernels, or train with compile=False (CLI: --compile off) to silence "
            "this.")
