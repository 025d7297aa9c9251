"""compare_checkpoints / plot_weight_changes / compare_predictions on tiny checkpoints."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.checkpoint_errors import ArchitectureMismatchError
from utils.config import ModelConfig, TrainingConfig
from utils.data import BatchLoader
from utils.generation import generate_text
from utils.model import GPTModel
from utils.tokenizer import get_tokenizer
from utils.training.engine.compare import (
    compare_checkpoints,
    compare_predictions,
    plot_weight_changes,
)
from utils.training.engine.evaluation import validation_loss

matplotlib.use("Agg")

TINY = ModelConfig(vocab_size=257, context_length=16, embedding_dimension=16,
                   number_of_heads=2, number_of_layers=2, dropout_rate=0.0)


def save(path, model, step):
    torch.save({"model_state_dict": model.state_dict(), "config": model.config.to_dict(),
                "global_step": step}, path)
    return path


def test_relative_change_per_layer(tmp_path):
    torch.manual_seed(0)
    a = GPTModel(TINY)
    b = GPTModel(TINY)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.transformer_blocks[1].attention.W_key.weight.mul_(1.5)  # ||b - a|| = 0.5 ||a||
        b.final_norm.shift.add_(0.25)  # ||a|| = 0: relative change undefined
    table = compare_checkpoints(save(tmp_path / "a.pt", a, 1), save(tmp_path / "b.pt", b, 2))
    assert list(table.columns) == ["layer", "shape", "parameters", "norm_a", "norm_b",
                                   "abs_change", "relative_change"]
    assert len(table) == len(list(a.parameters()))  # the tied head is listed once
    assert "lm_head.weight" not in set(table["layer"])
    by_layer = table.set_index("layer")
    assert by_layer.loc["transformer_blocks.1.attention.W_key.weight", "relative_change"] \
        == pytest.approx(0.5, rel=1e-6)  # float32 rounding of x1.5
    shift = by_layer.loc["final_norm.shift"]
    assert math.isnan(shift["relative_change"]) and shift["abs_change"] == pytest.approx(0.25 * 4)
    unchanged = table[~table["layer"].isin(["transformer_blocks.1.attention.W_key.weight",
                                            "final_norm.shift"])]
    assert (unchanged["abs_change"] == 0).all()
    # models and state dicts work as well as paths
    assert compare_checkpoints(a, b.state_dict())["abs_change"].equals(table["abs_change"])


def test_plot_has_one_bar_per_defined_layer(tmp_path):
    torch.manual_seed(0)
    a, b = GPTModel(TINY), GPTModel(TINY)
    table = compare_checkpoints(a, b)
    figure = plot_weight_changes(table)
    axes = figure.axes[0]
    defined = table.dropna(subset=["relative_change"])
    assert len(axes.patches) == len(defined)
    assert [t.get_text() for t in axes.get_yticklabels()] == list(defined["layer"])
    widths = [p.get_width() for p in axes.patches]
    assert np.allclose(widths, defined["relative_change"])
    assert len(plot_weight_changes(table, top=3).axes[0].patches) == 3
    figure.savefig(tmp_path / "changes.png")
    assert (tmp_path / "changes.png").stat().st_size > 0


def test_different_architectures_cannot_be_compared():
    other = ModelConfig(257, 16, 16, 2, 3, 0.0)
    with pytest.raises(ArchitectureMismatchError, match="only in the second"):
        compare_checkpoints(GPTModel(TINY), GPTModel(other))


def test_compare_predictions_side_by_side(tmp_path):
    tokenizer = get_tokenizer("byte")
    val_tokens = np.array(tokenizer.encode("the quick brown fox jumps over the lazy dog " * 6),
                          dtype=np.uint16)
    paths, models = [], []
    for step in (1, 2):
        torch.manual_seed(step)
        model = GPTModel(TINY).eval()
        models.append(model)
        paths.append(save(tmp_path / f"step{step}.pt", model, step))
    table = compare_predictions(paths, val_tokens, tokenizer, "the quick", max_new_tokens=6,
                                batch_size=3, max_batches=2, device="cpu")
    assert list(table["checkpoint"]) == ["step1.pt", "step2.pt"]
    assert list(table["global_step"]) == [1, 2]
    for row, model in zip(table.itertuples(), models, strict=True):
        # The one validation loss: batches 0 and 1 of the Trainer's validation loader.
        loader = BatchLoader(val_tokens, 3, 16, seed=TrainingConfig().seed + 1)
        batches = [loader.get_batch(i) for i in range(2)]
        with torch.no_grad():
            losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten())
                      for x, y in batches]
        assert row.val_loss == pytest.approx(torch.stack(losses).mean().item(), abs=1e-5)
        assert row.perplexity == pytest.approx(math.exp(row.val_loss))
        prompt = tokenizer.encode("the quick")
        expected = generate_text(model, prompt, 6, temperature=0)[len(prompt):]
        assert row.sample == tokenizer.decode(expected)
    with pytest.raises(ValueError, match="validation data has 10 tokens"):
        validation_loss(models[0], val_tokens[:10])
