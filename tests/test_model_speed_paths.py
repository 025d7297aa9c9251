"""The model's faster compute paths change no number: one fused Q/K/V product (the state-dict
names stay W_query / W_key / W_value) and per-block activation checkpointing."""

from __future__ import annotations

import pytest
import torch

from utils.config import ModelConfig
from utils.model import GPTModel
from utils.model.layers import MultiHeadAttention

CONFIG = ModelConfig(vocab_size=97, context_length=32, embedding_dimension=48, number_of_heads=4,
                     number_of_layers=3, dropout_rate=0.0, use_attention_bias=True)


def _model(seed: int = 0, **overrides) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(ModelConfig.from_dict({**CONFIG.to_dict(), **overrides}))


def _ids(batch: int = 3, length: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, (batch, length),
                         generator=torch.Generator().manual_seed(seed))


def _loss_and_grads(model: GPTModel, ids: torch.Tensor, seed: int = 5):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks for both paths
    _, loss = model(ids[:, :-1], ids[:, 1:], return_logits=False)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("bias", [True, False])
def test_fused_qkv_equals_three_products(monkeypatch, bias):
    model = _model(use_attention_bias=bias).train()
    ids = _ids()
    assert MultiHeadAttention.fuse_qkv  # the default path is the fused one
    fused_logits = model.eval()(ids)
    fused_loss, fused_grads = _loss_and_grads(model.train(), ids)
    monkeypatch.setattr(MultiHeadAttention, "fuse_qkv", False)
    plain_logits = model.eval()(ids)
    plain_loss, plain_grads = _loss_and_grads(model.train(), ids)
    assert (fused_logits - plain_logits).abs().max() <= 1e-5
    assert (fused_loss - plain_loss).abs() <= 1e-6
    assert fused_grads.keys() == plain_grads.keys()
    for name in fused_grads:
        assert (fused_grads[name] - plain_grads[name]).abs().max() <= 1e-6, name
    assert ("transformer_blocks.0.attention.W_key.bias" in fused_grads) is bias


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_activation_checkpointing_gives_the_plain_gradients(dropout):
    model = _model(dropout_rate=dropout).train()
    ids = _ids()
    plain_loss, plain_grads = _loss_and_grads(model, ids)
    assert model.set_activation_checkpointing() is model and model.activation_checkpointing
    checkpointed_loss, checkpointed_grads = _loss_and_grads(model, ids)
    assert (plain_loss - checkpointed_loss).abs() <= 1e-6
    for name, grad in plain_grads.items():
        assert (grad - checkpointed_grads[name]).abs().max() <= 1e-6, name
    if dropout:  # the masks really are random: another seed gives another loss
        other_loss, _ = _loss_and_grads(model, ids, seed=6)
        assert (other_loss - plain_loss).abs() > 1e-4


def _saved_activation_bytes(model: GPTModel, ids: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass, counted as they are saved (parameters,
    which exist anyway, are not counted)."""
    parameters = {p.data_ptr() for p in model.parameters()}
    saved = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.data_ptr() not in parameters:
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(ids[:, :-1], ids[:, 1:], return_logits=False)
    return sum(saved)


def test_activation_checkpointing_keeps_fewer_activations():
    model = _model(number_of_layers=4).train()
    ids = _ids(batch=4)
    plain = _saved_activation_bytes(model, ids)
    checkpointed = _saved_activation_bytes(model.set_activation_checkpointing(), ids)
    # only each block's input stays (plus the head + loss's own saved gradients); the
    # plain path keeps a dozen tensors per block, several of them 4 x wider
    assert checkpointed < plain / 3, (checkpointed, plain)


def test_activation_checkpointing_leaves_inference_alone():
    model = _model().set_activation_checkpointing()
    ids = _ids(batch=1, length=12)
    calls = []
    original = torch.utils.checkpoint.checkpoint
    try:
        torch.utils.checkpoint.checkpoint = lambda *a, **k: calls.append(1) or original(*a, **k)
        with torch.no_grad():
            logits = model.eval()(ids)
        cache = model.new_kv_cache(1)
        with torch.no_grad():
            cached = model(ids, kv_cache=cache)
    finally:
        torch.utils.checkpoint.checkpoint = original
    assert calls == []
    assert (logits - cached).abs().max() <= 1e-5


def test_state_dict_names_are_unchanged_by_either_path():
    model = _model().set_activation_checkpointing()
    names = [k for k in model.state_dict() if ".attention." in k and k.startswith("transformer_blocks.0.")]
    assert names == [f"transformer_blocks.0.attention.{m}.{p}"
                     for m in ("W_query", "W_key", "W_value", "out_proj") for p in ("weight", "bias")]
