"""OpenAI's TensorFlow release read without TensorFlow.

The fixture in tests/fixtures/openai_tf_tiny was written by real TensorFlow 2.21
(tests/fixtures/make_openai_tf_checkpoint.py) with OpenAI's variable names and shapes;
`expected.npz` holds the values TensorFlow saved.
"""

from __future__ import annotations

import shutil
import zlib

import numpy as np
import pytest
import torch

from utils.checkpoint_errors import CorruptCheckpointError
from utils.pretrained import openai_tf
from utils.pretrained.openai_tf import (
    crc32c,
    load_tf_checkpoint,
    load_tf_gpt2,
    read_bundle_index,
    tokenizer_from_encoder,
)

FIXTURE = openai_tf.Path(__file__).parent / "fixtures" / "openai_tf_tiny"
DATA = "model.ckpt.data-00000-of-00001"


@pytest.fixture(scope="module")
def expected():
    with np.load(FIXTURE / "expected.npz") as arrays:
        return dict(arrays)


@pytest.fixture
def copy(tmp_path):
    target = tmp_path / "124M"
    shutil.copytree(FIXTURE, target)
    return target


def test_crc32c_known_answers():
    # RFC 3720 B.4 test vectors for CRC-32C (not zlib's CRC-32).
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(b"123456789") != zlib.crc32(b"123456789")


def test_crc32c_numpy_lanes_match_the_bytewise_loop():
    """Inputs of 64 KiB and more take the vectorised path; it must agree byte for byte."""
    def bytewise(data: bytes, crc: int = 0) -> int:
        crc ^= 0xFFFFFFFF
        for byte in data:
            crc = openai_tf._CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF

    data = np.random.default_rng(0).integers(0, 256, 300_001, dtype=np.uint8).tobytes()
    for piece in (data[:65_536], data[:65_537], data):
        assert crc32c(piece) == bytewise(piece)
        assert crc32c(piece, 0x12345678) == bytewise(piece, 0x12345678)


def test_index_lists_every_variable_with_shape_and_dtype(expected):
    header, entries = read_bundle_index(FIXTURE / "model.ckpt.index")
    assert header.num_shards == 1 and not header.big_endian
    assert set(entries) == set(expected)
    for name, entry in entries.items():
        assert entry.shape == expected[name].shape and entry.dtype == 1  # DT_FLOAT
        assert entry.size == expected[name].nbytes


def test_params_equal_what_tensorflow_saved(expected):
    hparams, params = load_tf_checkpoint(FIXTURE)
    assert hparams == {"n_vocab": 263, "n_ctx": 16, "n_embd": 8, "n_head": 2, "n_layer": 2}
    assert np.array_equal(params["wte"], expected["model/wte"])
    assert np.array_equal(params["wpe"], expected["model/wpe"])
    assert np.array_equal(params["ln_f"]["b"], expected["model/ln_f/b"])
    for i, block in enumerate(params["blocks"]):
        for path in ("ln_1/g", "ln_1/b", "attn/c_attn/w", "attn/c_attn/b", "attn/c_proj/w",
                     "attn/c_proj/b", "ln_2/g", "ln_2/b", "mlp/c_fc/w", "mlp/c_fc/b",
                     "mlp/c_proj/w", "mlp/c_proj/b"):
            value = block
            for part in path.split("/"):
                value = value[part]
            want = expected[f"model/h{i}/{path}"]
            if path.endswith("/w"):  # [1, nx, nf] -> [nx, nf]
                want = want[0]
            assert value.dtype == np.float32 and np.array_equal(value, want), (i, path)
    assert params["blocks"][0]["attn"]["c_attn"]["w"].shape == (8, 24)
    assert params["blocks"][1]["mlp"]["c_proj"]["w"].shape == (32, 8)


def numpy_gpt2(ids, params, n_head):
    """picoGPT's forward pass in numpy: the reference our converted model must match."""
    def layer_norm(x, g, b, eps=1e-5):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return g * (x - mean) / np.sqrt(var + eps) + b

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def linear(x, p):
        return x @ p["w"] + p["b"]

    x = params["wte"][ids] + params["wpe"][range(len(ids))]
    mask = (1 - np.tri(len(ids))) * -1e10
    for block in params["blocks"]:
        q, k, v = np.split(linear(layer_norm(x, **block["ln_1"]), block["attn"]["c_attn"]), 3, -1)
        heads = [softmax(qh @ kh.T / np.sqrt(qh.shape[-1]) + mask) @ vh for qh, kh, vh in
                 zip(*(np.split(t, n_head, -1) for t in (q, k, v)), strict=True)]
        x = x + linear(np.hstack(heads), block["attn"]["c_proj"])
        hidden = gelu(linear(layer_norm(x, **block["ln_2"]), block["mlp"]["c_fc"]))
        x = x + linear(hidden, block["mlp"]["c_proj"])
    return layer_norm(x, **params["ln_f"]) @ params["wte"].T


