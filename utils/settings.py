"""Every setting of a training run, defined once: the table `SETTINGS`.

A row says what a setting is called in the library, its command-line flag
(`python -m utils train`), its form field in the notebook's Cell 3, its meaning, and how a
form value is checked. A `TrainingConfig` or `ModelConfig` setting takes its type, default
and meaning from the dataclass field (utils/config.py), so they are never restated here.
Derived from this table:

- the `train` command's arguments and `--help` (`utils/cli/train.py`), and the flag a
  library message's setting name becomes there (`SETTING_FLAGS`);
- the notebook's form checks (`utils.forms.FORM_FIELDS`, `check_form`), the form field a
  library message's setting name points to (`SETTING_FIELDS`), and Cell 15's
  TrainingConfig (`form_training_config`);
- Cell 3's form lines (value and widget) in `scripts/build_notebook.py`.

The rules shared by both front ends live here too, each once: the end of the learning-rate
decay when only the peak is given (`default_min_learning_rate`) and a checkpoint folder
with a file in its place (`file_in_the_way`). The valid values of a choice (`PRECISIONS`,
`WEIGHTS_ONLY_DTYPES`, `LOGGERS`) are utils/config.py's.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.config import (
    COMPILE_WORDS,
    GPT2_CONFIGS,
    LOGGERS,
    PRECISIONS,
    PRESET_ALIASES,
    WEIGHTS_ONLY_DTYPES,
    ModelConfig,
    TrainingConfig,
    setting_default,
    setting_help,
)

# A check of a form value: None when it can be used, else what it must be (one line; the
# notebook prints "FIELD = value cannot be used: <problem>.").
Check = Callable[[Any], "str | None"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # "not given in the row": the default comes from the dataclass


# --------------------------------------------------------------------------------------
# The form checks (the notebook's words for each rule)
# --------------------------------------------------------------------------------------

def whole_number(minimum: int) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            return f"it must be a whole number >= {minimum}"
        return None
    return check


def whole_number_or_none(minimum: int) -> Check:
    whole = whole_number(minimum)

    def check(value: Any) -> str | None:
        return None if value is None or whole(value) is None \
            else f"it must be a whole number >= {minimum}, or None"
    return check


def one_of(choices: Any) -> Check:
    """A value among `choices` (or what the callable `choices` returns, asked only when a
    value is checked: the tokenizer names need tiktoken)."""
    def check(value: Any) -> str | None:
        options = set(choices() if callable(choices) else choices)
        return None if value in options else f"choose one of {sorted(options)}"
    return check


def _finite_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) \
        and math.isfinite(value)


def positive_number(value: Any) -> str | None:
    if not _finite_number(value) or value <= 0:
        return "it must be a positive number, such as 6e-4"
    return None


def non_negative_number(value: Any) -> str | None:
    return None if _finite_number(value) and value >= 0 else \
        "it must be a number >= 0, such as 0.1 (0: none)"


def dropout_rate(value: Any) -> str | None:
    return None if _finite_number(value) and 0 <= value < 1 else \
        "it must be a number from 0 up to (not including) 1, such as 0.1"


def fraction(value: Any) -> str | None:
    return None if _finite_number(value) and 0 < value < 1 else \
        "it must be a number between 0 and 1, such as 0.1"


def text(value: Any) -> str | None:
    return None if isinstance(value, str) else "it must be text (a string)"


def switch(value: Any) -> str | None:
    return None if isinstance(value, bool) else "it must be True or False"


def compile_choice(value: Any) -> str | None:
    if isinstance(value, bool) or (isinstance(value, str) and value.lower() in COMPILE_WORDS):
        return None
    return 'choose "auto", "on" or "off"'


def logger_names(value: Any) -> str | None:
    if not isinstance(value, str):
        return "it must be text (a string)"
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    if any(name not in LOGGERS for name in names):
        return f"give names from {', '.join(LOGGERS)}, separated by commas, or nothing"
    return None


def preset_names() -> set[str]:
    return set(GPT2_CONFIGS) | set(PRESET_ALIASES)


def tokenizer_names() -> set[str]:
    import tiktoken

    from utils.tokenizer import BYTE_TOKENIZER_NAMES, TIKTOKEN_ALIASES

    return {*BYTE_TOKENIZER_NAMES, *TIKTOKEN_ALIASES, *tiktoken.list_encoding_names()}


def _fp32_is_none(value: str) -> str | None:
    """WEIGHTS_ONLY_DTYPE's "fp32" is the library's None: weights-only copies as trained."""
    return None if value == "fp32" else value


# --------------------------------------------------------------------------------------
# The rules both front ends apply
# --------------------------------------------------------------------------------------

def default_min_learning_rate(learning_rate: float) -> float:
    """The end of the cosine decay when only the peak learning rate is given: a tenth of it
    (nanoGPT's choice; TrainingConfig's defaults, 6e-4 and 6e-5, keep the same ratio)."""
    return learning_rate / 10


def file_in_the_way(folder: str | Path) -> Path | None:
    """The file that stands where the checkpoint folder `folder` is, or where the nearest
    existing folder above it should be; None when there is none. Checkpoints cannot be
    written under a file, and a file there is never replaced by them."""
    path = Path(folder)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------

_TRAINING_FIELDS = {item.name for item in dataclasses.fields(TrainingConfig)}
_MODEL_FIELDS = {item.name for item in dataclasses.fields(ModelConfig)}


@dataclass(frozen=True)
class Setting:
    """One setting: what each front end calls it, and what it means.

    `name` is the library's name: a `TrainingConfig` / `ModelConfig` field (whose type,
    default and meaning come from the dataclass), or an argument of `load_data` / the
    Trainer; None for a field the notebook alone has (QUICK_MODE, RUN_ID, ...).
    """

    name: str | None
    flag: str | None = None  # `python -m utils train`'s option, None: not on the command line
    form: str | None = None  # the notebook's Cell 3 variable, None: not in the notebook
    meaning: str = ""  # the one-line meaning; empty: the TrainingConfig field's
    default: Any = UNSET  # a setting outside the dataclasses: its default (command line, form)
    group: str | None = "training"  # the --help section; None: the top-level options
    note: str = ""  # added after the default in --help
    exclusive: str | None = None  # flags of one name here exclude each other
    choices: tuple[Any, ...] | None = None  # the valid values (command line and form)
    none_words: tuple[str, ...] = ()  # command-line words for the setting's None
    argument: Mapping[str, Any] = field(default_factory=dict)  # more argparse keywords
    flag_negates: bool = False  # the flag (a switch) turns the setting off
    form_value: Any = UNSET  # Cell 3's value where it is not the default
    form_choices: tuple[Any, ...] | None = None  # Cell 3's drop-down, where not `choices`
    check: Check | None = None  # a form value's problem; default: one of the choices
    from_form: Callable[[Any], Any] | None = None  # a form value as the library's value
    derived_from: str | None = None  # a setting whose value gives this one's default
    flag_in_messages: bool | None = None  # messages get the flag; None: for config fields
    form_in_messages: bool = True  # messages naming it point to the form field

    @property
    def config(self) -> type | None:
        """TrainingConfig or ModelConfig when the setting is one of their fields."""
        if self.name in _TRAINING_FIELDS:
            return TrainingConfig
        if self.name in _MODEL_FIELDS:
            return ModelConfig
        return None

    @property
    def library_default(self) -> Any:
        """The default: the dataclass field's, else the row's own."""
        if self.config is TrainingConfig:
            return setting_default(self.name)
        if self.config is ModelConfig:
            return ModelConfig.__dataclass_fields__[self.name].default
        return self.default

    @property
    def help(self) -> str:
        """The one-line meaning: the row's, else the TrainingConfig field's."""
        return self.meaning or (setting_help(self.name) if self.config is TrainingConfig else "")

    @property
    def value_type(self) -> type:
        """int, float, str or bool: the dataclass annotation without its `| None`, else the
        type of the row's default."""
        if self.config is not None:
            hint = typing.get_type_hints(self.config)[self.name]
            return next(arg for arg in typing.get_args(hint) or (hint,) if arg is not type(None))
        return type(self.default)

    @property
    def form_default(self) -> Any:
        """Cell 3's value: the row's form value, else the default."""
        return self.library_default if self.form_value is UNSET else self.form_value

    @property
    def form_check(self) -> Check:
        if self.check is not None:
            return self.check
        return one_of(self.form_choices or self.choices)

    @property
    def flag_named_in_messages(self) -> bool:
        if self.flag is None or self.flag_negates:
            return False
        return self.config is not None if self.flag_in_messages is None else self.flag_in_messages


