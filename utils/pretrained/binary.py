"""Seed 002's binary weight format, for C/C++ programs (specified in docs/binary-weight-format.md).

`gpt2_weights.bin`, all little-endian:

    uint32 count
    count times:  uint32 name_length, name bytes (UTF-8, no terminator),
                  uint32 ndim, ndim x uint32 dims, prod(dims) x float32 data (row-major)

Tensors carry Hugging Face's GPT-2 names and layout (Conv1D weights are [in, out], c_attn
is Q|K|V fused along its output dimension), exactly as `GPT2LMHeadModel.state_dict()` has
them, minus `lm_head.weight` (tied to `transformer.wte.weight`). Next to it,
`gpt2_config.txt` (key=value) and `gpt2_weight_mapping.txt` (name, shape, layout notes).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.config import ModelConfig
from utils.model import GPTModel

WEIGHTS_FILE = "gpt2_weights.bin"
CONFIG_FILE = "gpt2_config.txt"
MAPPING_FILE = "gpt2_weight_mapping.txt"
MAX_NAME_LENGTH = 1024
MAX_NDIM = 8


class BinaryFormatError(ValueError):
    """The file does not follow the binary weight format; the message says where."""


# ------------------------------------------------------------------------- writing


def _write_tensor(handle, name: str, array: np.ndarray) -> None:
    encoded = name.encode("utf-8")
    handle.write(struct.pack("<I", len(encoded)))
    handle.write(encoded)
    handle.write(struct.pack(f"<I{array.ndim}I", array.ndim, *array.shape))
    handle.write(np.ascontiguousarray(array, dtype="<f4").tobytes())


def write_binary(tensors: dict[str, torch.Tensor | np.ndarray] | Iterable[tuple[str, Any]],
                 path: str | Path, count: int | None = None) -> Path:
    """Write `{name: tensor}` (or `count` `(name, tensor)` pairs, streamed one at a time) in
    the binary format, atomically (temp file + rename)."""
    from utils.fileio import write_atomically

    path = Path(path)
    if isinstance(tensors, dict):
        count, tensors = len(tensors), tensors.items()

    def write(handle) -> None:
        handle.write(struct.pack("<I", count))
        written = 0
        for name, tensor in tensors:
            written += 1
            if isinstance(tensor, torch.Tensor):
                tensor = tensor.detach().to("cpu", torch.float32).numpy()
            _write_tensor(handle, name, tensor)
        if written != count:  # the temporary file is removed, nothing is published
            raise ValueError(f"announced {count} tensors but got {written}; nothing was "
                             "written")

    write_atomically(path, write)
    return path


def _layout_note(name: str) -> str:
    if name.endswith("c_attn.weight"):
        return "[in, out] Conv1D; out = Q | K | V (split columns in 3); y = x @ W + b"
    if name.endswith("c_attn.bias"):
        return "Q | K | V biases, each [C]"
    if name.endswith(("c_proj.weight", "c_fc.weight")):
        return "[in, out] Conv1D; y = x @ W + b (transpose for an [out, in] Linear)"
    if "ln_" in name:
        return "LayerNorm scale (weight) or shift (bias), eps 1e-5"
    if name.endswith("wte.weight"):
        return "token embedding [vocab, C]; also the output head (tied: logits = h @ wte^T)"
    if name.endswith("wpe.weight"):
        return "position embedding [context, C]"
    return "bias"


def config_text(config: ModelConfig) -> str:
    lines = [f"{key}={int(value) if isinstance(value, bool) else value}"
             for key, value in config.to_dict().items()]
    lines += ["layer_norm_epsilon=1e-05", "activation=gelu_tanh", "tied_embeddings=1",
              "weight_layout=conv1d_in_out", "dtype=float32"]
    return "\n".join(lines) + "\n"


def export_binary(model: GPTModel, out_dir: str | Path) -> Path:
    """Write `gpt2_weights.bin`, `gpt2_config.txt` and `gpt2_weight_mapping.txt` to `out_dir`."""
    from dataclasses import replace

    from utils.fileio import write_bytes_atomically
    from utils.pretrained.huggingface import expected_hf_shapes, iter_hf_state
    from utils.pretrained.mapping import get_weight_mapping

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Streamed: one converted tensor at a time, so gpt2-xl needs no second 6 GB copy.
    shapes = expected_hf_shapes(replace(model.config, use_attention_bias=True))
    write_binary(iter_hf_state(model), out_dir / WEIGHTS_FILE, count=len(shapes))
    write_bytes_atomically(out_dir / CONFIG_FILE, config_text(model.config).encode())
    ours = get_weight_mapping(model.config.number_of_layers)
    rows = ["# file name (Hugging Face)\tshape\tGPTModel parameter(s)\tlayout"]
    for name, shape in shapes.items():
        targets = ours[name][0]
        targets = ",".join(targets) if isinstance(targets, tuple) else targets
        rows.append(f"{name}\t{list(shape)}\t{targets}\t{_layout_note(name)}")
    write_bytes_atomically(out_dir / MAPPING_FILE, ("\n".join(rows) + "\n").encode())
    return out_dir


# ------------------------------------------------------------------------- reading


def iter_binary(path: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """`(name, float32 array)` for each tensor, validating every length against the file."""
    path = Path(path)
    data = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else b""
    size = len(data)
    pos = 0

    def take(count: int, what: str) -> memoryview:
        nonlocal pos
        if pos + count > size:
            raise BinaryFormatError(
                f"{path} is truncated: {what} needs bytes {pos}..{pos + count} but the file "
                f"has {size}; export it again")
        chunk = memoryview(data[pos:pos + count])
        pos += count
        return chunk

    (count,) = struct.unpack("<I", take(4, "the tensor count"))
    if count * 12 > size:  # each tensor needs at least 12 bytes of header
        raise BinaryFormatError(f"{path} claims {count} tensors, impossible in {size} bytes")
    for index in range(count):
        (name_length,) = struct.unpack("<I", take(4, f"tensor {index}'s name length"))
        if name_length > MAX_NAME_LENGTH:
            raise BinaryFormatError(
                f"{path}: tensor {index} claims a {name_length}-byte name at byte {pos - 4}; "
                "the header is corrupt")
        try:
            name = bytes(take(name_length, f"tensor {index}'s name")).decode("utf-8")
        except UnicodeDecodeError as error:
            raise BinaryFormatError(f"{path}: tensor {index}'s name is not UTF-8") from error
        (ndim,) = struct.unpack("<I", take(4, f"{name}'s ndim"))
        if ndim > MAX_NDIM:
            raise BinaryFormatError(f"{path}: {name} claims {ndim} dimensions; header corrupt")
        dims = struct.unpack(f"<{ndim}I", take(4 * ndim, f"{name}'s dims"))
        elements = int(np.prod(dims, dtype=np.int64))
        raw = take(4 * elements, f"{name}'s {elements} float32 values (dims {list(dims)})")
        yield name, np.frombuffer(raw, dtype="<f4").reshape(dims).astype(np.float32)
    if pos != size:
        raise BinaryFormatError(
            f"{path} has {size - pos} bytes after its {count} tensors; the count is wrong")


def read_binary(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a `gpt2_weights.bin` file, by name, exactly as written."""
    return {name: torch.from_numpy(array) for name, array in iter_binary(path)}


