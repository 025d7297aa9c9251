"""Corpus -> token ids -> batches.

    text = load_text("my_corpus/")                       # a .txt file, a folder of them, or None
    corpus = tokenize_corpus("my_corpus/")               # uint16 memmap, cached on disk
    train, val = train_val_split(corpus.tokens, 0.1)     # val is the end of the corpus
    loader = BatchLoader(train, batch_size=8, context_length=256, seed=0)
    x, y = loader.get_batch(step)                        # int64 [8, 256]; y is x shifted by one

Documents are joined with `<|endoftext|>`, which is tokenised as GPT-2's end-of-text token
(a literal `<|endoftext|>` inside a file counts as a document boundary too, as in GPT-2's
own training data). A batch is a pure function of (seed, step), so resuming at step N
replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.tokenizer import ENDOFTEXT, get_tokenizer

DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "data"
BUILTIN_SOURCE = "builtin:pydoc_data.topics"
CACHE_FORMAT_VERSION = 1
UINT16_MAX_TOKEN = np.iinfo(np.uint16).max  # 65535: largest id a uint16 cache can hold

# Encoding happens in pieces of about this many characters so big inputs show progress and
# never hold more than one piece's ids as Python ints.
CHUNK_CHARS = 1 << 20
# A chunk ends after a newline that sits between two non-space characters: GPT-2's
# pre-tokeniser always makes such a newline its own piece, so cutting there gives exactly
# the ids that encoding the whole text would.
_SAFE_CUT = re.compile(r"\S\n(?=\S)")


@dataclass
class TokenizedCorpus:
    """Token ids of a corpus, memory-mapped from the on-disk cache."""

    tokens: np.ndarray  # np.memmap of uint16, read-only
    source: str  # the path given, or BUILTIN_SOURCE
    tokenizer_name: str
    sha256: str  # of the source text (documents joined with <|endoftext|>)
    cache_path: Path

    def __len__(self) -> int:
        return len(self.tokens)


# ---------------------------------------------------------------------------------------------
# Text


def load_text(source: str | Path | None = None) -> str:
    """The corpus as one string: a UTF-8 file, a folder of `.txt` files, or the built-in corpus.

    A folder's `.txt` files (searched recursively, sorted by path, hidden ones skipped) are
    joined with `<|endoftext|>`. `None` gives the built-in corpus: Python's own help topics
    (`pydoc_data.topics`, ~465 KB), which ships with Python, so no download is needed.
    """
    if source is None:
        from pydoc_data.topics import topics

        return ENDOFTEXT.join(topics[key] for key in sorted(topics))
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"data path {str(path)!r} does not exist; pass a UTF-8 .txt file, a folder of "
            ".txt files, or nothing (None) for the built-in corpus"
        )
    if path.is_dir():
        # Hidden folders are skipped: Jupyter keeps `.ipynb_checkpoints/*-checkpoint.txt`
        # copies of edited files, which would otherwise be trained on twice.
        files = sorted(p for p in path.rglob("*.txt") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise FileNotFoundError(
                f"folder {str(path)!r} has no .txt files; put UTF-8 .txt files in it or pass "
                "a single file"
            )
        documents = [_read_utf8(file) for file in files]
        if not any(doc.strip() for doc in documents):
            raise ValueError(f"all {len(files)} .txt files in {str(path)!r} are empty; "
                             "add some text to train on")
        return ENDOFTEXT.join(doc for doc in documents if doc.strip())
    if not path.is_file():
        raise ValueError(
            f"data path {str(path)!r} is not a regular file (a FIFO, device or socket): "
            "reading it could block or never end; pass a UTF-8 .txt file or a folder of them")
    text = _read_utf8(path)
    if not text.strip():
        raise ValueError(f"data file {str(path)!r} is empty ({path.stat().st_size} bytes); "
                         "add some text to train on")
    return text


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start}); "
            "convert it to UTF-8 (e.g. `iconv -t UTF-8`) or remove it from the data folder"
        ) from error


# ---------------------------------------------------------------------------------------------
# Tokenising and the cache


def tokenize_corpus(
    source: str | Path | None = None,
    tokenizer_name: str = "gpt2",
    cache_dir: str | Path | None = None,
) -> TokenizedCorpus:
    """Token ids of `source` (see `load_text`), tokenised once and cached as a uint16 memmap.

    The cache is keyed by sha256 of the text and the tokenizer, so editing a file retokenises
    and a second call with the same text maps the cached ids without touching the tokenizer.
    Files are written to a temporary name and renamed, so an interrupted run leaves no
    half-written cache.
    """
    tokenizer = get_tokenizer(tokenizer_name)
    if tokenizer.max_token_value > UINT16_MAX_TOKEN:
        raise ValueError(
            f"tokenizer {tokenizer_name!r} has ids up to {tokenizer.max_token_value}, more than "
            f"a uint16 token cache can hold ({UINT16_MAX_TOKEN}); use 'gpt2' or 'byte'"
        )
    text = load_text(source)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    stem = cache_dir / f"{tokenizer.name}-{digest[:32]}"
    bin_path, meta_path = stem.with_suffix(".bin"), stem.with_suffix(".json")

    if not _cache_is_valid(bin_path, meta_path, digest, tokenizer.name):
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            num_tokens = _encode_to_file(text, tokenizer, bin_path)
            meta = {"format_version": CACHE_FORMAT_VERSION, "sha256": digest,
                    "tokenizer": tokenizer.name, "num_tokens": num_tokens, "dtype": "uint16",
                    "source": BUILTIN_SOURCE if source is None else str(source),
                    "num_characters": len(text)}
            _write_atomically(meta_path, json.dumps(meta, indent=1).encode())
        except OSError as error:  # read-only folder, a file in the way, disk full
            raise type(error)(error.errno, f"cannot write the token cache in {str(cache_dir)!r} "
                              f"({error.strerror or error}); pass cache_dir= a writable folder "
                              "with free space") from error

    tokens = np.memmap(bin_path, dtype=np.uint16, mode="r")
    return TokenizedCorpus(tokens=tokens, source=BUILTIN_SOURCE if source is None else str(source),
                           tokenizer_name=tokenizer_name, sha256=digest, cache_path=bin_path)


def _cache_is_valid(bin_path: Path, meta_path: Path, digest: str, tokenizer: str) -> bool:
    """The JSON is written last, so its presence with matching size means a complete cache."""
    try:
        meta = json.loads(meta_path.read_text())
        return (meta.get("format_version") == CACHE_FORMAT_VERSION
                and meta.get("sha256") == digest and meta.get("tokenizer") == tokenizer
                and bin_path.stat().st_size == 2 * int(meta["num_tokens"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def split_into_chunks(text: str, chunk_chars: int = CHUNK_CHARS) -> list[str]:
    """Cut `text` into pieces of roughly `chunk_chars` at points where BPE cannot cross."""
    chunks, start = [], 0
    while len(text) - start > chunk_chars:
        cut = _SAFE_CUT.search(text, start + chunk_chars)
        if cut is None:
            break
        end = cut.start() + 2  # just after the newline
        chunks.append(text[start:end])
        start = end
    chunks.append(text[start:])
    return chunks


def _encode_to_file(text: str, tokenizer: Any, path: Path) -> int:
    """Encode chunk by chunk, streaming uint16 ids to a temp file renamed to `path` at the end."""
    from tqdm.auto import tqdm

    chunks = split_into_chunks(text, CHUNK_CHARS)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    num_tokens = 0
    try:
        with open(tmp, "wb") as out:
            with tqdm(total=len(text), desc=f"tokenizing ({tokenizer.name})", unit="char",
                      unit_scale=True, disable=len(chunks) < 4) as progress:
                for chunk in chunks:
                    ids = np.asarray(tokenizer.encode(chunk, allowed_special={ENDOFTEXT}),
                                     dtype=np.uint16)
                    ids.tofile(out)
                    num_tokens += len(ids)
                    progress.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return num_tokens


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Splitting and batching


def train_val_split(tokens: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) views of `tokens`; val is the last `val_fraction` of the corpus."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    num_val = round(len(tokens) * val_fraction)
    num_train = len(tokens) - num_val
    if num_val < 1 or num_train < 1:
        raise ValueError(
            f"cannot split {len(tokens)} tokens with val_fraction={val_fraction}: that leaves "
            f"{num_train} training and {num_val} validation tokens; use more text or a "
            "val_fraction closer to 0.5"
        )
    return tokens[:num_train], tokens[num_train:]


class BatchLoader:
    """Random (x, y) windows of `tokens`; batch `step` is a pure function of (seed, step).

    Each step draws `batch_size * world_size` window starts from a generator seeded with
    (seed, step), and rank r takes rows [r*batch_size, (r+1)*batch_size). So 2 ranks with
    batch b see exactly the rows 1 process with batch 2b sees, and a resumed run (restore
    `state_dict()`) continues with the batches an uninterrupted one would have drawn.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        context_length: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        *,
        name: str = "tokens",
    ) -> None:
        for label, value, minimum in (("batch_size", batch_size, 1),
                                      ("context_length", context_length, 1),
                                      ("world_size", world_size, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"BatchLoader {label} must be an integer >= {minimum}, "
                                 f"got {value!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.cpu().numpy()
        if len(tokens) < context_length + 1:
            raise ValueError(
                f"{name} has {len(tokens)} tokens, fewer than one training window needs "
                f"(context_length + 1 = {context_length + 1}); use more text, a smaller "
                "context_length, or (for a validation split) a larger val_fraction"
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.context_length = context_length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.step = 0
        self._offsets = np.arange(context_length + 1)

    @property
    def steps_per_epoch(self) -> int:
        tokens_per_step = self.batch_size * self.world_size * self.context_length
        return max(1, len(self.tokens) // tokens_per_step)

    def get_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), int64 [batch_size, context_length]; y[:, i] is the token after x[:, i]."""
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.context_length,
                              size=self.batch_size * self.world_size)
        mine = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        windows = torch.from_numpy(self.tokens[mine[:, None] + self._offsets].astype(np.int64))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def __iter__(self) -> BatchLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.get_batch(self.step)
        self.step += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "step": self.step, "batch_size": self.batch_size,
                "context_length": self.context_length, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a saved stream. The global batch (batch_size x world_size) and context
        must match, since they decide which windows each step draws; the split across ranks
        may differ (2 ranks x 4 resumes as 1 x 8)."""
        saved_global = int(state["batch_size"]) * int(state.get("world_size", 1))
        if (int(state["context_length"]) != self.context_length
                or saved_global != self.batch_size * self.world_size):
            raise ValueError(
                f"data state was saved with context_length={state['context_length']} and "
                f"batch_size x world_size = {state['batch_size']} x "
                f"{state.get('world_size', 1)}, but this loader has context_length="
                f"{self.context_length} and {self.batch_size} x {self.world_size}; use the "
                "saved settings to resume the same data stream, or don't restore the data state"
            )
        self.seed = int(state["seed"])
        self.step = int(state["step"])
