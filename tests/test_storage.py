"""The storage plan: only the newest checkpoint keeps the optimizer state, the others and
best_model.pt are weights-only (optionally bf16/fp16), the footprint is said before the
first step and checked against what a finished run really leaves, and the token cache lives
on the local disk. Real files, real runs; the small-Drive runs are in test_drive_faults.py
and the kills during a rewrite in test_resume.py."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tests import _train_worker as worker
from tests._ckpt_helpers import make_state
from utils.checkpoint_errors import NotResumableError
from utils.config import GPT2_CONFIGS, ConfigError, TrainingConfig
from utils.fileio import write_atomically
from utils.training.engine.checkpoint import (
    BEST_MODEL_NAME,
    read_sidecar,
    save_checkpoint,
    weights_only_state,
)
from utils.training.engine.loading import load_model_weights, load_pretrained_model
from utils.training.engine.recovery import (
    CheckpointWarning,
    list_checkpoints,
    load_newest_readable,
    recover_training_results,
)
from utils.training.engine.runs import run_fingerprint
from utils.training.engine.storage import (
    StoragePlan,
    blocks,
    count_due_steps,
    plan_storage,
    size_text,
)
from utils.training.engine.writer import CheckpointWriter

REPO = Path(__file__).resolve().parent.parent
RUN = "20250101-000000-aaaaaa"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def allocated(folder: Path) -> int:
    """What the files in `folder` take on its file system."""
    return sum(path.stat().st_blocks * 512 for path in folder.iterdir() if path.is_file())


def stored_bytes(state_dict: dict) -> int:
    """Bytes of the distinct storages (a tied pair counted once), as torch.save stores them."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in state_dict.values()}
    return sum(storages.values())


def write_run(folder: Path, losses: list[float], **writer_settings) -> list[Path]:
    """One checkpoint per loss (steps 1, 2, ...), written as training writes them."""
    writer = CheckpointWriter(folder, background=False, run_id=RUN, **writer_settings)
    paths, best = [], float("inf")
    for step, loss in enumerate(losses, start=1):
        writer.submit(make_state(step, loss, seed=step, run_id=RUN), is_best=loss < best)
        best = min(best, loss)
        paths.append(writer.last_path)
    return paths


# ---------------------------------------------------------------- the plan on disk


def test_only_the_newest_checkpoint_keeps_the_optimizer_state(tmp_path):
    paths = write_run(tmp_path, [1.0, 3.0, 4.0, 5.0, 6.0])  # best at step 1, kept by keep_best
    infos = {info.global_step: info for info in list_checkpoints(tmp_path)}
    assert set(infos) == {1, 3, 4, 5}  # retention: newest 3 and the best
    assert [step for step, info in infos.items() if info.resumable] == [5]
    for step, info in infos.items():
        saved = torch.load(info.path, weights_only=True)
        whole = step == 5
        assert (saved["optimizer_state_dict"] is not None) == whole
        assert (saved["rng_state"] is not None) == whole
        assert read_sidecar(info.path)["resumable"] is whole
        # what a weights-only copy keeps: the weights as trained and the run's record
        original = make_state(step, saved["val_loss"], seed=step, run_id=RUN)
        assert all(torch.equal(saved["model_state_dict"][k], v)
                   for k, v in original["model_state_dict"].items())
        assert saved["metrics_history"] == original["metrics_history"]
        assert saved["run_id"] == RUN and saved["config"] == original["config"]
    assert infos[1].size_bytes < infos[5].size_bytes / 2  # AdamW's moments are 2/3 of it
    assert paths[-1] == infos[5].path


def test_keep_full_keeps_that_many_newest_checkpoints_whole(tmp_path):
    write_run(tmp_path, [5.0, 4.0, 3.0, 2.0], keep_full=2)
    resumable = sorted(info.global_step for info in list_checkpoints(tmp_path)
                       if info.resumable)
    assert resumable == [3, 4]
    write_run(tmp_path / "all", [5.0, 4.0, 3.0], keep_full=None)  # every checkpoint whole
    assert all(info.resumable for info in list_checkpoints(tmp_path / "all"))


def test_best_model_is_a_weights_only_file_of_its_own(tmp_path):
    paths = write_run(tmp_path, [2.0, 1.0, 3.0])
    best = tmp_path / BEST_MODEL_NAME
    meta = read_sidecar(best)
    assert meta["source"] == paths[1].name and meta["run_id"] == RUN
    assert meta["resumable"] is False and meta["global_step"] == 2
    assert not any(os.path.samefile(best, path) for path in paths if path.exists())
    assert best.stat().st_nlink == 1
    before = {path.name: digest(path) for path in paths if path.exists()}
    best.write_bytes(b"someone saved their notes here")  # a write over it touches nothing else
    assert {path.name: digest(path) for path in paths if path.exists()} == before
    model, checkpoint = load_pretrained_model(paths[1], device="cpu")
    assert checkpoint["global_step"] == 2


