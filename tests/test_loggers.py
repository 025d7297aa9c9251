"""Metric loggers (TensorBoard, CSV, W&B), headless progress lines and text samples.

TensorBoard's files are read back with TensorBoard's own reader (EventAccumulator), the CSV
with pandas; the kill-and-resume case runs real worker processes (tests/_train_worker.py).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests import _train_worker as worker
from tests._run_helpers import assert_same_weights, finish, kill_after_step, start
from utils.config import ConfigError, TrainingConfig
from utils.training.engine import loggers as L
from utils.training.engine.runs import NOT_IN_FINGERPRINT, run_fingerprint

REPO = Path(__file__).resolve().parent.parent
FAKE_WANDB = REPO / "tests" / "fake_wandb"
REPORTING = ("log_to", "log_dir", "sample_every", "sample_prompt")
TINY_CLI = ["--tokenizer", "byte", "--layers", "1", "--heads", "2", "--dim", "16",
            "--context", "16", "--batch-size", "2", "--eval-batches", "1", "--device", "cpu"]


def events(folder: Path):
    """TensorBoard's reader over a run's log folder (what the TensorBoard UI shows)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return accumulator


def scalar_steps(accumulator, tag: str) -> dict[int, float]:
    points = accumulator.Scalars(tag)
    steps = [point.step for point in points]
    assert len(steps) == len(set(steps)), f"{tag}: duplicated steps {steps}"
    return {point.step: point.value for point in points}


def run_folder(checkpoint_dir: Path) -> Path:
    [folder] = (checkpoint_dir / "logs").iterdir()  # one run
    return folder


# ---------------------------------------------------------------- the setting


def test_log_to_is_a_plain_comma_string_that_round_trips_through_a_checkpoint():
    config = TrainingConfig(log_to=" TensorBoard, csv,csv", sample_every=2)
    assert config.log_to == "tensorboard,csv" and config.loggers == ("tensorboard", "csv")
    assert TrainingConfig(log_to=["wandb", "csv"]).log_to == "wandb,csv"
    saved = json.loads(json.dumps(config.to_dict()))  # what a checkpoint keeps
    assert TrainingConfig.from_dict(saved) == config
    with pytest.raises(ConfigError, match="log_to names 'tb'.*tensorboard, csv, wandb"):
        TrainingConfig(log_to="tb")
    with pytest.raises(ConfigError, match="sample_every must be >= 0"):
        TrainingConfig(sample_every=-1)


def test_reporting_settings_leave_the_run_fingerprint_as_before():
    """Runs started before these settings existed still resume: the fingerprint of a config
    with them set equals the one computed from a dict without them (the old code's)."""
    assert set(REPORTING) <= NOT_IN_FINGERPRINT
    config = TrainingConfig(log_to="tensorboard,csv,wandb", log_dir="elsewhere",
                            sample_every=3, sample_prompt="Once")
    old = {k: v for k, v in TrainingConfig().to_dict().items() if k not in REPORTING}
    assert run_fingerprint(None, "byte", "abc", config.to_dict()) == \
        run_fingerprint(None, "byte", "abc", old)


# ---------------------------------------------------------------- kill, resume, read back


@pytest.mark.slow
def test_a_killed_run_resumes_the_same_tensorboard_and_csv_curves(tmp_path, uninterrupted_run):
    """Killed after step 13 (last checkpoint at 12), then resumed: every step appears once
    in TensorBoard and in the CSV, with the losses of the uninterrupted run, and logging and
    samples leave the weights bitwise as without them."""
    checkpoint_dir, out = tmp_path / "checkpoints", tmp_path / "final.pt"
    args = ("--log-to", "tensorboard,csv", "--log-interval", "1", "--sample-every", "4")
    kill_after_step(start(checkpoint_dir, out, *args), 13)
    folder = run_folder(checkpoint_dir)
    logged = pd.read_csv(folder / L.CSV_NAME)
    assert logged["step"].max() >= 13  # steps after the checkpoint: logged twice unless dropped
    finish(start(checkpoint_dir, out, *args))

    reference_state, reference_history = uninterrupted_run
    assert_same_weights(torch.load(out, weights_only=True)["model"], reference_state)
    steps = list(range(1, worker.STEPS + 1))
    train_loss = {r["step"]: r["train_loss"] for r in reference_history}  # 1-step windows
    val_loss = {r["step"]: r["val_loss"] for r in reference_history}

    board = events(folder)
    for tag, expected in (("train/loss", train_loss), ("val/loss", val_loss)):
        curve = scalar_steps(board, tag)
        assert sorted(curve) == steps, tag
        assert all(curve[s] == np.float32(expected[s]) for s in steps), tag
    for tag in ("train/learning_rate", "train/grad_norm", "train/tokens_per_s",
                "val/perplexity"):
        assert sorted(scalar_steps(board, tag)) == steps, tag
    # a CPU has no data-sheet peak: MFU is not known, so it is not logged (GPUs: test_cuda)
    assert "train/mfu" not in board.Tags()["scalars"]
    assert all(math.isfinite(v) and v > 0 for v in scalar_steps(board, "train/grad_norm").values())

    table = pd.read_csv(folder / L.CSV_NAME)
    train, evals = table[table.kind == "train"], table[table.kind == "eval"]
    assert list(train.step) == steps and list(evals.step) == steps  # in order, once each
    assert list(train.train_loss) == [train_loss[s] for s in steps]  # exact: full precision
    assert list(evals.val_loss) == [val_loss[s] for s in steps]
    samples = table[table.kind == "sample"]
    assert list(samples.step) == [4, 8, 12, 16, 20, 24]
    assert all(text.startswith("0 1") for text in samples["sample"])


