"""GPT-2 model: `GPTModel` and its layers."""

from utils.model.gpt import GPTModel, count_parameters, meta_skeleton
from utils.model.layers import FeedForward, KVCache, LayerNorm, MultiHeadAttention, TransformerBlock

__all__ = ["GPTModel", "count_parameters", "meta_skeleton", "FeedForward", "KVCache", "LayerNorm",
           "MultiHeadAttention", "TransformerBlock"]
