"""One folder, however it is spelled, and one folder shared by two machines (issue 20,
item 2). The run lock and the fallback folder are keyed by the folder itself: through a
symlink or a bind mount (Colab's `My Drive` and `MyDrive`) it is the same lock and the same
fallback folder. A lease file in the folder (host, pid, heartbeat) keeps a second machine
sharing the Drive folder from training the same run while the first still does.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests._ckpt_helpers import make_state
from tests._cli_helpers import assert_one_error_line, run_cli
from tests._run_helpers import file_hashes, finish, start, wait_for_step, wait_until_held
from tests._train_worker import make_trainer
from utils.checkpoint_errors import RunInUseError
from utils.fileio import host_id, temp_file_owner
from utils.training.engine.checkpoint import FALLBACK_ROOT_ENV, fallback_dir_for
from utils.training.engine.listing import list_checkpoints
from utils.training.engine.runs import LEASE_SECONDS, RunLock, lease_path
from utils.training.engine.writer import CheckpointWriter

RUN = "20250101-000000-aaaaaa"


@pytest.fixture
def local_fallback(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "local"
    monkeypatch.setenv(FALLBACK_ROOT_ENV, str(root))
    return root


@pytest.fixture
def bind_mount(tmp_path):
    """(real folder, the same folder bind-mounted elsewhere); unmounted afterwards."""
    real, other = tmp_path / "real", tmp_path / "bind"
    real.mkdir()
    other.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(real), str(other)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount --bind is not allowed here: {mounted.stderr.strip()}")
    try:
        yield real, other
    finally:
        subprocess.run(["umount", "-l", str(other)], check=True)


@pytest.fixture
def symlinked(tmp_path) -> tuple[Path, Path]:
    real = tmp_path / "MyDrive"
    real.mkdir()
    link = tmp_path / "My Drive"
    link.symlink_to(real)
    return real, link


# --------------------------------------------------------------------------------------
# The lock and the fallback folder name the folder, not its spelling
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["symlink", "bind mount"])
def test_the_run_lock_is_one_lock_however_the_folder_is_spelled(request, spelling):
    real, other = request.getfixturevalue("symlinked" if spelling == "symlink" else
                                          "bind_mount")
    (real / "ck").mkdir(exist_ok=True)
    holder = RunLock(real / "ck", RUN)
    assert holder.acquire()
    try:
        assert not RunLock(other / "ck", RUN).acquire()
        assert not RunLock(str(other / "ck") + "/", RUN).acquire()
        assert RunLock(other / "ck", "20250101-000000-bbbbbb").acquire()  # another run
    finally:
        holder.release()
    assert RunLock(other / "ck", RUN).acquire()


def worker_temp_file(name: str, pid: int) -> bool:
    """Whether `name` is the hidden temp file of a write by process `pid` on this machine."""
    owner = temp_file_owner(Path(name))
    return owner is not None and owner.pid == pid and owner.host in (None, host_id())


def test_a_run_trained_through_a_symlink_cannot_be_trained_through_the_folder(tmp_path,
                                                                              symlinked):
    """The same run, one process through the folder's real path and one through a symlink
    to it: the second is refused before it changes anything."""
    real, link = symlinked
    hold = tmp_path / "hold"  # made once step 3's checkpoint is on its way: the worker waits
    worker = start(real / "ck", tmp_path / "out.pt", "--hold", str(hold), "--step-sleep", "0.3")
    try:
        wait_for_step(worker, 4)
        hold.write_text("")
        wait_until_held(worker)  # after step 4, or a step later on a busy machine
        deadline = time.monotonic() + 60
        while not list((real / "ck").glob("checkpoint_*.pt")):
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        before = file_hashes(real / "ck")
        with pytest.raises(RunInUseError, match="being trained by another process"):
            make_trainer(link / "ck").fit(resume_from="latest")
        after = file_hashes(real / "ck")
        # the held worker's own writer may still be at work (a sidecar, best_model.pt, the
        # hidden temp file of a write it is publishing); what was there is unchanged (the
        # lease's heartbeat aside)
        kept = [name for name in before if not name.startswith(("lease_", "best_model"))
                and not worker_temp_file(name, worker.pid)]
        assert {name: after.get(name) for name in kept} == {name: before[name] for name in kept}
    finally:
        hold.unlink()
    finish(worker)


def test_the_fallback_folder_is_one_folder_through_a_symlink(local_fallback, symlinked):
    real, link = symlinked
    assert fallback_dir_for(link / "ck") == fallback_dir_for(real / "ck")
    assert fallback_dir_for(link / "ck").parent == local_fallback


def test_a_local_only_checkpoint_written_through_a_bind_mount_is_found_through_the_folder(
        local_fallback, bind_mount):
    """The bind mount turns read-only (the Drive of one spelling fails): the checkpoint goes
    to the fallback folder, and the folder's other spelling still lists it."""
    real, other = bind_mount
    (real / "ck").mkdir()
    writer = CheckpointWriter(other / "ck", keep_last=None, keep_best=None, background=False,
                              run_id=RUN)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(other)], check=True)
    writer.submit(make_state(1, 1.0, run_id=RUN))
    assert writer.local_only, writer.take_notices()
    listed = list_checkpoints(real / "ck")
    assert [info.global_step for info in listed] == [1] and listed[0].local_only
    assert fallback_dir_for(real / "ck") == fallback_dir_for(other / "ck")


