"""Listing checkpoints and recovering metrics: order, sidecars, broken files, best_model.pt."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from tests._ckpt_helpers import make_state
from utils.checkpoint_errors import NoCheckpointsError, RunNotFoundError
from utils.training.engine.checkpoint import (
    BEST_MODEL_NAME,
    save_checkpoint,
    sidecar_path,
)
from utils.training.engine.recovery import (
    CheckpointWarning,
    check_run,
    list_checkpoints,
    load_newest_readable,
    plan_resume,
    recover_training_results,
)
from utils.training.engine.writer import CheckpointWriter


@pytest.fixture()
def three(tmp_path):
    """Checkpoints at steps 1, 2, 3 with val losses 3.0, None, 2.0."""
    paths = [save_checkpoint(make_state(step, loss), tmp_path)
             for step, loss in [(1, 3.0), (2, None), (3, 2.0)]]
    return tmp_path, paths


def test_sorted_best_val_loss_first_then_newest_none_last(three, tmp_path):
    folder, _ = three
    save_checkpoint(make_state(4, 3.0), folder)  # ties with step 1: newer first
    infos = list_checkpoints(folder)
    assert [(i.global_step, i.val_loss) for i in infos] == [(3, 2.0), (4, 3.0), (1, 3.0),
                                                              (2, None)]
    first = infos[0]
    assert first.valid and first.error is None and first.epoch == 0
    assert first.train_loss == pytest.approx(4.03) and first.learning_rate == 1e-3
    assert first.size_bytes == first.path.stat().st_size
    assert first.timestamp == "2025-11-22T06:00:03"
    assert first.filename == first.path.name


def test_listing_reads_sidecars_not_checkpoints(three, monkeypatch):
    folder, _ = three

    def refuse(*args, **kwargs):
        raise AssertionError("list_checkpoints opened a checkpoint that has a sidecar")

    monkeypatch.setattr(torch, "load", refuse)
    assert len(list_checkpoints(folder)) == 3


def test_checkpoint_without_sidecar_is_listed_from_its_metadata(three):
    folder, paths = three
    sidecar_path(paths[2]).unlink()
    copied = folder / "copied_by_hand.pt"
    shutil.copyfile(paths[0], copied)
    sidecar_path(paths[0]).unlink()
    paths[0].unlink()
    infos = list_checkpoints(folder)
    assert [(i.filename, i.global_step, i.val_loss) for i in infos] == [
        (paths[2].name, 3, 2.0), ("copied_by_hand.pt", 1, 3.0), (paths[1].name, 2, None)]


def test_broken_files_are_skipped_with_a_warning_naming_them(three):
    folder, paths = three
    (folder / "checkpoint_epoch0000_step000007_20251122_070000.pt").write_bytes(b"")
    (folder / "garbage.pt").write_bytes(b"this is not a checkpoint" * 10)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])  # truncated, sidecar still says full size
    unsidecared = folder / "checkpoint_epoch0000_step000008_20251122_070001.pt"
    unsidecared.write_bytes(paths[0].read_bytes()[:1000])  # truncated, no sidecar
    not_a_checkpoint = folder / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, not_a_checkpoint)
    (folder / ".checkpoint_epoch0000_step000009_20251122_070002.pt.tmp").write_bytes(b"x")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        infos = list_checkpoints(folder)
    assert [i.global_step for i in infos] == [3, 1]
    messages = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
    assert len(messages) == 5
    for name in ["step000007", "garbage.pt", paths[1].name, unsidecared.name, "weights.pt"]:
        assert sum(name in m for m in messages) == 1, name
    assert any("0 bytes" in m for m in messages)
    assert any("sidecar recorded" in m for m in messages)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # include_invalid reports instead of warning
        everything = list_checkpoints(folder, include_invalid=True)
    invalid = [i for i in everything if not i.valid]
    assert len(everything) == 7 and len(invalid) == 5
    assert everything[:2] == infos and all(i.error for i in invalid)


def test_best_model_is_listed_only_when_its_source_is_gone(tmp_path):
    writer = CheckpointWriter(tmp_path, keep_last=1, keep_best=0, background=False)
    writer.submit(make_state(1, 2.0), is_best=True)
    assert [i.global_step for i in list_checkpoints(tmp_path)] == [1]
    writer.submit(make_state(2, 3.0), is_best=False)  # prunes step 1; best_model.pt remains
    infos = list_checkpoints(tmp_path)
    assert [(i.filename, i.global_step) for i in infos][0] == (BEST_MODEL_NAME, 1)
    assert len(infos) == 2
    # without a sidecar best_model.pt is matched by step and timestamp instead
    writer.submit(make_state(3, 1.0), is_best=True)
    sidecar_path(tmp_path / BEST_MODEL_NAME).unlink()
    assert [i.filename for i in list_checkpoints(tmp_path)] == [writer.last_path.name]


def test_recover_training_results(three):
    folder, paths = three
    results = recover_training_results(folder)
    assert results["checkpoint_path"] == str(paths[2])
    assert results["latest_checkpoint_path"] == str(paths[2])
    assert results["best_val_loss"] == 2.0
    assert (results["epoch"], results["global_step"]) == (0, 3)
    assert results["config"] == make_state(3, 2.0)["config"]
    assert results["training_config"]["max_steps"] == 100
    metrics = results["metrics"]
    assert list(metrics["step"]) == [1, 2, 3]
    assert list(metrics.columns[:4]) == ["step", "epoch", "train_loss", "val_loss"]
    assert len(results["checkpoints"]) == 3


def test_recover_latest_is_newest_even_when_not_best(tmp_path):
    best = save_checkpoint(make_state(1, 1.0), tmp_path)
    latest = save_checkpoint(make_state(5, 4.0), tmp_path)
    results = recover_training_results(tmp_path)
    assert results["checkpoint_path"] == str(best)
    assert results["latest_checkpoint_path"] == str(latest)
    assert list(results["metrics"]["step"]) == [1, 2, 3, 4, 5]


def test_recover_skips_a_checkpoint_whose_contents_are_corrupt(three):
    folder, paths = three
    size = paths[2].stat().st_size
    paths[2].write_bytes(b"\0" * size)  # right size, so the sidecar looks fine
    with pytest.warns(CheckpointWarning, match=paths[2].name):
        results = recover_training_results(folder)
    assert results["latest_checkpoint_path"] == str(paths[1])
    assert results["checkpoint_path"] == str(paths[0])


def test_no_checkpoints_error_names_the_folder_and_the_fix(tmp_path):
    (tmp_path / "notes.json").write_text(json.dumps({}))
    with pytest.raises(NoCheckpointsError, match=str(tmp_path)) as caught:
        recover_training_results(tmp_path)
    assert "python -m utils train" in str(caught.value)
    with pytest.raises(NoCheckpointsError, match="does not exist"):
        recover_training_results(tmp_path / "missing")
    assert list_checkpoints(tmp_path / "missing") == []


def test_a_run_id_that_names_no_run_lists_the_runs_there(tmp_path):
    """Not "no checkpoints ... train first": the folder has runs, just not that one."""
    run_id = "20250101-000000-aaaaaa"
    save_checkpoint(make_state(4, 1.0, run_id=run_id), tmp_path)
    for ask in (lambda: recover_training_results(tmp_path, run="20990101-000000-ffffff"),
                lambda: load_newest_readable(tmp_path, lambda path: path,
                                             run="20990101-000000-ffffff")):
        with pytest.raises(RunNotFoundError) as caught:
            ask()
        message = str(caught.value)
        assert "run '20990101-000000-ffffff' is not in" in message
        assert f"the runs there are {run_id} (" in message and "step 4" in message
        assert not isinstance(caught.value, NoCheckpointsError)
    check_run(tmp_path, run_id)  # a run that is there, and "latest", pass
    check_run(tmp_path, "latest")


def test_plan_tells_an_interrupted_run_from_a_finished_one(tmp_path):
    """A run that stopped at step 10 of its 40 and is asked for 8 steps was interrupted;
    one that reached its own budget has finished."""
    interrupted = make_state(10, 1.0, run_id="20250101-000000-aaaaaa", run_fingerprint="f" * 16)
    interrupted["total_steps"] = 40
    save_checkpoint(interrupted, tmp_path / "a")
    plan = plan_resume(tmp_path / "a", "f" * 16, total_steps=8)
    assert plan.action == "interrupted"
    assert "stopped at step 10 of its 40 steps" in plan.message
    assert "max_steps to 40" in plan.message and "--new-run" in plan.message
    assert plan_resume(tmp_path / "a", "f" * 16, total_steps=40).action == "resume"
    finished = make_state(10, 1.0, run_id="20250101-000000-aaaaaa", run_fingerprint="f" * 16)
    finished["total_steps"] = 10
    save_checkpoint(finished, tmp_path / "b")
    assert plan_resume(tmp_path / "b", "f" * 16, total_steps=8).action == "finished"
