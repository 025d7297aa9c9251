"""The smaller defects of issue 20, item 7, that concern names, logs and data files: each
test makes the odd input itself.

- a checkpoint-pattern name with an impossible date is one invalid entry, not an abort;
- a torn last line of the metrics log (a crash mid-line) does not swallow the next record;
- a nanoGPT `train.bin` of uint32 ids is refused instead of trained on as garbage;
- a `save_to_disk` folder whose Arrow file changed is tokenised again, not served from the
  token cache under its old fingerprint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests._ckpt_helpers import make_state
from tests._cli_helpers import assert_one_error_line, run_cli
from utils.data import load_data, tokenize_corpus
from utils.training.engine.checkpoint import save_checkpoint
from utils.training.engine.listing import list_checkpoints
from utils.training.engine.runs import MetricsLog, read_metrics_log

RUN = "20250101-000000-aaaaaa"
TRAIN = ["train", "--tokenizer", "byte", "--layers", "1", "--heads", "2", "--dim", "16",
         "--context", "16", "--checkpoint-interval", "1", "--eval-interval", "1",
         "--no-progress", "--device", "cpu"]


# --------------------------------------------------------------------------------------
# A checkpoint name with an impossible date
# --------------------------------------------------------------------------------------

IMPOSSIBLE = "checkpoint_epoch0000_step000009_20251399_999999.pt"


def test_an_impossible_date_in_a_name_is_one_invalid_entry(tmp_path):
    good = save_checkpoint(make_state(1, 1.0, run_id=RUN), tmp_path)
    (tmp_path / IMPOSSIBLE).write_bytes(b"not a checkpoint at all")
    infos = list_checkpoints(tmp_path, include_invalid=True)
    assert [(info.filename, info.valid) for info in infos] == [(good.name, True),
                                                               (IMPOSSIBLE, False)]
    result = run_cli("recover", "--checkpoint-dir", tmp_path, "--include-invalid")
    assert result.returncode == 0, result.stderr
    assert IMPOSSIBLE in result.stdout and "[invalid:" in result.stdout


def test_an_impossible_date_on_a_readable_checkpoint_does_not_abort_listing(tmp_path):
    """The same with a real checkpoint under that name and no sidecar (its own timestamp
    is then unreadable too), the newest of its run."""
    state = make_state(2, 1.0, run_id=RUN)
    state["timestamp"] = None
    save_checkpoint(state, tmp_path / IMPOSSIBLE)
    (tmp_path / (IMPOSSIBLE + ".json")).unlink()
    [info] = list_checkpoints(tmp_path, include_invalid=True)
    assert info.valid and info.filename == IMPOSSIBLE and info.when() is None
    result = run_cli("recover", "--checkpoint-dir", tmp_path, "--include-invalid")
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------
# A torn last line of the metrics log
# --------------------------------------------------------------------------------------

def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path):
    log = tmp_path / f"metrics_{RUN}.jsonl"
    log.write_text('{"kind": "train", "step": 1, "train_loss": 4.0}\n'
                   '{"kind": "train", "step": 2, "train_lo')  # the crash cut it here
    writer = MetricsLog(tmp_path, RUN)
    writer.append({"kind": "train", "step": 3, "train_loss": 3.0})
    writer.close()
    assert [record["step"] for record in read_metrics_log(log)] == [1, 3]


def test_a_run_resumed_after_a_torn_line_logs_its_first_step(tmp_path):
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 50)
    common = ["--checkpoint-dir", tmp_path / "ck", "--data", tmp_path / "corpus.txt"]
    assert run_cli(*TRAIN, "--max-steps", "2", *common).returncode == 0
    [log] = (tmp_path / "ck").glob("metrics_*.jsonl")
    data = log.read_bytes()
    log.write_bytes(data[:-10])  # the last record loses its end and its newline
    result = run_cli(*TRAIN, "--max-steps", "4", *common)
    assert result.returncode == 0, result.stderr
    logged = {(record.get("kind"), record["step"]) for record in read_metrics_log(log)}
    assert {("train", 3), ("eval", 3), ("train", 4), ("eval", 4)} <= logged


# --------------------------------------------------------------------------------------
# uint32 ids in a nanoGPT folder
# --------------------------------------------------------------------------------------

def nanogpt_folder(root: Path, dtype) -> Path:
    """GPT-2 ids (all below 50257) written with `dtype`, as a changed prepare.py would."""
    folder = root / "openwebtext"
    folder.mkdir()
    ids = np.random.default_rng(0).integers(1, 50257, 6000)
    ids[:5000].astype(dtype).tofile(folder / "train.bin")
    ids[5000:].astype(dtype).tofile(folder / "val.bin")
    return folder


def test_uint32_token_ids_are_refused_not_trained_on(tmp_path):
    folder = nanogpt_folder(tmp_path, np.uint32)
    with pytest.raises(ValueError, match="looks like uint32 token ids") as caught:
        load_data(folder)
    assert "train.bin" in str(caught.value)
    result = run_cli("train", "--data", folder, "--layers", "1", "--heads", "2", "--dim",
                     "16", "--context", "16", "--max-steps", "1", "--no-progress",
                     "--device", "cpu", "--checkpoint-dir", tmp_path / "ck")
    assert_one_error_line(result, "train.bin", "uint32", "np.uint16")
    assert not (tmp_path / "ck").exists()


def test_uint16_token_ids_still_load(tmp_path):
    folder = nanogpt_folder(tmp_path, np.uint16)
    data = load_data(folder)
    assert data.kind == "nanogpt" and len(data.train) == 5000 and len(data.val) == 1000


# --------------------------------------------------------------------------------------
# A save_to_disk folder whose Arrow file changed
# --------------------------------------------------------------------------------------

def saved_dataset(folder: Path, texts: list[str]) -> Path:
    datasets = pytest.importorskip("datasets", reason="`datasets` is not installed: the "
                                   "save_to_disk case cannot run here")
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(folder))
    return folder


def test_a_changed_arrow_file_is_tokenised_again(tmp_path):
    old_texts = ["the cat sat on the mat"] * 20
    new_texts = ["a dog ran in the park!"] * 20  # as long, other words
    folder = saved_dataset(tmp_path / "saved", old_texts)
    cache = tmp_path / "cache"
    first = tokenize_corpus(folder, "byte", cache, workers=1, progress=False)
    replacement = saved_dataset(tmp_path / "other", new_texts)
    state = json.loads((folder / "state.json").read_text())
    [arrow] = [entry["filename"] for entry in state["_data_files"]]
    [new_arrow] = [entry["filename"] for entry in
                   json.loads((replacement / "state.json").read_text())["_data_files"]]
    shutil.copyfile(replacement / new_arrow, folder / arrow)  # state.json (fingerprint) kept
    assert json.loads((folder / "state.json").read_text()) == state
    second = tokenize_corpus(folder, "byte", cache, workers=1, progress=False)
    fresh = tokenize_corpus(replacement, "byte", tmp_path / "cache2", workers=1,
                            progress=False)
    assert np.array_equal(np.asarray(second.tokens), np.asarray(fresh.tokens))
    assert not np.array_equal(np.asarray(second.tokens), np.asarray(first.tokens))
    third = tokenize_corpus(folder, "byte", cache, workers=1, progress=False)
    assert third.sha256 == second.sha256  # unchanged again: served from the cache

