"""Google Drive faults cost no training: real file systems that fill up, turn read-only and
go away mid-run (a small tmpfs, remounted and unmounted under a real training process), and
retention that empties files before deleting them on Drive (Drive's trash keeps quota).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests._ckpt_helpers import make_state
from tests._run_helpers import assert_same_weights, finish, start, wait_for_step
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
