"""llm.c's model file (`gpt2_124M.bin`), so our weights run in karpathy/llm.c's C/CUDA code.

Layout, as llm.c's `train_gpt2.py:write_model` writes it (float32, version 3):

    256 x int32 header: [0] magic 20240326, [1] version 3, [2] maxT (context length),
                        [3] V (vocab size), [4] L (layers), [5] NH (heads), [6] C (width),
                        [7] Vp (vocab padded to a multiple of 128: 50257 -> 50304), rest 0
    float32 parameters, each group stacked over the L layers, in this order:
        wte (Vp, C; rows V..Vp-1 are zero), wpe (maxT, C),
        ln1w (L, C), ln1b (L, C), qkvw (L, 3C, C), qkvb (L, 3C),
        attprojw (L, C, C), attprojb (L, C), ln2w (L, C), ln2b (L, C),
        fcw (L, 4C, C), fcb (L, 4C), fcprojw (L, C, 4C), fcprojb (L, C), lnfw (C), lnfb (C)

llm.c's weights are nn.Linear's [out, in] (like ours), so nothing is transposed; qkvw is
W_query, W_key, W_value stacked along the output dimension.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils.model import GPTModel

LLMC_MAGIC = 20240326
LLMC_VERSION_FP32 = 3
HEADER_INTS = 256
VOCAB_MULTIPLE = 128

# (llm.c name, our parameter name pattern per layer, or None for a whole-model tensor)
LLMC_TENSORS = (
    ("wte", "token_embedding.weight"), ("wpe", "position_embedding.weight"),
    ("ln1w", "transformer_blocks.{i}.norm1.scale"), ("ln1b", "transformer_blocks.{i}.norm1.shift"),
    ("qkvw", "transformer_blocks.{i}.attention.W_{{qkv}}.weight"),
    ("qkvb", "transformer_blocks.{i}.attention.W_{{qkv}}.bias"),
    ("attprojw", "transformer_blocks.{i}.attention.out_proj.weight"),
    ("attprojb", "transformer_blocks.{i}.attention.out_proj.bias"),
    ("ln2w", "transformer_blocks.{i}.norm2.scale"), ("ln2b", "transformer_blocks.{i}.norm2.shift"),
    ("fcw", "transformer_blocks.{i}.feed_forward.net.0.weight"),
    ("fcb", "transformer_blocks.{i}.feed_forward.net.0.bias"),
    ("fcprojw", "transformer_blocks.{i}.feed_forward.net.2.weight"),
    ("fcprojb", "transformer_blocks.{i}.feed_forward.net.2.bias"),
    ("lnfw", "final_norm.scale"), ("lnfb", "final_norm.shift"),
)


def padded_vocab_size(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    return (vocab_size + multiple - 1) // multiple * multiple


def _layer_tensor(state: dict[str, torch.Tensor], pattern: str, i: int) -> torch.Tensor:
    name = pattern.format(i=i)
    if "{qkv}" not in name:
        return state[name]
    parts = [state.get(name.replace("{qkv}", part)) for part in ("query", "key", "value")]
    if any(p is None for p in parts):  # a bias-free model: llm.c always has a Q/K/V bias
        weight = state[name.replace("{qkv}", "query").replace(".bias", ".weight")]
        parts = [weight.new_zeros(weight.shape[0])] * 3
    return torch.cat(parts, dim=0)


def llmc_tensors(model: GPTModel):
    """`(llm.c name, float32 array)` in file order, each group stacked over layers."""
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    config = model.config
    for name, pattern in LLMC_TENSORS:
        if "{i}" not in pattern:
            tensor = state[pattern]
            if name == "wte":
                vp = padded_vocab_size(config.vocab_size)
                tensor = torch.cat([tensor, tensor.new_zeros(vp - config.vocab_size,
                                                             tensor.shape[1])])
        else:
            tensor = torch.stack([_layer_tensor(state, pattern, i)
                                  for i in range(config.number_of_layers)])
        yield name, tensor.numpy()


def llmc_header(model: GPTModel) -> np.ndarray:
    config = model.config
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:8] = (LLMC_MAGIC, LLMC_VERSION_FP32, config.context_length, config.vocab_size,
                  config.number_of_layers, config.number_of_heads, config.embedding_dimension,
                  padded_vocab_size(config.vocab_size))
    return header


def export_llmc(model: GPTModel, path: str | Path) -> Path:
    """Write llm.c's float32 model file (e.g. `gpt2_124M.bin`) atomically."""
    from utils.fileio import write_atomically

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(handle) -> None:
        handle.write(llmc_header(model).tobytes())
        for _, array in llmc_tensors(model):
            handle.write(np.ascontiguousarray(array, dtype="<f4").tobytes())

    write_atomically(path, write)
    return path


def read_llmc_header(path: str | Path) -> dict[str, int]:
    """The header fields of an llm.c model file, checked for magic and version."""
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header.size != HEADER_INTS or header[0] != LLMC_MAGIC:
        raise ValueError(f"{path} is not an llm.c model file (magic {LLMC_MAGIC} not found)")
    if header[1] != LLMC_VERSION_FP32:
        raise ValueError(f"{path} has llm.c version {header[1]}; only float32 version 3 is read")
    keys = ("magic", "version", "max_seq_len", "vocab_size", "num_layers", "num_heads",
            "channels", "padded_vocab_size")
    return {key: int(value) for key, value in zip(keys, header[:8], strict=True)}
