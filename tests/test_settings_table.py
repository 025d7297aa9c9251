"""One table of settings (utils/settings.py): the command line, the notebook's form and its
checks agree with it, and the rules both front ends share are defined once."""

from __future__ import annotations

import argparse
import ast
import inspect
import re

import pytest

import utils.forms as form
from tests.notebook_helpers import notebook_cells
from utils.__main__ import build_parser
from utils.cli.train import SETTING_FLAGS, build_training_config
from utils.config import ModelConfig, TrainingConfig
from utils.settings import (
    SETTINGS,
    UNSET,
    default_min_learning_rate,
    file_in_the_way,
    form_setting,
    setting,
)


def train_parser() -> argparse.ArgumentParser:
    subparsers = next(action for action in build_parser()._actions
                      if isinstance(action, argparse._SubParsersAction))
    return subparsers.choices["train"]


def cell_3_fields() -> dict[str, object]:
    """{form variable: value} of Cell 3 in the generated notebook."""
    return {node.targets[0].id: ast.literal_eval(node.value)
            for node in ast.parse(notebook_cells()[3]).body if isinstance(node, ast.Assign)}


def test_each_name_flag_and_form_field_is_defined_once():
    for attribute in ("name", "flag", "form"):
        values = [getattr(row, attribute) for row in SETTINGS if getattr(row, attribute)]
        assert len(values) == len(set(values)), attribute
    assert all(row.flag or row.form for row in SETTINGS)


def test_every_flag_of_the_table_is_a_train_option_and_every_option_a_flag_of_the_table():
    options = {option for action in train_parser()._actions
               for option in action.option_strings if option not in ("-h", "--help")}
    assert options == {row.flag for row in SETTINGS if row.flag}


def test_cell_3s_form_fields_and_the_form_checks_are_the_tables():
    forms = {row.form for row in SETTINGS if row.form}
    assert set(cell_3_fields()) == forms
    assert set(form.FORM_FIELDS) == forms
    checked = set()  # every field a cell checks (check_form("NAME", ...)) is in the table
    for source in notebook_cells().values():
        for call in ast.walk(ast.parse(source)):
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "check_form":
                checked |= {arg.value for arg in call.args if isinstance(arg, ast.Constant)}
    assert checked <= forms


def test_cell_3s_values_are_the_tables_and_pass_their_own_checks():
    for variable, value in cell_3_fields().items():
        row = form_setting(variable)
        assert value == row.form_default, variable
        assert row.form_check(value) is None, variable


def test_a_config_setting_takes_its_default_from_the_dataclass():
    """A TrainingConfig/ModelConfig row never restates the default; the others state one."""
    for row in SETTINGS:
        if row.config is TrainingConfig:
            assert row.default is UNSET and row.library_default == \
                TrainingConfig.__dataclass_fields__[row.name].default
        elif row.config is ModelConfig:
            assert row.default is UNSET and row.meaning
        else:
            assert row.default is not UNSET and row.meaning, row


def test_the_data_settings_defaults_and_choices_are_load_datas():
    from utils.data import SPLITS, load_data

    parameters = inspect.signature(load_data).parameters
    assert setting("val_fraction").default == parameters["val_fraction"].default
    assert setting("val_split").default == parameters["split"].default
    assert setting("val_split").choices == SPLITS


def test_the_library_names_in_messages_are_table_settings():
    names = {row.name for row in SETTINGS}
    assert set(SETTING_FLAGS) - names == {"resume_from=None"}
    assert set(form.SETTING_FIELDS) <= names
    assert form.SETTING_FIELDS["min_learning_rate"] == "LEARNING_RATE"  # it sets it (a tenth)
    for name, field in form.SETTING_FIELDS.items():
        assert field in form.FORM_FIELDS, name


def test_the_learning_rate_decays_to_a_tenth_on_the_command_line_and_in_the_notebook():
    args = build_parser().parse_args(["train", "--lr", "1e-3"])
    assert build_training_config(args, None).min_learning_rate == default_min_learning_rate(1e-3)
    namespace = {**cell_3_fields(), "LEARNING_RATE": 1e-3}
    config = form.form_training_config(namespace, "cpu")
    assert config.min_learning_rate == default_min_learning_rate(1e-3) == pytest.approx(1e-4)
    defaults = TrainingConfig()  # the defaults keep the same ratio
    assert defaults.min_learning_rate == pytest.approx(
        default_min_learning_rate(defaults.learning_rate))


def test_cell_15s_training_config_is_every_training_field_of_the_form():
    fields = cell_3_fields()
    config = form.form_training_config({**fields, "WEIGHTS_ONLY_DTYPE": "bf16"}, "cpu")
    assert config == TrainingConfig(
        learning_rate=fields["LEARNING_RATE"], min_learning_rate=fields["LEARNING_RATE"] / 10,
        warmup_steps=fields["WARMUP_STEPS"], max_steps=fields["MAX_STEPS"],
        batch_size=fields["BATCH_SIZE"],
        gradient_accumulation_steps=fields["GRADIENT_ACCUMULATION_STEPS"],
        weight_decay=fields["WEIGHT_DECAY"], eval_interval=fields["EVAL_INTERVAL"],
        eval_batches=fields["EVAL_BATCHES"], checkpoint_interval=fields["CHECKPOINT_INTERVAL"],
        checkpoint_dir=fields["CHECKPOINT_DIR"], keep_last=fields["KEEP_LAST"],
        keep_best=fields["KEEP_BEST"], precision=fields["PRECISION"],
        compile=fields["COMPILE"], activation_checkpointing=fields["ACTIVATION_CHECKPOINTING"],
        log_to=fields["LOG_TO"], sample_every=fields["SAMPLE_EVERY"],
        sample_prompt=fields["PROMPT"], seed=fields["SEED"], device="cpu",
        keep_full=fields["KEEP_FULL"], check_storage=fields["CHECK_STORAGE"],
        weights_only_dtype="bf16")
    assert form.form_training_config(fields, "cpu").weights_only_dtype is None  # "fp32"


def test_the_precision_choices_are_configs_on_the_command_line_and_in_the_form():
    from utils.config import PRECISIONS

    action = next(a for a in train_parser()._actions if "--precision" in a.option_strings)
    assert tuple(action.choices) == PRECISIONS
    assert form.check_form({"PRECISION": "bf16"}, "PRECISION") is None
    with pytest.raises(form.FormValueError, match=re.escape(str(sorted(PRECISIONS)))):
        form.check_form({"PRECISION": "fp8"}, "PRECISION")


def test_file_in_the_way_finds_the_folder_or_a_folder_above_it_that_is_a_file(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert file_in_the_way(notes) == notes
    assert file_in_the_way(notes / "checkpoints" / "run") == notes
    assert file_in_the_way(tmp_path / "new" / "folder") is None
    assert file_in_the_way(tmp_path) is None


def test_the_notebook_names_the_settings_in_the_order_the_message_names_them():
    hint = form.notebook_hint(ValueError("batch_size=8, precision='fp16', context_length=64"))
    assert "check BATCH_SIZE / PRECISION / CONTEXT_LENGTH in" in hint