# --------------------------------------------------------------------------------------
# Two machines on one Drive folder: the lease file
# --------------------------------------------------------------------------------------

TRAIN = ["train", "--tokenizer", "byte", "--layers", "1", "--heads", "2", "--dim", "16",
         "--context", "16", "--checkpoint-interval", "1", "--eval-interval", "1",
         "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory) -> Path:
    """A run trained to step 2 of what a later `--max-steps 3` continues."""
    root = tmp_path_factory.mktemp("lease")
    (root / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 50)
    result = run_cli(*TRAIN, "--max-steps", "2", "--checkpoint-dir", root / "ck",
                     "--data", root / "corpus.txt")
    assert result.returncode == 0, result.stderr
    return root


def run_id_of(folder: Path) -> str:
    [run] = {info.run_id for info in list_checkpoints(folder)}
    return run


def fake_lease(folder: Path, age_seconds: float, machine: str | None = None) -> Path:
    """The lease another machine's training writes, with its last heartbeat `age` ago."""
    path = lease_path(folder, run_id_of(folder))
    beat = time.time() - age_seconds
    path.write_text(json.dumps({
        "run_id": run_id_of(folder), "host": "colab-runtime-2", "pid": 4242,
        "host_id": machine or "0badc0de", "token": "x", "heartbeat_unix": beat}))
    return path


def copy_of(two_steps: Path, tmp_path: Path) -> Path:
    subprocess.run(["cp", "-a", str(two_steps / "ck"), str(tmp_path / "ck")], check=True)
    return tmp_path / "ck"


def resume(folder: Path, corpus: Path) -> subprocess.CompletedProcess:
    return run_cli(*TRAIN, "--max-steps", "3", "--checkpoint-dir", folder, "--data", corpus)


def test_a_run_another_machine_is_training_is_refused(tmp_path, two_steps):
    folder = copy_of(two_steps, tmp_path)
    lease = fake_lease(folder, age_seconds=20)
    before = file_hashes(folder)
    line = assert_one_error_line(resume(folder, two_steps / "corpus.txt"),
                                 "being trained on another machine", "colab-runtime-2",
                                 str(lease))
    assert "--new-run" in line
    assert file_hashes(folder) == before  # nothing written, the lease left as it was


@pytest.mark.parametrize("case", ["stale", "this machine", "from the future", "garbage"])
def test_a_lease_that_proves_nothing_does_not_block(tmp_path, two_steps, case):
    """A heartbeat older than the bound (that machine died), a lease of this machine (a
    killed process: the run lock decides here), a heartbeat far in the future (a forged
    or wrong clock), an unreadable file: training goes on, and its own lease is gone at
    the end."""
    folder = copy_of(two_steps, tmp_path)
    if case == "garbage":
        lease = lease_path(folder, run_id_of(folder))
        lease.write_text("{not json")
    else:
        age = {"stale": LEASE_SECONDS + 60, "this machine": 1,
               "from the future": -10 * LEASE_SECONDS}[case]
        lease = fake_lease(folder, age, machine=host_id() if case == "this machine" else None)
    result = resume(folder, two_steps / "corpus.txt")
    assert result.returncode == 0, result.stderr
    assert "resuming run" in result.stdout and not lease.exists()
    assert max(info.global_step for info in list_checkpoints(folder)) == 3


def test_a_training_holds_a_lease_naming_its_machine_and_process(tmp_path):
    hold = tmp_path / "hold"
    hold.write_text("")
    worker = start(tmp_path / "ck", tmp_path / "out.pt", "--hold", str(hold))
    try:
        wait_for_step(worker, 1)
        [lease] = (tmp_path / "ck").glob("lease_*.json")
        record = json.loads(lease.read_text())
        assert record["pid"] == worker.pid and record["host_id"] == host_id()
        assert record["host"] == socket.gethostname()
        assert abs(time.time() - record["heartbeat_unix"]) < LEASE_SECONDS
    finally:
        hold.unlink()
    finish(worker)
    assert not list((tmp_path / "ck").glob("lease_*.json"))  # released at the end


def test_a_local_only_checkpoint_is_found_through_a_symlink_into_an_unmounted_drive(
        tmp_path, local_fallback):
    """`/content/drive/My Drive` is a link into the Drive mount: once Drive is unmounted it
    no longer resolves, and the fallback folder (named after the resolved path) is found by
    the spelling its record keeps."""
    mount = tmp_path / "drive"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not allowed here: {mounted.stderr.strip()}")
    try:
        (mount / "MyDrive" / "ck").mkdir(parents=True)
        link = tmp_path / "My Drive"
        link.symlink_to(mount / "MyDrive")
        writer = CheckpointWriter(link / "ck", keep_last=None, keep_best=None,
                                  background=False, run_id=RUN)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
    writer.submit(make_state(1, 1.0, run_id=RUN))  # the folder is gone: written locally
    assert writer.local_only
    listed = list_checkpoints(link / "ck")
    assert [info.global_step for info in listed] == [1] and listed[0].local_only
