"""Text generation: greedy, temperature, top-k and nucleus (top-p) sampling with a KV cache.

`generate_text` works with `GPTModel` (incremental decoding through its KV cache) and with any
module that maps `[1, T]` ids to `[1, T, vocab]` logits, or to an object with `.logits`
(a Hugging Face model), which it simply re-runs on the whole sequence each step.

A `torch.compile`d model (what `compile=True` training leaves in `Trainer._compiled`) is
decoded through the module it wraps: one token at a time with a growing KV cache, every
step has new shapes, which would recompile instead of run; the eager step with the cache
is what decoding a batch of one needs.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from utils.model import GPTModel


def generate_text(model: nn.Module, input_ids: Sequence[int] | torch.Tensor,
                  maximum_new_tokens: int, temperature: float = 1.0,
                  top_k_tokens: int | None = None, top_p: float | None = None,
                  eos_token_id: int | None = None, seed: int | None = None) -> list[int]:
    """Continue `input_ids` by up to `maximum_new_tokens` tokens; returns prompt + new ids.

    `temperature=0` picks the most likely token (greedy); otherwise logits are divided by
    `temperature`, cut to the `top_k_tokens` most likely, then to the smallest set whose
    probability reaches `top_p`, and sampled. `seed` draws from a private generator, so the
    result is reproducible and the global RNG is left untouched. Generation stops after
    `eos_token_id`. Past the model's context length it slides a window over the last
    `context_length` tokens (recomputed without the cache) instead of failing.
    The model runs in eval mode without gradients; its train/eval mode is restored after.
    """
    ids = _prompt_ids(input_ids)
    _check_arguments(maximum_new_tokens, temperature, top_k_tokens, top_p)
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: decode the module
    context_length = _context_length(model)
    vocab_size = _vocab_size(model)
    if vocab_size is not None and not all(0 <= i < vocab_size for i in ids):
        bad = next(i for i in ids if not 0 <= i < vocab_size)
        raise ValueError(f"prompt id {bad} is outside the model's vocabulary 0..{vocab_size - 1}; "
                         "was it encoded with a different tokenizer?")
    device = _device(model)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():  # no autograd bookkeeping at all
            _decode(model, ids, maximum_new_tokens, context_length, device,
                    lambda logits: _pick_next(logits, temperature, top_k_tokens, top_p, generator),
                    eos_token_id)
    finally:
        model.train(was_training)
    return ids


def generate_from_prompt(model: nn.Module, tokenizer: Any, prompt: str,
                         maximum_new_tokens: int = 50, stop_at_end_of_text: bool = True,
                         **sampling: Any) -> str:
    """Encode `prompt`, generate, decode: the prompt followed by its continuation.

    `sampling` takes `generate_text`'s keywords (temperature, top_k_tokens, top_p, seed).
    With `stop_at_end_of_text`, generation stops at the tokenizer's `eot_token`.
    """
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give at least one character")
    eos = getattr(tokenizer, "eot_token", None) if stop_at_end_of_text else None
    output = generate_text(model, ids, maximum_new_tokens, eos_token_id=eos, **sampling)
    return tokenizer.decode(output)


def _decode(model: nn.Module, ids: list[int], maximum_new_tokens: int,
            context_length: int | None, device: torch.device, pick, eos_token_id: int | None
            ) -> None:
    """Append up to `maximum_new_tokens` picked ids to `ids` in place."""
    fits = context_length is None or len(ids) + maximum_new_tokens <= context_length
    use_cache = isinstance(model, GPTModel)
    cache = None
    if use_cache and len(ids) < (context_length or math.inf):
        # Room for the whole run when it fits; otherwise up to the context, then slide.
        size = len(ids) + maximum_new_tokens if fits else context_length
        cache = model.new_kv_cache(batch_size=1, max_length=size)
    pending = torch.tensor([ids], dtype=torch.long, device=device)
    for _ in range(maximum_new_tokens):
        if cache is not None and cache.length + pending.shape[1] <= cache.max_length:
            logits = model(pending, kv_cache=cache, last_position_only=True)[0, -1]
        else:
            # Sliding window: positions restart at 0, so the cache cannot be reused.
            cache = None
            window = ids[-context_length:] if context_length else ids
            logits = _last_logits(model, torch.tensor([window], dtype=torch.long, device=device))
        next_id = pick(logits)
        ids.append(next_id)
        if next_id == eos_token_id:
            break
        pending = torch.tensor([[next_id]], dtype=torch.long, device=device)


def _last_logits(model: nn.Module, window: torch.Tensor) -> torch.Tensor:
    if isinstance(model, GPTModel):
        return model(window, last_position_only=True)[0, -1]
    output = model(window)
    logits = output.logits if hasattr(output, "logits") else output
    return logits[0, -1]


def _pick_next(logits: torch.Tensor, temperature: float, top_k: int | None,
               top_p: float | None, generator: torch.Generator | None) -> int:
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kept = torch.topk(logits, top_k)
        # Scatter rather than threshold, so ties at the k-th value cannot keep more than k.
        logits = torch.full_like(logits, -math.inf).scatter_(0, kept.indices, kept.values)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probabilities = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the more likely ones already reach top_p; the first always stays.
        mass_before = torch.cumsum(probabilities, dim=-1) - probabilities
        logits = logits.clone()
        logits[order[mass_before >= top_p]] = -math.inf
    probabilities = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probabilities, 1, generator=generator))


def _prompt_ids(input_ids: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 2 and input_ids.shape[0] == 1:
            input_ids = input_ids[0]
        if input_ids.dim() != 1:
            raise ValueError(f"input_ids must be 1-D or [1, T]; got shape {tuple(input_ids.shape)} "
                             "(generate one sequence at a time)")
        if input_ids.is_floating_point():
            raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
        ids = [int(i) for i in input_ids.tolist()]
    else:
        if isinstance(input_ids, str):
            raise ValueError("input_ids is a string; encode it with the tokenizer first, "
                             "or use generate_from_prompt(model, tokenizer, prompt)")
        try:
            ids = [operator.index(i) for i in input_ids]  # ints, numpy ints -> plain ints
        except TypeError:
            raise ValueError("input_ids must be a list of int token ids; encode text with the "
                             "tokenizer first, or use generate_from_prompt") from None
    if not ids:
        raise ValueError("input_ids is empty; give at least one token to start from")
    return ids


def _check_arguments(maximum_new_tokens: int, temperature: float, top_k: int | None,
                     top_p: float | None) -> None:
    if isinstance(maximum_new_tokens, bool) or not isinstance(maximum_new_tokens, int) \
            or maximum_new_tokens < 0:
        raise ValueError(f"maximum_new_tokens must be a non-negative int, got {maximum_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k_tokens must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")


def _context_length(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("context_length", "n_positions"):  # ours, Hugging Face's
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _vocab_size(model: nn.Module) -> int | None:
    value = getattr(getattr(model, "config", None), "vocab_size", None)
    return value if isinstance(value, int) else None


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
