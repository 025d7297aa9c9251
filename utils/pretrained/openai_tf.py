"""OpenAI's original GPT-2 release (TensorFlow checkpoints), read without TensorFlow.

OpenAI published each size as `checkpoint`, `model.ckpt.index`, `model.ckpt.data-00000-of-00001`,
`hparams.json`, `encoder.json` and `vocab.bpe`. A TensorFlow checkpoint is a "tensor bundle":

* `model.ckpt.index` is a LevelDB-format SSTable (uncompressed blocks of prefix-compressed
  key/value entries, an index block pointing at them, and a 48-byte footer ending in a magic
  number). The empty key holds a `BundleHeaderProto`; every other key is a variable name
  whose value is a `BundleEntryProto` (dtype, shape, shard, offset, size, masked CRC32C).
* `model.ckpt.data-SSSSS-of-NNNNN` holds the raw little-endian tensor bytes.

Both protobuf messages are decoded by hand from the wire format, so this module needs
neither TensorFlow nor protobuf. Every block and every tensor is checked against its
stored CRC32C, so a corrupt download is reported instead of loaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.checkpoint_errors import (
    ArchitectureMismatchError,
    CheckpointConfigError,
    CorruptCheckpointError,
)
from utils.reading import read_regular_file

# --------------------------------------------------------------------------- CRC32C

_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of `data`, as LevelDB and TensorFlow compute it.

    Large inputs run in numpy: the data is cut into 2**k equal lanes whose CRC registers
    advance together, four bytes at a time (slicing-by-4); the lanes are then joined pairwise (the
    register is linear over GF(2): `raw(r, A + B) = Z^len(B) raw(r, A) ^ raw(0, B)`, with
    `Z^n` the 32x32 bit matrix of `n` zero bytes). The pure-Python loop, ~0.1 s/MB, would
    spend minutes on gpt2-xl's 6 GB of weights.
    """
    register = crc ^ 0xFFFFFFFF
    view = memoryview(data).cast("B")
    lanes = 1 << max(0, min(16, (len(view) // 1024).bit_length() - 1))
    if lanes >= 64:
        length = len(view) // lanes // 4 * 4
        # One row per 4-byte word position, one column per lane (a copy: contiguous rows).
        words = np.frombuffer(view[:lanes * length], dtype="<u4").reshape(lanes, length // 4)
        rows = words.T.copy()
        t0, t1, t2, t3 = _slicing_tables()
        registers = np.zeros(lanes, dtype=np.uint32)
        registers[0] = register
        for row in rows:  # slicing-by-4: four bytes per step
            registers ^= row
            registers = (t3.take(registers & 0xFF) ^ t2.take((registers >> 8) & 0xFF)
                         ^ t1.take((registers >> 16) & 0xFF) ^ t0.take(registers >> 24))
        zeros = _zero_bytes_matrix(length)
        while len(registers) > 1:
            registers = _apply(zeros, registers[0::2]) ^ registers[1::2]
            zeros = _apply(zeros, zeros)
        register = int(registers[0])
        view = view[lanes * length:]
    table = _CRC_TABLE
    for byte in view:
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register ^ 0xFFFFFFFF


def _slicing_tables() -> tuple[np.ndarray, ...]:
    """CRC tables for 0..3 following bytes (`t_k[b]`: byte b then k zero bytes)."""
    tables = [np.array(_CRC_TABLE, dtype=np.uint32)]
    for _ in range(3):
        previous = tables[-1]
        tables.append((previous >> 8) ^ tables[0][previous & 0xFF])
    return tuple(tables)


def _apply(matrix: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """GF(2) matrix (32 columns, column k = image of bit k) times each uint32 in `vectors`."""
    out = np.zeros_like(vectors)
    for k in range(32):
        out ^= matrix[k] * ((vectors >> k) & 1)
    return out


def _zero_bytes_matrix(count: int) -> np.ndarray:
    """The register's change over `count` zero bytes, as a GF(2) matrix (square-and-multiply)."""
    bits = np.array([1 << k for k in range(32)], dtype=np.uint32)
    power = np.array([_CRC_TABLE[b & 0xFF] ^ (b >> 8) for b in bits.tolist()], dtype=np.uint32)
    result = bits  # identity
    while count:
        if count & 1:
            result = _apply(power, result)
        power = _apply(power, power)
        count >>= 1
    return result


def masked_crc32c(data: bytes) -> int:
    """LevelDB's masked CRC: stored CRCs are rotated and offset so CRCs of CRCs stay strong."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------- wire formats

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two BlockHandles padded to 40 bytes, then the 8-byte magic
BLOCK_TRAILER_SIZE = 5  # 1 byte compression type + 4 bytes masked CRC32C

# TensorFlow DataType enum -> numpy dtype (the numeric types a checkpoint may hold).
TF_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
             9: np.int64, 10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32,
             23: np.uint64}


def _varint(buffer: bytes, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at `pos`; return (value, position after it)."""
    result = shift = 0
    while True:
        if pos >= len(buffer) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buffer[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _protobuf_fields(buffer: bytes) -> list[tuple[int, Any]]:
    """(field number, value) pairs of a protobuf message: ints for varint and fixed
    fields, bytes for length-delimited ones (sub-messages, strings, packed repeats)."""
    fields, pos = [], 0
    while pos < len(buffer):
        key, pos = _varint(buffer, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _varint(buffer, pos)
        elif wire_type == 1:
            value, pos = int.from_bytes(buffer[pos:pos + 8], "little"), pos + 8
        elif wire_type == 2:
            length, pos = _varint(buffer, pos)
            value, pos = buffer[pos:pos + length], pos + length
        elif wire_type == 5:
            value, pos = int.from_bytes(buffer[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        if pos > len(buffer):
            raise ValueError("truncated protobuf message")
        fields.append((number, value))
    return fields


@dataclass
class BundleEntry:
    """One tensor's `BundleEntryProto`: where its bytes are and what they must hash to."""

    name: str
    dtype: int = 0
    shape: tuple[int, ...] = ()
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int = 0
    sliced: bool = False


@dataclass
class BundleHeader:
    num_shards: int = 1
    big_endian: bool = False
    version: dict[str, int] = field(default_factory=dict)


def _parse_shape(buffer: bytes) -> tuple[int, ...]:
    dims = []
    for number, value in _protobuf_fields(buffer):
        if number == 2:  # TensorShapeProto.dim
            size = dict(_protobuf_fields(value)).get(1, 0)  # Dim.size (int64)
            dims.append(size - (1 << 64) if size >= 1 << 63 else size)
        elif number == 3 and value:
            raise ValueError("tensor of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, buffer: bytes) -> BundleEntry:
    entry = BundleEntry(name)
    for number, value in _protobuf_fields(buffer):
        if number == 1:
            entry.dtype = value
        elif number == 2:
            entry.shape = _parse_shape(value)
        elif number == 3:
            entry.shard_id = value
        elif number == 4:
            entry.offset = value
        elif number == 5:
            entry.size = value
        elif number == 6:
            entry.crc32c = value
        elif number == 7:
            entry.sliced = True
    return entry


def _parse_header(buffer: bytes) -> BundleHeader:
    header = BundleHeader()
    for number, value in _protobuf_fields(buffer):
        if number == 1:
            header.num_shards = value
        elif number == 2:
            header.big_endian = value == 1
        elif number == 3:
            names = {1: "producer", 2: "min_consumer"}
            header.version = {names[n]: v for n, v in _protobuf_fields(value) if n in names}
    return header


# ------------------------------------------------------------------ SSTable index


def _read_block(data: bytes, offset: int, size: int, path: Path) -> bytes:
    """A block's contents after checking its trailer (no compression, matching CRC)."""
    end = offset + size + BLOCK_TRAILER_SIZE
    if end > len(data):
        raise CorruptCheckpointError(
            f"{path} is truncated: a block ends at byte {end} but the file has {len(data)}; "
            "download the checkpoint again"
        )
    contents, compression = data[offset:offset + size], data[offset + size]
    stored_crc = int.from_bytes(data[offset + size + 1:end], "little")
    if masked_crc32c(contents + bytes([compression])) != stored_crc:
        raise CorruptCheckpointError(
            f"{path} is corrupt: the block at byte {offset} fails its CRC32C check; "
            "download the checkpoint again"
        )
    if compression != 0:
        raise CorruptCheckpointError(
            f"{path} uses block compression type {compression}; TensorFlow bundles are "
            "uncompressed, so this is not a tensor bundle index"
        )
    return contents


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Key/value pairs of one block. Keys share a prefix with the previous key: each entry
    stores (shared, non_shared, value_length) varints, then the key's new suffix and value."""
    num_restarts = int.from_bytes(block[-4:], "little")
    end = len(block) - 4 * (num_restarts + 1)
    if end < 0:
        raise ValueError("block restart array is larger than the block")
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_length, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + value_length > end:
            raise ValueError("block entry runs past the block")
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos:pos + value_length]))
        pos += value_length
    return entries


def _block_handle(buffer: bytes, pos: int = 0) -> tuple[int, int, int]:
    offset, pos = _varint(buffer, pos)
    size, pos = _varint(buffer, pos)
    return offset, size, pos


SMALL_FILE_LIMIT = 16 << 20  # hparams.json, checkpoint, encoder.json, vocab.bpe: far below
RELEASE_FIX = "download OpenAI's release again."


def read_release_file(path: str | Path, limit: int | None = None) -> bytes:
    """A file of the release, only if it is a regular file (`reading.read_regular_file`)."""
    return read_regular_file(path, limit, fix=RELEASE_FIX)


def read_bundle_index(index_path: str | Path) -> tuple[BundleHeader, dict[str, BundleEntry]]:
    """Parse a `.index` file into its header and `{variable name: BundleEntry}`."""
    path = Path(index_path)
    data = read_release_file(path)
    if len(data) < FOOTER_SIZE or int.from_bytes(data[-8:], "little") != TABLE_MAGIC:
        raise CorruptCheckpointError(
            f"{path} is not a TensorFlow checkpoint index (no SSTable magic number at its end; "
            "the file is truncated or is something else); download the checkpoint again"
        )
    try:
        footer = data[-FOOTER_SIZE:]
        _, _, pos = _block_handle(footer)  # the metaindex block: unused by tensor bundles
        index_offset, index_size, _ = _block_handle(footer, pos)
        header, entries = None, {}
        for _, handle in _block_entries(_read_block(data, index_offset, index_size, path)):
            offset, size, _ = _block_handle(handle)
            for key, value in _block_entries(_read_block(data, offset, size, path)):
                if key == b"":
                    header = _parse_header(value)
                else:
                    name = key.decode("utf-8")
                    entries[name] = _parse_entry(name, value)
    except (ValueError, IndexError, UnicodeDecodeError) as error:
        raise CorruptCheckpointError(
            f"{path} is corrupt ({error}); download the checkpoint again"
        ) from error
    if header is None:
        raise CorruptCheckpointError(f"{path} has no bundle header (empty key); not a TF checkpoint")
    return header, entries


# --------------------------------------------------------------------- tensors


def _checkpoint_prefix(model_dir: Path) -> Path:
    """The prefix named in the `checkpoint` file (`model.ckpt` in OpenAI's release)."""
    state = model_dir / "checkpoint"
    if state.exists():
        text = read_release_file(state, SMALL_FILE_LIMIT).decode("utf-8", "replace")
        match = re.search(r'model_checkpoint_path:\s*"([^"]+)"', text)
        if match:
            prefix = Path(match.group(1))
            return prefix if prefix.is_absolute() else model_dir / prefix
    return model_dir / "model.ckpt"


def _shard_path(prefix: Path, shard: int, num_shards: int) -> Path:
    return prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{num_shards:05d}")


def read_tf_variables(model_dir: str | Path) -> dict[str, np.ndarray]:
    """Every variable of the checkpoint in `model_dir`, by its TensorFlow name, CRC-checked."""
    model_dir = Path(model_dir)
    prefix = _checkpoint_prefix(model_dir)
    index_path = prefix.with_name(prefix.name + ".index")
    if not index_path.exists():
        raise FileNotFoundError(
            f"no checkpoint index {index_path}; expected OpenAI's files (checkpoint, "
            "model.ckpt.index, model.ckpt.data-00000-of-00001, hparams.json) in {model_dir}"
        )
    header, entries = read_bundle_index(index_path)
    if header.big_endian:
        raise CorruptCheckpointError(f"{index_path} is a big-endian bundle; not supported")
    shards = {}
    for shard in sorted({entry.shard_id for entry in entries.values()}):
        shard_path = _shard_path(prefix, shard, header.num_shards)
        if not shard_path.exists():
            raise FileNotFoundError(
                f"checkpoint data shard {shard_path.name} is missing from {model_dir}; "
                "download it again (the index refers to it)"
            )
        shards[shard] = read_release_file(shard_path)
    return {name: _read_tensor(entry, shards[entry.shard_id], index_path)
            for name, entry in entries.items()}


def _read_tensor(entry: BundleEntry, shard: bytes, index_path: Path) -> np.ndarray:
    if entry.sliced or entry.dtype not in TF_DTYPES:
        raise CorruptCheckpointError(
            f"variable {entry.name!r} in {index_path} is partitioned or has TensorFlow dtype "
            f"{entry.dtype}; only whole numeric tensors are supported"
        )
    raw = memoryview(shard)[entry.offset:entry.offset + entry.size]  # no copy; astype copies
    if len(raw) != entry.size:
        raise CorruptCheckpointError(
            f"variable {entry.name!r} needs bytes {entry.offset}..{entry.offset + entry.size} "
            f"of its data shard, which has {len(shard)}; the shard is truncated, download it again"
        )
    if masked_crc32c(raw) != entry.crc32c:
        raise CorruptCheckpointError(
            f"variable {entry.name!r} fails its CRC32C checksum: the data shard is corrupt; "
            "download the checkpoint again"
        )
    dtype = np.dtype(TF_DTYPES[entry.dtype]).newbyteorder("<")
    if entry.size != int(np.prod(entry.shape, dtype=np.int64)) * dtype.itemsize:
        raise CorruptCheckpointError(
            f"variable {entry.name!r}: {entry.size} bytes do not fit shape {entry.shape}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(entry.shape).astype(dtype.newbyteorder("="))


# ----------------------------------------------------------------- GPT-2 layout

HPARAM_KEYS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")


def load_hparams(model_dir: str | Path) -> dict[str, int]:
    path = Path(model_dir) / "hparams.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; OpenAI's release has one per model size")
    try:
        hparams = json.loads(read_release_file(path, SMALL_FILE_LIMIT))
    except (ValueError, RecursionError):
        hparams = None
    if not isinstance(hparams, dict):
        raise CheckpointConfigError(f"{path} is not a JSON object. Fix: download it again.")
    missing = [key for key in HPARAM_KEYS if key not in hparams]
    if missing:
        raise ValueError(f"{path} lacks {missing}; expected keys {list(HPARAM_KEYS)}")
    bad = [key for key in HPARAM_KEYS if isinstance(hparams[key], bool)
           or not isinstance(hparams[key], int) or hparams[key] < 1]
    if bad:
        raise CheckpointConfigError(
            f"{path}: {bad[0]} is {str(hparams[bad[0]])[:40]!r}, not a whole number >= 1. "
            "Fix: the file is damaged; download it again.")
    return hparams


def load_tf_checkpoint(model_dir: str | Path) -> tuple[dict[str, int], dict[str, Any]]:
    """`(hparams, params)` as picoGPT returns them, read without TensorFlow.

    `params` is nested: `wte`, `wpe`, `blocks[i]["ln_1"]["g"]`, `blocks[i]["attn"]["c_attn"]["w"]`
    ([nx, nf]: OpenAI's conv1d weights are stored [1, nx, nf] and the leading 1 is dropped),
    ..., `ln_f`. Weights are [in, out], like Hugging Face's Conv1D.
    """
    hparams = load_hparams(model_dir)
    variables = read_tf_variables(model_dir)
    layers = {match.group(1) for name in variables
              if (match := re.match(r"model/h(\d+)/", name))}
    if len(layers) != hparams["n_layer"]:  # checked before a list of n_layer is made
        raise ArchitectureMismatchError(
            f"{Path(model_dir) / 'hparams.json'} says n_layer={hparams['n_layer']} but the "
            f"checkpoint holds {len(layers)} blocks. Fix: download the release again.")
    params: dict[str, Any] = {"blocks": [{} for _ in range(hparams["n_layer"])]}
    for name, array in variables.items():
        if not name.startswith("model/"):
            continue  # e.g. a global step counter: not a weight
        parts = name[len("model/"):].split("/")
        if parts[-1] == "w" and array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        match = re.fullmatch(r"h(\d+)", parts[0])
        if match:
            layer = int(match.group(1))
            if layer >= hparams["n_layer"]:
                raise ValueError(f"variable {name!r} is beyond n_layer={hparams['n_layer']}")
            target, parts = params["blocks"][layer], parts[1:]
        else:
            target = params
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = array
    return hparams, params


def hparams_to_config(hparams: dict[str, int], dropout_rate: float = 0.0):
    from utils.config import ModelConfig

    return ModelConfig(vocab_size=hparams["n_vocab"], context_length=hparams["n_ctx"],
                       embedding_dimension=hparams["n_embd"], number_of_heads=hparams["n_head"],
                       number_of_layers=hparams["n_layer"], dropout_rate=dropout_rate,
                       use_attention_bias=True)


def params_to_hf_state_dict(params: dict[str, Any]) -> dict[str, Any]:
    """picoGPT's nested params -> Hugging Face GPT-2 names (same [in, out] layout)."""
    import torch

    hf = {"transformer.wte.weight": params["wte"], "transformer.wpe.weight": params["wpe"]}
    for i, block in enumerate(params["blocks"]):
        for norm in ("ln_1", "ln_2"):
            hf[f"transformer.h.{i}.{norm}.weight"] = block[norm]["g"]
            hf[f"transformer.h.{i}.{norm}.bias"] = block[norm]["b"]
        for group, layers in (("attn", ("c_attn", "c_proj")), ("mlp", ("c_fc", "c_proj"))):
            for layer in layers:
                hf[f"transformer.h.{i}.{group}.{layer}.weight"] = block[group][layer]["w"]
                hf[f"transformer.h.{i}.{group}.{layer}.bias"] = block[group][layer]["b"]
    hf["transformer.ln_f.weight"] = params["ln_f"]["g"]
    hf["transformer.ln_f.bias"] = params["ln_f"]["b"]
    return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in hf.items()}


def load_tf_gpt2(model_dir: str | Path, device: str = "cpu"):
    """OpenAI's TensorFlow release -> `(GPTModel, ModelConfig)`, in eval mode."""
    from utils.pretrained.huggingface import model_from_hf_tensors

    hparams, params = load_tf_checkpoint(model_dir)
    config = hparams_to_config(hparams)
    model = model_from_hf_tensors(params_to_hf_state_dict(params).items(), config, device=device)
    return model, config


# ------------------------------------------------------------------- tokenizer


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable stand-in character -> byte.

    Printable bytes stand for themselves; the others (space, control bytes, ...) are
    shifted to chr(256 + n) in byte order. The dict's order is GPT-2's rank order."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    decoder = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            decoder[chr(256 + extra)] = b
            extra += 1
    return decoder


def tokenizer_from_encoder(model_dir: str | Path, name: str | None = None):
    """A tiktoken `Encoding` from OpenAI's `encoder.json` + `vocab.bpe` (no network).

    tiktoken ranks merges by token id, so the ids in encoder.json must follow the merge
    order of vocab.bpe (true of every GPT-2 release); a mismatch is reported, not ignored.
    """
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    model_dir = Path(model_dir)
    decode = _byte_decoder()
    encoder = json.loads(read_release_file(model_dir / "encoder.json", SMALL_FILE_LIMIT))
    merges = read_release_file(model_dir / "vocab.bpe", SMALL_FILE_LIMIT).decode(
        "utf-8").split("\n")[1:]
    # GPT-2's first 256 ranks are the single bytes in the byte decoder's order.
    ranks = {bytes([b]): rank for rank, b in enumerate(decode.values())}
    for line in filter(None, merges):
        first, second = line.split()
        ranks[bytes(decode[c] for c in first) + bytes(decode[c] for c in second)] = len(ranks)
    special = {key: encoder.pop(key) for key in ("<|endoftext|>", "<|startoftext|>")
               if key in encoder}
    from_encoder = {bytes(decode[c] for c in token): i for token, i in encoder.items()}
    if from_encoder != ranks:
        raise ValueError(
            f"{model_dir}/encoder.json does not match the merge order of vocab.bpe; "
            "use the two files from the same GPT-2 release"
        )
    return tiktoken.Encoding(name=name or f"gpt2-{model_dir.name}", pat_str=r50k_pat_str,
                             mergeable_ranks=ranks, special_tokens=special)


# -------------------------------------------------------------------- download

OPENAI_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
OPENAI_SIZES = {"small": "124M", "medium": "355M", "large": "774M", "xl": "1558M"}
OPENAI_FILES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
                "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")


def download_openai_checkpoint(model_size: str, dest: str | Path = "models") -> Path:
    """Download OpenAI's original release of one size (`small`, `124M`, `gpt2-xl`, ...).

    Files already present are kept; each new file is written to a temporary name and
    renamed when complete, so an interrupted download never leaves a half file behind.
    """
    from utils.config import PRESET_ALIASES

    key = PRESET_ALIASES.get(model_size, model_size)
    if key not in OPENAI_SIZES:
        raise ValueError(f"unknown GPT-2 size {model_size!r}; choose one of "
                         f"{sorted(OPENAI_SIZES) + sorted(OPENAI_SIZES.values())}")
    folder = Path(dest) / OPENAI_SIZES[key]
    folder.mkdir(parents=True, exist_ok=True)
    for filename in OPENAI_FILES:
        target = folder / filename
        if not target.exists():
            _download_file(f"{OPENAI_BASE_URL}/{OPENAI_SIZES[key]}/{filename}", target)
    return folder


def _download_file(url: str, target: Path) -> None:
    """`url`'s bytes as `target`, written durably (`fileio.write_atomically`) through
    `NAME.part`: a fixed temporary name, so a retry overwrites an interrupted one."""
    import urllib.request

    from tqdm.auto import tqdm

    from utils.fileio import write_atomically

    with urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length", 0)) or None

        def copy(out) -> None:
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))

        write_atomically(target, copy, temporary=target.with_name(target.name + ".part"))
