"""Check a converted model against Hugging Face's GPT-2: same text in, same logits out."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from utils.config import ModelConfig

DEFAULT_ATOL = 1e-5  # float32 GPT-2 small agrees with HF to ~1e-6; a wrong transpose is off by ~1


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Ids from a tiktoken `Encoding`, our byte tokenizer or a HF tokenizer (all have `encode`)."""
    if not hasattr(tokenizer, "encode"):
        raise TypeError(f"tokenizer {type(tokenizer).__name__} has no encode(text) method; "
                        "pass utils.tokenizer.get_tokenizer(...) or a tiktoken Encoding")
    ids = list(tokenizer.encode(text))
    if not ids:
        raise ValueError("text encodes to no tokens; compare on a non-empty text")
    return ids


def _logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    output = model(input_ids)
    # HF models return a ModelOutput with `.logits`; ours return the tensor itself.
    logits = output.logits if hasattr(output, "logits") else output
    return logits.float()


@torch.no_grad()
def compare_outputs(model: nn.Module, hf_model: nn.Module, tokenizer: Any, text: str,
                    atol: float = DEFAULT_ATOL) -> tuple[bool, float]:
    """`(match, max_diff)`: the largest absolute logit difference on `text`, and whether it is <= atol.

    Both models run in eval mode (no dropout) and without gradients; their train/eval modes
    are restored afterwards. Each runs on its own device; the logits are compared on the CPU.
    """
    ids = _encode(tokenizer, text)
    context = getattr(getattr(model, "config", None), "context_length", None)
    if context is not None and len(ids) > context:
        raise ValueError(f"text is {len(ids)} tokens but the model's context_length is {context}; "
                         "compare on a shorter text")
    modes = [(m, m.training) for m in (model, hf_model)]
    try:
        model.eval()
        hf_model.eval()
        results = []
        for m in (model, hf_model):
            device = next(m.parameters()).device
            batch = torch.tensor([ids], dtype=torch.long, device=device)
            results.append(_logits(m, batch).cpu())
    finally:
        for m, was_training in modes:
            m.train(was_training)
    ours, theirs = results
    if ours.shape != theirs.shape:
        raise ValueError(f"logit shapes differ: ours {tuple(ours.shape)}, Hugging Face's "
                         f"{tuple(theirs.shape)}; do the vocabularies match?")
    max_diff = (ours - theirs).abs().max().item()
    return max_diff <= atol, max_diff


def random_hf_gpt2(config: ModelConfig, seed: int = 0, bias_std: float = 0.1,
                   weight_scale: float = 1.0):
    """A randomly initialised `transformers.GPT2LMHeadModel` shaped like `config`, in eval mode.

    For offline checks (nothing downloads). HF initialises biases to zero and LayerNorms to
    (1, 0), which would hide a dropped bias or a swapped scale/shift; so every bias and
    LayerNorm parameter gets noise of `bias_std` here. `weight_scale` multiplies the
    matrices: 10x GPT-2's init scale gives confident, varied predictions, so one wrong
    matrix moves the logits a lot and float rounding cannot flip an argmax. The global RNG
    is left as it was.
    """
    from transformers import GPT2LMHeadModel  # heavy import, only where used

    from utils.pretrained.mapping import to_hf_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # HF initialises from the global generator
        model = GPT2LMHeadModel(to_hf_config(config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:  # biases and LayerNorm weights
                noise = torch.randn(parameter.shape, generator=generator) * bias_std
                parameter.add_(noise)
            else:
                parameter.mul_(weight_scale)
    return model.eval()
