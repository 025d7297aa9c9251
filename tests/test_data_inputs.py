"""Inputs beyond text: nanoGPT folders, llm.c shards, Hugging Face datasets, and `load_data`
(the one entry point the CLI and the notebook call) with its error for each input kind."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from utils.data import TokenView, detect_kind, load_data, load_text, token_statistics
from utils.data.token_files import LLMC_MAGIC
from utils.tokenizer import get_tokenizer

EOT = "<|endoftext|>"


def write_llmc_shard(path, tokens, magic=LLMC_MAGIC, version=1, count=None):
    """A shard as llm.c's dev/data scripts write it: 256 int32 header, then uint16 ids."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = magic, version, len(tokens) if count is None else count
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())


# --------------------------------------------------------------------------- text and built-in


def write_nanogpt_char_folder(folder, text, train_tokens=None):
    """nanoGPT's character-level layout: meta.pkl (itos/stoi), train.bin, and val.bin when
    `train_tokens` splits the ids. Returns (chars, ids)."""
    chars = sorted(set(text))
    with open(folder / "meta.pkl", "wb") as handle:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                     "stoi": {c: i for i, c in enumerate(chars)}}, handle)
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    ids[:train_tokens].tofile(folder / "train.bin")
    if train_tokens is not None:
        ids[train_tokens:].tofile(folder / "val.bin")
    return chars, ids


def test_text_file_loads_with_the_same_ids_and_split_as_before(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Hello there.\nGeneral Kenobi!\n" * 50, encoding="utf-8")
    data = load_data(path, "gpt2", 0.1, cache_dir=tmp_path / "cache")
    ids = get_tokenizer("gpt2").encode(load_text(path), allowed_special={EOT})
    num_val = round(len(ids) * 0.1)
    assert data.kind == "text" and data.vocab_size == 50257
    assert data.train.tolist() == ids[:-num_val] and data.val.tolist() == ids[-num_val:]
    assert isinstance(data.train, np.memmap) and data.documents == 1
    summary = data.summary()
    for expected in ("kind: UTF-8 text", f"tokens: {len(ids):,}", "documents: 1",
                     "split: the last 10% of the tokens", "tokenizer: gpt2 (50,257 ids)"):
        assert expected in summary


def test_builtin_corpus_split_by_document(tmp_path):
    data = load_data(None, "byte", 0.1, split="document", cache_dir=tmp_path)
    assert data.kind == "builtin" and data.documents == 79  # pydoc topics in Python 3.11
    val = np.asarray(data.val)
    assert val[-1] == 256 or len(val) + len(data.train) == len(data.tokens)
    assert 0.08 < len(val) / len(data.tokens) < 0.12
    assert "documents (whole)" in data.summary()
    assert "distinct ids" in token_statistics(data)


# --------------------------------------------------------------------------- nanoGPT


def test_nanogpt_folder_is_mapped_not_retokenised(tmp_path):
    train, val = np.arange(5000, dtype=np.uint16) % 50257, np.arange(300, dtype=np.uint16)
    train.tofile(tmp_path / "train.bin")
    val.tofile(tmp_path / "val.bin")
    data = load_data(tmp_path)
    assert data.kind == "nanogpt" and data.tokenizer_name == "gpt2" and data.vocab_size == 50257
    assert isinstance(data.train, np.memmap) and data.train.tolist() == train.tolist()
    assert data.val.tolist() == val.tolist() and data.split == "given: val.bin"
    with pytest.raises(ValueError, match=r"holds gpt2 ids.*not 'byte'"):
        load_data(tmp_path, "byte")


def test_nanogpt_character_level_uses_meta_pkl(tmp_path):
    chars, ids = write_nanogpt_char_folder(tmp_path, "hello world" * 30)
    data = load_data(tmp_path, val_fraction=0.2, split="document")  # no eot: falls back to blocks
    assert (data.vocab_size, data.tokenizer_name) == (len(chars), "char")
    assert len(data.train) + len(data.val) == len(ids)
    assert data.tokenizer.decode(data.tokens[:11]) == "hello world"
    assert "blocks" in data.split


def test_nanogpt_meta_pkl_never_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    np.arange(10, dtype=np.uint16).tofile(tmp_path / "train.bin")
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 10, "x": Evil()}))
    with pytest.raises(ValueError, match=r"meta\.pkl.*not a nanoGPT meta\.pkl.*posix.system"):
        load_data(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_nanogpt_bad_files_name_the_problem(tmp_path):
    (tmp_path / "train.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match=r"train\.bin' has 3 bytes, not a whole number of uint16"):
        load_data(tmp_path)
    np.array([1, 2, 60000], dtype=np.uint16).tofile(tmp_path / "train.bin")
    with pytest.raises(ValueError, match=r"token id 60000, outside its vocabulary of 50257"):
        load_data(tmp_path)


# --------------------------------------------------------------------------- llm.c


def test_llmc_shards_folder(tmp_path):
    write_llmc_shard(tmp_path / "tiny_val_000000.bin", range(100, 200))
    write_llmc_shard(tmp_path / "tiny_train_000001.bin", range(0, 1000))
    write_llmc_shard(tmp_path / "tiny_train_000002.bin", range(1000, 1500))
    (tmp_path / "notes.bin").write_bytes(b"not a shard")  # ignored: no magic number
    data = load_data(tmp_path)
    assert data.kind == "llmc" and detect_kind(tmp_path) == "llmc"
    assert isinstance(data.train, TokenView) and len(data.train) == 1500
    assert data.train[np.array([[0, 999, 1000, 1499]])].tolist() == [[0, 999, 1000, 1499]]
    assert data.val.tolist() == list(range(100, 200)) and "val* shards" in data.split
    assert "files: 3" in data.summary()


def test_llmc_single_shard_is_split(tmp_path):
    path = tmp_path / "shard.bin"
    write_llmc_shard(path, range(1000))
    data = load_data(path, val_fraction=0.1)
    assert data.train.tolist() == list(range(900)) and data.val.tolist() == list(range(900, 1000))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"magic": 1234}, r"not an llm\.c token shard.*magic number 20240520"),
    ({"version": 2}, r"version 2; only version 1.*uint32"),
    ({"count": 2000}, r"says it holds 2,000 tokens \(5,024 bytes.*has 3,024 bytes"),
])
def test_llmc_header_is_checked(tmp_path, kwargs, message):
    path = tmp_path / "shard.bin"
    write_llmc_shard(path, range(1000), **kwargs)
    with pytest.raises(ValueError, match=message):
        load_data(path)