def test_weights_only_files_load_list_compare_and_refuse_to_resume(tmp_path):
    from utils.training.engine.compare import compare_checkpoints

    paths = write_run(tmp_path, [1.0, 2.0])
    older, newest = paths
    model, checkpoint = load_pretrained_model(older, device="cpu")
    original = make_state(1, 1.0, seed=1, run_id=RUN)["model_state_dict"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())
    assert checkpoint["optimizer_state_dict"] is None and checkpoint["val_loss"] == 1.0
    assert len(compare_checkpoints(older, newest)) > 0
    trainer = worker.make_trainer(tmp_path / "elsewhere")
    with pytest.raises(NotResumableError, match="weights-only copy.*resume_from='latest'"):
        trainer.load_checkpoint(older)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)  # no weights-only file is tried
        path, loaded = load_newest_readable(tmp_path, lambda p: torch.load(p, weights_only=True))
    assert path == newest and loaded["optimizer_state_dict"] is not None
    newest.unlink()  # the only whole checkpoint is gone: the run cannot continue exactly
    with pytest.raises(NotResumableError, match="keeps only weights-only checkpoints.*keep_full=2"):
        load_newest_readable(tmp_path, lambda p: torch.load(p, weights_only=True))
    assert recover_training_results(tmp_path)["global_step"] == 1  # recovery still works


def test_half_precision_copies_are_half_the_size_and_load_upcast_with_a_note(tmp_path):
    paths = write_run(tmp_path, [1.0, 2.0, 3.0], weights_only_dtype="bf16")
    fp32 = write_run(tmp_path / "fp32", [1.0, 2.0, 3.0])
    older, newest = torch.load(paths[0], weights_only=True), torch.load(paths[-1],
                                                                        weights_only=True)
    assert {t.dtype for t in older["model_state_dict"].values()} == {torch.bfloat16}
    assert older["weights_dtype"] == "bf16"
    assert {t.dtype for t in newest["model_state_dict"].values()} == {torch.float32}
    assert newest["optimizer_state_dict"] is not None  # what a resume uses stays whole
    state = older["model_state_dict"]  # the tied head is stored once, in bf16 too
    assert state["lm_head.weight"].untyped_storage().data_ptr() == \
        state["token_embedding.weight"].untyped_storage().data_ptr()
    fp32_state = torch.load(fp32[0], weights_only=True)["model_state_dict"]
    assert stored_bytes(state) * 2 == stored_bytes(fp32_state)
    assert paths[0].stat().st_size < 0.75 * fp32[0].stat().st_size  # names, metadata stay

    model, checkpoint = load_pretrained_model(paths[0], device="cpu")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.lm_head.weight is model.token_embedding.weight
    assert any("bf16 weights-only copy" in note and "upcast to float32" in note
               for note in checkpoint["load_notes"])
    original = make_state(1, 1.0, seed=1, run_id=RUN)["model_state_dict"]
    for key, tensor in original.items():  # bf16 rounding of the trained weights, no more
        assert torch.equal(model.state_dict()[key], tensor.bfloat16().float()), key
    report = load_model_weights(model, paths[0], device="cpu")
    assert any("upcast to float32" in note for note in report.notes)
    best = torch.load(tmp_path / BEST_MODEL_NAME, weights_only=True)
    assert best["weights_dtype"] == "bf16"


