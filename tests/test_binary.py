"""Seed 002's binary weight format: exact round trip, clear errors, and a C reader that agrees."""

from __future__ import annotations

import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch

from utils.config import ModelConfig
from utils.model import GPTModel
from utils.pretrained.binary import (
    CONFIG_FILE,
    MAPPING_FILE,
    WEIGHTS_FILE,
    BinaryFormatError,
    checksum,
    export_binary,
    load_binary_model,
    read_binary,
    read_config_text,
    write_binary,
)
from utils.pretrained.huggingface import hf_state_dict_from_model

CONFIG = ModelConfig(vocab_size=96, context_length=16, embedding_dimension=16, number_of_heads=2,
                     number_of_layers=2, dropout_rate=0.0)
C_READER = "tests/c/read_weights.c"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPTModel(CONFIG).eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export_binary(model, tmp_path_factory.mktemp("weights"))


def test_layout_byte_by_byte(tmp_path):
    path = write_binary({"a.b": torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
                         "c": torch.tensor([0.5])}, tmp_path / "w.bin")
    expected = (struct.pack("<I", 2)
                + struct.pack("<I", 3) + b"a.b" + struct.pack("<III", 2, 2, 3)
                + struct.pack("<6f", 1, 2, 3, 4, 5, 6)
                + struct.pack("<I", 1) + b"c" + struct.pack("<II", 1, 1) + struct.pack("<f", 0.5))
    assert path.read_bytes() == expected


def test_export_round_trip_is_exact(model, exported):
    assert sorted(p.name for p in exported.iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE,
                                                                MAPPING_FILE])
    tensors = read_binary(exported / WEIGHTS_FILE)
    hf = hf_state_dict_from_model(model)
    del hf["lm_head.weight"]
    assert list(tensors) == list(hf)  # HF names, HF order
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (16, 48)  # Conv1D [in, out]
    for name, tensor in hf.items():
        assert torch.equal(tensors[name], tensor), name
    assert read_config_text(exported / CONFIG_FILE) == CONFIG
    loaded = load_binary_model(exported)
    ids = torch.tensor([[1, 5, 9, 95]])
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    mapping = (exported / MAPPING_FILE).read_text()
    assert ("transformer.h.1.attn.c_attn.weight\t[16, 48]\ttransformer_blocks.1.attention.W_query"
            ".weight,transformer_blocks.1.attention.W_key.weight,"
            "transformer_blocks.1.attention.W_value.weight") in mapping


@pytest.mark.parametrize("cut", [2, 4 + 2, 30, -1])
def test_truncated_file_is_rejected(exported, tmp_path, cut):
    data = (exported / WEIGHTS_FILE).read_bytes()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(data[:cut])
    with pytest.raises(BinaryFormatError, match="truncated"):
        read_binary(bad)


def test_lying_headers_are_rejected(exported, tmp_path):
    data = bytearray((exported / WEIGHTS_FILE).read_bytes())
    bad = tmp_path / "bad.bin"
    cases = {
        "claims 4000000000 tensors": struct.pack("<I", 4_000_000_000) + data[4:],
        "bytes after its": struct.pack("<I", 1) + data[4:],
        "-byte name": data[:4] + struct.pack("<I", 10**6) + data[8:],
        "dimensions": None,
    }
    name_length = struct.unpack_from("<I", data, 4)[0]
    ndim_at = 8 + name_length
    cases["dimensions"] = data[:ndim_at] + struct.pack("<I", 99) + data[ndim_at + 4:]
    for message, content in cases.items():
        bad.write_bytes(bytes(content))
        with pytest.raises(BinaryFormatError, match=message):
            read_binary(bad)
    bad.write_bytes(b"")
    with pytest.raises(BinaryFormatError, match="truncated"):
        read_binary(bad)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_c_reader_checksum_equals_python(exported, tmp_path):
    binary = tmp_path / "read_weights"
    subprocess.run(["gcc", "-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-o", str(binary),
                    C_READER], check=True)
    weights = exported / WEIGHTS_FILE
    result = subprocess.run([str(binary), str(weights)], capture_output=True, text=True,
                            check=True)
    lines = result.stdout.strip().splitlines()
    tensors, elements, total = checksum(weights)
    assert lines[-1] == f"tensors={tensors} elements={elements} checksum={total}"
    read_back = read_binary(weights)
    assert tensors == len(read_back) == 4 + 12 * CONFIG.number_of_layers
    first = lines[0].split()
    assert first[:4] == ["tensor", "transformer.wte.weight", "2", "96x16"]
    assert np.float32(float(first[4].removeprefix("first="))) == \
        read_back["transformer.wte.weight"][0, 0].item()
    # A corrupted file is refused by the C reader too.
    (tmp_path / "cut.bin").write_bytes(weights.read_bytes()[:-8])
    cut = subprocess.run([str(binary), str(tmp_path / "cut.bin")], capture_output=True, text=True)
    assert cut.returncode == 1 and "truncated" in cut.stderr


def test_checksum_is_order_sensitive(tmp_path):
    a = write_binary({"x": torch.tensor([1.0, 2.0])}, tmp_path / "a.bin")
    b = write_binary({"x": torch.tensor([2.0, 1.0])}, tmp_path / "b.bin")
    assert checksum(a)[2] != checksum(b)[2]


def test_streamed_write_checks_the_announced_count(tmp_path):
    pairs = iter([("a", torch.ones(2)), ("b", torch.zeros(3))])
    with pytest.raises(ValueError, match="announced 3 tensors but got 2"):
        write_binary(pairs, tmp_path / "w.bin", count=3)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
