"""Run the training worker (tests/_train_worker.py) as a real process, as a user would run
the same command again: start, kill at a step, finish, compare with the uninterrupted run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests import _train_worker as worker

WORKER = Path(worker.__file__)


def start(checkpoint_dir: Path, out: Path, *args: str, tz: str | None = None,
          env: dict | None = None) -> subprocess.Popen:
    extra = dict(env or {})
    if tz:
        extra["TZ"] = tz
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(checkpoint_dir), str(out), "--resume", "auto", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, **extra))


def wait_until(condition: Callable[[], bool], process: subprocess.Popen, what: str,
               timeout: float = 60) -> None:
    """Poll `condition` until it holds; fails the test, naming `what` it waited for, when
    `process` ends first or `timeout` seconds pass. (A condition, never a guessed sleep.)"""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.02)


def wait_for_step(process: subprocess.Popen, step: int, seen: list[str] | None = None) -> None:
    """Read the worker's output up to its `step N` line (appended to `seen`); a worker
    that ends first fails the test with its output."""
    seen = [] if seen is None else seen
    for line in process.stdout:
        seen.append(line)
        if line.strip() == f"step {step}":
            return
    pytest.fail(f"worker ended before step {step}: {''.join(seen)[-2000:]}")


def wait_until_held(process: subprocess.Popen, seen: list[str] | None = None) -> int:
    """Read the worker's output up to its `held after step N` line (it waits on `--hold`'s
    file from then on: no more steps, metrics or checkpoints until the file goes); returns
    N. A worker that ends first fails the test with its output."""
    seen = [] if seen is None else seen
    for line in process.stdout:
        seen.append(line)
        if line.startswith("held after step "):
            return int(line.split()[-1])
    pytest.fail(f"worker ended before it was held: {''.join(seen)[-2000:]}")


def kill_after_step(process: subprocess.Popen, step: int) -> str:
    seen: list[str] = []
    wait_for_step(process, step, seen)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the worker finished before the kill landed"
    return "".join(seen)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    return output


def final_weights(folder: Path, step: int) -> dict:
    """The model weights of the run's last checkpoint in `folder`, which must be at `step`
    (the `checkpoint_*` file: best_model.pt may hold the same step)."""
    from utils.training.engine.recovery import list_checkpoints

    infos = list_checkpoints(folder)
    assert max(info.global_step for info in infos) == step, [i.filename for i in infos]
    [last] = [info for info in infos
              if info.global_step == step and info.filename.startswith("checkpoint_")]
    return torch.load(last.path, weights_only=True)["model_state_dict"]


def file_hashes(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in folder.iterdir() if path.is_file()}


def assert_same_weights(state: dict, reference_state: dict) -> None:
    assert state.keys() == reference_state.keys()
    for name, tensor in reference_state.items():
        assert torch.equal(state[name], tensor), f"{name} differs from the uninterrupted run"