def test_the_listing_shows_which_checkpoints_can_resume(tmp_path):
    from utils.cli.recover import format_checkpoint_table
    from utils.reports import available_checkpoints_report
    from utils.widgets import option_label

    write_run(tmp_path, [1.0, 2.0, 3.0])
    infos = sorted(list_checkpoints(tmp_path), key=lambda info: info.global_step)
    table = format_checkpoint_table(infos).splitlines()
    assert "resume" in table[0]
    assert [" yes " in row for row in table[2:]] == [False, False, True]
    report = available_checkpoints_report(infos)
    assert report.count("(weights only)") == 2 and report.count("(resumable)") == 1
    assert "| weights only |" in option_label(0, infos[0])
    assert "| resumable |" in option_label(2, infos[2])
    result = subprocess.run([sys.executable, "-m", "utils", "recover", "--checkpoint-dir",
                             str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("  no  ") == 2 and result.stdout.count("  yes ") == 1


def test_a_rewrite_whose_sidecar_lags_behind_still_lists_whole(tmp_path):
    """The moment between a rewrite's rename and its sidecar (a kill there): the listing
    reads the file itself; the full file under a new sidecar reads as well."""
    full = make_state(3, 1.0, run_id=RUN)
    path = save_checkpoint(full, tmp_path)
    light = weights_only_state(full)
    write_atomically(path, lambda handle: torch.save(light, handle))  # the sidecar is stale
    [info] = list_checkpoints(tmp_path, include_invalid=True)
    assert info.valid and not info.resumable and info.global_step == 3
    save_checkpoint(light, tmp_path / "other.pt")
    other = tmp_path / "other.pt"
    write_atomically(other, lambda handle: torch.save(full, handle))  # sidecar says light
    info = next(i for i in list_checkpoints(tmp_path, include_invalid=True)
                if i.path == other)
    assert info.valid and info.resumable


def test_the_storage_settings_are_checked_and_stay_out_of_the_fingerprint():
    with pytest.raises(ConfigError, match="keep_full must be >= 1"):
        TrainingConfig(keep_full=0)
    with pytest.raises(ConfigError, match="weights_only_dtype"):
        TrainingConfig(weights_only_dtype="int8")
    before = TrainingConfig().to_dict()
    for name in ("keep_full", "weights_only_dtype", "check_storage"):
        before.pop(name)  # a run written before these settings existed
    after = TrainingConfig(keep_full=2, weights_only_dtype="fp16", check_storage=False)
    assert run_fingerprint({}, "gpt2", "x", before) == \
        run_fingerprint({}, "gpt2", "x", after.to_dict())


# ---------------------------------------------------------------- the footprint


def test_due_steps_are_counted_like_the_training_loop_counts_them():
    for total, intervals, extra in [(24, [3], (24,)), (100, [7, 10], (100,)),
                                    (1000, [10, 100, 33], (1000,)), (5, [None], (5,))]:
        expected = sum(1 for step in range(1, total + 1)
                       if any(i and step % i == 0 for i in intervals) or step in extra)
        assert count_due_steps(total, intervals, extra) == expected


def test_the_footprint_is_within_10_percent_of_what_a_finished_run_leaves(tmp_path, capsys,
                                                                          one_thread):
    """The worker's run (random tokens: the validation loss rises, so the best checkpoint is
    the first, kept beside the newest three): the estimate said before the first step
    against the folder afterwards, allocated bytes."""
    folder = tmp_path / "checkpoints"
    trainer = worker.make_trainer(folder, keep_last=3, keep_best=1)
    plan = trainer.storage_plan()  # before any step: the moments are predicted
    trainer.fit(resume_from=None)
    said = capsys.readouterr().out
    assert f"storage plan: this run keeps at most {size_text(plan.kept_bytes)}" in said
    assert f"free in {folder}" in said
    assert (plan.full_files, plan.weights_files) == (1, 4)  # newest; 2 older + best + best_model.pt
    assert plan.kept == 4 and len(list(folder.glob("checkpoint_*.pt"))) == 4
    assert [info.resumable for info in list_checkpoints(folder)].count(True) == 1
    left = allocated(folder)
    assert abs(plan.kept_bytes - left) <= 0.10 * left, (plan.kept_bytes, left)
    for info in list_checkpoints(folder):  # each file's estimate, not only the total
        expected = plan.full_bytes if info.resumable else plan.weights_bytes
        assert abs(blocks(info.size_bytes) - expected) <= 0.10 * expected, info.filename


def gpt2_plan(preset: str, **settings) -> StoragePlan:
    """The plan of a 1000-step run of a GPT-2 preset, sized on the meta device (nothing is
    allocated): weights, predicted AdamW moments, metadata."""
    from utils.model import meta_skeleton

    model = meta_skeleton(GPT2_CONFIGS[preset])
    optimizer = torch.optim.AdamW(model.parameters())
    state = make_state(1000, 3.0, run_id=RUN)
    state["model_state_dict"] = model.state_dict()
    state["config"] = GPT2_CONFIGS[preset].to_dict()
    config = TrainingConfig(**settings)
    return plan_storage("unused", state, optimizer, config, checkpoints=10, records=10,
                        log_lines=(100, 10), best_model=True)


def test_a_gpt2_small_run_keeps_one_full_checkpoint_and_weights_only_copies():
    """Scaled to GPT-2 small: one full checkpoint (weights x 3) and four weights-only files
    (weights x 1) with the defaults, about 3.5 GB, where five full files took 7.5 GB."""
    parameters = 124_439_808
    plan = gpt2_plan("small")
    assert (plan.full_files, plan.weights_files) == (1, 4)
    assert plan.full_bytes == pytest.approx(3 * 4 * parameters, rel=0.01)
    assert plan.weights_bytes == pytest.approx(4 * parameters, rel=0.01)
    assert plan.kept_bytes == pytest.approx(7 * 4 * parameters, rel=0.01)  # ~3.5 GB
    assert plan.kept_bytes < 0.5 * 5 * plan.full_bytes  # today: 5 full files
    half = gpt2_plan("small", weights_only_dtype="bf16")
    assert half.weights_bytes == pytest.approx(2 * parameters, rel=0.01)
    assert half.full_bytes == plan.full_bytes  # never the checkpoint a resume uses
    assert half.kept_bytes == pytest.approx(5 * 4 * parameters, rel=0.01)  # ~2.5 GB


# ---------------------------------------------------------------- the token cache


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("the storage plan keeps the data off Drive. " * 200)
    return path


def test_the_token_cache_defaults_to_the_local_disk_outside_code_and_checkpoints(
        tmp_path, corpus, monkeypatch):
    from utils.data import default_cache_dir, tokenize_corpus

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "local-cache"))
    assert default_cache_dir() == tmp_path / "local-cache" / "gpt2-training" / "data"
    prepared = tokenize_corpus(corpus, "byte", progress=False)
    assert prepared.cache_path.parent == default_cache_dir()
    assert REPO not in prepared.cache_path.parents
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "gpt2-training" / "data"


