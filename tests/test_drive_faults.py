"""Google Drive faults cost no training: real file systems that fill up, turn read-only and
go away mid-run (a small tmpfs, remounted and unmounted under a real training process), and
retention that empties files before deleting them on Drive (Drive's trash keeps quota).
A small "Drive" sized for the storage plan holds a default run to the end; one too small
even for the plan is refused before the first step.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests._ckpt_helpers import make_state
from tests._run_helpers import (
    assert_same_weights,
    finish,
    kill_after_step,
    start,
    wait_for_step,
)
from utils.config import TrainingConfig
from utils.training.engine.checkpoint import (
    BEST_MODEL_NAME,
    FALLBACK_ROOT_ENV,
    fallback_dir_for,
)
from utils.training.engine.recovery import list_checkpoints, recover_training_results
from utils.training.engine.runs import metrics_log_path, read_metrics_log
from utils.training.engine.writer import DRIVE_ROOT_ENV, CheckpointWriter


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


@pytest.fixture()
def small_drive(tmp_path):
    """A real tmpfs mounted at tmp_path/drive (unmounted afterwards, whatever happened)."""
    mount = tmp_path / "drive"
    mount.mkdir()

    def mount_with(size: str) -> Path:
        try:
            run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount))
        except (OSError, subprocess.CalledProcessError) as error:
            pytest.fail(f"mounting a tmpfs needs root (tests run as root here and in CI): "
                        f"{getattr(error, 'stderr', error)}")
        (mount / "MyDrive").mkdir()
        return mount

    yield mount_with
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def local_fallback(tmp_path: Path, monkeypatch) -> dict[str, str]:
    """The fallback folder under tmp_path, for the workers and for this process."""
    monkeypatch.setenv(FALLBACK_ROOT_ENV, str(tmp_path / "local"))
    return {FALLBACK_ROOT_ENV: str(tmp_path / "local")}


def test_read_only_then_unmounted_drive_costs_no_training(tmp_path, small_drive,
                                                           uninterrupted_weights, monkeypatch):
    mount = small_drive("20m")
    folder, out = mount / "MyDrive" / "checkpoints", tmp_path / "final.pt"
    env = local_fallback(tmp_path, monkeypatch)
    process = start(folder, out, "--step-sleep", "0.25", env=env)
    drive, seen = mount / "MyDrive", []
    wait_for_step(process, 4, seen)
    # A read-only view of the Drive folder over itself: checkpoint 6 cannot be written there
    run("mount", "--bind", str(drive), str(drive))
    run("mount", "-o", "remount,bind,ro", str(drive))
    wait_for_step(process, 8, seen)
    run("umount", str(drive))  # writable again: checkpoint 9 lands there, 6 is copied back
    wait_for_step(process, 13, seen)
    run("umount", "-l", str(mount))  # Drive disconnects: 15, 18, 21, 24 go local
    output = "".join(seen) + finish(process)
    assert "Read-only file system" in output and "written locally" in output
    assert "copied checkpoint_epoch0000_step000006_" in output
    assert "exist only on this machine" in output
    assert_same_weights(torch.load(out, weights_only=True)["model"], uninterrupted_weights)
    assert not folder.exists()  # the unmount took the folder away; nothing recreated it
    infos = list_checkpoints(folder, include_invalid=True)  # recovery sees the local folder
    assert infos and all(info.valid and info.local_only for info in infos)
    assert max(info.global_step for info in infos) == 24
    # the metrics logged while Drive was gone went to the local folder's log, said once
    assert output.count("was deleted during training (or its folder went away)") == 1
    run_id = recover_training_results(folder)["run_id"]
    local_log = read_metrics_log(metrics_log_path(fallback_dir_for(folder), run_id))
    assert [r["step"] for r in local_log if r["kind"] == "train"][-1] == 24
    assert recover_training_results(folder)["train_curve"]["step"].max() == 24
    again = finish(start(folder, out, env=env))  # "Run all" again: the run is complete
    assert "already finished at step 24" in again


def test_a_full_drive_costs_no_training(tmp_path, small_drive, uninterrupted_weights,
                                        monkeypatch):
    mount = small_drive("1m")  # room for two checkpoints of this model, not three
    folder, out = mount / "MyDrive" / "checkpoints", tmp_path / "final.pt"
    env = local_fallback(tmp_path, monkeypatch)
    output = finish(start(folder, out, env=env))
    assert "No space left on device" in output and "written locally" in output
    assert_same_weights(torch.load(out, weights_only=True)["model"], uninterrupted_weights)
    infos = list_checkpoints(folder, include_invalid=True)
    assert infos and all(info.valid for info in infos)
    assert max(info.global_step for info in infos) == 24
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no debris


def test_retention_on_drive_empties_files_before_deleting(tmp_path, monkeypatch):
    monkeypatch.setenv(DRIVE_ROOT_ENV, str(tmp_path))
    folder = tmp_path / "MyDrive" / "checkpoints"
    run_id = "20250101-000000-aaaaaa"
    writer = CheckpointWriter(folder, keep_last=1, keep_best=1, background=False,
                              run_id=run_id)
    writer.submit(make_state(1, 1.0, run_id=run_id), is_best=True)
    best_source = writer.last_path
    writer.submit(make_state(2, 5.0, run_id=run_id))
    doomed = writer.last_path
    witness = tmp_path / "witness.pt"  # a second link shows what happened to the data
    os.link(doomed, witness)
    size = witness.stat().st_size
    writer.submit(make_state(3, 6.0, run_id=run_id))  # keeps 3 (newest) and 1 (best)
    assert not doomed.exists() and witness.stat().st_size == 0 < size
    # best_model.pt is a copy on Drive, so emptying its source could not empty it
    assert best_source.exists()
    assert (folder / BEST_MODEL_NAME).stat().st_size == best_source.stat().st_size
    assert torch.load(folder / BEST_MODEL_NAME, weights_only=True)["global_step"] == 1


def test_retention_elsewhere_keeps_other_links_intact(tmp_path):
    writer = CheckpointWriter(tmp_path, keep_last=1, keep_best=0, background=False)
    writer.submit(make_state(1, 1.0))
    witness = tmp_path.parent / f"{tmp_path.name}-witness.pt"
    os.link(writer.last_path, witness)
    size = witness.stat().st_size
    writer.submit(make_state(2, 1.0))
    assert witness.stat().st_size == size  # not on Drive: plain unlink, no truncation
    witness.unlink()


def test_fallback_folder_is_stable_per_checkpoint_folder(tmp_path, monkeypatch):
    local_fallback(tmp_path, monkeypatch)
    a, b = tmp_path / "x" / "checkpoints", tmp_path / "y" / "checkpoints"
    assert fallback_dir_for(a) == fallback_dir_for(a) != fallback_dir_for(b)
    assert fallback_dir_for(a).parent == tmp_path / "local"


# ---------------------------------------------------------------- the storage plan

DEFAULT_RETENTION = ("--keep-last", str(TrainingConfig().keep_last),
                     "--keep-best", str(TrainingConfig().keep_best))


def test_a_drive_sized_for_the_plan_holds_a_default_run_to_the_end(
        tmp_path, small_drive, uninterrupted_weights, monkeypatch):
    """1700k of "Drive": room for the plan with the defaults (one full checkpoint, four
    weights-only files, and one more full checkpoint while it is written), not for keeping
    every checkpoint whole as before (four kept plus the one written: five full files).
    Killed mid-run and run again, the run finishes there: no fallback, exact resume."""
    mount = small_drive("1700k")
    monkeypatch.setenv(DRIVE_ROOT_ENV, str(mount))
    env = {**local_fallback(tmp_path, monkeypatch), DRIVE_ROOT_ENV: str(mount)}
    folder, out = mount / "MyDrive" / "checkpoints", tmp_path / "final.pt"
    first = kill_after_step(start(folder, out, *DEFAULT_RETENTION, "--step-sleep", "0.1",
                                  env=env), 14)
    assert "storage plan: this run keeps at most" in first
    assert "Google Drive's quota, as the mount reports it" in first
    output = finish(start(folder, out, *DEFAULT_RETENTION, env=env))
    assert "resuming run" in output and "storage plan" in output
    for text in (first, output):
        assert "written locally" not in text and "No space" not in text
        assert "WARNING" not in text
    assert not fallback_dir_for(folder).exists()
    assert_same_weights(torch.load(out, weights_only=True)["model"], uninterrupted_weights)
    infos = list_checkpoints(folder, include_invalid=True)
    assert all(info.valid and not info.local_only for info in infos)
    assert sorted(info.global_step for info in infos) == [3, 18, 21, 24]  # newest 3, best
    assert [info.global_step for info in infos if info.resumable] == [24]
    capacity = os.statvfs(mount).f_blocks * os.statvfs(mount).f_frsize
    full = max(info.size_bytes for info in infos)
    assert 5 * full > capacity  # what the folder needed before the plan
    assert recover_training_results(folder)["last_logged_step"] == 24
    again = finish(start(folder, out, *DEFAULT_RETENTION, env=env))
    assert "already finished at step 24" in again


def test_a_drive_too_small_even_for_the_plan_refuses_before_the_first_step(
        tmp_path, small_drive, monkeypatch):
    mount = small_drive("512k")
    env = local_fallback(tmp_path, monkeypatch)
    folder, out = mount / "MyDrive" / "checkpoints", tmp_path / "final.pt"
    process = start(folder, out, env=env)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 2, output
    assert "error: the checkpoints of this run need up to" in output
    assert "keep_last=1 and keep_best=0" in output and "weights_only_dtype='bf16'" in output
    assert "check_storage=False" in output and "step 1\n" not in output
    assert "Traceback" not in output
    assert not list(folder.glob("*.pt")) and not fallback_dir_for(folder).exists()

    # the command line: one line with its own flags; --ignore-storage-check trains anyway
    from tests.test_runs import CLI_TRAIN, REPO
    command = [*CLI_TRAIN, "--checkpoint-dir", str(folder)]
    refused = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=dict(
        os.environ, OMP_NUM_THREADS="1", **env))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("error: the checkpoints of this run need up to")
    assert "--keep-last 1 and --keep-best 0" in line and "--ignore-storage-check" in line
    assert not list(folder.glob("*.pt"))
    anyway = subprocess.run([*command, "--ignore-storage-check"], cwd=REPO, capture_output=True,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1", **env))
    assert anyway.returncode == 0, anyway.stderr
    assert "WARNING: the checkpoints of this run need up to" in anyway.stdout
