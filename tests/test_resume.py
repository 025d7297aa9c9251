"""Exact resume after SIGKILL: real processes, killed at random steps and mid-write.

The chain of runs below trains one model to STEPS steps in four processes: two killed at
random steps, one killed while its background writer is inside a checkpoint write (after
the temporary file is complete, before the rename), and one that finishes. The result
must be bitwise equal to one uninterrupted run, with the same metrics history.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests import _train_worker as worker
from tests._run_helpers import (
    assert_same_weights,
    finish,
    kill_after_step,
    start,
    wait_for_step,
    wait_until,
)
from utils.training.engine.recovery import list_checkpoints

DETERMINISTIC = ("step", "epoch", "train_loss", "val_loss", "perplexity", "learning_rate",
                 "tokens_seen")


def _kill_during_write(process: subprocess.Popen, checkpoint_dir: Path, paused: Path) -> Path:
    """SIGKILL the worker while a checkpoint's temp file is complete and fsynced but not yet
    published (`paused` appears then: the worker runs with UTILS_TEST_CHECKPOINT_PAUSED)."""
    wait_until(paused.exists, process, "a checkpoint write to pause before publishing",
               timeout=120)
    process.send_signal(signal.SIGKILL)
    process.wait()
    [temporary] = checkpoint_dir.glob(".checkpoint_*.pt.*tmp")
    return temporary


def _assert_only_valid_checkpoints(checkpoint_dir: Path) -> None:
    infos = list_checkpoints(checkpoint_dir, include_invalid=True)
    assert all(info.valid for info in infos), infos  # empty if killed before the first
    assert not any(info.filename.startswith(".") for info in infos)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bitwise_exact(tmp_path, uninterrupted_run):
    kill_steps = sorted(random.Random(os.getpid()).sample(range(2, worker.STEPS - 6), 2))
    print(f"kill points: after steps {kill_steps}, then during a checkpoint write")
    checkpoint_dir, out = tmp_path / "checkpoints", tmp_path / "final.pt"

    for step in kill_steps:
        kill_after_step(start(checkpoint_dir, out), step)
        _assert_only_valid_checkpoints(checkpoint_dir)
    before = {info.global_step for info in list_checkpoints(checkpoint_dir)}

    paused = tmp_path / "paused"
    slow_writes = start(checkpoint_dir, out, env={"UTILS_TEST_CHECKPOINT_SLEEP": "60",
                                                  "UTILS_TEST_CHECKPOINT_PAUSED": str(paused)})
    temporary = _kill_during_write(slow_writes, checkpoint_dir, paused)
    _assert_only_valid_checkpoints(checkpoint_dir)
    assert {info.global_step for info in list_checkpoints(checkpoint_dir)} == before
    assert temporary.stat().st_size > 0  # complete but never renamed, never listed

    output = finish(start(checkpoint_dir, out))
    assert "done" in output and not temporary.exists()  # the stale write was cleaned up
    final = torch.load(out, weights_only=True)

    reference_state, reference_history = uninterrupted_run
    assert_same_weights(final["model"], reference_state)
    assert len(final["history"]) == len(reference_history) == worker.STEPS
    for resumed, uninterrupted in zip(final["history"], reference_history, strict=True):
        assert {k: resumed[k] for k in DETERMINISTIC} == \
               {k: uninterrupted[k] for k in DETERMINISTIC}
    # the final checkpoint is the uninterrupted run's final state too
    latest = max(list_checkpoints(checkpoint_dir), key=lambda info: info.global_step)
    assert latest.global_step == worker.STEPS
    saved = torch.load(latest.path, weights_only=True)["model_state_dict"]
    assert all(torch.equal(saved[name], tensor) for name, tensor in reference_state.items())


def _kill_during_rewrite(process: subprocess.Popen, checkpoint_dir: Path,
                         delay: float) -> Path:
    """SIGKILL `delay` seconds after the writer began rewriting an older checkpoint
    weights-only (a temporary file beside a checkpoint of the same name); returns that
    checkpoint's path."""
    deadline = time.monotonic() + 120
    while True:
        for temporary in checkpoint_dir.glob(".checkpoint_*.pt.*tmp"):
            rewritten = checkpoint_dir / temporary.name[1:].rsplit(".", 2)[0]
            if rewritten.suffix == ".pt" and rewritten.exists():  # not a sidecar's rewrite
                time.sleep(delay)
                process.send_signal(signal.SIGKILL)
                process.wait()
                return rewritten
        assert process.poll() is None, "worker exited before rewriting a checkpoint"
        assert time.monotonic() < deadline, "no weights-only rewrite started"
        time.sleep(0.005)


