"""Small hostile files in a checkpoint folder (issue 12, "Memory and hangs" and "One odd file
breaks everything"): each test makes the file itself, the way an unlucky user or an attacker
would, and checks what listing, recovery, loading and training do with it.

A hang is bounded by a subprocess timeout, never by measuring time; memory is bounded by
making the code that would allocate it fail if it is ever called.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from tests._ckpt_helpers import TINY, make_state
from tests._cli_helpers import run_cli as shared_run_cli
from tests._train_worker import make_trainer
from utils.checkpoint_errors import ArchitectureMismatchError, NotACheckpointError
from utils.training.engine import loading
from utils.training.engine.checkpoint import read_sidecar, save_checkpoint, sidecar_path
from utils.training.engine.recovery import (
    CheckpointWarning,
    list_checkpoints,
    recover_training_results,
    select_checkpoint,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 240  # seconds: far above a normal run, far below "hangs forever"
RUN = "20250101-000000-aaaaaa"
def run_cli(*args: object) -> subprocess.CompletedProcess:
    """`python -m utils ...` as a user runs it, under `limit_memory`; a hang fails at TIMEOUT."""
    return shared_run_cli(*args, timeout=TIMEOUT, memory_limited=True)


def three_checkpoints(folder: Path) -> list[Path]:
    """Steps 1, 2, 3 of one run, val_loss 3.0, 2.0, 1.0: the last is newest and best."""
    return [save_checkpoint(make_state(step, 4.0 - step, run_id=RUN), folder)
            for step in (1, 2, 3)]


# --------------------------------------------------------------------------------------
# Memory: a config asking for 10^5 layers, a zip bomb
# --------------------------------------------------------------------------------------

def test_a_config_asking_for_100000_layers_fails_before_any_module_is_built(tmp_path,
                                                                            monkeypatch):
    state = make_state(1, 2.0)
    state["config"] = {**TINY.to_dict(), "number_of_layers": 100_000}
    path = save_checkpoint(state, tmp_path / "deep.pt")

    def no_building(config):
        raise AssertionError(f"a model with {config.number_of_layers} layers was built")

    monkeypatch.setattr(loading, "meta_skeleton", no_building)
    with pytest.raises(ArchitectureMismatchError) as caught:
        loading.load_pretrained_model(path, device="cpu")
    assert "number_of_layers=100000" in str(caught.value)
    assert "1 blocks" in str(caught.value) and "Fix" in str(caught.value)


BOMB_SIZE = [0]  # the size of the latest bomb: how the patched torch.load recognises it


def zip_bomb(path: Path, megabytes: int = 64) -> None:
    """A torch.save archive whose entries are DEFLATE-compressed: zeros shrink ~1000x, so a
    small file would inflate to `megabytes` MB (2 MB -> 2.3 GB in the issue)."""
    buffer = io.BytesIO()
    state = make_state(9, 0.1, run_id=RUN)  # the best and newest of the folder
    state["model_state_dict"] = dict(state["model_state_dict"],
                                     padding=torch.zeros(megabytes << 18))
    torch.save(state, buffer)
    with zipfile.ZipFile(buffer) as source, \
            zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as bomb:
        for entry in source.infolist():
            bomb.writestr(entry.filename, source.read(entry))
    BOMB_SIZE[0] = path.stat().st_size
    assert BOMB_SIZE[0] < (megabytes << 20) // 50


@pytest.fixture
def no_inflating(monkeypatch):
    """`arm()`: from then on, record and fail any read of a compressed entry or any hand-over
    of a file to torch.load, whose non-mmap retry would inflate it in memory."""
    calls = []
    real_load = torch.load

    def load(source, *args, **kwargs):
        if Path(str(source)).resolve().stat().st_size == BOMB_SIZE[0]:
            calls.append(source)
            raise AssertionError("the compressed checkpoint was handed to torch.load")
        return real_load(source, *args, **kwargs)

    def read(*args, **kwargs):
        calls.append("ZipExtFile.read")
        raise AssertionError("a compressed zip entry was inflated")

    def arm() -> list:
        monkeypatch.setattr(torch, "load", load)
        monkeypatch.setattr(zipfile.ZipExtFile, "read", read)
        return calls
    return arm


def test_a_zip_bomb_is_refused_by_load_without_inflating(tmp_path, no_inflating):
    zip_bomb(tmp_path / "bomb.pt")
    calls = no_inflating()
    for load in (lambda p: loading.load_pretrained_model(p, device="cpu"),
                 lambda p: loading.load_model_weights(loading.GPTModel(TINY), p, device="cpu")):
        with pytest.raises(NotACheckpointError, match="compressed entries"):
            load(tmp_path / "bomb.pt")
    assert calls == []


def test_a_zip_bomb_in_the_folder_is_listed_invalid_and_recovery_uses_the_others(
        tmp_path, no_inflating):
    good = three_checkpoints(tmp_path)
    bomb = tmp_path / "checkpoint_epoch0000_step000009_20251122_060009.pt"
    zip_bomb(bomb)
    sidecar_path(bomb).unlink(missing_ok=True)  # no sidecar: listing must look at the file
    calls = no_inflating()
    infos = {info.path: info for info in list_checkpoints(tmp_path, include_invalid=True)}
    assert not infos[bomb].valid and "compressed" in infos[bomb].error
    with pytest.warns(CheckpointWarning, match="step000009"):
        results = recover_training_results(tmp_path)
    assert results["checkpoint_path"] == str(good[2])
    assert calls == []


def test_a_zip_bomb_does_not_blow_up_recover_on_the_command_line(tmp_path):
    three_checkpoints(tmp_path)
    zip_bomb(tmp_path / "checkpoint_epoch0000_step000009_20251122_060009.pt", megabytes=256)
    result = run_cli("recover", "--checkpoint-dir", tmp_path, "--include-invalid")
    assert result.returncode == 0, result.stderr
    assert "compressed entries" in result.stdout
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------
# Hangs: FIFOs and /dev/zero where a small file belongs
# --------------------------------------------------------------------------------------

def hostile_sidecars(folder: Path) -> list[Path]:
    """Three checkpoints whose sidecars are a FIFO, a link to /dev/zero and a link to a FIFO."""
    paths = three_checkpoints(folder)
    os.mkfifo(folder / "pipe")
    for path, make in zip(paths, (lambda s: os.mkfifo(s),
                                  lambda s: s.symlink_to("/dev/zero"),
                                  lambda s: s.symlink_to(folder / "pipe")), strict=True):
        sidecar_path(path).unlink()
        make(sidecar_path(path))
    return paths


def test_fifo_and_dev_zero_sidecars_are_ignored_by_listing(tmp_path):
    paths = hostile_sidecars(tmp_path)
    for path in paths:
        assert read_sidecar(path) is None
    infos = list_checkpoints(tmp_path)  # read from the checkpoints themselves
    assert [info.global_step for info in infos] == [3, 2, 1]
    assert all(info.valid and info.run_id == RUN for info in infos)


def test_fifo_and_dev_zero_sidecars_do_not_hang_recover_or_training(tmp_path):
    hostile_sidecars(tmp_path)
    result = run_cli("recover", "--checkpoint-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "step000003" in result.stdout
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 50)
    result = run_cli("train", "--data", corpus, "--tokenizer", "byte", "--layers", "1",
                     "--heads", "2", "--dim", "16", "--context", "16", "--max-steps", "2",
                     "--checkpoint-interval", "1", "--keep-last", "1", "--no-progress",
                     "--device", "cpu", "--checkpoint-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("checkpoint_*step000001_*.pt"))) == 1  # the other run's
    assert (tmp_path / "pipe").exists()


def test_a_config_json_fifo_beside_safetensors_does_not_hang_load(tmp_path):
    from utils.model import GPTModel
    from utils.pretrained.huggingface import export_to_hf

    export_to_hf(GPTModel(TINY), tmp_path / "hf")
    (tmp_path / "hf" / "config.json").unlink()
    os.mkfifo(tmp_path / "hf" / "config.json")
    result = run_cli("load", "--checkpoint", tmp_path / "hf" / "model.safetensors",
                     "--device", "cpu")
    # without its config the tiny model's heads are unknown: one clear line, no hang
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and "config" in result.stderr


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_data_that_is_a_fifo_or_dev_zero_is_refused(tmp_path, kind):
    data = tmp_path / "data.txt"
    if kind == "fifo":
        os.mkfifo(data)
    else:
        data.symlink_to("/dev/zero")
    result = run_cli("train", "--data", data, "--tokenizer", "byte", "--layers", "1",
                     "--heads", "2", "--dim", "16", "--context", "16", "--max-steps", "1",
                     "--no-progress", "--checkpoint-dir", tmp_path / "ck")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "--data" in result.stderr or "data path" in result.stderr
    assert "not a regular file" in result.stderr


# --------------------------------------------------------------------------------------
# One odd file: sidecars of the wrong type, NaN, a newline in a name
# --------------------------------------------------------------------------------------

WRONG_TYPES = {"epoch is a list": {"epoch": [1]}, "step is a string": {"global_step": "3"},
               "timestamp is a number": {"timestamp": 5}, "val_loss is text": {"val_loss": "low"},
               "step is negative": {"global_step": -5}, "run id is a path": {"run_id": "../x"},
               "year 1, no offset, west of UTC": {"timestamp": "0001-01-01T00:00:00"},
               "sidecar is a list": None}


@pytest.fixture
def west_of_utc(monkeypatch):
    """This process's local time zone is UTC-10 (a naive year-1 time has no UTC value)."""
    monkeypatch.setenv("TZ", "America/Adak")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("case", sorted(WRONG_TYPES))
