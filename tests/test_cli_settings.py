"""`train`'s flags are derived from TrainingConfig (one definition per setting); library
messages reach the command line with the flag names the user typed."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from utils.__main__ import build_parser
from utils.cli.common import error_line, with_flag_names
from utils.cli.train import (
    FIELDS_WITHOUT_FLAG,
    SETTING_FLAGS,
    TRAINING_FLAGS,
    build_training_config,
)
from utils.config import ConfigError, TrainingConfig, setting_default, setting_help

# A valid value, different from the default, for each flag (--epochs: see its own test).
SAMPLES = {
    "max_steps": 7, "batch_size": 3, "gradient_accumulation_steps": 2,
    "learning_rate": 1e-3, "min_learning_rate": 2e-4, "warmup_steps": 5,
    "weight_decay": 0.05, "grad_clip": 0.5, "eval_interval": 4, "eval_batches": 2,
    "precision": "bf16", "compile": True, "activation_checkpointing": True, "log_interval": 3,
    "seed": 11, "device": "cpu",
    "checkpoint_interval": 6, "checkpoint_dir": "elsewhere", "keep_last": 5, "keep_best": 2,
    "log_to": "tensorboard,csv", "log_dir": "logs_here", "sample_every": 2,
    "sample_prompt": "Once upon",
    "keep_full": 2, "weights_only_dtype": "bf16",
}


def train_parser() -> argparse.ArgumentParser:
    subparsers = next(action for action in build_parser()._actions
                      if isinstance(action, argparse._SubParsersAction))
    return subparsers.choices["train"]


def train_action(flag: str) -> argparse.Action:
    return next(a for a in train_parser()._actions if flag in a.option_strings)


def test_every_training_setting_is_a_flag_or_deliberately_not():
    names = {field.name for field in dataclasses.fields(TrainingConfig)}
    assert set(TRAINING_FLAGS) | set(FIELDS_WITHOUT_FLAG) == names
    assert not set(TRAINING_FLAGS) & set(FIELDS_WITHOUT_FLAG)
    assert set(SAMPLES) | {"epochs"} == set(TRAINING_FLAGS)


@pytest.mark.parametrize("field", sorted(dataclasses.fields(TrainingConfig),
                                         key=lambda f: f.name), ids=lambda f: f.name)
def test_every_setting_has_a_one_line_meaning(field):
    meaning = setting_help(field.name)
    assert meaning and "\n" not in meaning and len(meaning) <= 80
    assert setting_default(field.name) == field.default


def test_unknown_setting_is_named():
    with pytest.raises(ConfigError, match="TrainingConfig has no setting 'lr'"):
        setting_help("lr")


@pytest.mark.parametrize("field", sorted(TRAINING_FLAGS))
def test_flag_help_and_default_come_from_training_config(field):
    action = train_action(TRAINING_FLAGS[field])
    assert action.help.startswith(setting_help(field))
    default = setting_default(field)
    if default is not None and not isinstance(default, bool):
        assert f"(default: {default}" in action.help
    # "not given" on the command line, so --resume can keep the checkpoint's value
    assert action.default in (None, False)


def test_train_without_flags_uses_the_training_config_defaults():
    args = build_parser().parse_args(["train"])
    assert build_training_config(args, None) == TrainingConfig()


def test_each_flag_sets_its_setting():
    argv = ["train"]
    for field, value in SAMPLES.items():
        argv += [TRAINING_FLAGS[field]] + ([] if value is True else [str(value)])
    config = build_training_config(build_parser().parse_args(argv), None)
    assert {field: getattr(config, field) for field in SAMPLES} == SAMPLES


def test_epochs_replaces_the_step_budget():
    config = build_training_config(build_parser().parse_args(["train", "--epochs", "2"]), None)
    assert (config.epochs, config.max_steps) == (2, None)


def test_resume_keeps_the_checkpoints_settings_unless_a_flag_is_given():
    saved = TrainingConfig(max_steps=50, batch_size=3, learning_rate=1e-3,
                           min_learning_rate=1e-4).to_dict()
    args = build_parser().parse_args(["train", "--max-steps", "80"])
    config = build_training_config(args, saved)
    assert (config.max_steps, config.batch_size, config.learning_rate) == (80, 3, 1e-3)


@pytest.mark.parametrize("message, expected", [
    ("learning_rate must be a positive finite number, got -1",
     "--lr must be a positive finite number, got -1"),
    ("min_learning_rate (0.1) exceeds learning_rate (0.01); lower min_learning_rate",
     "--min-lr (0.1) exceeds --lr (0.01); lower --min-lr"),
    ("ModelConfig.number_of_layers must be a positive integer, got 0",
     "--layers must be a positive integer, got 0"),
    ("pass device='cpu' or leave device=None", "pass --device 'cpu' or leave --device None"),
    ("TrainingConfig.seed must be an integer", "--seed must be an integer"),
    # plain words that are also setting names stay words
    ("the device is busy; the seed of the data", "the device is busy; the seed of the data"),
    ("sequence exceeds context_length 16", "sequence exceeds --context 16"),
    ("temperature must be a finite number >= 0", "--temperature must be a finite number >= 0"),
])
def test_setting_names_become_flags(message, expected):
    flags = {**SETTING_FLAGS, "temperature": "--temperature"}
    assert with_flag_names(message, flags) == expected


def test_error_line_is_one_line_with_the_flags():
    error = ConfigError("batch_size must be >= 1,\n  got 0")
    assert error_line(error, SETTING_FLAGS) == "error: --batch-size must be >= 1, got 0"
    assert error_line(FileNotFoundError()) == "error: FileNotFoundError"



def test_an_os_error_is_one_line_naming_the_flag_the_cause_and_the_fix():
    import errno

    paths = {"--checkpoint-dir": "/mnt/ro/ck", "--output": "/x/model.bin", "--data": "c.txt"}
    line = error_line(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/ck"), {}, paths)
    assert line == ("error: --checkpoint-dir /mnt/ro/ck: it is on a read-only file system "
                    "(Read-only file system). Fix: choose a folder on a writable disk")
    inside = error_line(OSError(errno.ENOSPC, "No space left on device",
                                "/mnt/ro/ck/checkpoint_x.pt"), {}, paths)
    assert inside.startswith("error: --checkpoint-dir /mnt/ro/ck: /mnt/ro/ck/checkpoint_x.pt:")
    assert "the disk is full" in inside and "Fix: free some space" in inside
    twin = error_line(OSError(errno.EROFS, "Read-only file system", "/x/model.bin.part"), {},
                      paths)  # a temporary twin of the output file
    assert twin.startswith("error: --output /x/model.bin: /x/model.bin.part:")
    ours = OSError(errno.ELOOP, "cannot read data path 'c.txt' (Too many levels of symbolic "
                               "links); pass a UTF-8 .txt file")
    assert error_line(ours, {}, paths) == ("error: cannot read data path 'c.txt' (Too many "
                                           "levels of symbolic links); pass a UTF-8 .txt file")
    cache = OSError(errno.EROFS, "cannot write the token cache in '/c' (Read-only file "
                                 "system); choose a token cache folder ... (cache_dir)")
    assert error_line(cache, {"cache_dir": "--cache-dir"}).endswith("(--cache-dir)")
