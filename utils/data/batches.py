"""Splitting token ids into train / validation, and the deterministic BatchLoader.

    train, val = train_val_split(corpus.tokens, 0.1)                 # val is the end
    train, val = train_val_split(corpus.tokens, 0.1, by="document")  # every ~10th document
    loader = BatchLoader(train, batch_size=8, context_length=256, seed=0)
    x, y = loader.get_batch(step)          # int64 [8, 256]; y is x shifted by one

No split copies the ids: each side is a slice of the memmap or a `TokenView` over several
slices. A batch is a pure function of (seed, step), so resuming at step N replays exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

SPLITS = ("end", "block", "document")
DEFAULT_BLOCK_TOKENS = 1 << 16
SCAN_TOKENS = 1 << 24  # tokens read at a time when looking for document boundaries


class TokenView:
    """Several 1-D token arrays read as one, without copying them.

    Used for llm.c's many shards and for a validation set spread over the corpus. Supports
    what training needs: `len`, integer indexing with arrays of any shape (gathered part by
    part), slices, and `np.asarray` (which does copy: for small views).
    """

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        self.parts = [part for part in parts if len(part)]
        if not self.parts:
            raise ValueError("TokenView needs at least one non-empty array of token ids")
        self.dtype = self.parts[0].dtype
        self._starts = np.cumsum([0] + [len(part) for part in self.parts])

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self._gather(np.arange(*index.indices(len(self))))
        if np.ndim(index) == 0:
            return self._gather(np.asarray([index]))[0]
        return self._gather(np.asarray(index))

    def _gather(self, index: np.ndarray) -> np.ndarray:
        flat = index.ravel().astype(np.int64, copy=False)
        flat = np.where(flat < 0, flat + len(self), flat)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"token index out of range for a TokenView of {len(self)} ids")
        which = np.searchsorted(self._starts, flat, side="right") - 1
        out = np.empty(flat.shape, dtype=self.dtype)
        for part in np.unique(which):
            mask = which == part
            out[mask] = self.parts[part][flat[mask] - self._starts[part]]
        return out.reshape(index.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        joined = np.concatenate([np.asarray(part) for part in self.parts])
        return joined if dtype is None else joined.astype(dtype)

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()

    def __repr__(self) -> str:
        return f"TokenView({len(self):,} ids in {len(self.parts)} parts, {self.dtype})"


def _view(tokens: Any, ranges: list[tuple[int, int]]) -> Any:
    """tokens[a:b] for one range (a plain slice, no copy), else a TokenView of the slices."""
    if len(ranges) == 1:
        return tokens[ranges[0][0]:ranges[0][1]]
    return TokenView([tokens[a:b] for a, b in ranges])


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in ranges:
        if b <= a:
            continue
        if merged and merged[-1][1] == a:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def document_bounds(tokens: Any, eot_token: int) -> np.ndarray:
    """Start of each document (0, and one past every end-of-text id), scanned in chunks."""
    starts = [np.zeros(1, dtype=np.int64)]
    for offset in range(0, len(tokens), SCAN_TOKENS):
        chunk = np.asarray(tokens[offset:offset + SCAN_TOKENS])
        starts.append(np.flatnonzero(chunk == eot_token).astype(np.int64) + offset + 1)
    bounds = np.concatenate(starts)
    return bounds[bounds < len(tokens)]


def _assign(lengths: np.ndarray, val_fraction: float) -> np.ndarray:
    """True for the units that go to validation: a unit goes there when that brings the
    validation share of what has been seen closer to `val_fraction`, so validation is spread
    evenly and a long document does not overshoot it."""
    val = np.zeros(len(lengths), dtype=bool)
    seen = taken = 0
    for i, length in enumerate(lengths.tolist()):
        seen += length
        if taken + length / 2 <= val_fraction * seen:
            val[i] = True
            taken += length
    return val


def _units(tokens: Any, by: str, block_tokens: int, eot_token: int | None) -> np.ndarray:
    """Start offsets of the units a split hands out whole (blocks or documents)."""
    if by == "block":
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens!r}")
        # A corpus of fewer than 100 blocks gets smaller blocks, so val can be spread at all.
        block_tokens = max(1, min(block_tokens, len(tokens) // 100))
        return np.arange(0, len(tokens), block_tokens, dtype=np.int64)
    if eot_token is None:
        raise ValueError('by="document" needs eot_token= (the end-of-text id that separates '
                         "documents, e.g. tokenizer.eot_token)")
    return document_bounds(tokens, eot_token)


def train_val_split(tokens: Any, val_fraction: float = 0.1, *, by: str = "end",
                    block_tokens: int = DEFAULT_BLOCK_TOKENS, eot_token: int | None = None
                    ) -> tuple[Any, Any]:
    """(train, val) views of `tokens`, without copying them.

    by="end" (default): val is the last `val_fraction` of the corpus. by="block": the corpus
    is cut into `block_tokens` blocks (smaller when that would make fewer than 100) and about
    every (1/val_fraction)-th block is val.
    by="document": whole documents (ended by `eot_token`) are dealt out the same way, so no
    document is half in each split. The fraction of tokens in val is about `val_fraction`.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    if by not in SPLITS:
        raise ValueError(f"unknown split {by!r}; choose one of {SPLITS}")
    if by == "end":
        num_val = round(len(tokens) * val_fraction)
        train_ranges, val_ranges = [(0, len(tokens) - num_val)], [(len(tokens) - num_val,
                                                                    len(tokens))]
    else:
        starts = _units(tokens, by, block_tokens, eot_token)
        ends = np.append(starts[1:], len(tokens))
        to_val = _assign(ends - starts, val_fraction)
        pairs = list(zip(starts.tolist(), ends.tolist(), strict=True))
        train_ranges = _merge([p for p, v in zip(pairs, to_val, strict=True) if not v])
        val_ranges = _merge([p for p, v in zip(pairs, to_val, strict=True) if v])
    num_train = sum(b - a for a, b in train_ranges)
    num_val = sum(b - a for a, b in val_ranges)
    if num_val < 1 or num_train < 1:
        raise ValueError(
            f"cannot split {len(tokens)} tokens with val_fraction={val_fraction}"
            + (f" by {by}" if by != "end" else "") + f": that leaves {num_train} training "
            f"and {num_val} validation tokens; use more text or a val_fraction closer to 0.5"
            + (" (or a split by block)" if by == "document" else "")
        )
    return _view(tokens, train_ranges), _view(tokens, val_ranges)


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
        if type(tokens).__module__.startswith("torch"):  # a tensor; torch imported lazily
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
        import torch  # here, so the preparation workers that import utils.data stay light

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

    def for_rank(self, rank: int, world_size: int, name: str = "tokens") -> BatchLoader:
        """This loader for one rank of `world_size` processes: itself when it was built for
        that rank, else the same stream re-sliced (only a one-process loader can be)."""
        if self.world_size == world_size and self.rank == rank:
            return self
        if self.world_size != 1:
            raise ValueError(f"{name} loader was built for world_size={self.world_size} "
                             f"but this run has {world_size} processes; pass the token ids")
        loader = BatchLoader(self.tokens, self.batch_size, self.context_length,
                             seed=self.seed, rank=rank, world_size=world_size, name=name)
        loader.step = self.step
        return loader

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


def hash_tokens(*arrays: Any) -> str:
    """sha256 of token arrays (numpy, memmap, tensor, or a view made of several parts such
    as `TokenView`), read in 64 MB pieces: never a copy of a whole corpus. A run's
    fingerprint names its data by this hash of its training and validation ids."""
    digest = hashlib.sha256()
    for array in arrays:
        parts = getattr(array, "parts", None) or [array]
        for part in parts:
            if part is None:
                digest.update(b"none")
                continue
            if hasattr(part, "numpy") and not isinstance(part, np.ndarray):
                part = part.detach().cpu().numpy()
            flat = np.asarray(part).reshape(-1)
            digest.update(f"{flat.dtype.str}:{flat.size};".encode())
            step = max(1, (64 << 20) // max(1, flat.itemsize))
            for start in range(0, flat.size, step):
                digest.update(np.ascontiguousarray(flat[start:start + step]).tobytes())
    return digest.hexdigest()
