"""Crash recovery for real: SIGKILL the kernel in the middle of Cell 32, reconnect with a
fresh kernel, run only what a person runs after reconnecting (Cells 1-13, 33, 34), and check
the recovered metrics, the loaded weights and the resumed step against the files on disk."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from tests.notebook_helpers import NotebookKernel
from utils.config import ModelConfig
from utils.model import GPTModel
from utils.training.engine.checkpoint import CHECKPOINT_NAME_RE, sidecar_path

# A tiny model with a long run, so training is still going when the kernel is killed.
CRASH_PARAMETERS = {
    "QUICK_MODE": False, "MODEL_PRESET": "tiny", "TOKENIZER": "byte", "CONTEXT_LENGTH": 32,
    "BATCH_SIZE": 2,
    "MAX_STEPS": 100_000, "WARMUP_STEPS": 2, "EVAL_INTERVAL": 3, "EVAL_BATCHES": 1,
    "CHECKPOINT_INTERVAL": 3, "RESUME_EXTRA_STEPS": 3,
}
SETUP_CELLS = [1, 3, 4, 5, 6, 7, 9, 10, 11, 13]  # what runs again after reconnecting
PROBE_IDS = [[72, 101, 108, 108, 111, 44, 32, 256]]  # byte-level ids


def checkpoints_on_disk(folder: Path) -> dict[int, dict]:
    """{global_step: checkpoint dict} for every complete checkpoint file (no temp files)."""
    found = {}
    for path in folder.glob("checkpoint_*.pt"):
        if CHECKPOINT_NAME_RE.match(path.name):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            checkpoint["path"] = str(path)
            found[checkpoint["global_step"]] = checkpoint
    return found


def wait_for_checkpoints(kernel: NotebookKernel, folder: Path, count: int,
                         timeout: float = 240) -> None:
    """Until `count` complete checkpoints (file + sidecar) exist while training still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        complete = [p for p in folder.glob("checkpoint_*.pt") if sidecar_path(p).exists()]
        if len(complete) >= count:
            return
        assert not kernel.client.shell_channel.msg_ready(), "Cell 32 ended before the kill"
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} checkpoints in {folder} after {timeout} s")


def logits_of(checkpoint: dict) -> torch.Tensor:
    model = GPTModel(ModelConfig.from_dict(checkpoint["config"]))
    model.load_state_dict(checkpoint["model_state_dict"], strict=True)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(PROBE_IDS))