def test_a_cache_on_drive_is_used_when_it_is_the_only_copy_with_a_note(
        tmp_path, corpus, monkeypatch, capsys):
    """Code on Drive with a cache an earlier version left in its .cache/data: used as it
    is (no second preparation), with a note; a local copy, once there, wins."""
    from utils.data import prepare, tokenize_corpus
    from utils.fileio import DRIVE_ROOT_ENV

    drive_cache = tmp_path / "drive" / "MyDrive" / "gpt2-training" / ".cache" / "data"
    old = tokenize_corpus(corpus, "byte", cache_dir=drive_cache, progress=False)
    monkeypatch.setattr(prepare, "LEGACY_CACHE_DIR", drive_cache)
    monkeypatch.setenv(DRIVE_ROOT_ENV, str(tmp_path / "drive"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "local-cache"))
    prepared = []
    real_prepare = prepare.prepare_stream
    monkeypatch.setattr(prepare, "prepare_stream",
                        lambda *a, **k: prepared.append(1) or real_prepare(*a, **k))
    capsys.readouterr()

    found = tokenize_corpus(corpus, "byte", progress=False)
    note = capsys.readouterr().out
    assert found.cache_path == old.cache_path and not prepared
    assert found.tokens.tolist() == old.tokens.tolist()
    assert f"token cache in {drive_cache} is on Google Drive" in note
    assert "only prepared copy" in note and str(prepare.default_cache_dir()) in note

    local = tokenize_corpus(corpus, "byte", cache_dir=prepare.default_cache_dir(),
                            progress=False)  # prepared on the local disk
    capsys.readouterr()
    again = tokenize_corpus(corpus, "byte", progress=False)
    assert again.cache_path == local.cache_path != old.cache_path
    assert "Google Drive" not in capsys.readouterr().out


def test_train_takes_the_cache_folder_and_says_the_storage_plan(tmp_path, corpus):
    from tests.test_runs import CLI_TRAIN

    cache, folder = tmp_path / "my-cache", tmp_path / "checkpoints"
    command = [*CLI_TRAIN, "--data", str(corpus), "--cache-dir", str(cache),
               "--checkpoint-dir", str(folder), "--max-steps", "10"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    assert list(cache.glob("byte-*.bin"))
    assert "storage plan: this run keeps at most" in result.stdout
    assert result.stdout.index("storage plan") < result.stdout.index("done: step 10")
    assert "resume" in result.stdout  # the checkpoint table at the end has the column


def test_the_notebook_says_which_settings_make_the_run_fit():
    from utils.checkpoint_errors import InsufficientStorageError
    from utils.forms import format_error

    text = format_error(InsufficientStorageError("the checkpoints of this run need up to 9 GB"))
    assert "Not enough space for this run's checkpoints!" in text
    hint = text.split("▶ In this notebook:")[1]
    for field in ("KEEP_LAST", "KEEP_BEST", "WEIGHTS_ONLY_DTYPE", "CHECKPOINT_DIR",
                  "CHECK_STORAGE", "Cells 5, 15, 16 and 32"):
        assert field in hint, field
