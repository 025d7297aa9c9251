"""Checkpoint writing: format, atomicity, retention, best model, write failures, kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests._ckpt_helpers import make_state
from tests._run_helpers import wait_until
from utils.training.engine.checkpoint import (
    BEST_MODEL_NAME,
    CHECKPOINT_KEYS,
    CHECKPOINT_NAME_RE,
    save_checkpoint,
    sidecar_path,
)
from utils.training.engine.recovery import list_checkpoints
from utils.training.engine.writer import CheckpointWriter, snapshot

REPO = Path(__file__).resolve().parent.parent


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_save_writes_named_file_sidecar_and_loads_with_weights_only(tmp_path):
    state = make_state(step=9, val_loss=3.5)
    path = save_checkpoint(state, tmp_path)

    assert path.name == "checkpoint_epoch0000_step000009_20251122_060009.pt"
    assert CHECKPOINT_NAME_RE.match(path.name)
    assert _files(tmp_path) == [path.name, path.name + ".json"]  # no temp file left
    loaded = torch.load(path, weights_only=True)
    assert sorted(loaded) == sorted(CHECKPOINT_KEYS)
    for key, value in state["model_state_dict"].items():
        assert torch.equal(loaded["model_state_dict"][key], value), key
    # the tied head is stored once: it comes back sharing the embedding's storage
    sd = loaded["model_state_dict"]
    assert sd["lm_head.weight"].data_ptr() == sd["token_embedding.weight"].data_ptr()
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["size_bytes"] == path.stat().st_size
    assert (meta["global_step"], meta["val_loss"], meta["filename"]) == (9, 3.5, path.name)
    assert meta["config"] == state["config"]


def test_sidecar_stores_nan_loss_as_null(tmp_path):
    path = save_checkpoint(make_state(step=1, val_loss=float("nan")), tmp_path)
    assert json.loads(sidecar_path(path).read_text())["val_loss"] is None


def test_snapshot_is_an_independent_copy_that_keeps_shared_storage():
    state = make_state(step=1, val_loss=1.0)
    copy = snapshot(state)
    live = state["model_state_dict"]["token_embedding.weight"]
    copied = copy["model_state_dict"]["token_embedding.weight"]
    assert torch.equal(live, copied) and live.data_ptr() != copied.data_ptr()
    assert copy["model_state_dict"]["lm_head.weight"].data_ptr() == copied.data_ptr()
    exp_avg = state["optimizer_state_dict"]["state"][0]["exp_avg"]
    expected = exp_avg.clone()
    exp_avg.add_(1.0)  # training goes on after the snapshot
    assert torch.equal(copy["optimizer_state_dict"]["state"][0]["exp_avg"], expected)
    assert copy["metrics_history"] == state["metrics_history"]


def test_writer_keeps_newest_and_best_and_updates_best_model(tmp_path):
    writer = CheckpointWriter(tmp_path, keep_last=2, keep_best=1, background=True)
    losses = {1: 5.0, 2: 3.0, 3: 4.0, 4: 4.5, 5: 4.2}
    best_so_far = float("inf")
    for step, loss in losses.items():
        writer.submit(make_state(step, loss, seed=step), is_best=loss < best_so_far)
        best_so_far = min(best_so_far, loss)
    writer.close()

    kept = {info.global_step for info in list_checkpoints(tmp_path)}
    assert kept == {2, 4, 5}  # best (3.0 at step 2) + newest two
    pt_files = [n for n in _files(tmp_path) if n.endswith(".pt")]
    assert len(pt_files) == 4 and BEST_MODEL_NAME in pt_files
    assert all((tmp_path / (n + ".json")).exists() for n in pt_files)  # sidecars pruned too
    assert not [n for n in _files(tmp_path) if n.startswith(".")]
    best = torch.load(tmp_path / BEST_MODEL_NAME, weights_only=True)
    expected = make_state(2, 3.0, seed=2)["model_state_dict"]
    assert best["global_step"] == 2
    assert all(torch.equal(best["model_state_dict"][k], v) for k, v in expected.items())
    best_meta = json.loads(sidecar_path(tmp_path / BEST_MODEL_NAME).read_text())
    assert best_meta["source"].startswith("checkpoint_epoch0000_step000002_")


def test_writer_keeps_everything_when_a_limit_is_none(tmp_path):
    writer = CheckpointWriter(tmp_path, keep_last=None, keep_best=1, background=False)
    for step in range(1, 5):
        writer.submit(make_state(step, 1.0))
    assert len(list_checkpoints(tmp_path)) == 4


_FAILING_WRITE = textwrap.dedent("""
    import json, os, resource, signal, sys
    sys.path.insert(0, {repo!r})
    from tests._ckpt_helpers import make_state
    from utils.training.engine.writer import CheckpointWriter
    from utils.checkpoint_errors import CheckpointWriteError

    folder = sys.argv[1]
    writer = CheckpointWriter(folder, keep_last=1, keep_best=0, background={background})
    writer.submit(make_state(1, 2.0), is_best=True)
    writer.close()
    first = writer.last_path
    size = os.path.getsize(first)
    # Like a full disk: any write past `size` // 2 bytes fails with EFBIG (not a signal).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, resource.RLIM_INFINITY))
    result = {{"first": str(first)}}
    try:
        writer.submit(make_state(2, 1.0), is_best=True)
        writer.close()  # a background write's error surfaces here
    except CheckpointWriteError as error:
        result["error"] = str(error)
    print(json.dumps(result))
