"""Foreign checkpoints in our terms: turn whatever a file held into GPTModel's state dict.

`recognize(payload)` takes the object `reading.read_checkpoint` returned and says what it
is: our training checkpoint (`model_state_dict` + `config`), a bare state dict (ours,
Hugging Face GPT-2 or nanoGPT names, with `_orig_mod.` / `module.` prefixes stripped), or
nanoGPT's `ckpt.pt`. The answer is a `RecognizedCheckpoint` whose state dict uses our names.
It lives beside the other converters (`mapping.py` for Hugging Face <-> ours).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from utils.checkpoint_errors import CheckpointConfigError, UnrecognizedCheckpointError
from utils.config import GPT2_CONFIGS
from utils.pretrained.mapping import get_weight_mapping, is_ignored_hf_key, normalize_hf_key

# Wrappers that add a prefix to every key: torch.compile (`_orig_mod.`) and
# DistributedDataParallel / DataParallel (`module.`); they can nest in either order.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


@dataclass
class RecognizedCheckpoint:
    """A checkpoint's contents in our terms.

    `state_dict` uses GPTModel's names; `config` is a ModelConfig dict or None (a bare state
    dict whose shapes match no preset); `metadata` is everything else the file held
    (epoch, losses, optimizer state, ...); `notes` says what was converted, for the report.
    """

    format: str
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] | None
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)



def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Remove `_orig_mod.` / `module.` from every key (nested in any order); name what went."""
    stripped: dict[str, Any] = {}
    removed: set[str] = set()
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
                    removed.add(prefix)
        stripped[key] = value
    notes = [f"removed the {prefix!r} prefix ({'torch.compile' if prefix == '_orig_mod.' else 'DDP/DataParallel'}) from the keys"
             for prefix in WRAPPER_PREFIXES if prefix in removed]
    return stripped, notes


