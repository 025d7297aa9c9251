"""A corpus of bad checkpoint files: each one gives its own error type, with a message that
names the cause and the fix, runs none of its code, and leaves the target model unchanged."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.checkpoint_errors import (
    ArchitectureMismatchError,
    CheckpointConfigError,
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    EmptyCheckpointError,
    InvalidWeightsError,
    NotACheckpointError,
    TruncatedCheckpointError,
    UnrecognizedCheckpointError,
    UnsafeCheckpointError,
)
from utils.config import ModelConfig
from utils.model import GPTModel
from utils.training.engine.loading import load_model_weights, load_pretrained_model

TINY = ModelConfig(vocab_size=64, context_length=16, embedding_dimension=16,
                   number_of_heads=2, number_of_layers=2, dropout_rate=0.0)
MARKER = "code_ran.txt"  # the unsafe files would create this next to themselves


def good_state() -> dict:
    torch.manual_seed(0)
    model = GPTModel(TINY)
    return {"model_state_dict": model.state_dict(), "config": TINY.to_dict(), "epoch": 1,
            "val_loss": 2.0}


def good_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(good_state(), buffer)
    return buffer.getvalue()


class WritesAFile:
    """A pickle payload that would create MARKER when unpickled."""

    def __init__(self, folder: Path) -> None:
        self.target = str(folder / MARKER)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def with_state(**changes):
    def build(path: Path) -> None:
        state = good_state()
        state.update(changes)
        torch.save(state, path)
    return build


def with_tensor(key: str, transform):
    def build(path: Path) -> None:
        state = good_state()
        state["model_state_dict"] = dict(state["model_state_dict"])
        state["model_state_dict"][key] = transform(state["model_state_dict"][key].clone())
        torch.save(state, path)
    return build


def write_bytes(data: bytes | str):
    def build(path: Path) -> None:
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return build


def truncated(fraction: float):
    def build(path: Path) -> None:
        data = good_bytes()
        path.write_bytes(data[:int(len(data) * fraction)])
    return build


def zip_without_torch(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")


def npz(path: Path) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, weights=np.zeros(4))


def npy(path: Path) -> None:
    with open(path, "wb") as handle:
        np.save(handle, np.zeros(4))


def gzipped(path: Path) -> None:
    path.write_bytes(gzip.compress(good_bytes()))


def png(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))


def jpeg(path: Path) -> None:
    path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(200))


def unsafe_torch(path: Path) -> None:
    state = good_state()
    state["extra"] = WritesAFile(path.parent)
    torch.save(state, path)


def unsafe_plain_pickle(path: Path) -> None:
    with open(path, "wb") as handle:
        pickle.dump({"model_state_dict": {}, "x": WritesAFile(path.parent)}, handle)


def unsafe_protocol2_pickle(path: Path) -> None:
    with open(path, "wb") as handle:
        pickle.dump(WritesAFile(path.parent), handle, protocol=2)


def numpy_scalar_inside(path: Path) -> None:
    state = good_state()
    state["val_loss"] = np.float64(2.0)  # a numpy scalar pickles as a numpy global
    torch.save(state, path)


def truncated_safetensors(path: Path) -> None:
    from safetensors.torch import save

    data = save({"transformer.wte.weight": torch.zeros(64, 16)})
    path.write_bytes(data[: len(data) // 2])


def safetensors_bad_header(path: Path) -> None:
    header = b'{"x": not json at all}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))


def directory(path: Path) -> None:
    path.mkdir()
    (path / "inside.pt").write_bytes(good_bytes())


def sidecar_json(path: Path) -> None:
    path.write_text(json.dumps({"epoch": 1, "val_loss": 2.0, "global_step": 5}))


def extra_block(path: Path) -> None:
    bigger = ModelConfig(64, 16, 16, 2, 3, 0.0)
    torch.save({"model_state_dict": GPTModel(bigger).state_dict(), "config": bigger.to_dict()},
               path)


def missing_key(path: Path) -> None:
    state = good_state()
    state["model_state_dict"] = dict(state["model_state_dict"])
    del state["model_state_dict"]["transformer_blocks.1.norm2.scale"]
    torch.save(state, path)


def bare_state_dict_without_config(path: Path) -> None:
    torch.save(good_state()["model_state_dict"], path)


# (name, builder, error type, words the message must contain, which loaders refuse it:
# "both", or "pretrained" only: a broken or absent config does not matter when the model
# already exists and the tensors fit it; "weights" only: the file is fine on its own but
# does not fit the target model).
BOTH, PRETRAINED, WEIGHTS = "both", "pretrained", "weights"
CORPUS = [
    ("missing file", None, CheckpointNotFoundError, ["No checkpoint file", "Fix"], BOTH),
    ("directory", directory, NotACheckpointError, ["is a folder", "inside.pt"], BOTH),
    ("zero bytes", write_bytes(b""), EmptyCheckpointError, ["empty (0 bytes)"], BOTH),
    ("random garbage", write_bytes(bytes(range(7, 250)) * 4), NotACheckpointError,
     ["match no format"], BOTH),
    ("PNG image", png, NotACheckpointError, ["PNG image"], BOTH),
    ("JPEG image", jpeg, NotACheckpointError, ["JPEG image"], BOTH),
    ("text file", write_bytes("epoch 3, loss 2.1\nsee the notebook\n"), NotACheckpointError,
     ["text file"], BOTH),
    ("JSON file", write_bytes('{"vocab_size": 50257, "n_layer": 12}'), NotACheckpointError,
     ["JSON file"], BOTH),
    ("deeply nested JSON text", write_bytes("[" * 100_000 + "]" * 100_000), NotACheckpointError,
     ["text file"], BOTH),
    ("checkpoint sidecar JSON", sidecar_json, NotACheckpointError, ["sidecar", "no weights"], BOTH),
    ("HTML download page", write_bytes("<!DOCTYPE html><html><body>Google Drive can't scan"),
     NotACheckpointError, ["HTML page", "download"], BOTH),
    ("Git LFS pointer", write_bytes("version https://git-lfs.github.com/spec/v1\noid sha256:ab\n"),
     NotACheckpointError, ["Git LFS pointer", "git lfs pull"], BOTH),
    ("gzip-compressed checkpoint", gzipped, NotACheckpointError, ["gzip", "gunzip"], BOTH),
    ("NumPy .npy", npy, NotACheckpointError, ["NumPy .npy"], BOTH),
    ("NumPy .npz (zip without data.pkl)", npz, NotACheckpointError, ["no data.pkl"], BOTH),
    ("zip archive of other files", zip_without_torch, NotACheckpointError, ["no data.pkl"], BOTH),
    ("truncated to half", truncated(0.5), TruncatedCheckpointError, ["end is missing"], BOTH),
    ("truncated to 100 bytes", truncated(0.001), TruncatedCheckpointError, ["end is missing"], BOTH),
    ("truncated safetensors", truncated_safetensors, TruncatedCheckpointError,
     ["truncated safetensors"], BOTH),
    ("safetensors with a broken header", safetensors_bad_header, CorruptCheckpointError,
     ["safetensors", "cannot be read"], BOTH),
    ("pickle that would write a file (torch.save)", unsafe_torch, UnsafeCheckpointError,
     ["posix.system", "nothing in it ran", "trust_checkpoint=True"], BOTH),
    ("plain pickle.dump file", unsafe_plain_pickle, UnsafeCheckpointError,
     ["plain Python pickle", "trust_checkpoint=True"], BOTH),
    ("protocol-2 pickle that would write a file", unsafe_protocol2_pickle,
     UnsafeCheckpointError, ["plain Python pickle"], BOTH),
    ("numpy scalar inside", numpy_scalar_inside, UnsafeCheckpointError, ["numpy"], BOTH),
    ("a tensor instead of a dict", lambda p: torch.save(torch.zeros(3, 4), p),
     UnrecognizedCheckpointError, ["single tensor of shape [3, 4]"], BOTH),
    ("a list", lambda p: torch.save([1, 2, 3], p), UnrecognizedCheckpointError, ["a list"], BOTH),
    ("dict without weights", lambda p: torch.save({"epoch": 3, "val_loss": 2.0}, p),
     UnrecognizedCheckpointError, ["without model weights", "'epoch'"], BOTH),
    ("optimizer state only", lambda p: torch.save({"state": {}, "param_groups": []}, p),
     UnrecognizedCheckpointError, ["optimizer state dict"], BOTH),
    ("model_state_dict is a string", with_state(model_state_dict="weights.bin"),
     UnrecognizedCheckpointError, ["model_state_dict is a str"], BOTH),
    ("model_state_dict is empty", with_state(model_state_dict={}), UnrecognizedCheckpointError,
     ["is empty"], BOTH),
    ("non-tensor value in state dict", with_tensor("final_norm.scale", lambda t: t.tolist()),
     UnrecognizedCheckpointError, ["final_norm.scale", "not a tensor"], BOTH),
    ("unknown names", lambda p: torch.save({"encoder.layer.0.weight": torch.zeros(2)}, p),
     UnrecognizedCheckpointError, ["encoder.layer.0.weight"], BOTH),
    ("config with an unknown key", with_state(config={**TINY.to_dict(), "n_experts": 8}),
     CheckpointConfigError, ["n_experts"], PRETRAINED),
    ("config heads do not divide width", with_state(config={**TINY.to_dict(), "number_of_heads": 3}),
     CheckpointConfigError, ["divisible"], PRETRAINED),
    ("bare state dict, no config", bare_state_dict_without_config, CheckpointConfigError,
     ["no model config"], PRETRAINED),
    ("NaN weights", with_tensor("transformer_blocks.0.attention.W_key.weight",
                                lambda t: t.fill_(float("nan"))),
     InvalidWeightsError, ["NaN or Inf", "W_key.weight", "earlier checkpoint"], BOTH),
    ("Inf weights", with_tensor("final_norm.shift", lambda t: t.fill_(float("inf"))),
     InvalidWeightsError, ["NaN or Inf"], BOTH),
    ("integer weights", with_tensor("final_norm.scale", lambda t: t.long()),
     InvalidWeightsError, ["torch.int64"], BOTH),
    ("bool weights (would load as all 1.0)", with_tensor("final_norm.scale", lambda t: t.bool()),
     InvalidWeightsError, ["torch.bool"], BOTH),
    ("complex weights", with_tensor("final_norm.shift", lambda t: t.to(torch.complex64)),
     InvalidWeightsError, ["torch.complex64"], BOTH),
    ("fp8 weights (the first forward would crash)",
     with_tensor("transformer_blocks.0.attention.W_query.weight",
                 lambda t: t.to(torch.float8_e4m3fn)),
     InvalidWeightsError, ["torch.float8_e4m3fn"], BOTH),
    ("stride-0 tensor (a small file posing as a big model)",
     with_tensor("transformer_blocks.0.feed_forward.net.0.weight",
                 lambda t: t[:1, :1].clone().expand(t.shape)),
     InvalidWeightsError, ["stride-0", "feed_forward.net.0.weight"], BOTH),
    ("wrong shape", with_tensor("position_embedding.weight", lambda t: t[:8]),
     ArchitectureMismatchError, ["position_embedding.weight (checkpoint [8, 16] vs model [16, 16])"], BOTH),
    ("an extra block", extra_block, ArchitectureMismatchError,
     ["16 unexpected", "number_of_layers: checkpoint 3, model 2"], WEIGHTS),
    ("a missing key", missing_key, ArchitectureMismatchError,
     ["1 missing", "transformer_blocks.1.norm2.scale"], BOTH),
    ("untied head", with_tensor("lm_head.weight", lambda t: t + 1), ArchitectureMismatchError,
     ["untied"], BOTH),
]


def test_the_corpus_is_large_and_covers_every_error_type():
    assert len(CORPUS) >= 20
    assert len({name for name, *_ in CORPUS}) == len(CORPUS)
    kinds = {kind for _, _, kind, _, _ in CORPUS}
    assert kinds >= {CheckpointNotFoundError, NotACheckpointError, EmptyCheckpointError,
                     TruncatedCheckpointError, UnsafeCheckpointError,
                     UnrecognizedCheckpointError, CheckpointConfigError, InvalidWeightsError,
                     ArchitectureMismatchError, CorruptCheckpointError}


@pytest.fixture
def target_model():
    torch.manual_seed(1)
    return GPTModel(TINY).train()


@pytest.mark.parametrize("name, build, error_type, words, loaders", CORPUS,
                         ids=[case[0] for case in CORPUS])
def test_bad_file_gives_its_own_error_and_changes_nothing(tmp_path, target_model, name, build,
                                                          error_type, words, loaders):
    path = tmp_path / "checkpoint.pt"
    if build is not None:
        build(path)
    raised = []
    if loaders in (BOTH, WEIGHTS):
        before = {k: v.clone() for k, v in target_model.state_dict().items()}
        parameter_ids = [id(p) for p in target_model.parameters()]
        with pytest.raises(CheckpointError) as caught:
            load_model_weights(target_model, path, device="cpu")
        raised.append(caught.value)
        # the model is exactly as before: values, objects, mode
        after = target_model.state_dict()
        assert all(torch.equal(after[k], v) for k, v in before.items())
        assert [id(p) for p in target_model.parameters()] == parameter_ids
        assert target_model.training
    if loaders in (BOTH, PRETRAINED):  # building a model from the file fails the same way
        with pytest.raises(CheckpointError) as caught:
            load_pretrained_model(path, device="cpu")
        raised.append(caught.value)
    for error in raised:
        assert type(error) is error_type, f"{name}: got {type(error).__name__}: {error}"
        message = str(error)
        for word in words:
            assert word in message, f"{name}: {word!r} not in {message!r}"
        assert "Fix" in message, message  # every message says how to fix it
    assert not (tmp_path / MARKER).exists(), "the file's code ran"


def test_the_unsafe_payload_really_would_write_the_file(tmp_path):
    """Guards the corpus itself: with trust the code runs, so the refusal above means something."""
    unsafe_torch(tmp_path / "c.pt")
    with pytest.warns(UserWarning, match="trust_checkpoint=True"):
        model, checkpoint = load_pretrained_model(tmp_path / "c.pt", device="cpu",
                                                  trust_checkpoint=True)
    assert (tmp_path / MARKER).exists() and checkpoint["extra"] == 0  # os.system's exit code


def test_stride_0_files_really_are_small(tmp_path):
    """Guards the stride-0 case: the file holds one number per tensor, not the shape."""
    big = ModelConfig(64, 16, 512, 2, 2, 0.0)
    state = {key: tensor[(slice(0, 1),) * tensor.dim()].clone().expand(tensor.shape)
             for key, tensor in GPTModel(big).state_dict().items()}
    state["lm_head.weight"] = state["token_embedding.weight"]
    torch.save({"model_state_dict": state, "config": big.to_dict()}, tmp_path / "c.pt")
    parameters = sum(tensor.numel() for tensor in state.values())
    assert (tmp_path / "c.pt").stat().st_size * 100 < parameters * 4
    with pytest.raises(InvalidWeightsError, match="stride-0"):
        load_pretrained_model(tmp_path / "c.pt", device="cpu")


def test_float64_weights_are_cast_to_float32_with_a_note(tmp_path, target_model):
    state = good_state()
    state["model_state_dict"] = {key: tensor.double()
                                 for key, tensor in state["model_state_dict"].items()}
    torch.save(state, tmp_path / "fp64.pt")
    model, checkpoint = load_pretrained_model(tmp_path / "fp64.pt", device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert "float64 weights were cast to float32" in checkpoint["load_notes"]
    model(torch.zeros(1, 4, dtype=torch.long))  # the first forward works
    report = load_model_weights(target_model, tmp_path / "fp64.pt", device="cpu")
    assert {p.dtype for p in target_model.parameters()} == {torch.float32}
    assert any("float64" in note for note in report.notes), report.notes
    expected = good_state()["model_state_dict"]
    assert all(torch.equal(target_model.state_dict()[k], v) for k, v in expected.items())