""")


@pytest.mark.parametrize("background", [False, True])
def test_failing_write_raises_clear_error_and_keeps_earlier_checkpoints(tmp_path, background):
    script = _FAILING_WRITE.format(repo=str(REPO), background=background)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "File too large" in result["error"] and "intact" in result["error"]
    first = Path(result["first"])
    # the earlier checkpoint, its sidecar and best_model.pt are untouched; no temp file
    assert _files(tmp_path) == sorted([first.name, first.name + ".json", BEST_MODEL_NAME,
                                       BEST_MODEL_NAME + ".json"])
    [info] = list_checkpoints(tmp_path)
    assert info.global_step == 1 and info.valid
    loaded = torch.load(first, weights_only=True)
    expected = make_state(1, 2.0)["model_state_dict"]
    assert all(torch.equal(loaded["model_state_dict"][k], v) for k, v in expected.items())


_SLOW_WRITE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from tests._ckpt_helpers import make_state
    from utils.training.engine.checkpoint import save_checkpoint
    save_checkpoint(make_state(2, 1.0), sys.argv[1])
""")


def test_kill_during_write_leaves_only_an_unlisted_temp_file(tmp_path):
    first = save_checkpoint(make_state(1, 2.0), tmp_path)
    paused = tmp_path.parent / f"{tmp_path.name}.paused"  # outside the checkpoint folder
    env = dict(os.environ, UTILS_TEST_CHECKPOINT_SLEEP="60",
               UTILS_TEST_CHECKPOINT_PAUSED=str(paused))
    process = subprocess.Popen([sys.executable, "-c", _SLOW_WRITE.format(repo=str(REPO)),
                                str(tmp_path)], env=env)
    try:
        # the marker appears once the temp file is complete and fsynced, before its publish
        wait_until(paused.exists, process, "the writer to pause before publishing")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    temps = list(tmp_path.glob(".*.tmp"))
    assert len(temps) == 1 and temps[0].name.startswith(".checkpoint_")
    assert [info.path for info in list_checkpoints(tmp_path, include_invalid=True)] == [first]


def test_prepare_preallocates_the_buffers_the_first_snapshot_uses(tmp_path):
    state = make_state(step=1, val_loss=1.0)
    writer = CheckpointWriter(tmp_path, keep_last=None, keep_best=None, background=True)
    writer.prepare({"model_state_dict": state["model_state_dict"],
                    "optimizer_state_dict": state["optimizer_state_dict"]})
    writer.wait()
    prepared = {key: buffer.data_ptr() for key, buffer in writer.buffers._buffers.items()}
    # one buffer per distinct storage: the tied head shares the embedding's buffer
    assert len(prepared) == len(state["model_state_dict"]) - 1 + 2 * len(
        state["optimizer_state_dict"]["state"]) + len(state["optimizer_state_dict"]["state"])
    writer.submit(state)
    writer.close()
    assert {k: b.data_ptr() for k, b in writer.buffers._buffers.items()
            if k in prepared} == prepared
    loaded = torch.load(writer.last_path, weights_only=True)
    assert all(torch.equal(loaded["model_state_dict"][k], v)
               for k, v in state["model_state_dict"].items())
