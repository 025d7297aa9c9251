"""Tokenizers: GPT-2's exact BPE through tiktoken, and a byte-level fallback.

`get_tokenizer("gpt2")` returns tiktoken's `r50k_base` Encoding, which is GPT-2's vocabulary
id for id. tiktoken downloads its BPE ranks on first use; `make install`
(`scripts/prepare_tokenizer.py`) puts them in the repository's cache so nothing needs the
network afterwards. `get_tokenizer("byte")` needs nothing at all: 256 byte ids plus an
end-of-text id, with the same methods the rest of the package calls.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import tiktoken

REPO_TIKTOKEN_CACHE = Path(__file__).resolve().parent.parent / ".cache" / "tiktoken"
ENDOFTEXT = "<|endoftext|>"

# Our names for tiktoken encodings. GPT-2's vocabulary is tiktoken's `r50k_base`.
TIKTOKEN_ALIASES = {"gpt2": "r50k_base", "r50k_base": "r50k_base"}
BYTE_TOKENIZER_NAMES = ("byte", "bytes")


class TokenizerUnavailableError(FileNotFoundError):
    """tiktoken's BPE file is neither cached nor downloadable; the message says how to fix it."""


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255, plus `eot_token` = 256 for end-of-text.

    Mirrors the part of `tiktoken.Encoding` this package uses, so either can be passed around.
    """

    name = "byte"
    eot_token = 256
    n_vocab = 257
    max_token_value = 256
    special_tokens_set = frozenset({ENDOFTEXT})

    def encode_ordinary(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | Collection[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        """Like tiktoken: `<|endoftext|>` in `text` is an error unless allowed (then one id)."""
        if ENDOFTEXT not in text:
            return self.encode_ordinary(text)
        allowed = allowed_special == "all" or ENDOFTEXT in allowed_special
        if not allowed:
            disallowed = disallowed_special == "all" or ENDOFTEXT in disallowed_special
            if disallowed:
                raise ValueError(
                    f"text contains the special token {ENDOFTEXT!r}; pass "
                    f"allowed_special={{{ENDOFTEXT!r}}} to encode it as end-of-text, or "
                    "disallowed_special=() to encode it as plain text"
                )
            return self.encode_ordinary(text)
        ids: list[int] = []
        for i, piece in enumerate(text.split(ENDOFTEXT)):
            if i:
                ids.append(self.eot_token)
            ids.extend(self.encode_ordinary(piece))
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        out = bytearray()
        for token in ids:
            token = int(token)
            if token == self.eot_token:
                out += ENDOFTEXT.encode()
            elif 0 <= token < 256:
                out.append(token)
            else:
                raise ValueError(f"token id {token} is outside the byte vocabulary 0..256")
        return bytes(out)

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def __repr__(self) -> str:
        return "<ByteTokenizer n_vocab=257>"


@functools.cache
def get_tokenizer(name: str = "gpt2") -> tiktoken.Encoding | ByteTokenizer:
    """A tokenizer by name: "gpt2" / "r50k_base" (GPT-2's BPE), "byte", or any tiktoken name.

    Returns a `tiktoken.Encoding` (or `ByteTokenizer`), cached per name.
    """
    if name in BYTE_TOKENIZER_NAMES:
        return ByteTokenizer()
    import tiktoken

    encoding_name = TIKTOKEN_ALIASES.get(name, name)
    if encoding_name not in tiktoken.list_encoding_names():
        choices = sorted({*TIKTOKEN_ALIASES, *BYTE_TOKENIZER_NAMES,
                          *tiktoken.list_encoding_names()})
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {choices}")
    try:
        with _repo_cache_as_default():
            return tiktoken.get_encoding(encoding_name)
    except Exception as error:  # requests/urllib/OSError/hash mismatch: all mean "no file"
        raise TokenizerUnavailableError(
            f"tokenizer {name!r} is not available offline and could not be downloaded "
            f"({type(error).__name__}: {error}). Fix: run `make install` or "
            "`python scripts/prepare_tokenizer.py` (fills the cache in "
            f"{REPO_TIKTOKEN_CACHE}), or set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's "
            "cached files, or use get_tokenizer('byte')."
        ) from error


class _repo_cache_as_default:
    """Point tiktoken at the repository cache while loading, unless the user chose a cache."""

    def __enter__(self) -> None:
        user_chose = "TIKTOKEN_CACHE_DIR" in os.environ or "DATA_GYM_CACHE_DIR" in os.environ
        self.set_here = not user_chose and REPO_TIKTOKEN_CACHE.is_dir()
        if self.set_here:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(REPO_TIKTOKEN_CACHE)

    def __exit__(self, *exc_info: object) -> None:
        if self.set_here:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
