"""Hostile inputs that would give silent wrong results or lose a user's file (issue 12,
"Silent wrong results" and the checkpoint-path gaps): lying safetensors files for `convert`
and `load`, a deeply nested header, a loss that turns NaN, and checkpoint paths that name
someone else's file or a folder with a dot in its name. Each test makes the input itself.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests._ckpt_helpers import make_state
from tests._cli_helpers import assert_one_error_line, run_cli
from tests._train_worker import make_trainer
from utils.checkpoint_errors import (
    CheckpointError,
    CheckpointWriteError,
    CorruptCheckpointError,
    InvalidWeightsError,
    TrainingDivergedError,
    TruncatedCheckpointError,
)
from utils.config import ConfigError, ModelConfig, TrainingConfig
from utils.model import GPTModel
from utils.pretrained.huggingface import export_to_hf, load_openai_gpt2
from utils.training.engine.checkpoint import save_checkpoint
from utils.training.engine.loading import load_pretrained_model
from utils.training.engine.recovery import list_checkpoints
from utils.training.engine.writer import CheckpointWriter

REPO_ROOT = Path(__file__).resolve().parent.parent
TF_FIXTURE = Path(__file__).parent / "fixtures" / "openai_tf_tiny"
HF_TINY = ModelConfig(vocab_size=64, context_length=16, embedding_dimension=16,
                      number_of_heads=2, number_of_layers=1, dropout_rate=0.0,
                      use_attention_bias=True)




# --------------------------------------------------------------------------------------
# Safetensors files that lie about their tensors
# --------------------------------------------------------------------------------------

def hf_folder(root: Path) -> Path:
    torch.manual_seed(0)
    return export_to_hf(GPTModel(HF_TINY), root / "hf")


def rewrite(file: Path, edit) -> None:
    """Replace the header (and data) of a safetensors file with `edit(header, data)`'s."""
    raw = file.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header, data = edit(json.loads(raw[8:8 + length]), bytearray(raw[8 + length:]))
    encoded = json.dumps(header).encode()
    file.write_bytes(len(encoded).to_bytes(8, "little") + encoded + bytes(data))


WEIGHT, BIAS = "transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias"  # both 16 floats


def overlapping(header, data):
    header[BIAS]["data_offsets"] = list(header[WEIGHT]["data_offsets"])
    return header, data


def negative(header, data):
    header[BIAS]["data_offsets"] = [-64, 0]
    return header, data


def outside_the_file(header, data):
    header[BIAS]["data_offsets"] = [len(data), len(data) + 64]
    return header, data


def nan_values(header, data):
    start, stop = header[WEIGHT]["data_offsets"]
    data[start:stop] = torch.full((16,), math.nan).numpy().tobytes()
    return header, data


def bool_tensor(header, data):
    start = header[WEIGHT]["data_offsets"][0]
    header[WEIGHT].update(dtype="BOOL", data_offsets=[start, start + 16])
    return header, data


LIES = {"overlapping offsets": (overlapping, CorruptCheckpointError, "overlaps"),
        "negative offsets": (negative, CorruptCheckpointError, "data_offsets [-64, 0]"),
        "offsets outside the file": (outside_the_file, TruncatedCheckpointError, "truncated"),
        "NaN weights": (nan_values, InvalidWeightsError, "NaN or Inf"),
        "a bool tensor": (bool_tensor, InvalidWeightsError, "torch.bool")}


@pytest.mark.parametrize("case", sorted(LIES))
def test_convert_refuses_a_safetensors_file_that_lies(tmp_path, case):
    edit, error_type, words = LIES[case]
    folder = hf_folder(tmp_path)
    rewrite(folder / "model.safetensors", edit)
    with pytest.raises(error_type) as caught:
        load_openai_gpt2(folder)
    assert words in str(caught.value) and "Fix" in str(caught.value)


@pytest.mark.parametrize("case", ["overlapping offsets", "NaN weights"])
def test_convert_on_the_command_line_writes_nothing_for_a_lying_file(tmp_path, case):
    folder = hf_folder(tmp_path)
    rewrite(folder / "model.safetensors", LIES[case][0])
    result = run_cli("convert", folder, "-o", tmp_path / "out.pt")
    assert_one_error_line(result, LIES[case][2])
    assert not (tmp_path / "out.pt").exists()


def test_convert_refuses_a_stride_0_bin_file(tmp_path):
    folder = hf_folder(tmp_path)
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    state[WEIGHT] = state[WEIGHT][:1].clone().expand(16)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(InvalidWeightsError, match="stride-0"):
        load_openai_gpt2(folder)


@pytest.mark.parametrize("change", [{"n_layer": [1]}, {"n_layer": "1"}, {"vocab_size": None}])
def test_a_config_json_of_the_wrong_type_is_one_clear_error(tmp_path, change):
    folder = hf_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | change))
    key = next(iter(change))
    for argv in (["convert", folder, "-o", tmp_path / "out.pt"],
                 ["load", "--checkpoint", folder / "model.safetensors", "--device", "cpu"]):
        assert_one_error_line(run_cli(*argv), f"config.json: {key} is", "not a whole number")
    assert not (tmp_path / "out.pt").exists()


def nested_header(file: Path, depth: int = 100_000) -> None:
    header = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    file.write_bytes(len(header).to_bytes(8, "little") + header)


