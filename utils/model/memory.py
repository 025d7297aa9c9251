"""Will this GPT-2 fit? Estimate the bytes a model size needs and compare with what is free.

Loading gpt2-xl on Colab's free tier (about 12 GB of RAM) for training would need
weights + gradients + AdamW's two moments = 4 x 6.2 GB: the runtime would die half-way.
`check_memory` refuses up front with a message that names a size or dtype that fits.

Training also holds activations, which grow with batch x context and usually dominate on a
GPU: `training_memory` counts them for a batch size, context and precision, and
`suggest_batch_size` finds the micro-batch and gradient accumulation that fit a memory size
(e.g. gpt2-medium on a 15 GB T4). Everything here is arithmetic: no GPU is needed to plan.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

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


# --------------------------------------------------------------------------------------
# Training: weights, gradients, AdamW, activations
# --------------------------------------------------------------------------------------

# The CUDA context, cuBLAS/cuDNN workspaces and the caching allocator's fragmentation take
# memory that no tensor accounts for; a GPU plan leaves this much aside.
CUDA_RESERVED_BYTES = GIB
_ACTIVATION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training configuration, by what holds them (`total` is their sum)."""

    weights: int
    gradients: int
    optimizer: int
    autocast_weights: int  # bf16/fp16 copies of the weights, cached for each forward pass
    activations: int  # what the blocks keep for the backward pass
    head: int  # the output head and the loss at their peak (logits for 50k words)
    batch_size: int
    context_length: int
    precision: str
    activation_checkpointing: bool

    @property
    def total(self) -> int:
        return (self.weights + self.gradients + self.optimizer + self.autocast_weights
                + self.activations + self.head)

    def describe(self) -> str:
        parts = [("weights", self.weights), ("gradients", self.gradients),
                 ("AdamW state", self.optimizer), ("autocast weight copies", self.autocast_weights),
                 ("activations", self.activations), ("output head + loss", self.head)]
        listed = ", ".join(f"{label} {value / GIB:.2f}" for label, value in parts if value)
        return f"{self.total / GIB:.2f} GiB ({listed})"


def block_activation_bytes_per_token(config: ModelConfig, precision: str = "fp32") -> int:
    """Bytes one transformer block keeps per token for its backward pass.

    Counted from what each operation saves (as in Korthikanti et al. 2022, "Reducing
    Activation Recomputation", with flash attention, which keeps no [T, T] scores): the
    two LayerNorms' inputs from the fp32 residual stream (2 x 4d); in the activation dtype
    the Q/K/V product's input (d), q, k and v (3d), the attention output (d) and its
    contiguous copy for out_proj (d), the MLP's input (d), GELU's input (4d) and GELU's
    output (4d) = 15d; attention's log-sum-exp (4 bytes per head); a 1-byte mask per
    dropout (two of d per block) when dropout is on.
    """
    d, e = config.embedding_dimension, _ACTIVATION_BYTES[precision]
    dropout_masks = 2 * d if config.dropout_rate > 0 else 0
    return 2 * 4 * d + 15 * e * d + 4 * config.number_of_heads + dropout_masks


def head_bytes(config: ModelConfig, tokens: int, precision: str = "fp32") -> int:
    """Peak bytes of the output head and the loss for `tokens` positions.

    fp32 trains through the fused head + loss (utils/model/loss.py): one block of 512 rows
    of logits plus the gradients it saves for the backward pass ([tokens, d] and the
    [vocab, d] head). Under autocast the plain path runs: 16-bit logits, their fp32 copy
    and log_softmax's fp32 output in the forward pass; in the backward pass the fp32
    gradient of the log-probabilities and of the logits plus its 16-bit cast, while the
    log-probabilities are still held: 2 + 4 + 4 + 2 bytes per logit at the worst moment.
    """
    d, vocab = config.embedding_dimension, config.vocab_size
    if precision == "fp32":
        return 4 * (min(tokens, 512) * vocab + tokens * d + vocab * d)
    return (2 + 4 + 4 + 2) * tokens * vocab


def training_memory(config: ModelConfig, batch_size: int, context_length: int | None = None,
                    precision: str = "fp32", activation_checkpointing: bool = False
                    ) -> MemoryEstimate:
    """Bytes to train `config` on micro-batches of `batch_size` x `context_length` tokens
    with AdamW in `precision` ("fp32", "bf16" or "fp16": the resolved precision).

    Weights, gradients and AdamW's two moments stay fp32 under autocast (mixed precision
    keeps fp32 master weights); autocast adds a 16-bit copy of each weight. With activation
    checkpointing only each block's fp32 input is kept, plus one block's activations while
    it is recomputed.
    """
    if precision not in _ACTIVATION_BYTES:
        raise ValueError(f"precision must be one of {sorted(_ACTIVATION_BYTES)} (resolved, "
                         f"not 'auto'), got {precision!r}")
    context = context_length or config.context_length
    tokens = batch_size * context
    params = parameter_count(config)
    per_block = block_activation_bytes_per_token(config, precision)
    if activation_checkpointing:
        blocks = (config.number_of_layers * 4 * config.embedding_dimension + per_block) * tokens
    else:
        blocks = config.number_of_layers * per_block * tokens
    return MemoryEstimate(
        weights=4 * params, gradients=4 * params, optimizer=8 * params,
        autocast_weights=0 if precision == "fp32" else 2 * params,
        activations=blocks + 4 * config.embedding_dimension * tokens,  # + final_norm's input
        head=head_bytes(config, tokens, precision),
        batch_size=batch_size, context_length=context, precision=precision,
        activation_checkpointing=activation_checkpointing)


