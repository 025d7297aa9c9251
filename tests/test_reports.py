"""The load-weights reports: content (numbers, names, the arrow), not whitespace."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from utils import checkpoint_errors as errors
from utils import reports
from utils.config import ModelConfig
from utils.finetune import freeze
from utils.model import GPTModel
from utils.training.engine.loading import load_pretrained_model
from utils.training.engine.recovery import CheckpointInfo

TINY = ModelConfig(vocab_size=64, context_length=16, embedding_dimension=16,
                   number_of_heads=2, number_of_layers=2, dropout_rate=0.0)


def info(step: int, val_loss: float | None, folder: Path = Path("ckpts")) -> CheckpointInfo:
    name = f"checkpoint_epoch{step // 10:04d}_step{step:06d}_20251122_0654{step % 60:02d}.pt"
    return CheckpointInfo(path=folder / name, filename=name, epoch=step // 10, global_step=step,
                          train_loss=0.4231 if val_loss else None, val_loss=val_loss,
                          learning_rate=5e-5)


def rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if "] Epoch" in line]


def test_available_checkpoints_marks_the_selected_row():
    infos = [info(9, 0.3876), info(8, 0.3921), info(7, None)]
    text = reports.available_checkpoints_report(infos, infos[1].path)
    assert "AVAILABLE CHECKPOINTS" in text
    first, second, third = rows(text)
    assert second.startswith("→ [1] Epoch")
    assert not first.startswith("→") and not third.startswith("→")
    assert "Step    9" in first and "train_loss=0.4231" in first and "val_loss=0.3876" in first
    assert "val_loss=n/a" in third  # a checkpoint saved before any evaluation
    assert infos[0].filename in text.splitlines()[text.splitlines().index(first) + 1]
    assert "→" not in reports.available_checkpoints_report(infos, "elsewhere.pt")
    assert "(no checkpoints)" in reports.available_checkpoints_report([], None)


def test_selection_and_loading_and_checkpoint_info(tmp_path):
    torch.manual_seed(0)
    source = GPTModel(TINY)
    path = tmp_path / "checkpoint_epoch0009_step000009_20251122_065455.pt"
    torch.save({"model_state_dict": source.state_dict(), "config": TINY.to_dict(), "epoch": 9,
                "global_step": 9, "train_loss": 0.4231, "val_loss": 0.3876,
                "learning_rate": 5e-5, "timestamp": "2025-01-22T06:54:55"}, path)
    model, checkpoint = load_pretrained_model(path, device="cpu")

    text = reports.selection_report(path, "from Cell 33 (Checkpoint Recovery)")
    assert f"Selected: {path.name}" in text
    assert "Selection Method: From Cell 33 (Checkpoint Recovery)" in text

    text = reports.loading_report(path, model)
    assert "Weights loaded successfully" in text and "Device: cpu" in text
    assert "Mode: Evaluation (dropout/batchnorm frozen)" in text
    assert "Mode: Training" in reports.loading_report(path, model.train())

    text = reports.checkpoint_info_report(checkpoint)
    for expected in ("Epoch: 9", "Global Step: 9", "Timestamp: 2025-01-22 06:54:55",
                     "Train Loss: 0.4231", "Val Loss: 0.3876", "Learning Rate: 0.000050"):
        assert expected in text
    assert "Val Loss: n/a" in reports.checkpoint_info_report({"epoch": 1})


def test_model_info_counts_tied_weights_once_and_frozen_parameters():
    model = GPTModel(TINY)
    unique = sum(p.numel() for p in model.parameters())
    all_named = sum(v.numel() for v in model.state_dict().values())
    assert all_named == unique + 64 * 16  # the state dict lists the tied head twice
    text = reports.model_info_report(model)
    assert f"Total: {unique:,}" in text and f"Trainable: {unique:,}" in text
    assert "Frozen: 0" in text
    assert f"Model Size: {unique * 4 / 2**20:.2f} MB (FP32)" in text
    freeze(model, embeddings=True)
    embedding_numel = 64 * 16 + 16 * 16
    text = reports.model_info_report(model)
    assert f"Frozen: {embedding_numel:,}" in text
    assert f"Trainable: {unique - embedding_numel:,}" in text
    text = reports.model_info_report(model.to(torch.bfloat16))
    assert f"Model Size: {unique * 2 / 2**20:.2f} MB (BF16)" in text


def test_architecture_preview_lists_five_then_the_rest():
    model = GPTModel(TINY)
    named = list(model.named_parameters())
    text = reports.architecture_preview(model)
    assert "1. token_embedding.weight" in text and "Shape: [64, 16]" in text
    assert "5. transformer_blocks.0.attention.W_query.weight" in text
    assert "6." not in text and "Device: cpu" in text
    assert f"... and {len(named) - 5} more" in text
    short = reports.architecture_preview(model, n=len(named))
    assert "more" not in short


def test_next_steps_depend_on_mode():
    model = GPTModel(TINY)
    assert "model.train()" in reports.next_steps_report(model.eval())
    assert "model.eval()" in reports.next_steps_report(model.train())


def test_full_report_has_every_section_in_order(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "c.pt"
    torch.save({"model_state_dict": GPTModel(TINY).state_dict(), "config": TINY.to_dict(),
                "epoch": 2}, path)
    model, checkpoint = load_pretrained_model(path, device="cpu")
    infos = [CheckpointInfo(path=path, filename="c.pt", epoch=2, global_step=20, val_loss=1.0)]
    text = reports.full_load_report(path, "manual override", model, checkpoint, infos)
    titles = ["AVAILABLE CHECKPOINTS", "Selection Method: Manual override",
              "LOADING MODEL WEIGHTS", "CHECKPOINT INFO", "MODEL INFO",
              "ARCHITECTURE PREVIEW", "NEXT STEPS"]
    positions = [text.index(title) for title in titles]
    assert positions == sorted(positions)
    assert "→ [0] Epoch  2" in text


@pytest.mark.parametrize("error, title, fix", [
    (errors.ModelNotInitializedError("no model"), "Model instance not found!",
     "1. Build the model first"),
    (errors.NoCheckpointsError("No checkpoints found in ckpt/"), "No checkpoints found!",
     "1. Train first"),
    (errors.ArchitectureMismatchError("embedding_dimension: checkpoint 32, model 16"),
     "Model architecture mismatch!", "1. Build the model with the checkpoint's config"),
    (errors.UnsafeCheckpointError("posix.system"), "Refused an unsafe checkpoint",
     "2. Only if you made the file or trust its source: pass trust_checkpoint=True"),
    (errors.TruncatedCheckpointError("ends early"), "truncated", "1. Copy or download"),
    (errors.EmptyCheckpointError("0 bytes"), "empty", "1. Delete the empty file"),
    (errors.NotACheckpointError("PNG image"), "not a checkpoint", "1. Pass the .pt file"),
    (errors.InvalidWeightsError("NaN"), "unusable", "1. Load an earlier checkpoint"),
    (errors.CheckpointConfigError("no config"), "config is missing", "1. Pass config="),
    (errors.UnrecognizedCheckpointError("a list"), "Unrecognised", "1. Pass a checkpoint"),
    (errors.CorruptCheckpointError("damaged"), "damaged", "1. Choose another checkpoint"),
    (errors.CheckpointNotFoundError("no file"), "not found", "1. Check the path"),
    (errors.CheckpointWriteError("disk full"), "could not be written", "1. Free disk space"),
    (ValueError("bad device"), "ValueError!", "1. Read the details"),
])
def test_error_report_gives_cause_and_numbered_fixes(error, title, fix):
    text = reports.error_report(error)
    assert text.startswith("❌ ") and title in text.splitlines()[0]
    assert str(error) in text  # the cause, as the error states it
    assert fix in text
    assert f"Technical details: {type(error).__name__}" in text


def test_loading_report_says_when_a_load_was_partial(tmp_path):
    import dataclasses
    import warnings

    from utils.training.engine.loading import load_model_weights

    other = dataclasses.replace(TINY, vocab_size=80)
    torch.save({"model_state_dict": GPTModel(other).state_dict(), "config": other.to_dict()},
               tmp_path / "other.pt")
    model = GPTModel(TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = load_model_weights(model, tmp_path / "other.pt", device="cpu", strict=False)
    text = reports.loading_report(tmp_path / "other.pt", model, report)
    assert "Partial load: loaded 35 tensors; skipped 0 missing, 0 unexpected, 2 wrong-shape" in text
    assert "loaded successfully" not in text