# ---------------------------------------------------------------- in one process


def _trainer(folder: Path, **settings):
    """A tiny in-process run on the byte tokenizer (vocabulary 257)."""
    from utils.config import ModelConfig
    from utils.model import GPTModel
    from utils.training.engine.trainer import Trainer

    torch.manual_seed(0)
    model = GPTModel(ModelConfig(vocab_size=257, context_length=16, embedding_dimension=16,
                                 number_of_heads=2, number_of_layers=1, dropout_rate=0.1))
    tokens = np.frombuffer(b"the quick brown fox jumps over the lazy dog. " * 60,
                           dtype=np.uint8).astype(np.uint16)
    config = dict(max_steps=7, batch_size=2, eval_interval=2, eval_batches=1,
                  log_interval=2, warmup_steps=1, checkpoint_dir=str(folder),
                  checkpoint_interval=100, device="cpu", seed=3, **settings)
    return Trainer(model, TrainingConfig(**config), tokens[:2000], tokens[2000:],
                   tokenizer_name="byte", progress=False)


def test_samples_at_every_nth_evaluation_and_the_last_leave_training_unchanged(
        tmp_path, capsys, one_thread):
    plain = _trainer(tmp_path / "plain")
    plain.fit(resume_from=None)
    capsys.readouterr()
    sampled = _trainer(tmp_path / "sampled", sample_every=2, sample_prompt="the ",
                       log_to="csv")
    sampled.fit(resume_from=None)
    printed = capsys.readouterr().out
    # evaluations at steps 2, 4, 6 and 7 (the last): the 2nd, the 4th and the last sample
    assert printed.count("--- sample at step") == 2
    assert "--- sample at step 4 (prompt: 'the ') ---\nthe " in printed
    assert "--- sample at step 7 (prompt: 'the ') ---\nthe " in printed
    table = pd.read_csv(run_folder(tmp_path / "sampled") / L.CSV_NAME)
    assert list(table[table.kind == "sample"].step) == [4, 7]
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(sampled.model.state_dict()[name], tensor), name


def test_headless_lines_per_log_interval_and_evaluation(tmp_path, capsys, one_thread):
    _trainer(tmp_path / "run").fit(resume_from=None)
    lines = capsys.readouterr().out.splitlines()
    train = [line for line in lines if line.startswith("step ") and "| loss " in line]
    evals = [line for line in lines if line.startswith("step ") and "| val loss " in line]
    assert [line.split(" |")[0] for line in train] == ["step 2/7", "step 4/7", "step 6/7",
                                                       "step 7/7"]
    assert [line.split(" |")[0] for line in evals] == ["step 2/7", "step 4/7", "step 6/7",
                                                       "step 7/7"]
    for line in train:
        assert " | lr " in line and " tok/s" in line and " | ETA " in line
        assert " | grad norm " in line  # grad_clip is on by default
    assert "perplexity" in evals[0] and evals[-1].endswith("ETA 0s")


def test_gradient_norm_is_measured_without_clipping_too(tmp_path, one_thread):
    trainer = _trainer(tmp_path / "run", grad_clip=None, log_to="csv")
    trainer.fit(resume_from=None)
    table = pd.read_csv(run_folder(tmp_path / "run") / L.CSV_NAME)
    norms = table[table.kind == "train"].grad_norm
    assert len(norms) == 4 and all(np.isfinite(norms)) and all(norms > 0)


def test_a_failing_logger_warns_once_and_training_goes_on(tmp_path):
    class Broken:
        def log(self, *args):
            raise OSError("the folder went away")

    kept = L.CsvLogger(tmp_path / "m.csv", None)
    loggers = L.RunLoggers({"broken": Broken(), "csv": kept})
    with pytest.warns(UserWarning, match="the broken logger stopped: the folder went away"):
        loggers.log(1, {"train_loss": 2.5}, "train")
    loggers.log(2, {"train_loss": 2.0}, "train")  # no second warning, the CSV goes on
    loggers.close()
    assert list(pd.read_csv(tmp_path / "m.csv").step) == [1, 2]


