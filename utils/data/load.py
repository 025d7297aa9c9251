"""One entry point for every data input: `load_data(path)` -> train and validation ids.

    data = load_data("my_texts/")              # .txt file or folder, nanoGPT, llm.c, hf:...
    print(data.summary())                      # kind, documents, tokens, split
    trainer = Trainer(model, config, data.train, data.val)

What a path is, in this order: None (the built-in corpus); `hf:NAME...` or a `save_to_disk`
folder (Hugging Face); a file starting with llm.c's magic number; a folder with `train.bin`
(nanoGPT); a folder of llm.c shards; otherwise UTF-8 text (a file, or a folder of .txt
files). Text is prepared (tokenised and cached) by `tokenize_corpus`; token files are mapped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.data import hf, sources, token_files
from utils.data.batches import DEFAULT_BLOCK_TOKENS, hash_tokens, train_val_split
from utils.data.prepare import tokenize_corpus
from utils.tokenizer import get_tokenizer

TOKEN_FILE_KINDS = ("nanogpt", "llmc")  # inputs that carry their own ids and vocabulary
KINDS = {"builtin": "built-in corpus", "text": "UTF-8 text", "huggingface": "Hugging Face dataset",
         "nanogpt": "nanoGPT train.bin/val.bin", "llmc": "llm.c token shards"}


@dataclass
class LoadedData:
    """Train and validation ids of any input kind, and what was found (for Cell 8)."""

    kind: str  # a key of KINDS
    source: str
    tokenizer_name: str
    vocab_size: int
    train: Any  # np.memmap (or a view of it): never a copy of the corpus
    val: Any
    split: str  # how val was chosen, in words
    tokens: Any  # all ids (for statistics): the corpus, or train.bin / the train shards
    documents: int | None = None
    sha256: str | None = None
    files: tuple[str, ...] = ()
    tokenizer: Any = None  # decodes the ids (a CharTokenizer for nanoGPT character data)

    @functools.cached_property
    def tokens_sha256(self) -> str:
        """sha256 of the training and validation ids (`hash_tokens`), as a run's fingerprint
        names its data: computed once per loaded corpus, however many Trainers use it.
        (`sha256` is the source text's, the token cache's key.)"""
        return hash_tokens(self.train, self.val)

    @property
    def num_tokens(self) -> int:
        """Training plus validation ids."""
        return len(self.train) + len(self.val)

    def summary(self) -> str:
        """What was found: kind, source, documents, tokens and the split, one per line."""
        total = self.num_tokens
        rows = [("kind", KINDS.get(self.kind, self.kind)), ("source", self.source),
                ("tokenizer", f"{self.tokenizer_name} ({self.vocab_size:,} ids)")]
        if self.files:
            shown = ", ".join(Path(f).name for f in self.files[:4])
            more = f" and {len(self.files) - 4} more" if len(self.files) > 4 else ""
            rows.append(("files", f"{len(self.files)}: {shown}{more}"))
        if self.documents is not None:
            rows.append(("documents", f"{self.documents:,}"))
        rows += [("tokens", f"{total:,}"),
                 ("train", f"{len(self.train):,} tokens ({len(self.train) / total:.1%})"),
                 ("validation", f"{len(self.val):,} tokens ({len(self.val) / total:.1%})"),
                 ("split", self.split)]
        if self.sha256:
            rows.append(("sha256", self.sha256[:16] + "..."))
        return "\n".join(f"{name:>12}: {value}" for name, value in rows)


def detect_kind(path: str | Path | None) -> str:
    """Which input `path` is (a key of KINDS), looking at names and headers only."""
    if path is None:
        return "builtin"
    if hf.is_hf_source(path):
        return "huggingface"
    folder = Path(path).expanduser()
    info = sources.check_data_path(folder)
    if not folder.is_dir():
        if folder.suffix == ".bin" or (info.st_size >= 4
                                       and token_files.read_llmc_header(folder) is not None):
            return "llmc"
        return "text"
    if token_files.is_nanogpt_folder(folder):
        return "nanogpt"
    if (folder / "train.bin").is_file() or token_files.has_llmc_shard(folder):
        return "llmc"
    return "text"


def load_data(
    path: str | Path | None = None,
    tokenizer_name: str | None = None,
    val_fraction: float = 0.1,
    *,
    split: str = "end",
    block_tokens: int = DEFAULT_BLOCK_TOKENS,
    cache_dir: str | Path | None = None,
    text_column: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> LoadedData:
    """Train / validation ids for any input (see the module docstring).

    `tokenizer_name` (default "gpt2") applies to text; token files carry their own
    vocabulary, and naming a different tokenizer for them is an error. Inputs with their own
    validation file (nanoGPT val.bin, llm.c *_val_* shards) keep it; otherwise val is chosen
    by `train_val_split(split=...)`.
    """
    kind = detect_kind(path)
    if kind in TOKEN_FILE_KINDS:
        return _token_files(kind, Path(path).expanduser(), tokenizer_name, val_fraction,
                            split, block_tokens)
    name = tokenizer_name or "gpt2"
    corpus = tokenize_corpus(path, name, cache_dir, workers=workers, text_column=text_column,
                             progress=progress)
    tokenizer = get_tokenizer(name)
    train, val = train_val_split(corpus.tokens, val_fraction, by=split,
                                 block_tokens=block_tokens, eot_token=tokenizer.eot_token)
    return LoadedData(kind, corpus.source, name, tokenizer.n_vocab, train, val,
                      _split_words(split, val_fraction, block_tokens), corpus.tokens,
                      documents=corpus.documents, sha256=corpus.sha256, tokenizer=tokenizer)


def _token_files(kind: str, path: Path, tokenizer_name: str | None, val_fraction: float,
                 split: str, block_tokens: int) -> LoadedData:
    found = token_files.read_llmc(path) if kind == "llmc" else token_files.read_nanogpt(path)
    if tokenizer_name is not None and tokenizer_name != found.tokenizer_name and not (
            found.tokenizer_name == "gpt2" and tokenizer_name == "r50k_base"):
        raise ValueError(f"{str(path)!r} holds {found.tokenizer_name} ids (vocabulary "
                         f"{found.vocab_size}), not {tokenizer_name!r}; leave the tokenizer "
                         "unset for token files")
    if found.char_vocab is not None:
        tokenizer = token_files.CharTokenizer(found.char_vocab)
        eot = None
    else:
        tokenizer = get_tokenizer("gpt2")
        eot = tokenizer.eot_token
    if found.val is not None:
        train, val, words = found.train, found.val, "given: " + (
            "val.bin" if kind == "nanogpt" else "the *val* shards")
    else:
        if split == "document" and eot is None:
            split = "block"  # character data has no end-of-text id to find documents by
        train, val = train_val_split(found.train, val_fraction, by=split,
                                     block_tokens=block_tokens, eot_token=eot)
        words = _split_words(split, val_fraction, block_tokens)
    return LoadedData(kind, found.source, found.tokenizer_name, found.vocab_size, train, val,
                      words, found.train, files=tuple(found.files), tokenizer=tokenizer)


def _split_words(split: str, val_fraction: float, block_tokens: int) -> str:
    if split == "end":
        return f"the last {val_fraction:.0%} of the tokens"
    if split == "block":
        return f"{val_fraction:.0%} of {block_tokens:,}-token blocks, spread evenly"
    return f"{val_fraction:.0%} of the documents (whole), spread evenly"


def token_statistics(data: LoadedData, top: int = 5, chunk: int = 1 << 24) -> str:
    """Distinct ids used and the most frequent ones, counted chunk by chunk (bounded memory)."""
    tokens = data.tokens
    counts = np.zeros(max(data.vocab_size, 1), dtype=np.int64)
    for start in range(0, len(tokens), chunk):
        part = np.asarray(tokens[start:start + chunk])
        counts += np.bincount(part, minlength=len(counts))[:len(counts)]
    total = max(int(counts.sum()), 1)
    lines = [f"{'distinct ids':>12}: {int((counts > 0).sum()):,} of {data.vocab_size:,}"]
    for rank, token in enumerate(np.argsort(counts)[::-1][:top], start=1):
        text = data.tokenizer.decode([int(token)]) if data.tokenizer is not None else ""
        lines.append(f"{'#' + str(rank):>12}: {text!r} ({counts[token] / total:.1%})")
    return "\n".join(lines)
