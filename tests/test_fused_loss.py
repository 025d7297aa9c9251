"""The fused output head + cross-entropy (utils/model/loss.py) against F.cross_entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from utils.config import ModelConfig
from utils.model import GPTModel
from utils.model import loss as fused_loss
from utils.model.gpt import FUSED_LOSS_MIN_VOCAB
from utils.model.loss import linear_cross_entropy
from utils.training.engine.evaluation import language_model_loss


def _loss_and_grads(function, hidden, weight, targets, scale):
    hidden = hidden.clone().requires_grad_()
    weight = weight.clone().requires_grad_()
    loss = function(hidden, weight, targets)
    (loss * scale).backward()
    return loss, hidden.grad, weight.grad


@pytest.mark.parametrize("rows, ignored", [(37, False), (37, True), (5, True)])
def test_matches_cross_entropy_of_logits(monkeypatch, rows, ignored):
    # Blocks of 8 rows, so 37 rows take several blocks and a ragged last one.
    monkeypatch.setattr(fused_loss, "ROWS_PER_BLOCK", 8)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, 16, generator=generator)
    weight = torch.randn(53, 16, generator=generator)
    targets = torch.randint(0, 53, (rows,), generator=generator)
    if ignored:
        targets[::3] = -1
    expected = _loss_and_grads(
        lambda h, w, t: F.cross_entropy(h @ w.t(), t, ignore_index=-1), hidden, weight, targets, 0.5)
    actual = _loss_and_grads(
        lambda h, w, t: linear_cross_entropy(h, w, t, ignore_index=-1), hidden, weight, targets, 0.5)
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # no gradient work when none is wanted, same loss
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, -1), expected[0])


def test_model_loss_without_logits_equals_loss_with_logits():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=97, context_length=32, embedding_dimension=48,
                         number_of_heads=4, number_of_layers=2, dropout_rate=0.0)
    model = GPTModel(config)
    ids = torch.randint(0, 97, (3, 32))
    targets = torch.randint(0, 97, (3, 32))
    logits, loss = model(ids, targets)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    no_logits, fused = model(ids, targets, return_logits=False)
    fused.backward()
    assert no_logits is None
    torch.testing.assert_close(fused, loss, rtol=1e-6, atol=1e-6)
    for name, p in model.named_parameters():  # the tied head's gradient included
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="targets"):
        model(ids, return_logits=False)


def test_second_backward_through_the_same_graph_is_refused():
    hidden = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, torch.tensor([1, 2, 3, 4]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        loss.backward()


def test_no_gradient_work_without_autograd(monkeypatch):
    calls = []
    real = fused_loss._blockwise

    def spy(hidden, weight, targets, ignore_index, with_grads, vocab_size=None):
        calls.append(with_grads)
        return real(hidden, weight, targets, ignore_index, with_grads, vocab_size)

    monkeypatch.setattr(fused_loss, "_blockwise", spy)
    hidden = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    with torch.no_grad():
        linear_cross_entropy(hidden, weight, torch.tensor([1, 2, 3, 4]))
    linear_cross_entropy(hidden, weight, torch.tensor([1, 2, 3, 4]))
    assert calls == [False, True]


def test_trainer_loss_keeps_the_logits_path_under_autocast(monkeypatch):
    """bf16/fp16 training must not route the head through the fp32 fused kernel."""
    calls = []
    real = fused_loss.linear_cross_entropy
    monkeypatch.setattr("utils.model.gpt.linear_cross_entropy",
                        lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    vocab = FUSED_LOSS_MIN_VOCAB
    model = GPTModel(ModelConfig(vocab_size=vocab, context_length=16, embedding_dimension=32,
                                 number_of_heads=2, number_of_layers=1, dropout_rate=0.0))
    ids = torch.randint(0, vocab, (2, 16))
    fp32 = language_model_loss(model, ids, ids)
    assert calls == [1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = language_model_loss(model, ids, ids)
    assert calls == [1]
    assert torch.allclose(fp32, bf16.float(), atol=0.05)


def test_small_vocabularies_take_the_logits_path(monkeypatch):
    """Below FUSED_LOSS_MIN_VOCAB the plain head + F.cross_entropy is faster; same loss and
    gradients as the fused path."""
    calls = []
    real = fused_loss.linear_cross_entropy
    monkeypatch.setattr("utils.model.gpt.linear_cross_entropy",
                        lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(vocab_size=65, context_length=16, embedding_dimension=32,
                                 number_of_heads=2, number_of_layers=1, dropout_rate=0.0))
    ids = torch.randint(0, 65, (2, 17))
    plain = language_model_loss(model, ids[:, :-1], ids[:, 1:])
    assert calls == []
    plain.backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    monkeypatch.setattr("utils.model.gpt.FUSED_LOSS_MIN_VOCAB", 0)  # force the fused path
    _, fused = model(ids[:, :-1], ids[:, 1:], return_logits=False)
    assert calls == [1]
    fused.backward()
    assert torch.allclose(plain, fused, atol=1e-6)
    for p, g in zip(model.parameters(), plain_grads, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-6)
