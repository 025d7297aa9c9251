"""GPTModel: GPT-2's maths exactly, so converted OpenAI weights give Hugging Face's logits."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from utils.config import ModelConfig
from utils.model.layers import KVCache, LayerNorm, TransformerBlock
from utils.model.loss import linear_cross_entropy

# Below this vocabulary the logits are small (768 rows x 65 characters: 200 KB) and the
# fused head + loss is a dozen small kernels where `F.cross_entropy` is three: fwd + bwd
# 0.63 ms vs 0.40 ms at 65, about even at 512, fused 14% faster at 2048 and 37% at 50304
# (bench/train.py's recipe; CPU, 2 threads).
FUSED_LOSS_MIN_VOCAB = 1024

# The head's products run on a vocabulary padded to a multiple of this on CUDA. Tensor cores
# need matrix sides in multiples of 8 (16-byte rows of fp16/bf16); at GPT-2's odd 50,257 rows
# cuBLAS falls back to Turing-era kernels: the head's three products (logits, and their two
# gradients) took 31.2 ms at 50,257 rows and 5.3 ms at 50,304 on an H200 (bf16, 16 x 1024
# tokens). 64 is nanoGPT's choice (50,304), a whole number of the kernels' tiles.
HEAD_ALIGNMENT = 64
# Below this many rows (decoding a token or a few at a time) the head is a matrix-vector
# product that alignment does not speed up, and padding would copy the weight per token.
HEAD_PADDING_MIN_ROWS = 64


def padded_vocab_size(vocab_size: int, multiple: int = HEAD_ALIGNMENT) -> int:
    """`vocab_size` rounded up to a multiple of `multiple` (50,257 -> 50,304)."""
    return -(-vocab_size // multiple) * multiple


def pads_head(rows: int, device_type: str, vocab_size: int, forced: bool | None = None) -> bool:
    """Whether the head computes on the padded vocabulary: `forced` (True/False) wins;
    otherwise on CUDA for products of at least `HEAD_PADDING_MIN_ROWS` rows, when the
    vocabulary is not aligned already. CPU kernels gain nothing from it."""
    if padded_vocab_size(vocab_size) == vocab_size:
        return False
    if forced is not None:
        return forced
    return device_type == "cuda" and rows >= HEAD_PADDING_MIN_ROWS


class GPTModel(nn.Module):
    """Decoder-only transformer; `model(ids)` -> logits, `model(ids, targets)` -> (logits, loss).

    The output head shares its weight with the token embedding (GPT-2 ties them), so
    `lm_head.weight` and `token_embedding.weight` are the same tensor.

    On CUDA the head's products run on a vocabulary padded with zero rows to a multiple of
    `HEAD_ALIGNMENT` (`pads_head`), invisibly: the parameters, the state dict and every file
    keep `vocab_size` rows, the logits returned have `vocab_size` columns, and the padded
    columns never enter a softmax, so the loss and the gradients are the unpadded ones.
    `pad_head = True / False` (on the class or an instance) forces it either way; None: auto.
    """

    pad_head: bool | None = None

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dimension
        self.token_embedding = nn.Embedding(config.vocab_size, d)
        self.position_embedding = nn.Embedding(config.context_length, d)
        self.embedding_dropout = nn.Dropout(config.dropout_rate)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(config, i) for i in range(config.number_of_layers)
        )
        self.final_norm = LayerNorm(d)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.tie_weights()
        self.apply(self._init_weights)
        # Recompute each block's activations in the backward pass instead of keeping them
        # (`set_activation_checkpointing`): memory for one block's activations instead of
        # all of them, for about one extra forward pass of compute.
        self.activation_checkpointing = False

    def set_activation_checkpointing(self, enabled: bool = True) -> GPTModel:
        """Switch per-block activation checkpointing on or off; returns the model.

        It only acts when gradients are being computed: evaluation and generation run
        exactly as without it. Gradients equal the plain path's (dropout masks are replayed
        from the saved RNG state).
        """
        self.activation_checkpointing = bool(enabled)
        return self

    def tie_weights(self) -> None:
        """Point the head at the embedding (again after `load_state_dict(assign=True)`)."""
        self.lm_head.weight = self.token_embedding.weight

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2's scheme: N(0, 0.02) everywhere, residual projections scaled by
        # 1/sqrt(2 * layers) so the residual stream's variance does not grow with depth.
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "is_residual_projection", False):
                std /= math.sqrt(2 * self.config.number_of_layers)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def new_kv_cache(self, batch_size: int, max_length: int | None = None) -> KVCache:
        """An empty cache for incremental decoding of up to `max_length` positions."""
        weight = self.token_embedding.weight
        return KVCache(self.config, batch_size, max_length or self.config.context_length,
                       weight.device, weight.dtype)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, last_position_only: bool = False,
                return_logits: bool = True):
        """Logits `[B, T, vocab]` (`[B, 1, vocab]` with `last_position_only`, which skips the
        head's biggest matrix product for all but the last position when generating).

        With `targets`, `(logits, loss)`; with `return_logits=False` too, `(None, loss)`:
        what training needs. In fp32 the head and the loss run fused block by block
        (utils/model/loss.py), which never holds all the logits, at a fraction of the memory
        traffic. Under bf16/fp16 autocast the head runs as one 16-bit product (the fused
        path's fp32 products would give up the tensor cores) and the loss in fp32, here
        inside forward so that torch.compile fuses the upcast, log_softmax and the loss
        into one pass over the logits instead of three. Below `FUSED_LOSS_MIN_VOCAB`
        (character models) the logits are small and the plain head + `F.cross_entropy`
        is faster than the fused path.
        """
        if last_position_only and targets is not None:
            raise ValueError("last_position_only=True gives no loss; pass targets without it")
        if not return_logits and targets is None:
            raise ValueError("return_logits=False only makes sense with targets")
        batch, length = input_ids.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + length > self.config.context_length:
            raise ValueError(
                f"sequence of {start + length} tokens exceeds context_length "
                f"{self.config.context_length}"
            )
        positions = torch.arange(start, start + length, device=input_ids.device)
        x = self.embedding_dropout(self.token_embedding(input_ids) + self.position_embedding(positions))
        checkpointing = (self.activation_checkpointing and kv_cache is None
                         and torch.is_grad_enabled())
        for block in self.transformer_blocks:
            if checkpointing:
                # use_reentrant=False: the supported variant; it works when the input needs
                # no grad, with keyword arguments, and nests with torch.compile
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, kv_cache)
        if kv_cache is not None:
            kv_cache.length += length
        if last_position_only:
            x = x[:, -1:]
        x = self.final_norm(x)
        if not return_logits:
            flat = x.reshape(-1, x.size(-1))
            if (torch.is_autocast_enabled(flat.device.type)
                    or self.config.vocab_size < FUSED_LOSS_MIN_VOCAB):
                logits = self.head(flat).float()  # no copy when already fp32
                return None, F.cross_entropy(logits, targets.reshape(-1), ignore_index=-1)
            loss = linear_cross_entropy(flat, self._head_weight(flat), targets.reshape(-1),
                                        ignore_index=-1, vocab_size=self.config.vocab_size)
            return None, loss
        logits = self.head(x)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1)
        return logits, loss

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `[..., vocab_size]` of the final hidden states `x` (the tied output head).

        When the head is padded the product runs over the padded weight and the real
        columns are returned as a view (a `.float()` or `.contiguous()` of it copies only
        those); the padded columns, products with zero rows, are never seen.
        """
        weight = self._head_weight(x)
        if weight is self.lm_head.weight:
            return self.lm_head(x)
        return F.linear(x, weight)[..., : self.config.vocab_size]

    def _head_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The head's weight for hidden states `x`: `lm_head.weight` itself, or a copy
        padded with zero rows (`pads_head`). The padding's gradient is dropped by autograd
        (the backward of a pad is a slice), so the parameter's gradient keeps its shape."""
        weight = self.lm_head.weight
        rows = x.numel() // x.size(-1)
        if not pads_head(rows, x.device.type, self.config.vocab_size, self.pad_head):
            return weight
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            # Cast first: one 16-bit copy, padded, instead of an fp32 copy that autocast
            # would then cast again (it caches casts of parameters only, not of the pad).
            weight = weight.to(torch.get_autocast_dtype(device_type))
        extra = padded_vocab_size(self.config.vocab_size) - self.config.vocab_size
        return F.pad(weight, (0, 0, 0, extra))


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (the tied head counted once), as Hugging Face counts them."""
    return sum(p.numel() for p in model.parameters())


# torch.nn.init functions that nn.Linear, nn.Embedding and `_init_weights` call on construction.
_INIT_FUNCTIONS = ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                   "xavier_uniform_", "xavier_normal_", "zeros_", "ones_", "constant_")
_init_lock = threading.Lock()


@contextlib.contextmanager
def _without_weight_init() -> Iterator[None]:
    """Make torch.nn.init's fill functions no-ops while a skeleton is built.

    Loading assigns every value anyway, and on the meta device `normal_` is not free: its
    first call imports torch's reference decompositions (sympy and ~800 modules, seconds).
    Hugging Face's `no_init_weights` does the same. The lock keeps two threads from
    interleaving their patch and restore.
    """
    with _init_lock:
        saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
        try:
            for name in _INIT_FUNCTIONS:
                setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
            yield
        finally:
            for name, function in saved.items():
                setattr(nn.init, name, function)


def meta_skeleton(config: ModelConfig) -> GPTModel:
    """A GPTModel on the meta device with no initialiser run: shapes only, no memory.

    For loading by `load_state_dict(..., assign=True)` followed by `tie_weights()`.
    """
    with torch.device("meta"), _without_weight_init():
        return GPTModel(config)