@dataclass(frozen=True)
class BatchPlan:
    """A micro-batch and accumulation that reach `batch_size` sequences per optimizer step."""

    micro_batch_size: int
    gradient_accumulation_steps: int
    activation_checkpointing: bool
    estimate: MemoryEstimate
    usable_bytes: int

    @property
    def batch_size(self) -> int:
        """Sequences per optimizer step (at least the one asked for)."""
        return self.micro_batch_size * self.gradient_accumulation_steps

    def describe(self) -> str:
        checkpointing = ", activation checkpointing on" if self.activation_checkpointing else ""
        return (f"batch_size={self.micro_batch_size}, gradient_accumulation_steps="
                f"{self.gradient_accumulation_steps}{checkpointing}: about "
                f"{self.estimate.total * SAFETY_FACTOR / GIB:.1f} of "
                f"{self.usable_bytes / GIB:.1f} GiB usable")


def suggest_batch_size(config: ModelConfig, memory_bytes: int, batch_size: int = 8,
                       context_length: int | None = None, precision: str = "fp32",
                       device_type: str = "cuda", allow_checkpointing: bool = True,
                       name: str = "this model") -> BatchPlan:
    """The largest micro-batch (a power of two, up to `batch_size`) that fits `memory_bytes`,
    and the gradient accumulation that brings each optimizer step back to `batch_size`
    sequences; with activation checkpointing only when nothing fits without it.

    On CUDA `CUDA_RESERVED_BYTES` are left aside; every estimate gets `SAFETY_FACTOR`.
    Raises `InsufficientMemoryError` when not even one sequence fits.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    usable = memory_bytes - (CUDA_RESERVED_BYTES if device_type == "cuda" else 0)
    candidates = [2**i for i in range(int(math.log2(batch_size)) + 1)]  # 1, 2, 4, ...
    for checkpointing in (False, True) if allow_checkpointing else (False,):
        for micro in reversed(candidates):
            estimate = training_memory(config, micro, context_length, precision, checkpointing)
            if estimate.total * SAFETY_FACTOR <= usable:
                steps = math.ceil(batch_size / micro)
                return BatchPlan(micro, steps, checkpointing, estimate, usable)
    one = training_memory(config, 1, context_length, precision, allow_checkpointing)
    raise InsufficientMemoryError(
        f"{name} cannot train even one sequence of {one.context_length} tokens in "
        f"{usable / GIB:.1f} GiB usable ({precision}): it needs about "
        f"{one.total * SAFETY_FACTOR / GIB:.1f} GiB with a {SAFETY_FACTOR - 1:.0%} margin, "
        f"{one.describe()}. Use a "
        f"smaller model, a shorter context_length, or a GPU with more memory")


def check_memory(config: ModelConfig, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, training: bool = False,
                 available: int | None = None, name: str = "this model", *,
                 batch_size: int | None = None, context_length: int | None = None,
                 precision: str | None = None, activation_checkpointing: bool = False) -> int:
    """Raise `InsufficientMemoryError` if `config` will not fit; return the bytes needed.

    The weights go where the model lives: GPU memory for CUDA (they stream there tensor by
    tensor, so RAM holds one tensor at a time), else RAM. `available` overrides the
    measured free bytes.

    With `training=True` and a `batch_size`, the activations of that micro-batch at
    `context_length` (default: the model's) in `precision` ("fp32", "bf16", "fp16"; default
    from `dtype`) are counted too, and the error suggests a batch size and gradient
    accumulation that fit.
    """
    if training and batch_size is not None:
        precision = precision or {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
        return _check_training(config, device, available, name, batch_size, context_length,
                               precision, activation_checkpointing)
    needed = int(estimate_memory_bytes(config, dtype, training) * SAFETY_FACTOR)
    place, free = _free_memory(device, available)
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


def _free_memory(device: str | torch.device, available: int | None) -> tuple[str, int]:
    """(where the model lives, its free bytes): `available` when given, else measured."""
    on_gpu = torch.device(device).type == "cuda"
    if available is None:
        available = available_device_bytes(device) if on_gpu else available_ram_bytes()
    return ("GPU memory" if on_gpu else "RAM"), available


def _check_training(config: ModelConfig, device: str | torch.device, available: int | None,
                    name: str, batch_size: int, context_length: int | None, precision: str,
                    activation_checkpointing: bool) -> int:
    kind = torch.device(device).type
    place, free = _free_memory(device, available)
    estimate = training_memory(config, batch_size, context_length, precision,
                               activation_checkpointing)
    needed = int(estimate.total * SAFETY_FACTOR)
    usable = free - (CUDA_RESERVED_BYTES if kind == "cuda" else 0)
    if needed <= usable:
        return needed
    try:
        plan = suggest_batch_size(config, free, batch_size, context_length, precision, kind,
                                  name=name)
        hint = f"try {plan.describe()}"
    except InsufficientMemoryError as error:
        hint = str(error)
    raise InsufficientMemoryError(
        f"{name} needs about {needed / GIB:.1f} GiB with a {SAFETY_FACTOR - 1:.0%} margin, "
        f"{estimate.describe()}, to train batch_size={batch_size} x "
        f"{estimate.context_length} tokens in {precision}, but only {usable / GIB:.1f} GiB "
        f"of {place} is usable; {hint}")
