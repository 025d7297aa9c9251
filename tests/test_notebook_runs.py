"""The whole crash-recovery manual is "reconnect, Run all": tested as in Colab.

With the `google.colab` stand-in (tests/colab_stub), a kernel runs the notebook top to
bottom and is SIGKILLed during Cell 32 after two checkpoints reached the stand-in Drive.
A fresh kernel then runs the whole notebook again with the same parameters (papermill).
It must finish the same run: one run in the folder, a continuous metrics log, and final
weights bitwise equal to a notebook run that was never interrupted (CPU, fp32). Running it
a third time reports the finished run instead of training it again.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests._run_helpers import final_weights
from tests.notebook_helpers import (
    NOTEBOOK_PATH,
    REPO_ROOT,
    NotebookKernel,
    colab_environment,
    executed_cells,
)
from utils.config import TrainingConfig
from utils.training.engine.checkpoint import BEST_MODEL_NAME
from utils.training.engine.recovery import list_checkpoints, list_runs
from utils.training.engine.runs import metrics_log_path, read_metrics_log

MAX_STEPS, EXTRA = 24, 4
PARAMETERS = {
    "QUICK_MODE": False, "MODEL_PRESET": "tiny", "TOKENIZER": "byte", "CONTEXT_LENGTH": 32,
    "BATCH_SIZE": 2, "MAX_STEPS": MAX_STEPS, "WARMUP_STEPS": 2, "EVAL_INTERVAL": 4,
    "EVAL_BATCHES": 1, "CHECKPOINT_INTERVAL": 4, "RESUME_EXTRA_STEPS": EXTRA,
    "CHECKPOINT_DIR": "",  # as in Colab: the Drive project folder
}


def drive_checkpoints(root: Path) -> Path:
    return root / "mydrive" / "gpt2-training" / "checkpoints"


def run_all(root: Path, monkeypatch, **changed) -> dict[int, dict]:
    """Runtime -> Run all, in a fresh kernel (papermill), with root's stand-in Drive;
    `changed`: form fields set otherwise than PARAMETERS."""
    import papermill

    root.mkdir(exist_ok=True)
    for name, value in colab_environment(root).items():
        monkeypatch.setenv(name, value)
    executed = root / f"executed-{time.monotonic_ns()}.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK_PATH), str(executed), cwd=str(REPO_ROOT), kernel_name="python3",
        parameters={**PARAMETERS, "OUTPUT_DIR": str(root / "outputs"), **changed},
        progress_bar=False)
    cells = executed_cells(executed)
    assert all(cell["ran"] and not cell["error"] for cell in cells.values()), \
        {number: cell["text"][-1500:] for number, cell in cells.items() if cell["error"]}
    return cells


def folder_state(folder: Path) -> dict[str, tuple[str, int]]:
    """{file name: (sha256, modification time in ns)} of every file in the folder."""
    return {path.name: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in folder.iterdir() if path.is_file()}


def write_another_run(folder: Path) -> set[str]:
    """Another run in the notebook's folder, written after the notebook's (the command line,
    other settings); returns the names of its files."""
    before = {path.name for path in folder.iterdir()}
    result = subprocess.run(
        [sys.executable, "-m", "utils", "train", "--preset", "tiny", "--tokenizer", "byte",
         "--context", "32", "--batch-size", "2", "--max-steps", "2", "--lr", "1e-3",
         "--checkpoint-dir", str(folder), "--new-run", "--no-progress"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return {path.name for path in folder.iterdir()} - before - {BEST_MODEL_NAME,
                                                                 f"{BEST_MODEL_NAME}.json"}


@pytest.mark.slow
def test_kill_during_training_then_run_all_finishes_the_same_run(tmp_path, monkeypatch):
    reference_root, root = tmp_path / "reference", tmp_path / "crashed"
    run_all(reference_root, monkeypatch)

    # "Run all", killed (SIGKILL: no clean-up) in Cell 32 after two checkpoints on Drive
    folder = drive_checkpoints(root)
    doomed = NotebookKernel(env={**colab_environment(root),
                                 "UTILS_TEST_CHECKPOINT_SLEEP": "0.5"})
    try:
        before_training = [n for n in sorted(doomed.cells) if n < 32]
        doomed.run_cells(before_training, {**PARAMETERS, "OUTPUT_DIR": str(root / "outputs")})
        doomed.start(doomed.cells[32])
        deadline = time.monotonic() + 300
        while len(list(folder.glob("checkpoint_*.pt.json"))) < 2:
            assert time.monotonic() < deadline, "no two checkpoints within 5 minutes"
            time.sleep(0.05)
        doomed.kill()
    finally:
        doomed.shutdown()
    [crashed_run] = list_runs(folder)
    assert crashed_run.steps < MAX_STEPS

    # reconnect, Run all: the same run continues and finishes, every later cell works
    cells = run_all(root, monkeypatch)
    assert f"resuming run {crashed_run.run_id} at step {crashed_run.steps}" in cells[32]["text"]
    assert f"resumed run {crashed_run.run_id} from step {MAX_STEPS} to step {MAX_STEPS + EXTRA}" \
        in cells[37]["text"]
    [run] = list_runs(folder)
    assert run.run_id == crashed_run.run_id and run.steps == MAX_STEPS + EXTRA
    records = read_metrics_log(metrics_log_path(folder, run.run_id))
    # the loss is read (and a train record logged) every log_interval steps and at each
    # evaluation (every 4 steps here), never once per step: no host sync per step
    log_interval = TrainingConfig().log_interval  # the notebook keeps the default
    assert [r["step"] for r in records if r["kind"] == "train"] == \
        [s for s in range(1, MAX_STEPS + EXTRA + 1) if s % log_interval == 0 or s % 4 == 0]
    reference = final_weights(drive_checkpoints(reference_root), MAX_STEPS + EXTRA)
    resumed = final_weights(folder, MAX_STEPS + EXTRA)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference), \
        "the crashed-and-resumed notebook differs from the uninterrupted one"

    # Run all once more: the run is reported as finished and Cell 37 finds it at its
    # target: not one file in the folder changes (names, bytes, modification times)
    before = folder_state(folder)
    cells = run_all(root, monkeypatch)
    assert f"run {run.run_id} already finished at step {MAX_STEPS + EXTRA}" in cells[32]["text"]
    assert f"run {run.run_id} is at step {MAX_STEPS + EXTRA}, at or past Cell 37's target" \
        in cells[37]["text"]
    assert folder_state(folder) == before
    assert [r.run_id for r in list_runs(folder)] == [run.run_id]

    # Another run is written to the folder later: this notebook's cells keep to its own run
    others = write_another_run(folder)
    [other] = [r for r in list_runs(folder) if r.run_id != run.run_id]
    best_of_run = list_checkpoints(folder, run=run.run_id)[0].filename
    before = folder_state(folder)
    cells = run_all(root, monkeypatch, RESUME_EXTRA_STEPS=EXTRA + 2)
    assert f"run {run.run_id} already finished" in cells[32]["text"]
    assert f"Run {run.run_id}:" in cells[33]["text"] and f"Run {other.run_id}:" not in \
        cells[33]["text"]
    assert best_of_run in cells[34]["text"]
    assert not any(name in cells[34]["text"] for name in others)
    assert f"resumed run {run.run_id} from step {MAX_STEPS + EXTRA} to step " \
           f"{MAX_STEPS + EXTRA + 2}" in cells[37]["text"]
    after = folder_state(folder)
    assert {name: after.get(name) for name in others} == {name: before[name] for name in others}
    newest = max(list_checkpoints(folder, run=run.run_id), key=lambda info: info.global_step)
    assert newest.global_step == MAX_STEPS + EXTRA + 2
    saved = torch.load(newest.path, weights_only=True)
    assert saved["run_id"] == run.run_id and saved["run_fingerprint"] == run.fingerprint
    assert list_runs(folder)[0].run_id == run.run_id  # it is the newest again
    assert other.steps == 2 and {r.run_id: r.steps for r in list_runs(folder)}[other.run_id] == 2


@pytest.mark.slow
def test_drive_disconnecting_mid_run_costs_no_training(tmp_path, monkeypatch):
    """The stand-in Drive is unmounted during Cell 32 (as `drive.flush_and_unmount()` does):
    training goes on into the local fallback folder and says so; once Drive is back, the
    next training session copies the local-only checkpoints back to Drive."""
    import threading

    monkeypatch.setenv("UTILS_FALLBACK_CHECKPOINT_ROOT", str(tmp_path / "local"))
    environment = {**colab_environment(tmp_path), "UTILS_TEST_CHECKPOINT_SLEEP": "0.4",
                   "UTILS_FALLBACK_CHECKPOINT_ROOT": str(tmp_path / "local")}
    folder, link = drive_checkpoints(tmp_path), tmp_path / "content" / "drive" / "MyDrive"
    kernel = NotebookKernel(env=environment)
    try:
        kernel.run_cells([n for n in sorted(kernel.cells) if n < 32],
                         {**PARAMETERS, "OUTPUT_DIR": str(tmp_path / "outputs")})
        result: dict = {}
        training = threading.Thread(target=lambda: result.update(
            zip(("status", "text"), kernel.run(kernel.cells[32]), strict=True)))
        training.start()
        deadline = time.monotonic() + 300
        while not list(folder.glob("checkpoint_*.pt.json")):
            assert time.monotonic() < deadline, "no checkpoint on the stand-in Drive"
            time.sleep(0.05)
        link.unlink()  # Drive disconnects: <mount>/MyDrive is gone
        training.join(timeout=600)
        assert result["status"] == "ok", result["text"]
        assert "written locally" in result["text"]
        assert "exist only on this machine" in result["text"]
        text = kernel.run_cell(33)  # recovery sees the local folder while Drive is away
        assert f"latest checkpoint at step {MAX_STEPS}" in text

        link.symlink_to(tmp_path / "mydrive", target_is_directory=True)  # Drive is back
        kernel.run_cells([15, 37])
        steps = {info.global_step for info in list_checkpoints(folder)
                 if not info.local_only}
        assert {MAX_STEPS, MAX_STEPS + EXTRA} <= steps  # copied back, then trained on
    finally:
        kernel.shutdown()
