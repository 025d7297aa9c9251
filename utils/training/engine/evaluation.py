"""The loss, and the one validation loss that the Trainer, the notebook and comparisons share.

Validation loss, defined once: the mean next-token cross-entropy over batches
0..`batches`-1 of `BatchLoader(val_tokens, batch_size, context_length, seed)`. Those
batches are a pure function of the seed, so every call, every model and every checkpoint is
scored on the same windows, and a checkpoint's recorded `val_loss` can be reproduced later
with `validation_loss(model, val_tokens, **validation_settings(training_config))`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from utils.config import TrainingConfig
from utils.data import BatchLoader
from utils.model import GPTModel

# The validation loader's seed is the training seed + this, so its windows differ from the
# training batches of the same step.
VALIDATION_SEED_OFFSET = 1

# Below this vocabulary the logits are small (768 rows x 65 characters: 200 KB) and the
# fused head + loss is a dozen small kernels where `F.cross_entropy` is three: fwd + bwd
# 0.63 ms vs 0.40 ms at 65, about even at 512, fused 14% faster at 2048 and 37% at 50304
# (bench/train.py's recipe; CPU, 2 threads).
FUSED_LOSS_MIN_VOCAB = 1024


def logits_of(output: Any) -> torch.Tensor:
    """Logits from a model's output: a tensor (GPTModel), `.logits` (Hugging Face), or a
    tuple whose first element is the logits."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


def language_model_loss(model: nn.Module, inputs: torch.Tensor,
                        targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of `model(inputs)` against `targets`.

    A GPTModel (bare or DDP-wrapped) in fp32 with a vocabulary of at least
    `FUSED_LOSS_MIN_VOCAB` computes it with its fused head + loss, which never materialises
    the `[batch, context, vocab]` logits (bench/train.py). Under bf16/fp16 autocast the plain
    path is kept: the fused one does its products in fp32, which on a GPU would give up the
    tensor cores. Other models (Hugging Face's) give logits and `F.cross_entropy` takes it
    from there.
    """
    inner = getattr(model, "module", model)
    if isinstance(inner, GPTModel) and not torch.is_autocast_enabled(inputs.device.type):
        fused = inner.config.vocab_size >= FUSED_LOSS_MIN_VOCAB
        return model(inputs, targets, return_logits=not fused)[1]
    logits = logits_of(model(inputs))
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, batches: int = 20,
             device: str | torch.device | None = None,
             autocast: contextlib.AbstractContextManager | None = None) -> float:
    """Mean loss over batches 0..batches-1 of `loader` (the same batches every call).

    The model is put in eval mode (no dropout) and restored to its previous mode.
    """
    device = torch.device(device) if device else next(model.parameters()).device
    was_training = model.training
    model.eval()
    # summed on the device and read once: a host sync per batch would stall a GPU's queue
    # (float64 as the Python float sum was; MPS has no float64)
    total = torch.zeros((), device=device,
                        dtype=torch.float32 if device.type == "mps" else torch.float64)
    try:
        for index in range(batches):
            inputs, targets = loader.get_batch(index)
            with autocast or contextlib.nullcontext():
                loss = language_model_loss(model, inputs.to(device), targets.to(device))
            total += loss.detach().to(total.dtype)
    finally:
        model.train(was_training)
    return total.item() / batches


def validation_settings(config: TrainingConfig | dict | None = None) -> dict[str, int]:
    """`batches`, `batch_size` and `seed` of the validation loss a training run recorded."""
    if isinstance(config, dict):
        config = TrainingConfig.from_dict(config)
    config = config or TrainingConfig()
    return {"batches": config.eval_batches, "batch_size": config.batch_size,
            "seed": config.seed + VALIDATION_SEED_OFFSET}


def validation_loss(model: nn.Module, data: Any, batches: int = 20, batch_size: int = 8,
                    seed: int = TrainingConfig.seed + VALIDATION_SEED_OFFSET,
                    context_length: int | None = None,
                    device: str | torch.device | None = None,
                    autocast: contextlib.AbstractContextManager | None = None) -> float:
    """The validation loss (see the module docstring) of `model` on `data`: token ids or a
    `BatchLoader`. `context_length` defaults to the model's."""
    if not isinstance(data, BatchLoader):
        context = context_length or model.config.context_length
        data = BatchLoader(data, batch_size, min(context, model.config.context_length),
                           seed=seed, name="validation data")
    return evaluate(model, data, batches, device, autocast)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))
