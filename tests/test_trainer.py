"""Trainer behaviour: schedule, optimizer groups, evaluation, checkpoints, HF models, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests import _train_worker as worker
from utils.checkpoint_errors import (
    ArchitectureMismatchError,
    NoCheckpointsError,
    NotResumableError,
)
from utils.config import ModelConfig, TrainingConfig
from utils.model import GPTModel
from utils.training.engine.checkpoint import CHECKPOINT_KEYS
from utils.training.engine.distributed import unwrap_model
from utils.training.engine.evaluation import evaluate
from utils.training.engine.optim import build_optimizer, lr_at
from utils.training.engine.recovery import list_checkpoints
from utils.training.engine.trainer import Trainer

TINY = ModelConfig(vocab_size=64, context_length=16, embedding_dimension=32, number_of_heads=2,
                   number_of_layers=2, dropout_rate=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def _repeating_tokens(n: int = 4000) -> np.ndarray:
    """A fixed 8-token cycle: learnable in a few dozen steps."""
    return np.tile(np.array([3, 14, 15, 9, 26, 5, 35, 8], dtype=np.uint16), n // 8)


def _config(tmp_path, **overrides) -> TrainingConfig:
    settings = dict(max_steps=12, warmup_steps=3, learning_rate=1e-2, min_learning_rate=1e-3,
                    batch_size=4, eval_interval=4, eval_batches=2, checkpoint_interval=6,
                    checkpoint_dir=str(tmp_path), keep_last=None, seed=3, device="cpu")
    settings.update(overrides)
    return TrainingConfig(**settings)


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine():
    config = TrainingConfig(learning_rate=1.0, min_learning_rate=0.1, warmup_steps=4)
    assert [lr_at(s, config, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, config, 14) == pytest.approx(1.0)
    assert lr_at(9, config, 14) == pytest.approx(0.55)  # half-way: (1 + 0.1) / 2
    assert lr_at(14, config, 14) == pytest.approx(0.1)
    assert lr_at(100, config, 14) == pytest.approx(0.1)


def test_optimizer_history_learning_rates_follow_the_schedule(tmp_path):
    config = _config(tmp_path, eval_interval=1, checkpoint_dir=None)
    trainer = Trainer(GPTModel(TINY), config, _repeating_tokens(), progress=False)
    seen = []
    trainer.callbacks.append(lambda record: seen.append(trainer.optimizer.param_groups[0]["lr"]))
    history = trainer.fit()
    expected = [lr_at(s, config, 12) for s in range(12)]
    assert [h["learning_rate"] for h in history] == pytest.approx(expected, rel=1e-12)
    # the optimizer stepped with exactly these rates (read after each step's scheduler.step)
    assert seen[:-1] == pytest.approx(expected[1:], rel=1e-12)


def test_weight_decay_only_on_matrices_and_tied_weight_counted_once():
    model = GPTModel(TINY)
    optimizer = build_optimizer(model, TrainingConfig(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = optimizer.param_groups
    assert optimizer.defaults["fused"]  # the fused kernel on the CPU too
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    everything = decay["params"] + no_decay["params"]
    assert len({id(p) for p in everything}) == len(everything) == len(list(model.parameters()))
    assert any(p is model.token_embedding.weight for p in decay["params"])


def test_training_learns_and_checkpoints_carry_the_design_keys(tmp_path):
    torch.manual_seed(0)
    model = GPTModel(TINY)
    tokens = _repeating_tokens()
    trainer = Trainer(model, _config(tmp_path), tokens[:3000], tokens[3000:],
                      tokenizer_name="byte", progress=False)
    records = []
    trainer.callbacks.append(records.append)
    history = trainer.fit()

    # evaluations at 4, 8, 12 plus 6 (a checkpoint step: its val_loss is of those weights)
    assert [h["step"] for h in history] == [4, 6, 8, 12] and records == history
    assert history[-1]["val_loss"] < math.log(TINY.vocab_size) / 2  # it learned the cycle
    assert history[-1]["perplexity"] == pytest.approx(math.exp(history[-1]["val_loss"]))
    assert history[-1]["tokens_seen"] == 12 * 4 * 16
    [six, twelve] = sorted(list_checkpoints(tmp_path), key=lambda info: info.global_step)
    assert (six.global_step, twelve.global_step) == (6, 12)
    checkpoint = torch.load(twelve.path, weights_only=True)
    assert sorted(checkpoint) == sorted(CHECKPOINT_KEYS)
    assert checkpoint["config"] == TINY.to_dict() and checkpoint["tokenizer"] == "byte"
    assert checkpoint["training_config"] == trainer.config.to_dict()
    assert checkpoint["metrics_history"] == history
    assert checkpoint["val_loss"] == history[-1]["val_loss"]
    assert checkpoint["data_state"] == {"seed": 3, "step": 12, "batch_size": 4,
                                        "context_length": 16, "world_size": 1}
    assert set(checkpoint["rng_state"]) == {"python", "numpy", "torch", "cuda"}
    assert checkpoint["scaler_state_dict"] is None and checkpoint["epoch"] == 0
    # the step-6 checkpoint's val_loss is what its own weights score now
    check = GPTModel(TINY)
    check.load_state_dict(torch.load(six.path, weights_only=True)["model_state_dict"])
    val_loss = evaluate(check, trainer.val_loader, batches=2)
    assert val_loss == pytest.approx(six.val_loss, abs=1e-6)
    assert trainer.evaluate()["val_loss"] == pytest.approx(history[-1]["val_loss"], abs=1e-6)


def test_epochs_bound_the_run_and_name_the_checkpoints(tmp_path):
    tokens = _repeating_tokens(640)  # 640 // (4 * 16) = 10 micro-batches per epoch
    config = _config(tmp_path, max_steps=None, epochs=2, gradient_accumulation_steps=2,
                     checkpoint_interval=None, checkpoint_every_epoch=True, eval_interval=100)
    trainer = Trainer(GPTModel(TINY), config, tokens, progress=False)
    assert trainer.steps_per_epoch == 5 and trainer.total_steps == 10
    history = trainer.fit()
    assert [(h["step"], h["epoch"]) for h in history] == [(5, 1), (10, 2)]
    assert history[-1]["tokens_seen"] == 10 * 2 * 4 * 16
    assert history[0]["val_loss"] is None  # no validation data
    names = sorted(info.filename for info in list_checkpoints(tmp_path))
    assert [n[:34] for n in names] == ["checkpoint_epoch0001_step000005_20",
                                       "checkpoint_epoch0002_step000010_20"]


def test_trains_a_hugging_face_gpt2(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1,
                                     n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    tokens = _repeating_tokens()
    trainer = Trainer(model, _config(tmp_path, max_steps=20), tokens[:3000], tokens[3000:],
                      progress=False)
    assert trainer.context_length == 16
    history = trainer.fit()
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 1.0
    [latest] = [i for i in list_checkpoints(tmp_path) if i.global_step == 20]
    checkpoint = torch.load(latest.path, weights_only=True)
    assert checkpoint["config"]["architecture"] == "GPT2LMHeadModel"
    assert checkpoint["config"]["n_embd"] == 32
    assert checkpoint["model_state_dict"].keys() == model.state_dict().keys()


def test_unwrap_strips_compile_wrappers():
    model = GPTModel(TINY)
    compiled = torch.compile(model)  # wrapping only; nothing is compiled until called
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert unwrap_model(compiled) is model


def test_resuming_weights_without_training_state_names_init_from(tmp_path):
    """A weights-only file (what `convert` writes) is refused with the fix, not a KeyError,
    and the model is left as it was."""
    weights = tmp_path / "weights.pt"
    torch.save({"model_state_dict": GPTModel(TINY).state_dict(), "config": TINY.to_dict(),
                "source": "gpt2"}, weights)
    model = GPTModel(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, _config(tmp_path / "run"), _repeating_tokens(), progress=False)
    with pytest.raises(NotResumableError, match="no training state") as caught:
        trainer.fit(resume_from=weights)
    assert "init_from='gpt2'" in str(caught.value)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_resume_errors_name_the_cause(tmp_path):
    trainer = Trainer(GPTModel(TINY), _config(tmp_path / "empty"), _repeating_tokens(),
                      progress=False)
    with pytest.raises(NoCheckpointsError, match="empty"):
        trainer.fit(resume_from="latest")

    small = worker.make_trainer(tmp_path / "run", steps=3)
    small.fit()
    other = ModelConfig(**{**worker.MODEL.to_dict(), "embedding_dimension": 16})
    model = GPTModel(other)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mismatched = Trainer(model, _config(tmp_path / "run"), _repeating_tokens(), progress=False)
    with pytest.raises(ArchitectureMismatchError, match="other shapes"):
        mismatched.fit(resume_from="latest")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_explicit_half_precision_on_cpu_is_honoured(tmp_path):
    # explicit values win (issue 10): fp16 autocast with the CPU's GradScaler
    config = _config(tmp_path, precision="fp16", max_steps=1, checkpoint_dir=None)
    trainer = Trainer(GPTModel(TINY), config, _repeating_tokens(), progress=False)
    trainer.fit()
    assert trainer.precision == "fp16" and trainer.scaler.is_enabled()
    auto = Trainer(GPTModel(TINY), _config(tmp_path, max_steps=1, checkpoint_dir=None),
                   _repeating_tokens(), progress=False)
    auto.fit()
    assert auto.precision == "fp32" and not auto.scaler.is_enabled()


# ---------------------------------------------------------------- command line

def _text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 300)
    return path


def test_cli_train_recover_and_resume(tmp_path, capsys):
    from utils.__main__ import main

    folder = tmp_path / "ck"
    common = ["--data", str(_text_file(tmp_path)), "--tokenizer", "byte", "--checkpoint-dir",
              str(folder), "--no-progress"]
    assert main(["train", "--layers", "1", "--heads", "2", "--dim", "16", "--context", "16",
                 "--max-steps", "6", "--batch-size", "2", "--eval-interval", "3",
                 "--checkpoint-interval", "3", "--lr", "1e-2", *common]) == 0
    out = capsys.readouterr().out
    assert "done: step 6" in out and "checkpoint_epoch0000_step000006_" in out
    [first, second] = sorted(list_checkpoints(folder), key=lambda i: i.global_step)
    saved = torch.load(second.path, weights_only=True)
    assert saved["config"]["vocab_size"] == 257 and saved["tokenizer"] == "byte"
    assert saved["training_config"]["min_learning_rate"] == pytest.approx(1e-3)

    # --resume takes the model shape and settings from the checkpoint; flags given win
    assert main(["train", "--resume", "--max-steps", "9", *common]) == 0
    assert "done: step 9" in capsys.readouterr().out
    resumed = torch.load(max(list_checkpoints(folder), key=lambda i: i.global_step).path,
                         weights_only=True)
    assert resumed["global_step"] == 9 and resumed["config"] == saved["config"]
    assert [h["step"] for h in resumed["metrics_history"]] == [3, 6, 9]
    assert resumed["metrics_history"][:2] == saved["metrics_history"]

    assert main(["recover", "--checkpoint-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip().endswith(".pt")]
    best_first = sorted(list_checkpoints(folder), key=lambda i: i.val_loss)
    assert [row.split()[-1] for row in rows] == [i.filename for i in best_first]
    assert rows[0].split()[:2] == ["0", str(best_first[0].global_step)]
    assert "metrics history: 3 evaluation(s)" in out


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from utils.__main__ import main

    assert main(["recover", "--checkpoint-dir", str(tmp_path / "none")]) == 2
    assert "no checkpoints found" in capsys.readouterr().err
    assert main(["train", "--resume", "--checkpoint-dir", str(tmp_path), "--no-progress"]) == 2
    assert "no checkpoints found" in capsys.readouterr().err
    assert main(["train", "--dim", "30", "--heads", "4", "--data", str(_text_file(tmp_path)),
                 "--tokenizer", "byte", "--no-progress"]) == 2
    assert "divisible" in capsys.readouterr().err


def test_cli_init_from_a_local_hugging_face_folder(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from utils.__main__ import main

    config = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=1,
                                     n_head=2)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
    folder = tmp_path / "ck"
    assert main(["train", "--init-from", str(tmp_path / "hf"), "--data",
                 str(_text_file(tmp_path)), "--tokenizer", "byte", "--max-steps", "2",
                 "--batch-size", "2", "--checkpoint-dir", str(folder), "--no-progress"]) == 0
    [info] = list_checkpoints(folder)
    saved = torch.load(info.path, weights_only=True)
    assert (saved["config"]["vocab_size"], saved["config"]["context_length"]) == (300, 32)
    assert "done: step 2" in capsys.readouterr().out


@pytest.mark.parametrize("background", [True, False])
def test_a_failed_checkpoint_write_stops_training_with_a_clear_error(tmp_path, monkeypatch,
                                                                     background):
    import errno

    from utils.checkpoint_errors import CheckpointWriteError
    from utils.training.engine import checkpoint as checkpoint_module

    real_save, calls = checkpoint_module.torch.save, []

    def save_then_fill_the_disk(state, handle):
        calls.append(state["global_step"])
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(state, handle)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_then_fill_the_disk)
    config = _config(tmp_path, checkpoint_interval=3, background_checkpointing=background)
    trainer = Trainer(GPTModel(TINY), config, _repeating_tokens(), progress=False)
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        trainer.fit()
    # background: the failure of step 6's write surfaces at the next checkpoint (step 9)
    assert trainer.global_step == (9 if background else 6)
    assert [info.global_step for info in list_checkpoints(tmp_path)] == [3]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _messages(trainer: Trainer) -> list[str]:
    said: list[str] = []
    trainer.announce = said.append
    return said


def test_an_explicit_resume_names_the_run_settings_that_differ_from_the_given_ones(tmp_path):
    """`resume_from="latest"` continues the newest run with the settings given; a setting
    that makes a run (the learning rate) is named with both values, and one that does not
    (the step budget) is not."""
    Trainer(GPTModel(TINY), _config(tmp_path, max_steps=6), _repeating_tokens(),
            progress=False).fit()
    same = Trainer(GPTModel(TINY), _config(tmp_path, max_steps=9), _repeating_tokens(),
                   progress=False)
    said_same = _messages(same)
    same.fit(resume_from="latest")
    assert any("resuming run" in line for line in said_same)
    assert not any("other settings" in line for line in said_same)

    other = Trainer(GPTModel(TINY), _config(tmp_path, max_steps=12, learning_rate=2e-2),
                    _repeating_tokens(), progress=False)
    said = _messages(other)
    other.fit(resume_from="latest")
    [line] = [line for line in said if "other settings" in line]
    assert "learning_rate: 0.01 in the checkpoint, 0.02 given" in line
    assert "max_steps" not in line and f"as run {same.run_id}" in line
    assert other.run_id == same.run_id and other.global_step == 12


def test_find_resume_checkpoint_is_the_newest_readable_or_the_path_given(tmp_path):
    from utils.training.engine.checkpoint import rewrite_weights_only
    from utils.training.engine.recovery import find_resume_checkpoint, read_resumable

    Trainer(GPTModel(TINY), _config(tmp_path, keep_full=None), _repeating_tokens(),
            progress=False).fit()  # keep_full=None: both checkpoints can resume
    older, newest = sorted((info.path for info in list_checkpoints(tmp_path)),
                           key=lambda path: read_resumable(path)["global_step"])
    path, state = find_resume_checkpoint("latest", tmp_path)
    assert path == newest and state["global_step"] == 12
    newest.write_bytes(b"damaged")  # the newest no longer reads: the one before it
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        path, state = find_resume_checkpoint("latest", tmp_path)
    assert path == older and state["global_step"] == 6
    path, state = find_resume_checkpoint(older, tmp_path)
    assert path == older and state["global_step"] == 6
    rewrite_weights_only(older)
    with pytest.raises(NotResumableError):
        find_resume_checkpoint(older, tmp_path)