def test_csv_of_a_resumed_run_drops_the_rows_it_logs_again(tmp_path):
    path = tmp_path / "metrics.csv"
    first = L.CsvLogger(path, None)
    for step in (1, 2, 3, 4):
        first.log(step, {"train_loss": float(step)}, "train")
    first.log(3, {"val_loss": 1.5}, "eval")
    first.close()
    with open(path, "a") as handle:
        handle.write("5,tra")  # a line torn by a crash
    resumed = L.CsvLogger(path, first_step=3)  # resumed from the checkpoint at step 2
    resumed.log(3, {"train_loss": 9.0}, "train")
    resumed.close()
    table = pd.read_csv(path)
    assert list(zip(table.step, table.kind, strict=True)) == \
        [(1, "train"), (2, "train"), (3, "train")]
    assert list(table.train_loss) == [1.0, 2.0, 9.0]


# ---------------------------------------------------------------- W&B


def test_wandb_not_installed_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    from utils.__main__ import main

    monkeypatch.setitem(sys.modules, "wandb", None)  # importlib: not installed
    code = main(["train", *TINY_CLI, "--max-steps", "2", "--log-to", "csv,wandb",
                 "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err == ("error: --log-to names wandb, but the wandb package is not "
                            "installed here; install it (pip install wandb) or leave wandb "
                            "out of --log-to\n")
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


def test_wandb_is_imported_only_when_chosen_and_gets_the_run_and_its_metrics(tmp_path):
    """A stand-in `wandb` package (tests/fake_wandb) records what training hands it; the
    real client is not installed here. $WANDB_MODE is left to W&B (it reads it itself)."""
    record = tmp_path / "wandb_calls.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKE_WANDB), str(REPO)]),
               FAKE_WANDB_RECORD=str(record), WANDB_MODE="offline")
    base = [sys.executable, "-m", "utils", "train", *TINY_CLI, "--max-steps", "4",
            "--eval-interval", "2", "--log-interval", "2", "--no-progress"]
    plain = subprocess.run([*base, "--checkpoint-dir", str(tmp_path / "a")], env=env,
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    assert not record.exists()  # not chosen: never imported
    chosen = subprocess.run([*base, "--checkpoint-dir", str(tmp_path / "b"), "--log-to",
                             "wandb"], env=env, capture_output=True, text=True, timeout=300)
    assert chosen.returncode == 0, chosen.stderr
    calls = json.loads(record.read_text())
    init = calls["init"]
    [run_folder_name] = [p.name for p in (tmp_path / "b").glob("metrics_*.jsonl")]
    run_id = run_folder_name.removeprefix("metrics_").removesuffix(".jsonl")
    assert init["id"] == run_id and init["resume"] == "allow" and init["mode_env"] == "offline"
    assert Path(init["dir"]) == tmp_path / "b" / "logs"
    assert init["config"]["log_to"] == "wandb"
    steps = {tag: [step for step, data in calls["log"] if tag in data]
             for tag in ("train/loss", "train/grad_norm", "val/loss", "val/perplexity")}
    assert steps == {"train/loss": [2, 4], "train/grad_norm": [2, 4], "val/loss": [2, 4],
                     "val/perplexity": [2, 4]}
    assert calls["finished"] is True


# ---------------------------------------------------------------- headless or terminal


def _cli(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "utils", "train", *TINY_CLI, "--max-steps", "4",
            "--eval-interval", "2", "--log-interval", "2", "--checkpoint-dir",
            str(tmp_path / name), *extra]


def _on_a_terminal(command: list[str]) -> str:
    """Run `command` with stdout and stderr on a pseudo-terminal; returns what it showed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 120 wide
    process = subprocess.Popen(command, stdout=follower, stderr=follower, cwd=REPO)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_output_to_a_file_gets_lines_and_a_terminal_gets_the_bar(tmp_path):
    piped = subprocess.run(_cli(tmp_path, "piped"), capture_output=True, text=True,
                           cwd=REPO, timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert "step 2/4 | loss " in piped.stdout and "step 4/4 | val loss " in piped.stdout
    assert "training:" not in piped.stderr  # no bar drawn into a file
    shown = _on_a_terminal(_cli(tmp_path, "terminal"))
    assert "training:" in shown and "step 2/4 | loss " not in shown
    quiet = _on_a_terminal(_cli(tmp_path, "no-bar", "--no-progress"))
    assert "training:" not in quiet and "step 2/4 | loss " in quiet


def test_a_wrong_log_to_on_the_command_line_is_one_line_naming_the_flag(tmp_path, capsys):
    from utils.__main__ import main

    assert main(["train", "--log-to", "tensorboard,tb", "--checkpoint-dir",
                 str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "error: --log-to names 'tb', which is not a logger; choose from tensorboard, csv, "
        "wandb (comma-separated), or leave it empty\n")