def test_a_sidecar_of_the_wrong_type_falls_back_to_the_checkpoint(tmp_path, case,
                                                                  west_of_utc):
    paths = three_checkpoints(tmp_path)
    change = WRONG_TYPES[case]
    meta = read_sidecar(paths[2])
    sidecar_path(paths[2]).write_text(json.dumps([1, 2] if change is None else meta | change))
    infos = list_checkpoints(tmp_path)
    assert [info.global_step for info in infos] == [3, 2, 1]
    assert infos[0].epoch == 0 and infos[0].timestamp.startswith("2025-11-22")
    assert recover_training_results(tmp_path)["global_step"] == 3


def test_wrong_type_sidecars_do_not_crash_training_at_its_first_checkpoint(tmp_path):
    paths = three_checkpoints(tmp_path)
    for path, change in zip(paths, ({"epoch": [1]}, {"global_step": "3"}, {"timestamp": 5}),
                            strict=True):
        sidecar_path(path).write_text(json.dumps(read_sidecar(path) | change))
    trainer = make_trainer(tmp_path, steps=2, checkpoint_interval=1, keep_last=1)
    trainer.fit(resume_from=None)
    assert all(path.exists() for path in paths)  # another run's files, never deleted
    mine = [info for info in list_checkpoints(tmp_path) if info.run_id == trainer.run_id]
    assert max(info.global_step for info in mine) == 2


