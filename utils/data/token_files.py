"""Token ids that someone already prepared: nanoGPT folders and llm.c shards, as memmaps.

nanoGPT (`data/<name>/prepare.py`) writes `train.bin` and `val.bin`: bare uint16 ids, GPT-2's
BPE unless a `meta.pkl` says the data is character-level (then it holds `vocab_size`, `itos`
and `stoi`). llm.c (`dev/data/*.py`) writes shards: a 256 x int32 header (magic 20240520,
version 1, number of tokens) followed by the uint16 ids; `*_train_*.bin` / `*_val_*.bin`.
Nothing is re-tokenised or copied: every file is mapped read-only.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.data import sources
from utils.data.batches import TokenView

LLMC_MAGIC = 20240520
LLMC_VERSION = 1  # uint16 GPT-2 ids (version 2 is llm.c's uint32 LLaMA-3 format)
LLMC_HEADER_INTS = 256
LLMC_HEADER_BYTES = LLMC_HEADER_INTS * 4
GPT2_VOCAB = 50257
CHECK_TOKENS = 1 << 20  # ids checked against the vocabulary at each end of a file


@dataclass
class TokenFiles:
    """What a token-file input holds: train (and maybe val) ids, and their vocabulary."""

    kind: str  # "nanogpt" or "llmc"
    source: str
    train: Any  # np.memmap or TokenView
    val: Any | None  # None: no validation file; split the train ids
    vocab_size: int
    tokenizer_name: str  # "gpt2", or "char" for a nanoGPT character-level folder
    files: list[str] = field(default_factory=list)
    char_vocab: dict[int, str] | None = None  # nanoGPT meta.pkl's itos


# --------------------------------------------------------------------------------- llm.c


def read_llmc_header(path: Path) -> np.ndarray | None:
    """The header ints of an llm.c shard (256 unless truncated), or None without the magic."""
    with open(path, "rb") as handle:
        data = handle.read(LLMC_HEADER_BYTES)
    header = np.frombuffer(data[:len(data) // 4 * 4], dtype="<i4")
    if len(header) < 1 or header[0] != LLMC_MAGIC:
        return None
    return header


def llmc_shard(path: Path) -> np.memmap:
    """The ids of one llm.c shard, after checking magic, version and token count."""
    sources.check_data_path(path)
    header = read_llmc_header(path)
    if header is None:
        raise ValueError(f"{str(path)!r} is not an llm.c token shard: it does not start with "
                         f"the magic number {LLMC_MAGIC}; pass a shard written by llm.c's "
                         "dev/data scripts (or, for nanoGPT's train.bin, its folder)")
    if len(header) < LLMC_HEADER_INTS:
        raise ValueError(f"llm.c shard {str(path)!r} is truncated inside its 1024-byte header")
    version, count = int(header[1]), int(header[2])
    if version != LLMC_VERSION:
        raise ValueError(f"llm.c shard {str(path)!r} has version {version}; only version "
                         f"{LLMC_VERSION} (uint16 GPT-2 ids) is supported (version 2 holds "
                         "uint32 LLaMA-3 ids, which a GPT-2 vocabulary cannot use)")
    expected = LLMC_HEADER_BYTES + 2 * count
    size = path.stat().st_size
    if size != expected:
        raise ValueError(f"llm.c shard {str(path)!r} says it holds {count:,} tokens "
                         f"({expected:,} bytes with the header) but the file has {size:,} "
                         "bytes: it is truncated or not a shard; write it again")
    if count == 0:
        raise ValueError(f"llm.c shard {str(path)!r} holds no tokens")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=LLMC_HEADER_BYTES, shape=(count,))


def _joined(arrays: list[np.ndarray]) -> Any:
    return arrays[0] if len(arrays) == 1 else TokenView(arrays)


def read_llmc(path: Path) -> TokenFiles:
    """One shard (its ids are split later) or a folder of shards (`*val*` shards are val)."""
    if path.is_file():
        tokens = llmc_shard(path)
        _check_vocab(tokens, GPT2_VOCAB, path)
        return TokenFiles("llmc", str(path), tokens, None, GPT2_VOCAB, "gpt2", [str(path)])
    shards = llmc_shards_in(path)
    if not shards:
        raise ValueError(f"folder {str(path)!r} has no llm.c shards (.bin files starting with "
                         f"the magic number {LLMC_MAGIC})")
    val_files = [p for p in shards if "val" in p.name]
    train_files = [p for p in shards if p not in val_files]
    if not train_files:
        raise ValueError(f"folder {str(path)!r} has only validation shards "
                         f"({[p.name for p in val_files]}); add the *_train_*.bin shards")
    train = [llmc_shard(p) for p in train_files]
    val = [llmc_shard(p) for p in val_files]
    for file, tokens in zip(train_files + val_files, train + val, strict=True):
        _check_vocab(tokens, GPT2_VOCAB, file)
    return TokenFiles("llmc", str(path), _joined(train), _joined(val) if val else None,
                      GPT2_VOCAB, "gpt2", [str(p) for p in train_files + val_files])


def llmc_shards_in(folder: Path) -> list[Path]:
    """The folder's .bin files that start with llm.c's magic number, sorted by name."""
    return list(_llmc_shards(folder))


def has_llmc_shard(folder: Path) -> bool:
    """Whether the folder holds at least one llm.c shard (stops at the first: a folder of
    a hundred shards on Drive is not opened a hundred times just to be recognised)."""
    return next(_llmc_shards(folder), None) is not None


def _llmc_shards(folder: Path):
    for path in sorted(folder.glob("*.bin")):
        if path.is_file() and path.stat().st_size >= 4 and read_llmc_header(path) is not None:
            yield path


# ------------------------------------------------------------------------------- nanoGPT


def is_nanogpt_folder(folder: Path) -> bool:
    train = folder / "train.bin"
    return train.is_file() and not _has_llmc_magic(train)


def _has_llmc_magic(path: Path) -> bool:
    return path.stat().st_size >= LLMC_HEADER_BYTES and read_llmc_header(path) is not None


def _uint16_file(path: Path) -> np.memmap:
    sources.check_data_path(path)
    size = path.stat().st_size
    if size == 0 or size % 2:
        raise ValueError(f"{str(path)!r} has {size:,} bytes, not a whole number of uint16 ids "
                         "(nanoGPT writes np.uint16 arrays with arr.tofile); prepare it again")
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    _check_not_uint32(tokens, path)
    return tokens


def _check_not_uint32(tokens: np.ndarray, path: Path) -> None:
    """nanoGPT's train.py reads uint16 ids whatever was written; ids saved as uint32 (a
    prepare script changed for a larger vocabulary) read as uint16 are every id followed by
    a 0, which passes the vocabulary check and trains on garbage. Refused here, from the
    first ids: real text never has a 0 at every second position."""
    sample = np.asarray(tokens[:CHECK_TOKENS])
    sample = sample[:len(sample) // 2 * 2]
    if len(sample) >= 64 and not sample[1::2].any() and sample[0::2].any():
        raise ValueError(
            f"{str(path)!r} looks like uint32 token ids (every second uint16 is 0), but "
            "nanoGPT's train.bin/val.bin hold uint16 ids (np.uint16, as its prepare.py writes "
            "them and its train.py reads them). Fix: write the ids as uint16 again (ids below "
            "65,536: np.fromfile(FILE, dtype=np.uint32).astype(np.uint16).tofile(FILE))")


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers only: a meta.pkl is data, never code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"meta.pkl refers to {module}.{name}; only plain dicts, "
                                     "strings and numbers are accepted")


# A character-level meta.pkl is a few KB; one far larger is not nanoGPT's.
META_LIMIT = 16 << 20
_META_FIX = "write it again with nanoGPT's prepare.py, or remove it for GPT-2 ids"


def read_nanogpt_meta(path: Path) -> dict[str, Any]:
    """nanoGPT's meta.pkl (vocab_size, itos, stoi), read without running any code in it:
    a regular file of at most `META_LIMIT` bytes (a FIFO or a link to /dev/zero is
    refused, not waited on), plain bounded data, its vocabulary checked."""
    from utils.checkpoint_errors import CheckpointError
    from utils.reading import check_bounded, read_regular_file

    try:
        data = read_regular_file(path, META_LIMIT, fix=_META_FIX)
        meta = check_bounded(path, _PlainUnpickler(io.BytesIO(data)).load(),
                             what="a nanoGPT meta.pkl", fix=_META_FIX)
    except CheckpointError as error:
        raise ValueError(f"nanoGPT meta.pkl: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            KeyError, AttributeError, MemoryError) as error:
        raise ValueError(f"{str(path)!r} is not a nanoGPT meta.pkl of plain data "
                         f"({type(error).__name__}: {str(error)[:100]}); {_META_FIX}") from None
    vocab_size = meta.get("vocab_size") if isinstance(meta, dict) else None
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"{str(path)!r} has no vocab_size of at least 1; a nanoGPT meta.pkl "
                         "holds {'vocab_size': N, 'itos': {...}, 'stoi': {...}}")
    _check_itos(meta.get("itos"), vocab_size, path)
    return meta


def _check_itos(itos: Any, vocab_size: int, path: Path) -> None:
    """None (GPT-2 ids), or {id: character} with ids 0..vocab_size-1 (what CharTokenizer
    decodes with)."""
    if itos is None:
        return
    problem = None
    if not isinstance(itos, dict) or not itos:
        problem = f"its itos is {'empty' if not itos else 'a ' + type(itos).__name__}"
    else:
        for key, value in itos.items():
            if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < vocab_size:
                problem = f"its itos has the key {str(key)[:20]!r}, not an id 0..{vocab_size - 1}"
                break
            if not isinstance(value, str):
                problem = f"its itos maps {key} to {str(value)[:20]!r}, not a string"
                break
    if problem is not None:
        raise ValueError(f"{str(path)!r} is not a usable nanoGPT meta.pkl: {problem} (nanoGPT "
                         "writes {id: character} for ids 0..vocab_size-1); " + _META_FIX)


def read_nanogpt(folder: Path) -> TokenFiles:
    """`train.bin` / `val.bin` (and `meta.pkl`) of a nanoGPT data folder, mapped read-only."""
    train = _uint16_file(folder / "train.bin")
    val_path = folder / "val.bin"
    val = _uint16_file(val_path) if val_path.exists() else None
    meta_path = folder / "meta.pkl"
    vocab_size, tokenizer_name, itos = GPT2_VOCAB, "gpt2", None
    if meta_path.exists():
        meta = read_nanogpt_meta(meta_path)
        vocab_size = meta["vocab_size"]
        itos = meta.get("itos")
        tokenizer_name = "char" if itos is not None else "gpt2"
    files = [str(folder / "train.bin")] + ([str(val_path)] if val is not None else [])
    for name, tokens in (("train.bin", train), ("val.bin", val)):
        if tokens is not None:
            _check_vocab(tokens, vocab_size, folder / name)
    return TokenFiles("nanogpt", str(folder), train, val, vocab_size, tokenizer_name, files,
                      char_vocab=itos)


def _check_vocab(tokens: np.ndarray, vocab_size: int, path: Path) -> None:
    """Ids past the vocabulary mean the wrong file or format; checked at both ends of the
    file (a full scan of a many-GB file would cost more than it tells)."""
    ends = (tokens[:CHECK_TOKENS], tokens[-CHECK_TOKENS:])
    largest = max(int(np.max(end)) for end in ends if len(end))
    if largest >= vocab_size:
        raise ValueError(f"{str(path)!r} holds token id {largest}, outside its vocabulary of "
                         f"{vocab_size}; it is not {'GPT-2' if vocab_size == GPT2_VOCAB else 'this'}"
                         " data (wrong file, or a meta.pkl that does not belong to it)")


class CharTokenizer:
    """nanoGPT's character-level vocabulary (meta.pkl's itos), for decoding samples."""

    name = "char"

    def __init__(self, itos: dict[int, str]) -> None:
        self.itos = itos
        self.stoi = {s: i for i, s in itos.items()}
        self.n_vocab = max(itos) + 1
        self.max_token_value = max(itos)
        self.eot_token = None

    def encode(self, text: str, **_: Any) -> list[int]:
        unknown = sorted(set(text) - set(self.stoi))
        if unknown:
            raise ValueError(f"characters {unknown[:10]} are not in this character vocabulary")
        return [self.stoi[c] for c in text]

    def decode(self, ids: Any, errors: str = "replace") -> str:
        return "".join(self.itos.get(int(i), "\ufffd") for i in ids)
