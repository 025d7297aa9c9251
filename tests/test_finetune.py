"""freeze / unfreeze / suggested_finetune_lr on a tiny GPTModel."""

from __future__ import annotations

import pytest
import torch

from utils.config import ModelConfig
from utils.finetune import freeze, suggested_finetune_lr, unfreeze
from utils.model import GPTModel

TINY = ModelConfig(vocab_size=64, context_length=16, embedding_dimension=16,
                   number_of_heads=2, number_of_layers=3, dropout_rate=0.0)


def test_freeze_embeddings_and_lower_blocks_and_training_leaves_them_alone():
    torch.manual_seed(0)
    model = GPTModel(TINY).train()
    report = freeze(model, embeddings=True, first_n_blocks=2)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(report.frozen)
    assert frozen == {n for n, _ in model.named_parameters()
                      if n.startswith(("token_embedding", "position_embedding",
                                       "transformer_blocks.0.", "transformer_blocks.1."))}
    assert not model.lm_head.weight.requires_grad  # tied to the frozen embedding
    assert any("tied" in note for note in report.notes)
    total = sum(p.numel() for p in model.parameters())
    assert report.frozen_parameters + report.trainable_parameters == total
    assert report.trainable_parameters == sum(p.numel() for p in model.parameters()
                                              if p.requires_grad)
    assert f"{report.frozen_parameters:,} parameters" in str(report)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 64, (2, 8))
    model(ids, ids)[1].backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        changed = not torch.equal(parameter, before[name])
        assert changed == (name not in frozen), name

    assert unfreeze(model) == total and all(p.requires_grad for p in model.parameters())
    assert freeze(model, embeddings=False).frozen == []


def test_freeze_rejects_more_blocks_than_the_model_has():
    with pytest.raises(ValueError, match="between 0 and 3"):
        freeze(GPTModel(TINY), first_n_blocks=4)


def test_suggested_finetune_lr_is_a_tenth():
    assert suggested_finetune_lr(6e-4) == pytest.approx(6e-5)
    assert suggested_finetune_lr(3e-4, factor=1 / 30) == pytest.approx(1e-5)
    with pytest.raises(ValueError):
        suggested_finetune_lr(0.0)