_NONE_WORDS = ("all", "none")  # --keep-last all: keep every one

SETTINGS: tuple[Setting, ...] = (
    # ---- model
    Setting("preset", "--preset", "MODEL_PRESET", group="model",
            meaning="tiny | small (gpt2) | medium | large | xl", note="default: tiny",
            default=None, form_value="small",
            form_choices=("tiny", "small", "medium", "large", "xl"), check=one_of(preset_names)),
    Setting("number_of_layers", "--layers", group="model", meaning="number of transformer blocks"),
    Setting("number_of_heads", "--heads", group="model", meaning="attention heads"),
    Setting("embedding_dimension", "--dim", group="model", meaning="embedding dimension"),
    Setting("context_length", "--context", "CONTEXT_LENGTH", group="model",
            meaning="context length in tokens", form_value=256, check=whole_number(2)),
    Setting("dropout_rate", "--dropout", "DROPOUT", group="model", meaning="dropout rate",
            check=dropout_rate),
    Setting("init_from", "--init-from", "INIT_FROM", group="model",
            meaning="start from GPT-2 weights: gpt2 | gpt2-medium | ... | a local "
                    "save_pretrained folder or .safetensors/.bin file",
            note="default: random initial weights", default=None, form_value="scratch",
            check=text),
    # ---- data (load_data's arguments; `default` is load_data's, a test compares them)
    Setting("data", "--data", "DATA_PATH", group="data",
            meaning="a .txt file or folder of them, a nanoGPT folder (train.bin/val.bin), "
                    "llm.c .bin shards (a file or folder), hf:NAME[?config=&split=&column=] "
                    "or a save_to_disk folder (default: built-in corpus); see docs/08-data.md",
            default=None, form_value="", check=text, form_in_messages=False),
    Setting("tokenizer", "--tokenizer", "TOKENIZER", group="data",
            meaning="gpt2 (default) | byte; token files bring their own", default=None,
            form_value="gpt2", form_choices=("gpt2", "byte"), check=one_of(tokenizer_names)),
    Setting("cache_dir", "--cache-dir", "CACHE_DIR", group="data",
            meaning="folder for the token cache of prepared text (default: the local disk's "
                    "user cache, ~/.cache/gpt2-training/data; keep it off Google Drive)",
            default=None, form_value="", check=text, flag_in_messages=True),
    Setting("val_fraction", "--val-fraction", "VAL_FRACTION", group="data",
            meaning="share of the tokens held out for validation (inputs with their own "
                    "validation split keep it)", default=0.1, check=fraction),
    Setting("val_split", "--val-split", "VAL_SPLIT", group="data",
            meaning="validation: the end of the corpus (default), blocks or whole documents "
                    "spread over it (inputs with their own val keep it)",
            default="end", choices=("end", "block", "document"), form_in_messages=False),
    # ---- training (TrainingConfig)
    Setting("max_steps", "--max-steps", "MAX_STEPS", exclusive="length",
            check=whole_number(1)),
    Setting("epochs", "--epochs", exclusive="length",
            note="default: none, --max-steps bounds the run"),
    Setting("batch_size", "--batch-size", "BATCH_SIZE", check=whole_number(1)),
    Setting("gradient_accumulation_steps", "--grad-accum", "GRADIENT_ACCUMULATION_STEPS",
            check=whole_number(1)),
    Setting("learning_rate", "--lr", "LEARNING_RATE", check=positive_number),
    Setting("min_learning_rate", "--min-lr", note="with --lr: lr/10",
            derived_from="learning_rate"),  # default_min_learning_rate
    Setting("warmup_steps", "--warmup-steps", "WARMUP_STEPS", check=whole_number(0)),
    Setting("weight_decay", "--weight-decay", "WEIGHT_DECAY", check=non_negative_number),
    Setting("grad_clip", "--grad-clip", none_words=("none",)),
    Setting("eval_interval", "--eval-interval", "EVAL_INTERVAL", check=whole_number(1)),
    Setting("eval_batches", "--eval-batches", "EVAL_BATCHES", check=whole_number(1)),
    Setting("precision", "--precision", "PRECISION", choices=PRECISIONS),
    Setting("compile", "--compile", "COMPILE", choices=("auto", "on", "off"),
            argument={"nargs": "?", "const": "on"},  # `--compile` alone: on
            check=compile_choice),
    Setting("activation_checkpointing", "--activation-checkpointing",
            "ACTIVATION_CHECKPOINTING", check=switch),
    Setting("log_interval", "--log-interval"),
    Setting("seed", "--seed", "SEED", check=whole_number(0), form_in_messages=False),
    Setting("device", "--device"),  # the notebook's is default_device() (Cell 4)
    # ---- checkpoints
    Setting("checkpoint_interval", "--checkpoint-interval", "CHECKPOINT_INTERVAL",
            group="checkpoints", check=whole_number(1)),
    Setting("checkpoint_dir", "--checkpoint-dir", "CHECKPOINT_DIR", group="checkpoints",
            form_value="", check=text),  # empty: Drive in Colab (Cell 5); file_in_the_way
    Setting("keep_last", "--keep-last", "KEEP_LAST", group="checkpoints",
            note="all or None: keep every one", none_words=_NONE_WORDS,
            check=whole_number_or_none(0)),
    Setting("keep_best", "--keep-best", "KEEP_BEST", group="checkpoints",
            note="all or None: keep every one", none_words=_NONE_WORDS,
            check=whole_number_or_none(0)),
    Setting("keep_full", "--keep-full", "KEEP_FULL", group="checkpoints",
            note="all or None: keep every one", none_words=_NONE_WORDS,
            check=whole_number(1)),
    Setting("weights_only_dtype", "--weights-only-dtype", "WEIGHTS_ONLY_DTYPE",
            group="checkpoints", choices=WEIGHTS_ONLY_DTYPES, form_value="fp32",
            form_choices=("fp32", *WEIGHTS_ONLY_DTYPES), from_form=_fp32_is_none),
    Setting("background_checkpointing", "--sync-checkpoints", group="checkpoints",
            flag_negates=True, meaning="write checkpoints on the training thread (default: "
                                       "in the background)"),
    Setting("check_storage", "--ignore-storage-check", "CHECK_STORAGE", group="checkpoints",
            flag_negates=True, check=switch,
            meaning="train even when the checkpoints would not fit in the free space of "
                    "--checkpoint-dir (default: refuse before the first step)"),
    Setting("resume", "--resume", group="checkpoints", exclusive="start", default="auto",
            argument={"nargs": "?", "const": "latest", "metavar": "auto|latest|PATH"},
            meaning="auto (default): continue the newest run with these settings if "
                    "unfinished, else start a new one; latest: the newest checkpoint, its "
                    "settings unless flags say otherwise; or PATH"),
    Setting("new_run", "--new-run", group="checkpoints", exclusive="start", default=False,
            meaning="always start a new run (other runs' files stay untouched)"),
    # ---- logging
    Setting("log_to", "--log-to", "LOG_TO", group="logging", form_value="tensorboard,csv",
            check=logger_names),  # the notebook is the demo: curves in TensorBoard and a CSV
    Setting("log_dir", "--log-dir", group="logging"),
    Setting("sample_every", "--sample-every", "SAMPLE_EVERY", group="logging", form_value=2,
            check=whole_number(0)),
    Setting("sample_prompt", "--sample-prompt", "PROMPT", group="logging",
            form_value="The meaning of life is", check=text),  # also Cell 38's prompt
    Setting("no_progress", "--no-progress", group=None, default=False,
            meaning="no progress bar: print a line per log interval and per evaluation "
                    "instead (also when the output is not a terminal)"),
    # ---- the notebook's own fields
    Setting(None, form="QUICK_MODE", default=False, check=switch,
            meaning="a tiny model and a few steps, so everything runs in minutes (Cell 4)"),
    Setting(None, form="QUICK_MODE_STEPS", default=30, check=whole_number(1),
            meaning="the steps of quick mode"),
    Setting(None, form="CHECKPOINT_OVERRIDE", default="", check=text,
            meaning="a checkpoint file for Cell 34 to load instead of the best one"),
    Setting(None, form="RUN_ID", default="", check=text,
            meaning="the run Cells 33-37 and 40 use (empty: this notebook's)"),
    Setting(None, form="RESUME_EXTRA_STEPS", default=200, check=whole_number(1),
            meaning="Cell 37 trains the run on to step MAX_STEPS + RESUME_EXTRA_STEPS"),
    Setting(None, form="OUTPUT_DIR", default="outputs", check=text,
            meaning="where the loss curve and the exported models go"),
    Setting(None, form="EXPORT_FROM", default="", check=text,
            meaning="what Cells 41-42 export: empty, \"model\" or a checkpoint file"),
)


