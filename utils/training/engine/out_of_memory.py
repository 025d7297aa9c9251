"""An out-of-memory error during training, turned into what to change.

`is_out_of_memory` recognises CUDA's (or MPS's) OOM whatever class this torch raises, and
`out_of_memory_message` names the settings that lower memory, with a batch size and
accumulation that fit by the estimate (utils/model/memory.py).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

# The settings that lower training memory, in the order worth trying.
OOM_SETTINGS = (
    "batch_size (with gradient_accumulation_steps raised to keep the batch per step)",
    "activation_checkpointing=True (recompute each block in the backward pass)",
    "precision='auto' (bf16/fp16 halve the activations on a GPU)",
    "a shorter context_length or a smaller model preset",
)


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's (or MPS's) out-of-memory error, whichever class this torch raises."""
    # torch.OutOfMemoryError since torch 2.5; torch.cuda.OutOfMemoryError before
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(error, oom):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error)


def out_of_memory_message(error: BaseException, settings: dict[str, Any],
                          model_config: Any = None, memory_bytes: int | None = None) -> str:
    """A message for an OOM during training that names the setting to change.

    `settings`: the run's batch_size, gradient_accumulation_steps, precision (resolved),
    activation_checkpointing, context_length. With a GPT-2 `model_config` (a `ModelConfig`;
    anything else is ignored) and the GPU's `memory_bytes`, a batch size and accumulation
    that fit are suggested.
    """
    from utils.config import ModelConfig

    if not isinstance(model_config, ModelConfig):
        model_config = None
    batch = settings.get("batch_size")
    accumulation = settings.get("gradient_accumulation_steps", 1)
    lines = [
        f"CUDA ran out of memory while training with batch_size={batch}, "
        f"gradient_accumulation_steps={accumulation}, precision={settings.get('precision')!r}, "
        f"activation_checkpointing={settings.get('activation_checkpointing', False)}, "
        f"context_length={settings.get('context_length')}.",
        "Every checkpoint written before this point is intact; resume from the newest one "
        "after changing a setting.",
    ]
    if model_config is not None and memory_bytes and batch:
        from utils.model.memory import InsufficientMemoryError, suggest_batch_size

        precision = settings.get("precision") or "fp32"
        try:
            plan = suggest_batch_size(model_config, memory_bytes, batch * accumulation,
                                      settings.get("context_length"), precision)
            lines.append(f"Estimated to fit this GPU: {plan.describe()}.")
        except (InsufficientMemoryError, ValueError) as failure:
            lines.append(f"No batch size fits by the estimate: {failure}")
    lines.append("Settings that lower memory, in order: " + "; ".join(OOM_SETTINGS) + ".")
    lines.append(f"(original error: {str(error).splitlines()[0] if str(error) else type(error).__name__})")
    return "\n".join(lines)


def device_memory_bytes(device: torch.device | str) -> int | None:
    """The GPU's total memory, or None (not a GPU, or not readable: an OOM message must not
    fail in its turn)."""
    with contextlib.suppress(Exception):
        return torch.cuda.get_device_properties(device).total_memory
    return None