def test_a_deeply_nested_header_is_one_clear_error_in_load_and_convert(tmp_path):
    folder = hf_folder(tmp_path)
    nested_header(folder / "model.safetensors")
    for argv in (["load", "--checkpoint", folder / "model.safetensors", "--device", "cpu"],
                 ["convert", folder, "-o", tmp_path / "out.pt"],
                 ["convert", folder / "model.safetensors", "-o", tmp_path / "out.pt"]):
        assert_one_error_line(run_cli(*argv), "header cannot be read", "RecursionError")
    assert not (tmp_path / "out.pt").exists()


def test_a_shard_index_that_is_a_fifo_does_not_hang_convert(tmp_path):
    folder = hf_folder(tmp_path)
    os.mkfifo(folder / "model.safetensors.index.json")
    assert_one_error_line(run_cli("convert", folder, "-o", tmp_path / "out.pt"),
                          "not a usable shard index")


def tf_release(root: Path) -> Path:
    return Path(shutil.copytree(TF_FIXTURE, root / "tf"))


TF_CASES = {
    "hparams.json is a FIFO": (lambda d: fifo(d / "hparams.json"), "not a regular file"),
    "the index links to /dev/zero": (lambda d: dev_zero(d / "model.ckpt.index"),
                                     "not a regular file"),
    "the checkpoint file is a FIFO": (lambda d: fifo(d / "checkpoint"), "not a regular file"),
    "n_layer is text": (lambda d: hparams(d, n_layer="2"), "not a whole number"),
    "n_layer is 10^6": (lambda d: hparams(d, n_layer=10**6), "n_layer=1000000 but"),
}


def fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def hparams(folder: Path, **changes) -> None:
    values = json.loads((folder / "hparams.json").read_text())
    (folder / "hparams.json").write_text(json.dumps(values | changes))


@pytest.mark.parametrize("case", sorted(TF_CASES))
def test_convert_of_a_hostile_openai_tf_folder_is_one_clear_error(tmp_path, case):
    make, words = TF_CASES[case]
    folder = tf_release(tmp_path)
    make(folder)
    result = run_cli("convert", folder, "-o", tmp_path / "out.pt", memory_limited=True)
    assert_one_error_line(result, words)
    assert not (tmp_path / "out.pt").exists()


# --------------------------------------------------------------------------------------
# Hyperparameters and a loss that turns NaN
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("learning_rate", math.inf),
                                          ("grad_clip", math.nan),
                                          ("weight_decay", math.nan),
                                          ("min_learning_rate", -math.inf)])
def test_non_finite_hyperparameters_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainingConfig(**{field: value})


def test_a_loss_that_turns_nan_stops_training_before_a_checkpoint_replaces_a_good_one(
        tmp_path):
    trainer = make_trainer(tmp_path, steps=12, checkpoint_interval=3, keep_last=1,
                           keep_best=0)

    def poison(record: dict) -> None:  # the weights blow up after step 7's evaluation
        if record["step"] == 7:
            with torch.no_grad():
                trainer.model.final_norm.scale.fill_(math.nan)

    trainer.callbacks.append(poison)
    with pytest.raises(TrainingDivergedError) as caught:
        trainer.fit(resume_from=None)
    message = str(caught.value)
    assert "diverged at step 8" in message and "learning_rate" in message
    infos = list_checkpoints(tmp_path)
    assert [info.global_step for info in infos if info.filename.startswith("checkpoint_")] == [6]
    for info in infos:  # every file left is a good model (best_model.pt included)
        load_pretrained_model(info.path, device="cpu")
    assert all(entry["step"] <= 7 for entry in trainer.metrics_history)


# --------------------------------------------------------------------------------------
# Checkpoint paths: someone's file, a folder with a dot, a file given as the folder
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, content", [("corpus.txt", b"my corpus"),
                                           ("notes.pt", b"my notes, not a checkpoint"),
                                           ("README", b"read me")])
def test_save_checkpoint_never_overwrites_someones_file(tmp_path, name, content):
    target = tmp_path / name
    target.write_bytes(content)
    with pytest.raises(CheckpointWriteError, match="not a checkpoint; it was left untouched"):
        save_checkpoint(make_state(1, 2.0), target)
    assert target.read_bytes() == content
    assert sorted(path.name for path in tmp_path.iterdir()) == [name]


def test_save_checkpoint_replaces_a_checkpoint_file_named_explicitly(tmp_path):
    target = save_checkpoint(make_state(1, 2.0), tmp_path / "model.pt")
    save_checkpoint(make_state(2, 1.0), target)
    assert torch.load(target, weights_only=True)["global_step"] == 2


def test_a_dotted_name_is_a_folder_for_save_checkpoint_and_the_writer(tmp_path):
    path = save_checkpoint(make_state(1, 2.0), tmp_path / "runs" / "v1.2")
    assert path.parent == tmp_path / "runs" / "v1.2" and path.name.startswith("checkpoint_")
    writer = CheckpointWriter(tmp_path / "v2.0", background=False,
                              run_id="20250101-000000-aaaaaa")
    writer.submit(make_state(3, 1.0, run_id="20250101-000000-aaaaaa"))
    assert writer.last_path.parent == tmp_path / "v2.0"
    assert (tmp_path / "v2.0").is_dir()


def test_trainer_fit_into_a_file_fails_before_training(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    trainer = make_trainer(notes, steps=3)
    steps = []
    trainer.callbacks.append(steps.append)
    with pytest.raises(CheckpointError) as caught:
        trainer.fit(resume_from=None)
    assert "is a file, not a folder" in str(caught.value) and "Fix" in str(caught.value)
    assert steps == [] and trainer.global_step == 0
    assert notes.read_text() == "mine"
