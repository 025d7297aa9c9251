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
from utils.training.engine.distributed import unwrap_model

# The validation loader's seed is the training seed + this, so its windows differ from the
# training batches of the same step.
VALIDATION_SEED_OFFSET = 1


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

    A GPTModel (bare, compiled or DDP-wrapped) computes it inside its forward
    (`return_logits=False`): fused with the head in fp32, never materialising the
    `[batch, context, vocab]` logits (bench/train.py); under autocast within the compiled
    graph, where the fp32 upcast and the loss fuse (bench/gpu.py). Other models (Hugging
    Face's) give logits and `F.cross_entropy` takes it from there.
    """
    if isinstance(unwrap_model(model), GPTModel):
        return model(inputs, targets, return_logits=False)[1]
    logits = logits_of(model(inputs))
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))


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
