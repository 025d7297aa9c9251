"""OpenAI GPT-2 weights in and out: Hugging Face, OpenAI's TensorFlow release, C/C++ and llm.c.

Names are resolved lazily (PEP 562), so `import utils.pretrained` stays cheap and pulls in
torch, safetensors or transformers only when a function that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "mapping": ("get_weight_mapping", "convert_hf_to_custom", "convert_custom_to_hf",
                "iter_converted", "to_hf_config"),
    "huggingface": ("load_gpt2_weights", "load_openai_gpt2", "export_to_hf",
                    "model_from_hf_tensors"),
    "verify": ("compare_outputs",),
    "layers_diff": ("compare_layers", "first_mismatch"),
    "openai_tf": ("load_tf_checkpoint", "load_tf_gpt2", "tokenizer_from_encoder",
                  "download_openai_checkpoint"),
    "binary": ("export_binary", "read_binary", "load_binary_model", "BinaryFormatError"),
    "llmc": ("export_llmc", "read_llmc_header"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'utils.pretrained' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"utils.pretrained.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
