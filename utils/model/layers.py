"""GPT-2's building blocks, with seed 000's parameter names (the checkpoint contract)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.config import ModelConfig

LAYER_NORM_EPS = 1e-5  # GPT-2's layer_norm_epsilon


class LayerNorm(nn.Module):
    """LayerNorm whose parameters are called `scale` and `shift` (seed 000's names)."""

    def __init__(self, dimension: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dimension))
        self.shift = nn.Parameter(torch.zeros(dimension))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, LAYER_NORM_EPS)


class FeedForward(nn.Module):
    """Linear -> tanh-approximate GELU -> Linear; `net.0` and `net.2` in the state dict."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.embedding_dimension
        self.net = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
        self.net[2].is_residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class KVCache:
    """Keys and values of past positions, preallocated to `max_length` per layer.

    Preallocation keeps each decoding step to one small write per layer, instead of
    re-copying the whole history with `torch.cat` every token.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_length: int,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        shape = (batch_size, config.number_of_heads, max_length, config.head_dimension)
        self.keys = [torch.empty(shape, device=device, dtype=dtype)
                     for _ in range(config.number_of_layers)]
        self.values = [torch.empty(shape, device=device, dtype=dtype)
                       for _ in range(config.number_of_layers)]
        self.max_length = max_length
        self.length = 0  # positions filled; advanced by the model after all layers ran

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; asked for {end}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class MultiHeadAttention(nn.Module):
    """Causal self-attention whose W_query / W_key / W_value stay separate modules (the
    state-dict names are the checkpoint contract) but run as one matrix product.

    One [d, 3d] product instead of three [d, d] ones: fewer, larger kernels and one read of
    the input instead of three, which is what a small model's step is short of
    (bench/train.py measures both in one run). `fuse_qkv = False` (on the class or an
    instance) runs the three products, for that comparison.
    """

    fuse_qkv = True

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        d = config.embedding_dimension
        self.layer_index = layer_index
        self.number_of_heads = config.number_of_heads
        self.head_dimension = config.head_dimension
        self.dropout_rate = config.dropout_rate
        self.W_query = nn.Linear(d, d, bias=config.use_attention_bias)
        self.W_key = nn.Linear(d, d, bias=config.use_attention_bias)
        self.W_value = nn.Linear(d, d, bias=config.use_attention_bias)
        self.out_proj = nn.Linear(d, d)
        self.out_proj.is_residual_projection = True
        self.residual_dropout = nn.Dropout(config.dropout_rate)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.number_of_heads, self.head_dimension).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        batch, length, d = x.shape
        if self.fuse_qkv:
            # Concatenating the weights costs a 3d x d copy per call, noise next to the
            # activations' [B*T, 3d]; its backward hands each weight its own slice of the
            # gradient, so the three parameters train exactly as before.
            weight = torch.cat((self.W_query.weight, self.W_key.weight, self.W_value.weight))
            bias = None
            if self.W_query.bias is not None:
                bias = torch.cat((self.W_query.bias, self.W_key.bias, self.W_value.bias))
            q, k, v = (self._heads(part) for part in F.linear(x, weight, bias).split(d, dim=2))
        else:
            q, k, v = (self._heads(self.W_query(x)), self._heads(self.W_key(x)),
                       self._heads(self.W_value(x)))
        past = 0
        if kv_cache is not None:
            past = kv_cache.length
            k, v = kv_cache.update(self.layer_index, k, v)
        dropout = self.dropout_rate if self.training else 0.0
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        elif length == 1:
            # One new query may look at every cached position: no mask needed.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            # Several new queries after a cached prefix: causal mask aligned bottom-right.
            total = past + length
            mask = torch.ones(length, total, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(batch, length, d)
        return self.residual_dropout(self.out_proj(y))


class TransformerBlock(nn.Module):
    """Pre-LN block: x + attention(norm1(x)), then x + feed_forward(norm2(x))."""

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm(config.embedding_dimension)
        self.attention = MultiHeadAttention(config, layer_index)
        self.norm2 = LayerNorm(config.embedding_dimension)
        self.feed_forward = FeedForward(config)
        self.residual_dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), kv_cache)
        return x + self.residual_dropout(self.feed_forward(self.norm2(x)))
