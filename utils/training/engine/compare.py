"""Compare checkpoints: which layers moved during training, and how the models differ.

- `compare_checkpoints(a, b)`: per-layer relative weight change ||b - a|| / ||a|| as a
  pandas DataFrame; `plot_weight_changes(df)` draws it as a bar chart.
- `compare_predictions(paths, val_tokens, tokenizer, prompt)`: validation loss, perplexity
  and a greedy continuation of the same prompt for each checkpoint, side by side.

Checkpoints are read with the same safe loader as everything else (weights_only=True).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.checkpoint_errors import ArchitectureMismatchError
from utils.training.engine.evaluation import validation_loss, validation_settings
from utils.training.engine.loading import inspect_checkpoint, load_pretrained_model

# The Trainer's validation windows with the default training seed (evaluation.py).
VALIDATION_SEED = validation_settings()["seed"]


def _state_dict(source: Any, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from a path, a model or a state dict; tied duplicates dropped."""
    if isinstance(source, nn.Module):
        state = source.state_dict()
    elif isinstance(source, dict):
        state = dict(source)
    else:
        state = inspect_checkpoint(Path(source), trust_checkpoint).state_dict
    unique: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, tensor in state.items():
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if identity in seen and tensor.numel():  # the tied output head: counted once
            continue
        seen.add(identity)
        unique[key] = tensor
    return unique


def compare_checkpoints(a: Any, b: Any, trust_checkpoint: bool = False):
    """Per-layer change from `a` to `b` (paths, models or state dicts), in `a`'s order.

    Columns: `layer`, `shape`, `parameters`, `norm_a`, `norm_b`, `abs_change` (||b - a||)
    and `relative_change` (||b - a|| / ||a||; NaN where ||a|| is 0, e.g. a fresh bias).
    """
    import pandas as pd

    first, second = _state_dict(a, trust_checkpoint), _state_dict(b, trust_checkpoint)
    only_a, only_b = sorted(set(first) - set(second)), sorted(set(second) - set(first))
    wrong = [k for k in first if k in second and first[k].shape != second[k].shape]
    if only_a or only_b or wrong:
        raise ArchitectureMismatchError(
            f"cannot compare checkpoints of different architectures: {len(only_a)} key(s) only "
            f"in the first (e.g. {only_a[:3]}), {len(only_b)} only in the second "
            f"(e.g. {only_b[:3]}), {len(wrong)} with different shapes (e.g. {wrong[:3]}). "
            "Fix: compare checkpoints of the same training run.")
    rows = []
    for key, tensor_a in first.items():
        old, new = tensor_a.double(), second[key].double()
        norm_a, change = old.norm().item(), (new - old).norm().item()
        rows.append({"layer": key, "shape": list(tensor_a.shape), "parameters": tensor_a.numel(),
                     "norm_a": norm_a, "norm_b": new.norm().item(), "abs_change": change,
                     "relative_change": change / norm_a if norm_a > 0 else math.nan})
    return pd.DataFrame(rows)


def plot_weight_changes(table, top: int | None = None, title: str = "Relative weight change"):
    """A horizontal bar chart of `relative_change` per layer (the `top` largest if given)."""
    from matplotlib.figure import Figure

    data = table.dropna(subset=["relative_change"])
    if top is not None:
        data = data.nlargest(top, "relative_change")
    figure = Figure(figsize=(8, max(2.5, 0.22 * len(data) + 1)))
    axes = figure.subplots()
    positions = np.arange(len(data))
    axes.barh(positions, data["relative_change"], color="tab:blue")
    axes.set_yticks(positions, labels=list(data["layer"]), fontsize=7)
    axes.invert_yaxis()  # first layer at the top, as in the table
    axes.set_xlabel("||b - a|| / ||a||")
    axes.set_title(title)
    figure.tight_layout()
    return figure


def compare_predictions(paths: Sequence[str | Path], val_tokens: Any, tokenizer: Any,
                        prompt: str, max_new_tokens: int = 20, context_length: int | None = None,
                        batch_size: int = 8, max_batches: int = 20,
                        device: str | torch.device | None = None, temperature: float = 0.0,
                        seed: int | None = 0, trust_checkpoint: bool = False,
                        validation_seed: int = VALIDATION_SEED):
    """One row per checkpoint: step, val_loss, perplexity and a continuation of `prompt`.

    Models are loaded one at a time (memory: one model). `temperature=0` (greedy) makes the
    samples comparable: the same prompt, no sampling noise.
    """
    import pandas as pd

    from utils.generation import generate_text

    prompt_ids = tokenizer.encode(prompt)
    rows = []
    for path in paths:
        model, checkpoint = load_pretrained_model(path, device=device,
                                                  trust_checkpoint=trust_checkpoint)
        loss = validation_loss(model, val_tokens, batches=max_batches, batch_size=batch_size,
                               seed=validation_seed, context_length=context_length)
        output = generate_text(model, prompt_ids, maximum_new_tokens=max_new_tokens,
                               temperature=temperature, seed=seed)
        rows.append({"checkpoint": Path(path).name, "global_step": checkpoint.get("global_step"),
                     "val_loss": loss, "perplexity": math.exp(loss),
                     "sample": tokenizer.decode(output[len(prompt_ids):])})
        del model
    return pd.DataFrame(rows)