def test_a_deeply_nested_json_file_named_pt_is_one_invalid_entry(tmp_path):
    paths = three_checkpoints(tmp_path)
    (tmp_path / "nested.pt").write_text("[" * 100_000 + "]" * 100_000)
    infos = list_checkpoints(tmp_path, include_invalid=True)
    assert [info.path for info in infos if info.valid] == paths[::-1]
    [odd] = [info for info in infos if not info.valid]
    assert odd.filename == "nested.pt" and "text file" in odd.error


def test_a_nan_val_loss_is_never_the_best(tmp_path):
    paths = three_checkpoints(tmp_path)  # val_loss 3.0, 2.0, 1.0
    worst = save_checkpoint(make_state(4, float("nan"), run_id=RUN), tmp_path)
    sidecar_path(paths[2]).write_text(
        sidecar_path(paths[2]).read_text().replace('"val_loss": 1.0', '"val_loss": NaN'))
    assert json.loads(sidecar_path(paths[2]).read_text())["val_loss"] != 1.0
    infos = list_checkpoints(tmp_path)
    assert infos[0].path == paths[1]  # 2.0: the best real loss
    assert {info.path for info in infos if info.val_loss is None} == {worst, paths[2]}
    results = recover_training_results(tmp_path)
    assert results["checkpoint_path"] == str(paths[1]) and results["best_val_loss"] == 2.0
    assert select_checkpoint(checkpoint_dir=tmp_path)[0] == paths[1]


def test_a_newline_in_a_file_name_adds_no_row_to_recover(tmp_path):
    three_checkpoints(tmp_path)
    fake = "ok.pt\n    9    999999     0.0000     0.0000  1.00e-03  2099-01-01 00:00:00  fake"
    shutil.copy(tmp_path / list_checkpoints(tmp_path)[0].filename, tmp_path / f"{fake}.pt")
    result = run_cli("recover", "--checkpoint-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "fake" in line]
    assert rows and all("\\n" in row for row in rows), result.stdout  # shown escaped
    assert not any(line.lstrip().startswith("9    999999") for line in result.stdout.splitlines())


# --------------------------------------------------------------------------------------
# An unreadable newest checkpoint: every consumer falls back and names the skipped file
# --------------------------------------------------------------------------------------

def make_unreadable(path: Path, kind: str) -> None:
    """As root, mode 000 does not stop reads: these are what an unreadable file looks like."""
    size = path.stat().st_size
    path.unlink()
    if kind == "garbage of the recorded size":  # the sidecar still matches
        path.write_bytes(os.urandom(size))
    elif kind == "a folder":
        path.mkdir()
    else:
        path.symlink_to(path.parent / "gone" / path.name)


UNREADABLE = ["garbage of the recorded size", "a folder", "a dangling link"]


@pytest.mark.parametrize("kind", UNREADABLE)
def test_recovery_and_selection_skip_an_unreadable_newest_checkpoint(tmp_path, kind):
    paths = three_checkpoints(tmp_path)
    make_unreadable(paths[2], kind)
    with pytest.warns(CheckpointWarning, match=paths[2].name):
        results = recover_training_results(tmp_path)
    assert results["latest_checkpoint_path"] == str(paths[1])
    assert results["checkpoint_path"] == str(paths[1]) and results["global_step"] == 2


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory) -> Path:
    """Checkpoints at steps 1, 2, 3 of a real `python -m utils train` run."""
    root = tmp_path_factory.mktemp("trained")
    (root / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 50)
    result = run_cli(*TRAIN, "--max-steps", "3", "--checkpoint-dir", root / "ck",
                     "--data", root / "corpus.txt")
    assert result.returncode == 0, result.stderr
    return root