def read_config_text(path: str | Path) -> ModelConfig:
    """The ModelConfig stored in a `gpt2_config.txt`."""
    values = dict(line.split("=", 1) for line in Path(path).read_text().splitlines() if "=" in line)
    fields = ModelConfig().to_dict()
    parsed = {}
    for key, default in fields.items():
        if key in values:
            raw = values[key]
            parsed[key] = bool(int(raw)) if isinstance(default, bool) else type(default)(raw)
    return ModelConfig.from_dict(parsed)


def load_binary_model(out_dir: str | Path) -> GPTModel:
    """A GPTModel from a folder written by `export_binary` (config + weights)."""
    from utils.pretrained.huggingface import model_from_hf_tensors

    out_dir = Path(out_dir)
    config = read_config_text(out_dir / CONFIG_FILE)
    tensors = ((name, torch.from_numpy(array)) for name, array in iter_binary(out_dir / WEIGHTS_FILE))
    return model_from_hf_tensors(tensors, config)


def checksum(path: str | Path) -> tuple[int, int, int]:
    """`(tensors, elements, sum)`: the same numbers `tests/c/read_weights.c` prints.

    The sum is over every float32's bit pattern times its 1-based position in the file's
    data, modulo 2**64: exact (no float rounding) and sensitive to order and layout.
    """
    tensors = elements = total = 0
    for _, array in iter_binary(path):
        bits = array.reshape(-1).view(np.uint32).astype(np.uint64)
        positions = np.arange(elements + 1, elements + bits.size + 1, dtype=np.uint64)
        total = (total + int((bits * positions).sum(dtype=np.uint64))) % (1 << 64)
        tensors += 1
        elements += bits.size
    return tensors, elements, total