@pytest.mark.slow
def test_sigkill_during_a_weights_only_rewrite_leaves_a_whole_file(tmp_path, uninterrupted_run):
    """The storage plan rewrites each checkpoint weights-only once a newer one exists. A kill
    anywhere in that rewrite (here at a random moment of its write, pause and rename; the
    writer sleeps 0.4 s before each rename) leaves the checkpoint whole under its name, full
    or weights-only, and the run resumes bit for bit."""
    checkpoint_dir, out = tmp_path / "checkpoints", tmp_path / "final.pt"
    delay = random.Random(os.getpid()).uniform(0.0, 0.6)
    print(f"kill {delay:.2f} s into the rewrite")
    slow_writes = start(checkpoint_dir, out, env={"UTILS_TEST_CHECKPOINT_SLEEP": "0.4"})
    rewritten = _kill_during_rewrite(slow_writes, checkpoint_dir, delay)
    _assert_only_valid_checkpoints(checkpoint_dir)
    saved = torch.load(rewritten, weights_only=True)  # whole: the full file or the copy
    [info] = [i for i in list_checkpoints(checkpoint_dir) if i.path == rewritten]
    assert info.resumable == (saved["optimizer_state_dict"] is not None)
    assert any(i.resumable for i in list_checkpoints(checkpoint_dir))  # a resume has one

    output = finish(start(checkpoint_dir, out))
    assert "resuming run" in output
    assert_same_weights(torch.load(out, weights_only=True)["model"], uninterrupted_run[0])
    assert [i.resumable for i in list_checkpoints(checkpoint_dir)].count(True) == 1
    assert not list(checkpoint_dir.glob(".*tmp"))  # the unfinished rewrite was cleaned up


class _Crash(Exception):
    pass


def _crash_at(step: int):
    def callback(record):
        if record["step"] == step:
            raise _Crash(step)
    return callback


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("restore_rng", [True, False])
def test_in_process_crash_then_resume_needs_the_rng_state(tmp_path, uninterrupted_run, monkeypatch,
                                                          restore_rng):
    """A crash after step 10 (checkpoint at 9), then resume: exact with the saved RNG state;
    without it (dropout 0.2 draws other masks) the weights differ, so the test can fail."""
    from utils.training.engine import checkpoint as checkpoint_module  # restores the RNGs

    first = worker.make_trainer(tmp_path)
    first.callbacks.append(_crash_at(10))
    with pytest.raises(_Crash):
        first.fit()
    if not restore_rng:
        monkeypatch.setattr(checkpoint_module, "set_rng_state", lambda state: None)
    torch.manual_seed(12345)  # whatever state the new process happens to have
    resumed = worker.make_trainer(tmp_path)
    history = resumed.fit(resume_from="latest")
    reference_state, reference_history = uninterrupted_run
    same = all(torch.equal(resumed.model.state_dict()[k], v) for k, v in reference_state.items())
    assert same == restore_rng
    assert [h["step"] for h in history] == list(range(1, worker.STEPS + 1))
    if restore_rng:
        assert [h["train_loss"] for h in history] == [h["train_loss"] for h in reference_history]


@pytest.mark.usefixtures("one_thread")
def test_stop_at_step_then_resume_equals_one_run(tmp_path, uninterrupted_run):
    """A session that ends early on purpose (`stop_at_step`, e.g. before Colab's limit)
    checkpoints there and keeps the run's schedule: resuming gives the uninterrupted run."""
    first = worker.make_trainer(tmp_path)
    first.fit(stop_at_step=7)
    assert first.global_step == 7
    assert max(info.global_step for info in list_checkpoints(tmp_path)) == 7
    resumed = worker.make_trainer(tmp_path)
    history = resumed.fit(resume_from="latest")
    reference_state, reference_history = uninterrupted_run
    assert all(torch.equal(resumed.model.state_dict()[k], v) for k, v in reference_state.items())
    assert [h["learning_rate"] for h in history] == [h["learning_rate"] for h in reference_history]
    with pytest.raises(ValueError, match="stop_at_step"):
        worker.make_trainer(tmp_path).fit(resume_from="latest", stop_at_step=3)


def test_ctrl_c_checkpoints_the_step_it_stopped_at_and_resume_is_exact(tmp_path,
                                                                     uninterrupted_run):
    """SIGINT (Ctrl-C) to a training process: it finishes the step it is in, writes a
    checkpoint of that step (no step lost, not only the interval's), says where training
    resumes, and stops; the same command then continues bit for bit."""
    checkpoint_dir, out = tmp_path / "checkpoints", tmp_path / "final.pt"
    process = start(checkpoint_dir, out, "--step-sleep", "0.2")
    seen: list[str] = []
    wait_for_step(process, 10, seen)  # checkpoints at 3, 6, 9; the interval's next is 12
    process.send_signal(signal.SIGINT)
    output = "".join(seen) + process.communicate(timeout=120)[0]
    assert process.returncode == -signal.SIGINT, output  # KeyboardInterrupt, re-raised
    [stopped] = {int(line.split("training stopped at step ")[1].split()[0])
                 for line in output.splitlines() if "training stopped at step" in line}
    assert stopped in (10, 11) and f"resumes the run at step {stopped}" in output
    newest = max(list_checkpoints(checkpoint_dir), key=lambda info: info.global_step)
    assert newest.global_step == stopped
    _assert_only_valid_checkpoints(checkpoint_dir)

    resumed = finish(start(checkpoint_dir, out))
    assert f"at step {stopped}" in resumed and "step 1\n" not in resumed
    final = torch.load(out, weights_only=True)
    reference_state, reference_history = uninterrupted_run
    assert_same_weights(final["model"], reference_state)
    for after, uninterrupted in zip(final["history"], reference_history, strict=True):
        assert {k: after[k] for k in DETERMINISTIC} == \
               {k: uninterrupted[k] for k in DETERMINISTIC}