# --------------------------------------------------------------------------- Hugging Face


@pytest.fixture
def saved_dataset(tmp_path):
    import datasets  # in requirements-dev.txt: these tests must run, not skip
    rows = ["First story.\nIt has two lines.", "", "Second: naïve café 中文", "  ", "Third"]
    folder = tmp_path / "hf"
    datasets.Dataset.from_dict({"text": rows, "id": list(range(len(rows)))}).save_to_disk(folder)
    return folder, [row for row in rows if row.strip()]


def test_hf_save_to_disk_folder(tmp_path, saved_dataset):
    folder, rows = saved_dataset
    data = load_data(folder, "gpt2", 0.2, cache_dir=tmp_path / "cache")
    assert data.kind == "huggingface" and data.documents == 3
    ids = get_tokenizer("gpt2").encode(EOT.join(rows), allowed_special={EOT})
    assert np.concatenate([data.train, data.val]).tolist() == ids
    assert data.source.endswith("hf?split=train&column=text")


def test_hf_dataset_dict_split_and_column(tmp_path):
    import datasets  # in requirements-dev.txt: these tests must run, not skip
    folder = tmp_path / "dd"
    columns = {"story": ["alpha beta", "gamma"], "title": ["A", "G"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns),
                          "validation": datasets.Dataset.from_dict(
                              {"story": ["delta epsilon"], "title": ["D"]})}).save_to_disk(folder)
    with pytest.raises(ValueError, match=r"cannot tell which column.*\['story', 'title'\].*"
                                         r"\?column=NAME"):
        load_data(folder, "byte", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"splits \['train', 'validation'\], not 'test'"):
        load_data(f"{folder}?split=test&column=story", "byte", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"column 'body' is not a text column"):
        load_data(folder, "byte", cache_dir=tmp_path / "cache", text_column="body")
    data = load_data(f"{folder}?split=validation&column=story", "byte", 0.3,
                     cache_dir=tmp_path / "cache")
    assert bytes(np.concatenate([data.train, data.val]).tolist()) == b"delta epsilon"


def test_hf_cache_hit_does_not_read_rows(tmp_path, saved_dataset, monkeypatch):
    from utils.data import hf

    folder, _ = saved_dataset
    first = load_data(folder, "byte", cache_dir=tmp_path / "cache")
    monkeypatch.setattr(hf, "_rows", lambda *a: pytest.fail("rows were read again"))
    second = load_data(folder, "byte", cache_dir=tmp_path / "cache")
    assert second.sha256 == first.sha256


