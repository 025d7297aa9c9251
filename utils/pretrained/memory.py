"""Will this GPT-2 fit? Estimate the bytes a model size needs and compare with what is free.

Loading gpt2-xl on Colab's free tier (about 12 GB of RAM) for training would need
weights + gradients + AdamW's two moments = 4 x 6.2 GB: the runtime would die half-way.
`check_memory` refuses up front with a message that names a size or dtype that fits.
"""

from __future__ import annotations

import os

import torch

from utils.config import GPT2_CONFIGS, ModelConfig

GIB = 1024**3
# Conversion holds one extra tensor at a time and Python/torch need some room of their own.
SAFETY_FACTOR = 1.15


class InsufficientMemoryError(MemoryError, ValueError):
    """The chosen model size (and dtype) does not fit in the free RAM or GPU memory."""


def parameter_count(config: ModelConfig) -> int:
    """Parameters of a GPTModel with `config`, tied head counted once (no allocation)."""
    d, layers = config.embedding_dimension, config.number_of_layers
    attention_bias = 3 * d if config.use_attention_bias else 0
    per_block = (4 * d) + (3 * d * d + attention_bias) + (d * d + d) + (8 * d * d + 5 * d)
    return (config.vocab_size + config.context_length) * d + layers * per_block + 2 * d


def estimate_memory_bytes(config: ModelConfig, dtype: torch.dtype = torch.float32,
                          training: bool = False) -> int:
    """Bytes for the weights; for training also gradients (same dtype) and AdamW's two fp32
    moments. Activations are left out: they depend on batch size and context length."""
    params = parameter_count(config)
    weight_bytes = params * torch.empty((), dtype=dtype).element_size()
    if not training:
        return weight_bytes
    return 2 * weight_bytes + 2 * params * 4


def available_ram_bytes() -> int:
    """MemAvailable from /proc/meminfo (what Linux can hand out without swapping)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available_device_bytes(device: str | torch.device) -> int:
    """Free bytes on `device`: GPU memory for CUDA, else RAM (MPS shares it)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    return available_ram_bytes()


def _fitting_sizes(available: int, dtype: torch.dtype, training: bool) -> list[str]:
    sizes = ("small", "medium", "large", "xl")
    return [s for s in sizes
            if estimate_memory_bytes(GPT2_CONFIGS[s], dtype, training) * SAFETY_FACTOR <= available]


def check_memory(config: ModelConfig, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, training: bool = False,
                 available: int | None = None, name: str = "this model") -> int:
    """Raise `InsufficientMemoryError` if `config` will not fit; return the bytes needed.

    The weights go where the model lives: GPU memory for CUDA (they stream there tensor by
    tensor, so RAM holds one tensor at a time), else RAM. `available` overrides the
    measured free bytes.
    """
    needed = int(estimate_memory_bytes(config, dtype, training) * SAFETY_FACTOR)
    if torch.device(device).type == "cuda":
        place = "GPU memory"
        free = available_device_bytes(device) if available is None else available
    else:
        place = "RAM"
        free = available_ram_bytes() if available is None else available
    if needed > free:
        purpose = "training (weights + gradients + AdamW state)" if training else "the weights"
        fits = _fitting_sizes(free, dtype, training)
        half = estimate_memory_bytes(config, torch.bfloat16, training) * SAFETY_FACTOR
        hints = []
        if fits:
            hints.append(f"a smaller size fits: {', '.join(fits)}")
        if dtype == torch.float32 and half <= free:
            hints.append("dtype=torch.bfloat16 (half the bytes per weight) fits")
        if not hints:
            hints.append("use a machine with more memory (Colab's free tier has ~12 GB RAM)")
        raise InsufficientMemoryError(
            f"{name} needs about {needed / GIB:.1f} GiB for {purpose} in {dtype} but only "
            f"{free / GIB:.1f} GiB of {place} is free; {'; or '.join(hints)}"
        )
    return needed