def _require_tensor_dict(state_dict: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(state_dict, Mapping):
        raise UnrecognizedCheckpointError(
            f"the checkpoint's {where} is a {type(state_dict).__name__}, not a dict of "
            "tensors. Fix: save model.state_dict() there.")
    if not state_dict:
        raise UnrecognizedCheckpointError(
            f"the checkpoint's {where} is empty: it holds no weights. Fix: save "
            "model.state_dict() there, and use another checkpoint meanwhile.")
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise UnrecognizedCheckpointError(
                f"the checkpoint's {where} maps {key!r} to a {type(value).__name__}, not a "
                "tensor. Fix: save model.state_dict() (name -> tensor) there.")
    return dict(state_dict)


def _looks_like_state_dict(payload: Mapping) -> bool:
    return bool(payload) and all(isinstance(v, torch.Tensor) for v in payload.values())


def recognize(payload: Any, hf_config: dict | None = None,
              fallback_config: Any = None) -> RecognizedCheckpoint:
    """Our state dict, config and metadata from whatever `torch.load` returned.

    `hf_config` is a Hugging Face `config.json` found next to the file (it names the head
    count, which weight shapes cannot tell); `fallback_config` is the caller's config, used
    when the file carries none (a bare state dict).
    """
    if isinstance(payload, torch.Tensor):
        raise UnrecognizedCheckpointError(
            f"the file holds a single tensor of shape {list(payload.shape)}, not a checkpoint "
            "dict. Fix: save {'model_state_dict': model.state_dict(), 'config': "
            "config.to_dict()} (utils.training.engine.checkpoint does this for you).")
    if not isinstance(payload, Mapping):
        raise UnrecognizedCheckpointError(
            f"the file holds a {type(payload).__name__}, not a checkpoint dict. Fix: save a "
            "dict with 'model_state_dict' and 'config'.")
    if "model_state_dict" in payload:
        metadata = {k: v for k, v in payload.items() if k != "model_state_dict"}
        return _from_state_dict(payload["model_state_dict"],
                                payload.get("config") or fallback_config, metadata,
                                "model_state_dict", None, format_name="training checkpoint")
    if "model" in payload and "model_args" in payload:
        return _from_nanogpt_checkpoint(payload)
    for key in ("state_dict", "model"):  # PyTorch Lightning, many training scripts
        if isinstance(payload.get(key), Mapping) and _looks_like_state_dict(payload[key]):
            metadata = {k: v for k, v in payload.items() if k != key}
            return _from_state_dict(payload[key], payload.get("config") or fallback_config,
                                    metadata, f"state dict in {key!r}", hf_config)
    if _looks_like_state_dict(payload):
        return _from_state_dict(payload, fallback_config, {}, "bare state dict", hf_config)
    keys = sorted(map(str, payload))
    if {"state", "param_groups"} <= set(payload):
        what = "an optimizer state dict (no model weights)"
    else:
        what = f"a dict without model weights (keys: {keys[:8]}{'...' if len(keys) > 8 else ''})"
    raise UnrecognizedCheckpointError(
        f"the file holds {what}; expected a 'model_state_dict' entry, a bare state dict, "
        "a Hugging Face GPT-2 state dict or nanoGPT's ckpt.pt. Fix: pass a checkpoint "
        "written by training (Trainer or python -m utils train), which stores "
        "model_state_dict and config.")


def _from_nanogpt_checkpoint(payload: Mapping) -> RecognizedCheckpoint:
    args = payload["model_args"]
    if not isinstance(args, Mapping) or not {"n_layer", "n_head", "n_embd"} <= set(args):
        raise UnrecognizedCheckpointError(
            "the file looks like nanoGPT's ckpt.pt but its model_args lack n_layer/n_head/"
            f"n_embd (got {args!r}). Fix: use a ckpt.pt written by nanoGPT's train.py.")
    config = {
        "vocab_size": int(args.get("vocab_size", 50304)),
        "context_length": int(args.get("block_size", 1024)),
        "embedding_dimension": int(args["n_embd"]),
        "number_of_heads": int(args["n_head"]),
        "number_of_layers": int(args["n_layer"]),
        "dropout_rate": float(args.get("dropout", 0.0)),
        "use_attention_bias": bool(args.get("bias", True)),
    }
    train_config = payload.get("config") if isinstance(payload.get("config"), Mapping) else {}
    metadata = {k: v for k, v in payload.items() if k not in ("model", "config")}
    metadata.update(training_config=dict(train_config), global_step=payload.get("iter_num"),
                    val_loss=payload.get("best_val_loss"),
                    learning_rate=train_config.get("learning_rate"))
    state_dict, notes = strip_wrapper_prefixes(_require_tensor_dict(payload["model"], "model"))
    state_dict, more = convert_nanogpt_to_custom(state_dict, config)
    metadata["gelu_approximate"] = "none"
    return RecognizedCheckpoint("nanoGPT ckpt.pt", state_dict, config, metadata, notes + more)


def _from_state_dict(raw: Any, config: Any, metadata: dict, where: str, hf_config: dict | None,
                     format_name: str | None = None) -> RecognizedCheckpoint:
    state_dict, notes = strip_wrapper_prefixes(_require_tensor_dict(raw, where))
    naming = detect_naming(state_dict)
    if naming == "ours":
        name = format_name or where
    elif naming == "huggingface":
        name = "Hugging Face GPT-2 state dict"
        state_dict, more = convert_hf_tolerant(state_dict)
        notes += more
        config = config or (hf_config_to_model_config(hf_config) if hf_config else None)
    else:
        name = "nanoGPT state dict"
        if config is None:
            config, note = infer_config(state_dict, naming="nanogpt")
            notes += [note] if note else []
        if config is not None:
            config = _config_dict(config)
            state_dict, more = convert_nanogpt_to_custom(state_dict, config)
            notes += more
            metadata = {**metadata, "gelu_approximate": "none"}
    if config is None:
        config, note = infer_config(state_dict)
        if note:
            notes.append(note)
    return RecognizedCheckpoint(name, state_dict, config, metadata, notes)


def _config_dict(config: Any) -> dict[str, Any]:
    """A ModelConfig (trusted pickles hold one) or a dict, as a dict."""
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def detect_naming(state_dict: Mapping[str, torch.Tensor]) -> str:
    """'ours', 'huggingface' (Conv1D [in, out] weights) or 'nanogpt' (Linear [out, in])."""
    if "token_embedding.weight" in state_dict:
        return "ours"
    keys = [normalize_hf_key(k) for k in state_dict]
    if "transformer.wte.weight" not in keys:
        sample = sorted(state_dict)[:5]
        raise UnrecognizedCheckpointError(
            f"the state dict's names ({sample}...) are neither GPTModel's "
            "(token_embedding.weight, transformer_blocks.N...), Hugging Face GPT-2's nor "
            "nanoGPT's (transformer.wte.weight, transformer.h.N...). Fix: pass a checkpoint "
            "of a GPT-2 style model, or convert its names to GPTModel's first.")
    normalized = {normalize_hf_key(k): v for k, v in state_dict.items()}
    c_attn = normalized.get("transformer.h.0.attn.c_attn.weight")
    if c_attn is not None and c_attn.dim() == 2 and c_attn.shape[0] == 3 * c_attn.shape[1]:
        return "nanogpt"
    return "huggingface"


def convert_hf_tolerant(hf_state_dict: Mapping[str, torch.Tensor]
                        ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """HF GPT-2 names -> ours, keeping unknown keys as they are (validation names them).

    Unlike `convert_hf_to_custom` this never raises on a missing or extra key: the loader
    compares the result with the model and reports every difference in one error.
    """
    normalized = {normalize_hf_key(k): v for k, v in hf_state_dict.items()}
    layers = 1 + max((int(m.group(1)) for k in normalized
                      if (m := re.match(r"transformer\.h\.(\d+)\.", k))), default=-1)
    mapping = get_weight_mapping(layers)
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in normalized.items():
        if key in mapping:
            targets, transform = mapping[key]
            outputs = transform(tensor)
            if isinstance(targets, str):
                targets, outputs = (targets,), (outputs,)
            for target, output in zip(targets, outputs, strict=True):
                converted[target] = output.contiguous()
        elif not is_ignored_hf_key(key):
            converted[key] = tensor
    if "token_embedding.weight" in converted:
        converted["lm_head.weight"] = converted["token_embedding.weight"]
    return converted, ["converted Hugging Face GPT-2 names and Conv1D [in, out] layout "
                       "to GPTModel's (c_attn split into W_query/W_key/W_value)"]


def convert_nanogpt_to_custom(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]
                              ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """nanoGPT's names (torch Linear layout, fused c_attn) -> ours.

    nanoGPT with `bias=False` has no LayerNorm or Linear biases; GPTModel always has the
    LayerNorm shift and the out_proj/feed-forward biases, so those become zeros (the same
    maths). Unknown keys pass through unchanged so validation can report them.
    """
    d = int(config["embedding_dimension"])
    sd = dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    filled: list[str] = []

    def take(src: str, dst: str, zeros: int | None = None) -> None:
        if src in sd:
            out[dst] = sd.pop(src)
        elif zeros is not None:
            like = sd.get("transformer.wte.weight")
            out[dst] = torch.zeros(zeros, dtype=like.dtype if like is not None else None)
            filled.append(dst)

    take("transformer.wte.weight", "token_embedding.weight")
    take("transformer.wpe.weight", "position_embedding.weight")
    for i in range(int(config["number_of_layers"])):
        src, dst = f"transformer.h.{i}.", f"transformer_blocks.{i}."
        take(src + "ln_1.weight", dst + "norm1.scale")
        take(src + "ln_1.bias", dst + "norm1.shift", zeros=d)
        qkv = [dst + f"attention.{n}" for n in ("W_query", "W_key", "W_value")]
        for kind in ("weight", "bias"):
            fused = sd.pop(f"{src}attn.c_attn.{kind}", None)
            if fused is not None:
                for name, part in zip(qkv, fused.chunk(3, dim=0), strict=True):
                    out[f"{name}.{kind}"] = part.contiguous()
        sd.pop(src + "attn.bias", None)  # nanoGPT's causal-mask buffer, not a weight
        take(src + "attn.c_proj.weight", dst + "attention.out_proj.weight")
        take(src + "attn.c_proj.bias", dst + "attention.out_proj.bias", zeros=d)
        take(src + "ln_2.weight", dst + "norm2.scale")
        take(src + "ln_2.bias", dst + "norm2.shift", zeros=d)
        take(src + "mlp.c_fc.weight", dst + "feed_forward.net.0.weight")
        take(src + "mlp.c_fc.bias", dst + "feed_forward.net.0.bias", zeros=4 * d)
        take(src + "mlp.c_proj.weight", dst + "feed_forward.net.2.weight")
        take(src + "mlp.c_proj.bias", dst + "feed_forward.net.2.bias", zeros=d)
    take("transformer.ln_f.weight", "final_norm.scale")
    take("transformer.ln_f.bias", "final_norm.shift", zeros=d)
    take("lm_head.weight", "lm_head.weight")
    out.update(sd)  # whatever is left is unexpected; validation names it
    notes = ["converted nanoGPT names (fused c_attn split into W_query/W_key/W_value); "
             "GELU set to nanoGPT's exact (erf) form"]
    if filled:
        notes.append(f"filled {len(filled)} bias/shift tensors with zeros (nanoGPT bias=False)")
    return out, notes


def hf_config_to_model_config(hf_config: Mapping[str, Any]) -> dict[str, Any]:
    """A Hugging Face GPT-2 `config.json` as a ModelConfig dict (each value checked for its
    type here; ModelConfig checks the ranges)."""
    def value(key: str, default: Any, kind: type) -> Any:
        found = hf_config.get(key, default)
        allowed, wanted = ((int, float), "a number") if kind is float else (int, "a whole number")
        if isinstance(found, bool) or not isinstance(found, allowed):
            raise CheckpointConfigError(
                f"config.json: {key} is {str(found)[:40]!r}, not {wanted}. Fix: the "
                "config.json beside the weights is damaged; save or download it again.")
        return kind(found)

    return {
        "vocab_size": value("vocab_size", 50257, int),
        "context_length": value("n_positions", hf_config.get("n_ctx", 1024), int),
        "embedding_dimension": value("n_embd", 768, int),
        "number_of_heads": value("n_head", 12, int),
        "number_of_layers": value("n_layer", 12, int),
        "dropout_rate": value("resid_pdrop", 0.1, float),
        "use_attention_bias": True,
    }


def infer_config(shapes: Mapping[str, Any], naming: str = "ours"
                 ) -> tuple[dict[str, Any] | None, str | None]:
    """A config from weight shapes alone (tensors or shape tuples), and a note saying so.

    Shapes give vocabulary, context, width and depth, but not the number of heads, so a
    preset's head count is trusted only when width and depth are that preset's. `naming`:
    "ours", or "huggingface" / "nanogpt" (GPT-2's `transformer.h.N.` names). Returns
    `(None, None)` when the shapes match no preset.
    """
    shapes = {key: tuple(getattr(value, "shape", value)) for key, value in shapes.items()}
    if naming == "ours":
        wte, wpe = "token_embedding.weight", "position_embedding.weight"
        block = re.compile(r"transformer_blocks\.(\d+)\.")
        bias_key = "transformer_blocks.0.attention.W_query.bias"
    else:
        shapes = {normalize_hf_key(key): value for key, value in shapes.items()}
        wte, wpe = "transformer.wte.weight", "transformer.wpe.weight"
        block = re.compile(r"transformer\.h\.(\d+)\.")
        bias_key = "transformer.h.0.attn.c_attn.bias"
    if wte not in shapes or wpe not in shapes:
        return None, None
    vocab, dim = shapes[wte]
    context = shapes[wpe][0]
    layers = 1 + max((int(m.group(1)) for k in shapes if (m := block.match(k))), default=-1)
    for name, preset in GPT2_CONFIGS.items():
        if (preset.embedding_dimension, preset.number_of_layers) == (dim, layers):
            config = dict(preset.to_dict(), vocab_size=vocab, context_length=context,
                          use_attention_bias=bias_key in shapes)
            return config, (f"no config in the file: width {dim} and {layers} layers are GPT-2 "
                            f"preset {name!r}'s, so number_of_heads={preset.number_of_heads} "
                            "was assumed")
    return None, None
