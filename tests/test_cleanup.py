"""Cleaning up deletes only what we provably left behind (issue 20, item 3).

Temporary files are named `.NAME.PID-HOST.tmp` (`utils.fileio.temp_path`). A training run
deletes such a file only when NAME is one of ours (a checkpoint, best_model.pt, a sidecar,
a lease) and it was abandoned: written on this machine by a process that is gone, or
untouched for `STALE_TEMP_SECONDS` (another machine's, whose processes cannot be asked).
Copying local-only checkpoints back never replaces a file.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._ckpt_helpers import make_state
from tests._cli_helpers import run_cli
from utils.fileio import host_id
from utils.training.engine.checkpoint import (
    FALLBACK_ROOT_ENV,
    fallback_dir_for,
    read_sidecar,
    save_checkpoint,
    sidecar_path,
)
from utils.training.engine.listing import list_checkpoints
from utils.training.engine.writer import (
    STALE_TEMP_SECONDS,
    CheckpointWriter,
    remove_stale_temp_files,
)

RUN, OTHER_RUN = "20250101-000000-aaaaaa", "20250101-000000-bbbbbb"
CHECKPOINT = "checkpoint_epoch0000_step000005_20250101_000000.pt"
ANOTHER_MACHINE = "0badc0de"


def dead_pid() -> int:
    """The id of a process of this machine that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def temp_file(folder: Path, name: str, age_seconds: float = 0) -> Path:
    path = folder / name
    path.write_bytes(b"part of a checkpoint being written")
    when = time.time() - age_seconds
    os.utime(path, (when, when))
    return path


def test_only_our_abandoned_temp_files_are_removed(tmp_path):
    old = STALE_TEMP_SECONDS + 600
    survivors = [
        temp_file(tmp_path, ".notes.tmp"),  # a user's hidden file
        temp_file(tmp_path, ".notes.txt.123.tmp", age_seconds=old),  # not one of our names
        temp_file(tmp_path, f".{CHECKPOINT}.{os.getpid()}-{host_id()}.tmp"),  # alive here
        # another machine sharing the folder, writing right now (its pid means nothing here)
        temp_file(tmp_path, f".{CHECKPOINT}.{dead_pid()}-{ANOTHER_MACHINE}.tmp"),
        temp_file(tmp_path, f".{CHECKPOINT}.json.{dead_pid()}-{ANOTHER_MACHINE}.tmp"),
        temp_file(tmp_path, f".{CHECKPOINT}.{dead_pid()}.tmp"),  # older name: whose is it?
    ]
    removed = [
        temp_file(tmp_path, f".{CHECKPOINT}.{dead_pid()}-{host_id()}.tmp"),  # killed here
        temp_file(tmp_path, f".best_model.pt.{dead_pid()}-{host_id()}.tmp"),
        temp_file(tmp_path, f".{CHECKPOINT}.{dead_pid()}-{ANOTHER_MACHINE}.tmp",
                  age_seconds=old),  # another machine's, untouched for long: abandoned
        temp_file(tmp_path, f".lease_{RUN}.json.{dead_pid()}.tmp", age_seconds=old),
    ]
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(removed)
    assert all(path.exists() for path in survivors)
    assert not any(path.exists() for path in removed)


def test_a_training_run_leaves_a_users_tmp_file_and_another_machines_write_alone(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    notes = temp_file(folder, ".notes.tmp")
    in_flight = temp_file(folder, f".{CHECKPOINT}.4242-{ANOTHER_MACHINE}.tmp")
    killed_here = temp_file(folder, f".{CHECKPOINT}.{dead_pid()}-{host_id()}.tmp")
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 50)
    result = run_cli("train", "--tokenizer", "byte", "--layers", "1", "--heads", "2", "--dim",
                     "16", "--context", "16", "--max-steps", "2", "--no-progress",
                     "--device", "cpu", "--checkpoint-dir", folder,
                     "--data", tmp_path / "corpus.txt")
    assert result.returncode == 0, result.stderr
    assert notes.read_bytes() == in_flight.read_bytes() == b"part of a checkpoint being written"
    assert not killed_here.exists()
    assert f"removed 1 unfinished checkpoint write(s) from an earlier run: {killed_here.name}" \
        in result.stdout


# --------------------------------------------------------------------------------------
# Copying local-only checkpoints back
# --------------------------------------------------------------------------------------

def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def local_fallback(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(FALLBACK_ROOT_ENV, str(tmp_path / "local"))


def test_copy_back_never_replaces_another_runs_file_of_the_same_name(tmp_path, local_fallback):
    """Run A wrote step 1 only locally (its Drive failed); meanwhile run B wrote its own
    step 1 under the same name in the folder. A's copy-back keeps B's file byte for byte
    and takes the next free name."""
    folder = tmp_path / "ck"
    theirs = save_checkpoint(make_state(1, 2.0, run_id=OTHER_RUN), folder)
    ours = save_checkpoint(make_state(1, 1.0, run_id=RUN), fallback_dir_for(folder))
    assert ours.name == theirs.name
    before = {path: sha(path) for path in (theirs, sidecar_path(theirs))}
    ours_digest = sha(ours)

    # keep_full=None: every checkpoint stays whole, so the copy keeps its bytes (the storage
    # plan would rewrite step 1 weights-only once step 2 is written)
    writer = CheckpointWriter(folder, keep_last=None, keep_best=None, background=False,
                              run_id=RUN, keep_full=None)
    assert writer.local_only == [ours]
    writer.submit(make_state(2, 1.5, run_id=RUN))
    assert {path: sha(path) for path in before} == before
    copied = folder / theirs.name.replace(".pt", "_aaaaaa.pt")
    assert sha(copied) == ours_digest and not ours.exists()
    assert read_sidecar(copied)["filename"] == copied.name
    assert any(f"as {copied.name} (its name was taken)" in notice
               for notice in writer.take_notices())
    runs = {info.run_id: sorted(i.global_step for i in list_checkpoints(folder, run=info.run_id))
            for info in list_checkpoints(folder)}
    assert runs == {RUN: [1, 2], OTHER_RUN: [1]}


def test_copy_back_after_an_interrupted_copy_does_not_copy_twice(tmp_path, local_fallback):
    """A copy-back killed after the copy but before the local file was removed: the file in
    the folder is the same bytes, so the next copy-back only removes the local one."""
    folder = tmp_path / "ck"
    ours = save_checkpoint(make_state(1, 1.0, run_id=RUN), fallback_dir_for(folder))
    folder.mkdir()
    (folder / ours.name).write_bytes(ours.read_bytes())
    writer = CheckpointWriter(folder, keep_last=None, keep_best=None, background=False,
                              run_id=RUN)
    writer.submit(make_state(2, 1.5, run_id=RUN))
    assert not ours.exists()
    assert sorted(p.name for p in folder.glob("checkpoint_*.pt")) == sorted(
        [ours.name, writer.last_path.name])