def test_datasets_is_imported_only_for_a_dataset(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("plain text " * 20, encoding="utf-8")
    code = ("import sys; from utils.data import load_data; "
            f"load_data({str(path)!r}, 'byte', cache_dir={str(tmp_path / 'c')!r}); "
            "print(sorted(m for m in ('datasets', 'torch', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == "[]"


def test_unknown_hub_dataset_is_one_clear_error(tmp_path):
    """Offline (as in every test) the hub cannot be reached: the message names the dataset
    and what to check, instead of datasets' traceback."""
    code = ("from utils.data import load_data\n"
            "try:\n    load_data('hf:no-such-user/no-such-dataset?split=train')\n"
            "except ValueError as error:\n    print(error)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf-home")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__))).stdout
    assert out.startswith("cannot load Hugging Face dataset 'no-such-user/no-such-dataset' "
                          "(split 'train')") and "check the name, ?config= and ?split=" in out


def test_missing_datasets_package_is_a_one_line_fix(tmp_path, monkeypatch, saved_dataset):
    folder, _ = saved_dataset
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(ValueError, match=r"needs the `datasets` package: pip install datasets"):
        load_data(folder, "byte", cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- what a path is


def test_each_kind_has_its_own_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist; pass a UTF-8 \.txt file.*"
                                                r"nanoGPT.*llm\.c.*hf:NAME"):
        load_data(tmp_path / "missing")
    (tmp_path / "plain.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"not an llm\.c token shard.*nanoGPT's train\.bin, "
                                         r"its folder"):
        load_data(tmp_path / "plain.bin")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colum'\]"):
        load_data("hf:some/name?colum=text")
    with pytest.raises(ValueError, match="is a character device"):
        load_data("/dev/zero")


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("bad", ["/dev/zero", "fifo", "missing"])
def test_cli_data_that_is_not_a_file_or_folder_is_one_line(tmp_path, capsys, bad):
    from utils.__main__ import main

    path = {"fifo": tmp_path / "pipe", "missing": tmp_path / "nope"}.get(bad, bad)
    if bad == "fifo":
        os.mkfifo(path)
    assert main(["train", "--data", str(path), "--checkpoint-dir", str(tmp_path / "ck"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: data path '{path}'") and "\n" not in err
    assert ("does not exist" if bad == "missing" else "not a regular file or folder") in err


def test_cli_trains_on_a_nanogpt_character_folder(tmp_path, capsys):
    import torch

    from utils.__main__ import main

    chars, ids = write_nanogpt_char_folder(
        tmp_path, "to be or not to be, that is the question. " * 40, train_tokens=1500)
    folder = tmp_path / "ck"
    assert main(["train", "--data", str(tmp_path), "--layers", "1", "--heads", "2", "--dim",
                 "16", "--context", "16", "--max-steps", "2", "--batch-size", "2",
                 "--eval-interval", "2", "--checkpoint-interval", "2", "--checkpoint-dir",
                 str(folder), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"data: 1,500 training / {len(ids) - 1500:,} validation tokens (nanogpt, char)" in out
    [checkpoint] = folder.glob("checkpoint_*.pt")
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["config"]["vocab_size"] == len(chars) and saved["tokenizer"] == "char"


# --------------------------------------------------------------------------- the notebook


def _cell_source(number):
    import json
    from pathlib import Path

    notebook = json.loads((Path(__file__).parent.parent / "training.ipynb").read_text())
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.startswith(f"# @title Cell {number} "):
            return source
    raise AssertionError(f"no Cell {number} in training.ipynb")


def test_notebook_data_cells_take_a_nanogpt_folder_and_say_what_they_found(tmp_path, capsys):
    """Cells 6-10 as the notebook runs them, with DATA_PATH at a character-level folder."""
    chars, ids = write_nanogpt_char_folder(
        tmp_path, "the notebook reads nanoGPT data as it is. " * 20, train_tokens=700)
    namespace = {"DATA_PATH": str(tmp_path), "TOKENIZER": "gpt2", "BATCH_SIZE": 2,
                 "CONTEXT_LENGTH": 8, "SEED": 0, "CACHE_DIR": "", "VAL_FRACTION": 0.1,
                 "VAL_SPLIT": "end"}
    for number in (6, 7, 8, 9, 10):
        exec(_cell_source(number), namespace)
    out = capsys.readouterr().out
    for expected in ("kind: nanoGPT train.bin/val.bin", f"tokenizer: char ({len(chars)} ids)",
                     f"tokens: {len(ids):,}", "split: given: val.bin",
                     f"train: 700 tokens | validation: {len(ids) - 700:,} tokens"):
        assert expected in out
    assert namespace["TOKENIZER"] == "char" and namespace["tokenizer"].n_vocab == len(chars)
    assert namespace["train_tokens"].tolist() == ids[:700].tolist()