def test_kill_during_training_then_recover_load_and_resume_in_a_fresh_kernel(tmp_path):
    checkpoint_dir = tmp_path / "checkpoints"
    parameters = {**CRASH_PARAMETERS, "CHECKPOINT_DIR": str(checkpoint_dir),
                  "OUTPUT_DIR": str(tmp_path / "outputs")}

    # 1. Train in a kernel and kill it (SIGKILL: no clean-up) once checkpoints exist.
    doomed = NotebookKernel()
    try:
        doomed.run_cells([*SETUP_CELLS, 15, 16], parameters)
        doomed.start(doomed.cells[32])
        wait_for_checkpoints(doomed, checkpoint_dir, 2)
        doomed.kill()
    finally:
        doomed.shutdown()
    on_disk = checkpoints_on_disk(checkpoint_dir)
    last_step = max(on_disk)
    last = on_disk[last_step]
    assert last_step >= 3 and last_step < CRASH_PARAMETERS["MAX_STEPS"]

    # 2. Reconnect: a fresh kernel runs only the set-up cells, Cell 33 and Cell 34. MAX_STEPS
    # is now where the run stopped, so Cell 37 trains RESUME_EXTRA_STEPS past it (its target
    # is MAX_STEPS + RESUME_EXTRA_STEPS); the run keeps its own schedule (100,000 steps).
    fresh = NotebookKernel()
    try:
        fresh.run_cells(SETUP_CELLS, {**parameters, "MAX_STEPS": last_step})
        fresh.run_cell(33)
        recovered = fresh.value(
            "{'global_step': results['global_step'], 'latest': results['latest_checkpoint_path'],"
            " 'best': results['checkpoint_path'],"
            " 'metrics': results['metrics'].to_dict('records')}")
        # every metric logged up to the last checkpoint is back, and the evaluations logged
        # after it (the metrics log reaches the kill) are marked as such
        assert recovered["global_step"] == last_step
        assert recovered["latest"] == last["path"]
        saved = [row for row in recovered["metrics"] if row["step"] <= last_step]
        assert [{k: v for k, v in row.items() if k != "after_last_checkpoint"}
                for row in saved] == last["metrics_history"]
        assert not any(row["after_last_checkpoint"] for row in saved)
        assert all(row["after_last_checkpoint"] for row in recovered["metrics"]
                   if row["step"] > last_step)

        text = fresh.run_cell(34)
        assert "LOADING MODEL WEIGHTS" in text
        selected = recovered["best"]
        expected = logits_of(next(c for c in on_disk.values() if c["path"] == selected))
        fresh.run(f"import torch\nwith torch.no_grad():\n"
                  f"    _probe = model(torch.tensor({PROBE_IDS}, device=device)).cpu()\n"
                  f"torch.save(_probe, {str(tmp_path / 'probe.pt')!r})")
        loaded = torch.load(tmp_path / "probe.pt", weights_only=True)
        assert torch.allclose(loaded, expected, atol=1e-5, rtol=0), (loaded - expected).abs().max()

        # 3. Resume: training continues from the last checkpoint's step, the run found by
        # this notebook's settings (no Cell 32 ran in this kernel).
        fresh.run_cells([15])  # as docs/03 says: Cell 15, then Cell 37
        text = fresh.run_cell(37)
        assert f"resumed run {last['run_id']} from step {last_step}" in text
        assert fresh.value("trainer.global_step") == last_step + CRASH_PARAMETERS["RESUME_EXTRA_STEPS"]
        after = checkpoints_on_disk(checkpoint_dir)
        newest = after[max(after)]
        assert max(after) == last_step + CRASH_PARAMETERS["RESUME_EXTRA_STEPS"]
        # the resumed run's history starts with everything logged before the kill
        assert newest["metrics_history"][:len(last["metrics_history"])] == last["metrics_history"]
        assert newest["training_config"]["max_steps"] == CRASH_PARAMETERS["MAX_STEPS"]
        assert newest["run_id"] == last["run_id"]
    finally:
        fresh.shutdown()


def test_interrupting_the_kernel_during_training_checkpoints_the_step_it_stopped_at(tmp_path):
    """The stop button (Kernel -> Interrupt: SIGINT to the kernel) during Cell 32: training
    ends at the next step with a checkpoint of that step, and says where it resumes."""
    import threading

    checkpoint_dir = tmp_path / "checkpoints"
    parameters = {**CRASH_PARAMETERS, "CHECKPOINT_DIR": str(checkpoint_dir),
                  "OUTPUT_DIR": str(tmp_path / "outputs")}
    kernel = NotebookKernel()
    try:
        kernel.run_cells([*SETUP_CELLS, 15, 16], parameters)
        result: dict = {}
        training = threading.Thread(target=lambda: result.update(
            zip(("status", "text"), kernel.run(kernel.cells[32]), strict=True)))
        training.start()
        deadline = time.monotonic() + 240
        while not list(checkpoint_dir.glob("checkpoint_*.pt.json")):
            assert time.monotonic() < deadline and training.is_alive(), result
            time.sleep(0.05)
        kernel.manager.interrupt_kernel()
        training.join(timeout=240)
        assert result["status"] == "error" and "KeyboardInterrupt" in result["text"], result
        stopped = kernel.value("trainer.global_step")
        assert f"Ctrl-C: stopping at step {stopped}, writing its checkpoint" in result["text"]
        assert f"training stopped at step {stopped}" in result["text"]
        assert f"resumes the run at step {stopped}" in result["text"]
        on_disk = checkpoints_on_disk(checkpoint_dir)
        assert max(on_disk) == stopped and on_disk[stopped]["optimizer_state_dict"]["state"]
        assert f"latest checkpoint at step {stopped}" in kernel.run_cell(33)
    finally:
        kernel.shutdown()