def test_converted_model_matches_numpy_reference():
    hparams, params = load_tf_checkpoint(FIXTURE)
    model, config = load_tf_gpt2(FIXTURE)
    assert config.vocab_size == 263 and config.use_attention_bias
    ids = [3, 259, 100, 262, 7, 0, 15, 200]
    params64 = _to_float64(params)
    want = numpy_gpt2(np.array(ids), params64, hparams["n_head"])
    with torch.no_grad():
        got = model(torch.tensor([ids]))[0].double().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def _to_float64(tree):
    if isinstance(tree, dict):
        return {k: _to_float64(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_to_float64(v) for v in tree]
    return tree.astype(np.float64)


def test_tokenizer_from_encoder_json_and_vocab_bpe():
    enc = tokenizer_from_encoder(FIXTURE)
    assert enc.n_vocab == 263 and enc.eot_token == 262
    # merges: h+e, l+l, he+ll, hell+o, Ġ+w, o+r; "l" is byte 108 -> rank 75, "d" -> 67.
    assert enc.encode("hello world") == [259, 260, 261, 75, 67]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [262]
    text = "hello, naïve wörld! 🚀"
    assert enc.decode(enc.encode(text)) == text


def test_tokenizer_rejects_encoder_that_does_not_match_merges(copy):
    (copy / "vocab.bpe").write_text("#version: 0.2\nl l\nh e\n")  # merge order swapped
    with pytest.raises(ValueError, match="does not match the merge order"):
        tokenizer_from_encoder(copy)


def test_corrupt_index_is_reported(copy):
    index = copy / "model.ckpt.index"
    data = bytearray(index.read_bytes())
    data[20] ^= 0xFF  # inside the data block: its CRC no longer matches
    index.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="fails its CRC32C"):
        load_tf_checkpoint(copy)
    index.write_bytes(bytes(data[:-10]))  # truncated: the footer's magic is gone
    with pytest.raises(CorruptCheckpointError, match="not a TensorFlow checkpoint index"):
        load_tf_checkpoint(copy)


def test_missing_shard_is_reported(copy):
    (copy / DATA).unlink()
    with pytest.raises(FileNotFoundError, match="data shard model.ckpt.data-00000-of-00001"):
        load_tf_checkpoint(copy)


def test_bad_tensor_checksum_is_reported(copy):
    data = bytearray((copy / DATA).read_bytes())
    data[100] ^= 0x01  # one flipped bit in some tensor
    (copy / DATA).write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="fails its CRC32C checksum"):
        load_tf_checkpoint(copy)


def test_truncated_shard_is_reported(copy):
    data = (copy / DATA).read_bytes()
    (copy / DATA).write_bytes(data[:-4])
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        load_tf_checkpoint(copy)


def test_missing_folder_and_hparams(tmp_path, copy):
    with pytest.raises(FileNotFoundError, match="hparams.json"):
        load_tf_checkpoint(tmp_path)
    (copy / "checkpoint").unlink()  # falls back to OpenAI's prefix, model.ckpt
    hparams, _ = load_tf_checkpoint(copy)
    assert hparams["n_layer"] == 2


def test_download_urls_point_at_openai_blob_storage(tmp_path, monkeypatch):
    opened = []

    class FakeResponse:
        headers = {"Content-Length": "3"}

        def __init__(self, url, timeout=None):
            assert timeout  # a dead connection must not hang forever
            opened.append(url)
            self.chunks = [b"abc"]

        def read(self, _size):
            return self.chunks.pop() if self.chunks else b""

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr("urllib.request.urlopen", FakeResponse)
    folder = openai_tf.download_openai_checkpoint("gpt2", tmp_path)
    assert folder == tmp_path / "124M"
    assert opened[0] == "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/checkpoint"
    assert len(opened) == len(openai_tf.OPENAI_FILES)
    assert (folder / "hparams.json").read_bytes() == b"abc"
    assert not list(folder.glob("*.part"))
    openai_tf.download_openai_checkpoint("124M", tmp_path)  # present files are not fetched again
    assert len(opened) == len(openai_tf.OPENAI_FILES)
    with pytest.raises(ValueError, match="unknown GPT-2 size"):
        openai_tf.download_openai_checkpoint("gpt5", tmp_path)


def test_twelve_layer_index_spanning_several_blocks():
    # GPT-2 small's 148 variable names: the index outgrows one 4 KiB SSTable block, and keys
    # sort h0, h1, h10, h11, h2, ... so layer numbers must come from the names, not the order.
    folder = FIXTURE.parent / "openai_tf_12layer"
    assert (folder / "model.ckpt.index").stat().st_size > 4096
    _, entries = read_bundle_index(folder / "model.ckpt.index")
    assert len(entries) == 148
    hparams, params = load_tf_checkpoint(folder)
    with np.load(folder / "expected.npz") as expected:
        for i in range(12):
            assert np.array_equal(params["blocks"][i]["mlp"]["c_fc"]["w"],
                                  expected[f"model/h{i}/mlp/c_fc/w"][0])
            assert np.array_equal(params["blocks"][i]["ln_2"]["b"], expected[f"model/h{i}/ln_2/b"])
    model, config = load_tf_gpt2(folder)
    assert config.number_of_layers == 12
    ids = [1, 2, 259, 262, 5]
    want = numpy_gpt2(np.array(ids), _to_float64(params), hparams["n_head"])
    with torch.no_grad():
        got = model(torch.tensor([ids]))[0].double().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
