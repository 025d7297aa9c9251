"""Hugging Face GPT-2 <-> GPTModel weight names and the transforms between them.

HF's GPT-2 uses `Conv1D`, which stores weights as [in, out]; torch's `nn.Linear` (ours)
stores [out, in]. So every Conv1D weight is transposed, and `c_attn` ([d, 3d]) is split
along its output dimension into W_query, W_key and W_value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import torch

from utils.config import ModelConfig

Transform = Callable[[torch.Tensor], "torch.Tensor | tuple[torch.Tensor, ...]"]

# HF buffers that are not weights: transformers 4.x has them, 5.x does not.
IGNORED_HF_SUFFIXES = (".attn.bias", ".attn.masked_bias")


class WeightMappingError(ValueError, KeyError):
    """A state dict whose keys do not fit a GPT-2 of the given depth.

    A ValueError (bad input, reported as one line by the CLI) that is still a KeyError for
    callers that catch the missing-key case.
    """

    __str__ = ValueError.__str__  # KeyError's would wrap the message in quotes

HF_PREFIX = "transformer."


def identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def transpose(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.t()


def split_qkv_weight(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """[d, 3d] Conv1D weight -> three [d, d] Linear weights (each transposed)."""
    return tuple(part.t() for part in tensor.chunk(3, dim=1))


def split_qkv_bias(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(tensor.chunk(3, dim=0))


def _block_mapping(i: int) -> dict[str, tuple[str | tuple[str, ...], Transform]]:
    hf, ours = f"{HF_PREFIX}h.{i}.", f"transformer_blocks.{i}."
    qkv = tuple(f"{ours}attention.{name}" for name in ("W_query", "W_key", "W_value"))
    return {
        f"{hf}ln_1.weight": (f"{ours}norm1.scale", identity),
        f"{hf}ln_1.bias": (f"{ours}norm1.shift", identity),
        f"{hf}attn.c_attn.weight": (tuple(f"{k}.weight" for k in qkv), split_qkv_weight),
        f"{hf}attn.c_attn.bias": (tuple(f"{k}.bias" for k in qkv), split_qkv_bias),
        f"{hf}attn.c_proj.weight": (f"{ours}attention.out_proj.weight", transpose),
        f"{hf}attn.c_proj.bias": (f"{ours}attention.out_proj.bias", identity),
        f"{hf}ln_2.weight": (f"{ours}norm2.scale", identity),
        f"{hf}ln_2.bias": (f"{ours}norm2.shift", identity),
        f"{hf}mlp.c_fc.weight": (f"{ours}feed_forward.net.0.weight", transpose),
        f"{hf}mlp.c_fc.bias": (f"{ours}feed_forward.net.0.bias", identity),
        f"{hf}mlp.c_proj.weight": (f"{ours}feed_forward.net.2.weight", transpose),
        f"{hf}mlp.c_proj.bias": (f"{ours}feed_forward.net.2.bias", identity),
    }


def get_weight_mapping(num_layers: int) -> dict[str, tuple[str | tuple[str, ...], Transform]]:
    """`{hf_key: (our_key_or_keys, transform)}` for a GPT-2 with `num_layers` blocks.

    `lm_head.weight` is absent on purpose: it is tied to `transformer.wte.weight`.
    """
    mapping: dict[str, tuple[str | tuple[str, ...], Transform]] = {
        f"{HF_PREFIX}wte.weight": ("token_embedding.weight", identity),
        f"{HF_PREFIX}wpe.weight": ("position_embedding.weight", identity),
    }
    for i in range(num_layers):
        mapping.update(_block_mapping(i))
    mapping[f"{HF_PREFIX}ln_f.weight"] = ("final_norm.scale", identity)
    mapping[f"{HF_PREFIX}ln_f.bias"] = ("final_norm.shift", identity)
    return mapping


def normalize_hf_key(key: str) -> str:
    """`wte.weight` (a bare GPT2Model) -> `transformer.wte.weight` (GPT2LMHeadModel)."""
    return key if key.startswith(HF_PREFIX) or key == "lm_head.weight" else HF_PREFIX + key


def is_ignored_hf_key(key: str) -> bool:
    return key == "lm_head.weight" or key.endswith(IGNORED_HF_SUFFIXES)


def iter_converted(hf_state_dict: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
                   num_layers: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(our_key, tensor)` one HF tensor at a time (streaming, for low memory).

    `hf_state_dict` is a state dict or a read-once iterable of `(hf_key, tensor)` pairs."""
    mapping = get_weight_mapping(num_layers)
    seen = set()
    pairs = hf_state_dict.items() if isinstance(hf_state_dict, Mapping) else hf_state_dict
    for raw_key, tensor in pairs:
        key = normalize_hf_key(raw_key)
        if is_ignored_hf_key(key):
            continue
        if key not in mapping:
            raise WeightMappingError(f"unexpected Hugging Face key {raw_key!r} for a {num_layers}-layer GPT-2")
        targets, transform = mapping[key]
        outputs = transform(tensor)
        if isinstance(targets, str):
            targets, outputs = (targets,), (outputs,)
        for target, output in zip(targets, outputs, strict=True):
            yield target, output.contiguous()
        seen.add(key)
    missing = sorted(set(mapping) - seen)
    if missing:
        raise WeightMappingError(f"Hugging Face state dict lacks {len(missing)} key(s), e.g. {missing[:3]}")


