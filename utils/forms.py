"""The form of Cell 3 and the errors shown against it.

The form values: `check_form` with the checks of utils/settings.py's table (`FORM_FIELDS`),
Cell 15's TrainingConfig (`form_training_config`), what INIT_FROM names (`init_source`,
`init_model_config`) and quick mode (`apply_quick_mode`). User errors: a user error stops
"Run all" at the cell where it happens and shows its guidance (never a traceback), so no
later cell runs on missing variables: `friendly_errors` stops the cell with the guidance
alone (`StopRun`), and `notebook_hint` is the one mapping from a library error to the cell
to run or the field to change. Heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from utils.errors import describe_os_error, user_error_types
from utils.reports import RULE
from utils.settings import SETTINGS, default_min_learning_rate, form_checks, form_names

SETTINGS_CELL = "Cell 3 (Settings)"


class FormValueError(ValueError):
    """A form field of Cell 3 holds a value the notebook cannot use."""

    def __init__(self, field: str, value: Any, expected: str) -> None:
        self.field, self.value, self.expected = field, value, expected
        super().__init__(f"{field} = {value!r} cannot be used: {expected}.")


class StopRun(Exception):
    """Stops the cell (and "Run all") with `guidance` as its whole output.

    IPython renders an exception through `_render_traceback_` when it has one, so the
    notebook shows the guidance alone, once, and Jupyter/Colab/papermill stop running the
    cells below, as after any error.
    """

    def __init__(self, guidance: str) -> None:
        super().__init__(guidance)
        self.guidance = guidance

    def _render_traceback_(self) -> list[str]:
        return self.guidance.splitlines()


# Each form field of Cell 3 and what it must hold (None: a valid value), from the table of
# settings (utils/settings.py), which defines each field once.
FORM_FIELDS: dict[str, Any] = form_checks()


def check_form(namespace: Mapping[str, Any], *names: str) -> None:
    """Raise `FormValueError` for the first of `names` whose value in `namespace` is unusable.

    Each cell checks the fields it uses first, so a wrong value stops the notebook at the
    cell that would have failed on it, naming the field instead of a library argument.
    """
    for name in names:
        if name not in namespace:
            raise FormValueError(name, None, f"it is not set: run {SETTINGS_CELL} first")
        problem = FORM_FIELDS[name](namespace[name])
        if problem:
            raise FormValueError(name, namespace[name], problem)


def form_training_config(namespace: Mapping[str, Any], device: Any) -> Any:
    """Cell 15: the TrainingConfig of Cell 3's form on `device`: each form field that sets a
    TrainingConfig setting (utils/settings.py), as the library takes it; min_learning_rate
    is a tenth of LEARNING_RATE (`default_min_learning_rate`), as on the command line."""
    from utils.config import TrainingConfig

    values = {row.name: (row.from_form or _as_given)(namespace[row.form]) for row in SETTINGS
              if row.form and row.config is TrainingConfig}
    values["min_learning_rate"] = default_min_learning_rate(values["learning_rate"])
    return TrainingConfig(**values, device=device)


def _as_given(value: Any) -> Any:
    return value


def init_source(init_from: str) -> str:
    """What INIT_FROM asks for: "scratch", a GPT-2 size ("small", "medium", ...), or a path.

    "Scratch" in any case is scratch; a GPT-2 name is one of `gpt2`, `gpt2-medium`, ...
    (or the preset names); anything else must be an existing folder or file, or a
    hub id `owner/name`: a stray word is refused here instead of being looked up online.
    """
    from utils.config import PRESET_ALIASES
    from utils.pretrained.huggingface import gpt2_size
    from utils.training.preparation import is_scratch

    value = init_from.strip()
    if is_scratch(value):
        return "scratch"
    size = gpt2_size(value)
    if size is not None:
        return size
    if Path(value).expanduser().exists():
        return str(Path(value).expanduser())
    if value.count("/") == 1 and not value.startswith((".", "/", "~")):
        return value  # a Hugging Face hub id, e.g. openai-community/gpt2
    names = sorted({"scratch", *(n for n in PRESET_ALIASES if n.startswith("gpt2"))})
    raise FormValueError("INIT_FROM", init_from,
                         f"it is neither one of {names}, nor an existing folder or file, nor a "
                         "Hugging Face id like owner/name")


def init_model_config(init_from: str, model_config: Any, preset: str) -> tuple[Any, str]:
    """(config, name) of the model that Cell 13 will build for INIT_FROM (Cell 12 checks
    its memory): `model_config` (named `preset`) from scratch, else the pretrained model's
    own shape (`pretrained_model_config`), which may be another GPT-2 size than
    MODEL_PRESET."""
    from utils.config import GPT2_CONFIGS
    from utils.pretrained.huggingface import pretrained_model_config

    source = init_source(init_from)
    if source == "scratch":
        return model_config, preset
    config = pretrained_model_config(source)
    if config is None:  # a hub id: its size is known (and checked) when it loads
        return model_config, f"{preset} ({source} is checked when Cell 13 loads it)"
    if source in GPT2_CONFIGS:
        return config, "gpt2" if source == "small" else f"gpt2-{source}"
    return config, source


def quick_mode_settings(steps: int) -> dict[str, Any]:
    """What QUICK_MODE sets: a tiny model and `steps` steps, so everything runs in minutes."""
    from utils.config import GPT2_CONFIGS

    return {"MODEL_PRESET": "tiny", "CONTEXT_LENGTH": 64, "MAX_STEPS": steps, "BATCH_SIZE": 4,
            "WARMUP_STEPS": 5, "EVAL_INTERVAL": 10, "EVAL_BATCHES": 2,
            "CHECKPOINT_INTERVAL": 10, "RESUME_EXTRA_STEPS": 5,
            "DROPOUT": GPT2_CONFIGS["tiny"].dropout_rate}


def apply_quick_mode(namespace: dict[str, Any]) -> str:
    """Put `quick_mode_settings` into `namespace` (the notebook's globals) and say which
    form values it replaced, so a changed setting is never replaced silently."""
    check_form(namespace, "QUICK_MODE_STEPS")
    settings = quick_mode_settings(namespace["QUICK_MODE_STEPS"])
    replaced = [f"{name} {namespace.get(name)!r} → {value!r}" for name, value in settings.items()
                if namespace.get(name) != value]
    namespace.update(settings)
    if not replaced:
        return "⚡ Quick mode: every setting already had its quick value."
    return ("⚡ Quick mode replaced these settings of Cell 3 (set QUICK_MODE off to use "
            "yours):\n   " + "\n   ".join(replaced))


def _notebook_hints() -> list[tuple[type[BaseException], str]]:
    """The one mapping from a library error to what to do in this notebook, by error type
    (most specific first). Library messages say what to call or which setting to change;
    these add the cell to run."""
    from utils import checkpoint_errors as errors
    from utils.config import ConfigError
    from utils.model.memory import InsufficientMemoryError
    from utils.tokenizer import TokenizerUnavailableError

    return [
        (errors.ModelNotInitializedError, "run Cell 13 (Initialize Model), then this cell again"),
        (errors.RunNotFoundError, f"set RUN_ID in {SETTINGS_CELL} to one of the runs named "
                                  "above, or leave it empty for this notebook's run, then run "
                                  "this cell again"),
        (errors.RunMismatchError, f"set DATA_PATH in {SETTINGS_CELL} to the data that run was "
                                  "trained on and run Cells 7-16 again, or leave RUN_ID empty "
                                  "to continue this notebook's own run"),
        (errors.NoCheckpointsError, "train first (Cell 32), or set CHECKPOINT_DIR in "
                                    f"{SETTINGS_CELL} to the folder that holds them"),
        (errors.ArchitectureMismatchError, "make MODEL_PRESET, CONTEXT_LENGTH and TOKENIZER in "
                                           f"{SETTINGS_CELL} match the checkpoint and run Cells "
                                           "4-13 again, or choose another CHECKPOINT_OVERRIDE"),
        (errors.CheckpointNotFoundError, f"check CHECKPOINT_OVERRIDE in {SETTINGS_CELL} (empty "
                                         "picks the best checkpoint; Cell 33 lists them)"),
        (errors.InsufficientStorageError, f"lower KEEP_LAST / KEEP_BEST, set WEIGHTS_ONLY_DTYPE"
                                          f" = \"bf16\" or choose another CHECKPOINT_DIR in "
                                          f"{SETTINGS_CELL} (CHECK_STORAGE = False trains "
                                          "anyway), then run Cells 5, 15, 16 and 32 again"),
        (errors.CheckpointWriteError, f"set CHECKPOINT_DIR in {SETTINGS_CELL} to a writable "
                                      "folder with free space, then run Cells 5 and 32 again"),
        (errors.CheckpointError, "choose another checkpoint with CHECKPOINT_OVERRIDE in "
                                 f"{SETTINGS_CELL} (Cell 33 lists them), then run Cell 34 again"),
        (InsufficientMemoryError, f"choose a smaller MODEL_PRESET or INIT_FROM in {SETTINGS_CELL}"
                                  ", or a runtime with more memory, then Run all again"),
        (TokenizerUnavailableError, f"set TOKENIZER = \"byte\" in {SETTINGS_CELL} (works "
                                    "offline), or connect to the internet once"),
        (ConfigError, f"change the setting it names in {SETTINGS_CELL}, then Run all again"),
    ]


# A library setting named in an error message -> the form field that sets it (from the
# table of settings: LEARNING_RATE also sets min_learning_rate, a tenth of it).
SETTING_FIELDS = form_names()


def notebook_hint(error: BaseException, fields: tuple[str, ...] = ()) -> str | None:
    """What to do in this notebook about `error`: the cell to run or the form field to
    change. `fields`: the form fields the failing cell passed to the library."""
    if isinstance(error, FormValueError):
        return (f"change {error.field} in {SETTINGS_CELL}, then run the notebook again "
                "(Runtime → Run all)")
    text = str(error)
    found = {setting: re.search(rf"\b{setting}\b", text) for setting in SETTING_FIELDS}
    in_order = sorted((match.start(), SETTING_FIELDS[setting])  # as the message names them
                      for setting, match in found.items() if match)
    named = list(dict.fromkeys([*(field for _, field in in_order), *fields]))
    for kind, hint in _notebook_hints():
        if isinstance(error, kind):
            if named and kind.__name__ == "ConfigError":
                break
            return hint
    if named:
        return (f"check {' / '.join(named)} in {SETTINGS_CELL}, then run the notebook again "
                "(Runtime → Run all)")
    return None


def format_error(error: BaseException, fields: tuple[str, ...] = ()) -> str:
    """The guidance for an error a user can cause: the library's message (a checkpoint
    error as its full report: causes and numbered fixes), then what to do in this notebook
    (`notebook_hint`)."""
    from utils.checkpoint_errors import CheckpointError

    if isinstance(error, CheckpointError):
        from utils.reports import error_report

        text = error_report(error).rstrip().removesuffix(RULE).rstrip()
    elif isinstance(error, OSError):  # a path or disk: which one, what went wrong, the fix
        text = f"❌ {describe_os_error(error)}"
    else:
        text = f"❌ {error}"
    hint = notebook_hint(error, fields)
    if hint:
        text += f"\n\n▶ In this notebook: {hint}."
    return f"{text}\n{RULE}\n"


@contextlib.contextmanager
def friendly_errors(*fields: str) -> Iterator[None]:
    """Run a cell's body; a user error stops the cell with its guidance alone (`StopRun`).

    `fields`: the form fields the body uses, named in the guidance when the library's
    message does not name a setting. Programming errors (anything not in
    `user_error_types()`) keep their traceback.
    """
    try:
        yield
    except StopRun:
        raise
    except user_error_types() as error:
        raise StopRun(format_error(error, fields) + "⏹ Stopped here: the cells below were not "
                      "run.") from None
