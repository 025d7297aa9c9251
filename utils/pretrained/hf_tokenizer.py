"""Tokenizer files for a Hugging Face folder: our tokenizers in the form `AutoTokenizer` loads.

- GPT-2's BPE (tiktoken's `r50k_base`, or a GPT-2 release's encoder.json/vocab.bpe) becomes
  GPT-2's own layout: `vocab.json`, `merges.txt` and `tokenizer.json`, built offline from
  tiktoken's ranks. tiktoken keeps only ranks; the merge that makes each token is the last
  step of BPE on that token's own bytes, using the merges ranked before it.
- The byte tokenizer (ids 0..255 are the bytes, 256 is `<|endoftext|>`) is the same
  byte-level BPE with no merges.
- nanoGPT's character vocabulary (a `CharTokenizer`, from the data folder's meta.pkl) is a
  word-level `tokenizer.json` over single characters.
- Anything else gets no files, and a note that says why (it goes into the model card).

Everything is built with the `tokenizers` library (a transformers dependency), imported
only here, so the files load in transformers 4 and 5 alike.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

from utils.tokenizer import ENDOFTEXT, ByteTokenizer, get_tokenizer

# What AutoTokenizer needs besides tokenizer.json. clean_up_tokenization_spaces=False: older
# transformers would otherwise turn " ," into "," when decoding, unlike our tokenizers.
_COMMON_CONFIG = {"clean_up_tokenization_spaces": False, "errors": "replace"}


@dataclasses.dataclass
class TokenizerFiles:
    """The files to write (name -> bytes), or none and a `note` saying why."""

    files: dict[str, bytes]
    description: str  # for the model card, e.g. "GPT-2 BPE (50,257 ids)"
    eos_token_id: int | None = None
    note: str | None = None


def tokenizer_files(tokenizer: Any, vocab_size: int, context_length: int) -> TokenizerFiles:
    """The HF files for `tokenizer` (a name `get_tokenizer` knows, or a tokenizer object),
    for a model with `vocab_size` rows and `context_length` positions."""
    if isinstance(tokenizer, str):
        if tokenizer == "char":
            return _without_files(
                "nanoGPT characters", "the character vocabulary lives in the nanoGPT data "
                "folder's meta.pkl, which the checkpoint does not carry; pass "
                "tokenizer=load_data(folder).tokenizer to export_to_hf to write it")
        tokenizer = get_tokenizer(tokenizer)
    n_vocab = int(getattr(tokenizer, "n_vocab", 0))
    name = getattr(tokenizer, "name", type(tokenizer).__name__)
    if n_vocab > vocab_size:
        return _without_files(name, f"the tokenizer {name!r} has {n_vocab:,} ids but the "
                              f"model only {vocab_size:,} rows, so they do not belong together")
    if isinstance(tokenizer, ByteTokenizer):
        return _byte_level_files(_byte_vocab(), [], {ENDOFTEXT: tokenizer.eot_token},
                                 context_length, f"bytes ({n_vocab} ids: 256 bytes and "
                                 f"{ENDOFTEXT})")
    if getattr(tokenizer, "name", None) == "char" and hasattr(tokenizer, "itos"):
        return _character_files(tokenizer.itos, context_length)
    if _is_gpt2_bpe(tokenizer):
        ranks = tokenizer._mergeable_ranks
        vocab, merges = _gpt2_vocab_and_merges(tuple(ranks.items()))
        return _byte_level_files(vocab, merges, dict(tokenizer._special_tokens),
                                 context_length, f"GPT-2 BPE ({n_vocab:,} ids)")
    return _without_files(name, f"the tokenizer {name!r} has no Hugging Face form here "
                          "(GPT-2's BPE, bytes and nanoGPT characters do)")


def _without_files(description: str, note: str) -> TokenizerFiles:
    return TokenizerFiles(files={}, description=description, note=note)


def _is_gpt2_bpe(tokenizer: Any) -> bool:
    """A tiktoken Encoding with GPT-2's pre-tokenizer and a full byte-level base vocabulary."""
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = getattr(tokenizer, "_mergeable_ranks", None)
    return (getattr(tokenizer, "_pat_str", None) == r50k_pat_str and isinstance(ranks, dict)
            and all(bytes([b]) in ranks for b in range(256)))


@functools.cache
def _byte_to_char() -> dict[int, str]:
    """GPT-2's bytes_to_unicode: each byte as the character vocab.json writes it. Printable
    bytes stand for themselves; the others (space, control bytes, ...) become chr(256 + n)
    in byte order (the inverse of `openai_tf._byte_decoder`)."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable},
            **{b: chr(256 + n) for n, b in enumerate(others)}}


def _as_chars(token: bytes) -> str:
    table = _byte_to_char()
    return "".join(table[b] for b in token)


def _byte_vocab() -> dict[str, int]:
    return {_as_chars(bytes([b])): b for b in range(256)}


@functools.cache
def _gpt2_vocab_and_merges(rank_items: tuple[tuple[bytes, int], ...]
                           ) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab.json's mapping and merges.txt's pairs (in rank order) from tiktoken's ranks."""
    ranks = dict(rank_items)
    vocab = {_as_chars(token): rank for token, rank in ranks.items()}
    merges = [tuple(_as_chars(part) for part in _last_merge(token, rank, ranks))
              for token, rank in sorted(ranks.items(), key=lambda item: item[1])
              if len(token) > 1]
    return vocab, merges


def _last_merge(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts BPE joins last to make `token`: merge its bytes by rank, using only
    merges ranked before `rank` (tiktoken's rule), until two parts remain."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        candidates = [(ranks.get(parts[i] + parts[i + 1], rank), i)
                      for i in range(len(parts) - 1)]
        best_rank, i = min(candidates)
        if best_rank >= rank:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {rank}) is not made by one BPE merge; the "
                         "ranks are not a byte-level BPE vocabulary")
    return parts[0], parts[1]


def _byte_level_files(vocab: dict[str, int], merges: list[tuple[str, str]],
                      special: dict[str, int], context_length: int,
                      description: str) -> TokenizerFiles:
    """GPT-2's layout: vocab.json + merges.txt (the classic pair) and tokenizer.json."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {**vocab, **special}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                for token in special])
    eos = ENDOFTEXT if ENDOFTEXT in special else None
    config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
              "model_max_length": context_length, **_COMMON_CONFIG,
              **({"bos_token": eos, "eos_token": eos, "unk_token": eos} if eos else {})}
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False).encode(),
        "merges.txt": ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode(),
        "tokenizer.json": backend.to_str().encode(),
        **_config_files(config),
    }
    return TokenizerFiles(files, description, eos_token_id=special.get(ENDOFTEXT))


def _character_files(itos: dict[int, str], context_length: int) -> TokenizerFiles:
    """Every character its own token, decoded by plain concatenation."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel(vocab={char: int(i) for i, char in itos.items()},
                                         unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    config = {"tokenizer_class": "PreTrainedTokenizerFast",
              "model_max_length": context_length, **_COMMON_CONFIG}
    files = {"tokenizer.json": backend.to_str().encode(), **_config_files(config)}
    return TokenizerFiles(files, f"nanoGPT characters ({len(itos)} ids)")


def _config_files(config: dict[str, Any]) -> dict[str, bytes]:
    special = {key: value for key, value in config.items() if key.endswith("_token")}
    return {"tokenizer_config.json": json.dumps(config, indent=2).encode(),
            "special_tokens_map.json": json.dumps(special, indent=2).encode()}
