"""Loads are bounded (issue 20, item 5): a checkpoint of a few hundred KB cannot stand for
10^9 elements, every field of its metrics history has the type training writes, and
nanoGPT's meta.pkl is read like any small file we open (a regular file below a size cap)
with its vocabulary checked, the file named in every message.

Memory is bounded by running the command line under an address-space limit
(`limit_memory`), a hang by a subprocess timeout; never by measuring time.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests._ckpt_helpers import make_state
from tests._cli_helpers import REPO_ROOT, assert_one_error_line, limit_memory, run_cli
from utils.checkpoint_errors import CorruptCheckpointError
from utils.data import load_data
from utils.training.engine.checkpoint import load_checkpoint_file, save_checkpoint

TIMEOUT = 240  # far above a normal run, far below "hangs forever"


def cli(*args: object) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout=TIMEOUT, memory_limited=True)


def shared_lists(levels: int = 9, width: int = 10) -> list:
    """width**levels elements once expanded, a few hundred bytes pickled (one list per
    level, referenced `width` times by the level above)."""
    bomb: list = [0.0]
    for _ in range(levels):
        bomb = [bomb] * width
    return bomb


def shared_tuples(levels: int = 9, width: int = 10) -> tuple:
    bomb: tuple = (0.0,)
    for _ in range(levels):
        bomb = (bomb,) * width
    return bomb


def deep(levels: int = 200) -> list:
    nested: list = []
    for _ in range(levels):
        nested = [nested]
    return nested


def cycle() -> list:
    loop: list = []
    loop.append(loop)
    return loop


# --------------------------------------------------------------------------------------
# Checkpoints that expand, nest or loop
# --------------------------------------------------------------------------------------

TRAIN = ["train", "--tokenizer", "byte", "--layers", "1", "--heads", "2", "--dim", "16",
         "--context", "16", "--checkpoint-interval", "1", "--eval-interval", "1",
         "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real run's folder: two checkpoints of a `python -m utils train` run."""
    root = tmp_path_factory.mktemp("bounded")
    (root / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 50)
    result = cli(*TRAIN, "--max-steps", "2", "--checkpoint-dir", root / "ck",
                 "--data", root / "corpus.txt")
    assert result.returncode == 0, result.stderr
    return root


def tampered(trained: Path, folder: Path, change) -> Path:
    """The run's newest checkpoint with `change(state)` applied, saved (with its sidecar)
    alone in `folder`."""
    newest = max((trained / "ck").glob("checkpoint_*.pt"))
    state = torch.load(newest, weights_only=True)
    change(state)
    return save_checkpoint(state, folder)


def bomb_in_history(state: dict) -> None:
    """A field `recover` writes to the CSV (and a resume copies into every checkpoint)."""
    state["metrics_history"][0]["train_loss"] = shared_lists()


def test_a_300_kb_checkpoint_holding_a_billion_elements_is_refused_by_resume(tmp_path,
                                                                             trained):
    bomb = tampered(trained, tmp_path / "ck", bomb_in_history)
    assert bomb.stat().st_size < 1_000_000
    result = cli(*TRAIN, "--max-steps", "3", "--checkpoint-dir", tmp_path / "ck",
                 "--data", trained / "corpus.txt", "--resume", bomb)
    assert_one_error_line(result, bomb.name, "shared references")


def test_a_300_kb_checkpoint_holding_a_billion_elements_is_refused_by_recover(tmp_path,
                                                                              trained):
    bomb = tampered(trained, tmp_path / "ck", bomb_in_history)
    csv = tmp_path / "metrics.csv"
    result = cli("recover", "--checkpoint-dir", tmp_path / "ck", "--metrics-csv", csv)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: ") and bomb.name in last and "shared references" in last
    assert not csv.exists()


@pytest.mark.parametrize("payload, words", [
    (shared_lists, "shared references"),
    (shared_tuples, "expands to more than"),
    (deep, "nests deeper than"),
    (cycle, "contains itself"),
], ids=["shared lists", "shared tuples", "200 levels deep", "a cycle"])
def test_the_safe_loader_refuses_data_that_expands_nests_or_loops(tmp_path, payload, words):
    state = make_state(1, 1.0)
    state["metrics_history"][0]["note"] = payload()
    path = save_checkpoint(state, tmp_path / "hostile.pt")
    with pytest.raises(CorruptCheckpointError, match=words) as caught:
        load_checkpoint_file(path)
    assert str(path) in str(caught.value)


def test_real_checkpoints_pass_the_bounds(trained):
    for path in (trained / "ck").glob("*.pt"):
        assert load_checkpoint_file(path)["model_state_dict"]


# --------------------------------------------------------------------------------------
# Every field of the metrics history has the type training writes
# --------------------------------------------------------------------------------------

def setter(key, value):
    def change(state: dict) -> None:
        state["metrics_history"][0][key] = value
    return change


HISTORY_CASES = {
    "step is text": (setter("step", "3"), "['step'] is '3'"),
    "step is a bool": (setter("step", True), "['step'] is True"),
    "val_loss is text": (setter("val_loss", "low"), "['val_loss'] is 'low'"),
    "a nested list": (setter("note", [[1.0]]), "['note'] is a list"),
    "a dict value": (setter("train_loss", {"a": 1}), "['train_loss'] is a dict"),
    "a huge text": (setter("timestamp", "x" * 100_000), "at most 1000 characters"),
    "a tensor": (setter("perplexity", torch.zeros(3)), "['perplexity']"),
    "an entry that is a list": (lambda s: s["metrics_history"].append([1, 2]), "a record"),
    "history is a dict": (lambda s: s.__setitem__("metrics_history", {"step": 1}),
                          "not a list of records"),
}


