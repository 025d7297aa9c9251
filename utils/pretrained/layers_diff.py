"""Find where GPTModel and Hugging Face's GPT-2 part ways, one call (seed 001's advice, built in).

`compare_layers` runs both models on the same ids with forward hooks on the embeddings,
every block and the final norm, and reports the largest absolute difference at each stage.
A wrong transpose in block 5 shows up as small numbers up to block 4 and a jump at block 5.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _capture(module: nn.Module, name: str, store: dict[str, torch.Tensor]):
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        # HF blocks return a tuple (hidden states, ...) in transformers 4.x, a tensor in 5.x.
        tensor = output[0] if isinstance(output, (tuple, list)) else output
        store[name] = tensor.detach().float().cpu()
    return module.register_forward_hook(hook)


def _stages(model: nn.Module, hf_model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    hf = hf_model.transformer if hasattr(hf_model, "transformer") else hf_model
    stages = [("embeddings", model.embedding_dropout, hf.drop)]
    stages += [(f"block {i}", ours, theirs)
               for i, (ours, theirs) in enumerate(zip(model.transformer_blocks, hf.h, strict=True))]
    stages.append(("final norm", model.final_norm, hf.ln_f))
    return stages


@torch.no_grad()
def compare_layers(model: nn.Module, hf_model: nn.Module, input_ids: torch.Tensor | list[int],
                   atol: float = 1e-5):
    """A pandas DataFrame, one row per stage (`embeddings`, `block 0`..., `final norm`,
    `logits`) with `max_abs_diff` and `matches` (max_abs_diff <= atol).

    Both models are put in eval mode (dropout off) for the comparison and restored after.
    The first row with `matches == False` is where the conversion went wrong.
    """
    import pandas as pd

    ids = torch.as_tensor(input_ids, dtype=torch.long)
    ids = ids.unsqueeze(0) if ids.dim() == 1 else ids
    ours_out: dict[str, torch.Tensor] = {}
    hf_out: dict[str, torch.Tensor] = {}
    stages = _stages(model, hf_model)
    handles = [_capture(m, name, ours_out) for name, m, _ in stages]
    handles += [_capture(m, name, hf_out) for name, _, m in stages]
    modes = model.training, hf_model.training
    model.eval()
    hf_model.eval()
    try:
        device = next(model.parameters()).device
        hf_device = next(hf_model.parameters()).device
        ours_out["logits"] = model(ids.to(device)).float().cpu()
        hf_out["logits"] = hf_model(ids.to(hf_device)).logits.float().cpu()
    finally:
        for handle in handles:
            handle.remove()
        model.train(modes[0])
        hf_model.train(modes[1])
    rows = []
    for name in [s[0] for s in stages] + ["logits"]:
        diff = (ours_out[name] - hf_out[name]).abs().max().item()
        rows.append({"stage": name, "max_abs_diff": diff, "matches": diff <= atol})
    return pd.DataFrame(rows)


def first_mismatch(report) -> str | None:
    """The first stage of a `compare_layers` report that does not match, or None."""
    bad = report[~report["matches"]]
    return None if bad.empty else str(bad.iloc[0]["stage"])