def convert_hf_to_custom(hf_state_dict: dict[str, torch.Tensor], config: ModelConfig
                         ) -> dict[str, torch.Tensor]:
    """A full GPTModel state dict (head tied) from a HF GPT-2 state dict."""
    converted = dict(iter_converted(hf_state_dict, config.number_of_layers))
    converted["lm_head.weight"] = converted["token_embedding.weight"]
    return converted


def iter_custom_to_hf(state_dict: dict[str, torch.Tensor], num_layers: int
                      ) -> Iterator[tuple[str, torch.Tensor]]:
    """The inverse of `iter_converted`: `(hf_key, tensor)` one at a time in HF's order
    (Conv1D layout, fused c_attn), without the tied `lm_head.weight`; zeros for Q/K/V
    biases the state dict does not have (HF's GPT-2 always has them)."""
    for hf_key, (ours, transform) in get_weight_mapping(num_layers).items():
        if isinstance(ours, tuple):
            parts = [state_dict[k] if k in state_dict else _zero_bias(state_dict, k) for k in ours]
            yield hf_key, (torch.cat([p.t() for p in parts], dim=1)
                           if transform is split_qkv_weight else torch.cat(parts))
        else:
            tensor = state_dict[ours]
            yield hf_key, (tensor.t() if transform is transpose else tensor).contiguous()


def _zero_bias(state_dict: dict[str, torch.Tensor], bias_key: str) -> torch.Tensor:
    weight = state_dict[bias_key.removesuffix(".bias") + ".weight"]
    return weight.new_zeros(weight.shape[0])


def convert_custom_to_hf(state_dict: dict[str, torch.Tensor], num_layers: int
                         ) -> dict[str, torch.Tensor]:
    """A full GPT2LMHeadModel state dict (Conv1D layout, fused c_attn, tied head)."""
    hf = dict(iter_custom_to_hf(state_dict, num_layers))
    hf["lm_head.weight"] = hf[f"{HF_PREFIX}wte.weight"]
    return hf


def to_hf_config(config: ModelConfig, **overrides):
    """The `transformers.GPT2Config` with the same shapes as `config` (for building HF models).

    GPT-2's `c_attn` always has a bias, so a config without attention bias has no HF twin.
    End-of-text is the last id, as in GPT-2 (50256) and the byte tokenizer (256).
    """
    from transformers import GPT2Config  # heavy import, only where used

    if not config.use_attention_bias:
        raise ValueError("Hugging Face GPT-2 always has Q/K/V biases; "
                         "use a config with use_attention_bias=True")
    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.context_length,
        n_embd=config.embedding_dimension, n_head=config.number_of_heads,
        n_layer=config.number_of_layers, layer_norm_epsilon=1e-5, activation_function="gelu_new",
        resid_pdrop=config.dropout_rate, embd_pdrop=config.dropout_rate,
        attn_pdrop=config.dropout_rate,
        **{"bos_token_id": config.vocab_size - 1, "eos_token_id": config.vocab_size - 1, **overrides},
    )