@pytest.mark.parametrize("case", sorted(HISTORY_CASES))
def test_every_field_of_the_metrics_history_is_type_checked(tmp_path, case):
    change, words = HISTORY_CASES[case]
    state = make_state(2, 1.0)
    change(state)
    path = save_checkpoint(state, tmp_path / "odd.pt")
    with pytest.raises(CorruptCheckpointError, match="metrics_history") as caught:
        load_checkpoint_file(path)
    assert words in str(caught.value) and str(path) in str(caught.value)


def test_a_wrongly_typed_history_is_one_line_when_resuming(tmp_path, trained):
    odd = tampered(trained, tmp_path / "ck", setter("step", "one"))
    result = cli(*TRAIN, "--max-steps", "3", "--checkpoint-dir", tmp_path / "ck",
                 "--data", trained / "corpus.txt", "--resume", odd)
    assert_one_error_line(result, odd.name, "metrics_history[0]['step'] is 'one'")


# --------------------------------------------------------------------------------------
# nanoGPT's meta.pkl
# --------------------------------------------------------------------------------------

def nanogpt_folder(root: Path, meta: object | None = None) -> Path:
    """train.bin / val.bin with character ids 0..9 and `meta` pickled as meta.pkl."""
    folder = root / "shakespeare_char"
    folder.mkdir()
    ids = np.random.default_rng(0).integers(0, 10, 4000).astype(np.uint16)
    ids[:3000].tofile(folder / "train.bin")
    ids[3000:].tofile(folder / "val.bin")
    if meta is not None:
        with open(folder / "meta.pkl", "wb") as handle:
            pickle.dump(meta, handle)
    return folder


CHARS = "\n !abcdefg"
GOOD_META = {"vocab_size": 10, "itos": dict(enumerate(CHARS)),
             "stoi": {c: i for i, c in enumerate(CHARS)}}


def fifo(folder: Path) -> None:
    (folder / "meta.pkl").unlink()
    os.mkfifo(folder / "meta.pkl")


def dev_zero(folder: Path) -> None:
    (folder / "meta.pkl").unlink()
    (folder / "meta.pkl").symlink_to("/dev/zero")


def meta_with(**changes):
    def write(folder: Path) -> None:
        with open(folder / "meta.pkl", "wb") as handle:
            pickle.dump(GOOD_META | changes, handle)
    return write


def meta_bomb(folder: Path) -> None:
    with open(folder / "meta.pkl", "wb") as handle:
        pickle.dump(GOOD_META | {"extra": shared_lists()}, handle)


META_CASES = {
    "a FIFO": (fifo, "not a regular file"),
    "a link to /dev/zero": (dev_zero, "not a regular file"),
    "itos with string keys": (meta_with(itos={str(i): c for i, c in enumerate(CHARS)}),
                              "has the key '0', not an id"),
    "an empty itos": (meta_with(itos={}), "its itos is empty"),
    "itos values that are not text": (meta_with(itos={i: i for i in range(10)}),
                                      "maps 0 to '0', not a string"),
    "itos ids past vocab_size": (meta_with(vocab_size=5), "not an id 0..4"),
    "a billion shared elements": (meta_bomb, "shared references"),
}


@pytest.mark.parametrize("case", sorted(META_CASES))
def test_a_hostile_meta_pkl_is_one_line_naming_it_on_the_command_line(tmp_path, case):
    make, words = META_CASES[case]
    folder = nanogpt_folder(tmp_path, GOOD_META)
    make(folder)
    result = cli("train", "--data", folder, "--layers", "1", "--heads", "2", "--dim", "16",
                 "--context", "16", "--max-steps", "1", "--no-progress", "--device", "cpu",
                 "--checkpoint-dir", tmp_path / "ck")
    assert_one_error_line(result, str(folder / "meta.pkl"), words)
    assert not (tmp_path / "ck").exists() or not list((tmp_path / "ck").iterdir())


CELL_7 = """
import sys
from utils.data import load_data
from utils.forms import StopRun, friendly_errors
try:
    with friendly_errors("DATA_PATH"):
        load_data(sys.argv[1], None, val_fraction=0.1)
except StopRun as stop:
    print(stop)
    sys.exit(3)
"""


@pytest.mark.parametrize("case", ["a FIFO", "itos with string keys", "an empty itos"])
def test_a_hostile_meta_pkl_stops_notebook_cell_7_with_its_guidance(tmp_path, case):
    """Cell 7 runs `load_data` inside `friendly_errors("DATA_PATH")`: a user error stops
    the cell with one message naming the file (a TypeError would be a traceback). Run as a
    child process so that a hang fails the test instead of blocking it."""
    make, words = META_CASES[case]
    folder = nanogpt_folder(tmp_path, GOOD_META)
    make(folder)
    try:
        result = subprocess.run([sys.executable, "-c", CELL_7, str(folder)], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=TIMEOUT,
                                preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Cell 7's load_data hung on {case} ({TIMEOUT} s)")
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    assert str(folder / "meta.pkl") in result.stdout and words in result.stdout


def test_a_good_meta_pkl_still_gives_the_character_vocabulary(tmp_path):
    data = load_data(nanogpt_folder(tmp_path, GOOD_META))
    assert data.tokenizer_name == "char" and data.vocab_size == 10
    assert data.tokenizer.decode([2, 3, 4]) == "!ab"