def setting(name: str) -> Setting:
    """The row of the library setting `name`."""
    for row in SETTINGS:
        if row.name == name:
            return row
    raise KeyError(f"no setting {name!r} in utils.settings.SETTINGS")


def form_setting(variable: str) -> Setting:
    """The row of the notebook's form field `variable` (e.g. "LEARNING_RATE")."""
    for row in SETTINGS:
        if row.form == variable:
            return row
    raise KeyError(f"no form field {variable!r} in utils.settings.SETTINGS")


def flags_of(config: type) -> dict[str, str]:
    """{field: flag} of the `config` (TrainingConfig or ModelConfig) fields that a flag sets."""
    return {row.name: row.flag for row in SETTINGS
            if row.config is config and row.flag and not row.flag_negates}


def flag_names() -> dict[str, str]:
    """{library name: flag} for the settings whose name library messages may use, which the
    command line writes as the flag instead."""
    return {row.name: row.flag for row in SETTINGS if row.flag_named_in_messages}


def form_checks() -> dict[str, Check]:
    """{form field: its check} for every field of Cell 3."""
    return {row.form: row.form_check for row in SETTINGS if row.form}


def form_names() -> dict[str, str]:
    """{library name: form field} for the settings whose name library messages may use:
    the notebook points to the field (a setting derived from another, to that one's)."""
    names = {}
    for row in SETTINGS:
        source = setting(row.derived_from) if row.derived_from else row
        if row.name and source.form and row.form_in_messages:
            names[row.name] = source.form
    return names
