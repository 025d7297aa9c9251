"""The checkpoint picker's widgets and callback, driven without a browser."""

from __future__ import annotations

import pytest
import torch

from utils import widgets
from utils.checkpoint_errors import NoCheckpointsError
from utils.config import ModelConfig
from utils.model import GPTModel
from utils.training.engine.checkpoint import save_checkpoint

TINY = ModelConfig(vocab_size=64, context_length=16, embedding_dimension=16,
                   number_of_heads=2, number_of_layers=1, dropout_rate=0.0)


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    model = GPTModel(TINY)
    for step, val_loss in ((10, 3.0), (20, 2.0)):
        save_checkpoint({"model_state_dict": model.state_dict(), "config": TINY.to_dict(),
                         "epoch": 0, "global_step": step, "train_loss": val_loss + 0.5,
                         "val_loss": val_loss, "learning_rate": 1e-3,
                         "timestamp": f"2025-11-22T06:00:{step:02d}"}, tmp_path)
    return tmp_path


def test_dropdown_lists_checkpoints_best_first_and_load_calls_back(folder):
    calls = []
    picker = widgets.checkpoint_picker(folder, on_load=lambda path: calls.append(path) or "ok",
                                       force_widgets=True)
    labels = [label for label, _ in picker.dropdown.options]
    assert labels[0].startswith("[0] epoch 0 | step 20 |") and "val_loss=2.0000" in labels[0]
    assert labels[1].startswith("[1] epoch 0 | step 10 |") and "train_loss=3.5000" in labels[1]
    assert picker.selected_path.name.startswith("checkpoint_epoch0000_step000020")
    picker.dropdown.value = picker.dropdown.options[1][1]
    picker.button.click()
    assert [p.name for p in calls] == [picker.infos[1].filename]
    assert picker.result == "ok" and picker.error is None


def test_default_load_builds_the_model_and_errors_are_shown_not_raised(folder, tmp_path):
    picker = widgets.checkpoint_picker(folder, force_widgets=True)
    picker.button.click()
    model, checkpoint = picker.result
    assert checkpoint["global_step"] == 20 and model.config == TINY
    # the file disappears between listing and clicking: the error is captured for display
    picker.selected_path.unlink()
    picker.button.click()
    assert type(picker.error).__name__ == "CheckpointNotFoundError"


def test_falls_back_to_the_printed_table_without_a_frontend(folder, capsys):
    assert not widgets.widgets_can_render()  # pytest runs outside a kernel
    assert widgets.checkpoint_picker(folder) is None
    printed = capsys.readouterr().out
    assert "AVAILABLE CHECKPOINTS" in printed and "→ [0] Epoch  0 | Step   20" in printed
    assert "CHECKPOINT_OVERRIDE" in printed


def test_no_checkpoints(tmp_path):
    with pytest.raises(NoCheckpointsError, match="train first") as raised:
        widgets.checkpoint_picker(tmp_path, force_widgets=True)
    assert "Cell " not in str(raised.value)  # the notebook adds its cells (utils.forms)