# --keep-full 2: a second whole checkpoint, what a resume falls back to when the newest
# cannot be read (with the default 1 the older ones are weights-only copies)
TRAIN = ["train", "--tokenizer", "byte", "--layers", "1", "--heads", "2", "--dim", "16",
         "--context", "16", "--checkpoint-interval", "1", "--eval-interval", "1",
         "--keep-last", "5", "--keep-full", "2", "--no-progress", "--device", "cpu"]


def newest(folder: Path) -> Path:
    return max(folder.glob("checkpoint_*.pt"), key=lambda path: path.name)


@pytest.mark.parametrize("kind", UNREADABLE)
def test_recover_and_load_checkpoint_dir_fall_back_and_name_the_skipped_file(
        tmp_path, trained_folder, kind):
    folder = shutil.copytree(trained_folder / "ck", tmp_path / "ck", symlinks=True)
    bad = newest(folder)
    sidecar = read_sidecar(bad)
    sidecar["val_loss"] = 0.001  # make it the best as well as the newest
    sidecar_path(bad).write_text(json.dumps(sidecar))
    (folder / "best_model.pt").unlink()
    make_unreadable(bad, kind)
    result = run_cli("recover", "--checkpoint-dir", folder)
    assert result.returncode == 0, result.stderr
    assert bad.name in result.stderr and "Traceback" not in result.stderr
    result = run_cli("load", "--checkpoint-dir", folder, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert bad.name in result.stderr and "Traceback" not in result.stderr
    assert "step000002" in result.stdout


@pytest.mark.parametrize("kind", UNREADABLE)
def test_train_resume_latest_falls_back_and_names_the_skipped_file(tmp_path, trained_folder,
                                                                   kind):
    folder = shutil.copytree(trained_folder / "ck", tmp_path / "ck", symlinks=True)
    bad = newest(folder)
    (folder / "best_model.pt").unlink()  # else the copy of the newest is a good fallback
    make_unreadable(bad, kind)
    result = run_cli(*TRAIN, "--max-steps", "4", "--resume", "latest", "--checkpoint-dir",
                     folder, "--data", trained_folder / "corpus.txt")
    assert result.returncode == 0, result.stderr
    assert bad.name in result.stderr and "Traceback" not in result.stderr
    assert "resuming at step 2 from" in result.stdout
    assert len(list(folder.glob("checkpoint_*step000004_*.pt"))) == 1


@pytest.mark.parametrize("kind", UNREADABLE)
def test_trainer_fit_resume_latest_falls_back_and_names_the_skipped_file(tmp_path, kind):
    make_trainer(tmp_path, steps=3, checkpoint_interval=1, keep_last=5,
                 keep_full=2).fit(resume_from=None)
    bad = newest(tmp_path)
    make_unreadable(bad, kind)
    trainer = make_trainer(tmp_path, steps=4, checkpoint_interval=1, keep_last=5, keep_full=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(resume_from="latest")
    assert any(bad.name in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert trainer.global_step == 4
    assert trainer.metrics_history[0]["step"] == 1  # continued the run from step 2


# --------------------------------------------------------------------------------------
# Data loss: retention with files the run did not write (more in tests/test_runs.py)
# --------------------------------------------------------------------------------------

def test_resuming_from_a_renamed_file_keeps_it_and_a_convert_output_beside_it(
        tmp_path, trained_folder):
    from utils.cli.convert import pretrained_checkpoint
    from utils.model import GPTModel

    folder = shutil.copytree(trained_folder / "ck", tmp_path / "ck", symlinks=True)
    mine = folder / "my_model.pt"
    shutil.copy(newest(folder), mine)
    converted = save_checkpoint(pretrained_checkpoint(GPTModel(TINY), "gpt2", "byte"),
                                folder / "gpt2_converted.pt")
    before = {path: path.read_bytes() for path in (mine, converted)}
    result = run_cli(*TRAIN, "--max-steps", "6", "--resume", mine, "--keep-last", "1",
                     "--keep-best", "0", "--data", trained_folder / "corpus.txt")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout and "step 3" in result.stdout
    assert {path: path.read_bytes() for path in before} == before
    ours = sorted(path.name for path in folder.glob("checkpoint_*.pt"))
    assert len(ours) == 1 and "step000006" in ours[0]  # retention did run, on its own files
