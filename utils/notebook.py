"""Small helpers that the cells of `training.ipynb` call, so each cell stays a few lines.

Environment report, Colab detection and Google Drive (mount point from
$GPT2_DRIVE_MOUNT_POINT, so tests mount a stand-in), the checkpoint folder, the form values
of Cell 3 (`check_form` with the checks of utils/settings.py's table, `form_training_config`,
quick mode), user errors (`friendly_errors` stops the cell with the
guidance alone, never a traceback, and `notebook_hint` is the one mapping from a library
error to the cell to run or the field to change), and Cell 35's session summary.
Heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from utils.errors import describe_os_error, user_error_types
from utils.fileio import check_writable_folder
from utils.settings import (
    SETTINGS,
    default_min_learning_rate,
    file_in_the_way,
    form_checks,
    form_names,
)
from utils.training.engine.loggers import in_notebook, log_folder

DRIVE_MOUNT_POINT = "/content/drive"  # Colab's; GPT2_DRIVE_MOUNT_POINT overrides it
DRIVE_MOUNT_ENV = "GPT2_DRIVE_MOUNT_POINT"
DRIVE_PROJECT_NAME = "gpt2-training"  # the project folder inside MyDrive
RULE = "=" * 71

# Import names of what requirements.txt installs; when all are importable, nothing is installed.
REQUIRED_MODULES = ("torch", "numpy", "tiktoken", "safetensors", "transformers", "pandas",
                    "matplotlib", "tqdm", "ipywidgets", "tensorboard")


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    if "google.colab" in sys.modules:
        return True
    try:  # find_spec of a submodule imports its parent, which raises when `google` is absent
        return importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:
        return False


def missing_modules(modules: tuple[str, ...] = REQUIRED_MODULES) -> list[str]:
    """The modules in `modules` that cannot be imported here."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def install_requirements(requirements: str | Path = "requirements.txt", force: bool = False) -> bool:
    """`pip install -r requirements.txt` when something is missing (or `force`).

    Returns True when pip ran. Colab brings its own torch, which requirements.txt does not
    pin, so this only adds the few packages Colab lacks.
    """
    missing = missing_modules()
    if not missing and not force:
        print("✅ All requirements already installed; nothing to do.")
        return False
    print(f"📦 Installing {requirements} (missing: {', '.join(missing) or 'none, forced'}) ...")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(requirements)],
                   check=True)
    return True


def environment_report() -> str:
    """Python, torch, device (GPU name and memory), CPU cores and RAM, as printable text."""
    import torch

    lines = [RULE, "ENVIRONMENT", RULE, ""]
    lines.append(f"🐍 Python {platform.python_version()} on {platform.system()} "
                 f"({platform.machine()})")
    lines.append(f"🔥 PyTorch {torch.__version__}")
    lines.append(f"☁️  Colab: {'yes' if in_colab() else 'no'}")
    lines.append(f"🧮 CPU cores: {os.cpu_count()}")
    ram_gb = _total_ram_gb()
    if ram_gb is not None:
        lines.append(f"💾 RAM: {ram_gb:.1f} GB")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            lines.append(f"🎮 GPU {index}: {props.name}, {props.total_memory / 1e9:.1f} GB")
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        lines.append("🍎 Apple GPU (MPS) available")
    else:
        lines.append("⚠️  No GPU: training runs on the CPU (fine for QUICK_MODE and tiny models;")
        lines.append("   in Colab choose Runtime → Change runtime type → GPU).")
    device = default_device()
    lines.append(f"📍 Device used: {device}")
    lines.append(f"🔢 Precision (PRECISION = \"auto\"): {auto_precision(device)}")
    return "\n".join(lines)


def auto_precision(device: str) -> str:
    """What training will choose with precision "auto" on `device`, and why: the Trainer's
    own choice (a T4 reports bf16 as supported, emulated: it trains in fp16)."""
    from utils.training.engine.precision import choose_precision_for

    choice = choose_precision_for(device, "auto")
    return f"{choice.name} ({choice.reason})"


def default_device() -> str:
    """'cuda' if available, else 'mps', else 'cpu' (the Trainer's and the loaders' order)."""
    from utils.training.engine.distributed import default_device as best_device

    return best_device().type


def _total_ram_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None


def drive_mount_point() -> Path:
    """Where Google Drive is mounted: /content/drive in Colab, or $GPT2_DRIVE_MOUNT_POINT
    (tests mount a stand-in Drive elsewhere; Cell 1 reads the same variable)."""
    return Path(os.environ.get(DRIVE_MOUNT_ENV) or DRIVE_MOUNT_POINT)


def drive_project_dir() -> Path:
    """The project's folder on Drive: `<mount>/MyDrive/gpt2-training`."""
    return drive_mount_point() / "MyDrive" / DRIVE_PROJECT_NAME


def mount_drive(mount_point: str | Path | None = None) -> bool:
    """Mount Google Drive in Colab (asks for permission once); False outside Colab."""
    if not in_colab():
        return False
    mount_point = Path(mount_point or drive_mount_point())
    if not (mount_point / "MyDrive").is_dir():
        from google.colab import drive

        drive.mount(str(mount_point))
    return True


def choose_checkpoint_dir(requested: str | Path | None = None, use_drive: bool | None = None
                          ) -> Path:
    """The checkpoint folder: on Google Drive in Colab (it survives a runtime crash),
    `./checkpoints` elsewhere. An explicit `requested` path wins; a relative one is put
    under the Drive project folder in Colab. The folder is created.
    """
    use_drive = in_colab() if use_drive is None else use_drive
    if use_drive and mount_drive():
        base = drive_project_dir()
        path = Path(requested) if requested else base / "checkpoints"
        if not path.is_absolute():
            path = base / path
    else:
        path = Path(requested or "checkpoints")
    path = path.expanduser()
    try:
        blocking = file_in_the_way(path)
        if blocking is not None:
            raise FormValueError("CHECKPOINT_DIR", str(requested or path),
                                 f"{blocking} is a file, not a folder; give a folder (it is "
                                 "created if missing), or leave it empty for the default")
        path.mkdir(parents=True, exist_ok=True)
        check_writable_folder(path)  # a read-only folder: checkpoints could not be written
    except OSError as error:  # a name too long, a read-only disk, a lost mount, ...
        raise FormValueError("CHECKPOINT_DIR", str(requested or path),
                             f"checkpoints cannot be written there: "
                             f"{describe_os_error(error)}") from None
    return path


# --------------------------------------------------------------------------------------
# Form values and errors: a user error stops "Run all" at the cell where it happens and
# shows its guidance (never a traceback), so no later cell runs on missing variables.
# --------------------------------------------------------------------------------------

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
    from utils.pretrained.huggingface import HUB_REPOS

    value = init_from.strip()
    if value.lower() in ("", "scratch"):
        return "scratch"
    preset = PRESET_ALIASES.get(value.lower(), value.lower())
    if preset in HUB_REPOS and not Path(value).exists():
        return preset
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
    from utils.training.preparation import pretrained_model_config

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
    from utils.pretrained.memory import InsufficientMemoryError
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


def _describe(value: Any) -> str:
    """One line about a session variable."""
    if value is None:
        return "None"
    if hasattr(value, "parameters") and hasattr(value, "training"):  # nn.Module
        from utils.model import count_parameters

        count = count_parameters(value)
        first = next(value.parameters(), None)
        device = first.device if first is not None else "no parameters"
        mode = "train" if value.training else "eval"
        return f"{type(value).__name__}, {count:,} parameters, on {device}, {mode} mode"
    if hasattr(value, "shape") and hasattr(value, "columns"):  # DataFrame
        return f"DataFrame, {value.shape[0]} rows × {value.shape[1]} columns"
    if hasattr(value, "global_step") and hasattr(value, "fit"):  # Trainer
        return f"{type(value).__name__} at step {value.global_step}"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, Mapping):
        return f"dict with {len(value)} keys"
    text = str(value)
    if len(text) <= 80:
        return text
    # a long path: keep its end, where the file name is
    return "..." + text[-77:] if isinstance(value, (str, Path)) else text[:77] + "..."


# What Cell 35 takes out of Cell 33's `results`, in this order: {variable: results key}.
# The best checkpoint is `best_checkpoint_path`: `checkpoint_path` stays the file that
# Cell 34 loaded (maybe CHECKPOINT_OVERRIDE), which Cell 35 must not replace.
RESULT_VARIABLES = {
    "best_checkpoint_path": "checkpoint_path",
    "latest_checkpoint_path": "latest_checkpoint_path",
    "metrics": "metrics",
    "best_val_loss": "best_val_loss",
    "global_step": "global_step",
}

# Variables a session builds, with the cell that creates each (for the "missing" hint).
SESSION_VARIABLES = {
    "tokenizer": 6,
    "model": 13,
    "trainer": 16,
    "results": 33,
    "checkpoint_path": 34,
    **{name: 35 for name in RESULT_VARIABLES},
}


RUNS_HEADING = f"Runs in this folder (most recent first; RUN_ID in {SETTINGS_CELL} picks one):"


def show_table(frame: Any, text: str) -> None:
    """A pandas table rendered as one in a notebook; `text` (the same rows) elsewhere."""
    if in_notebook():
        import pandas as pd
        from IPython.display import display

        # whole file names, and every column in the plain-text rendering too (what a
        # text-only front end or a saved notebook's text shows)
        with pd.option_context("display.max_colwidth", None, "display.max_columns", None,
                               "display.width", 1000):
            display(frame)
    else:
        print(text)


def show_recovery_report(results: Mapping[str, Any]) -> None:
    """Cell 33's output: the runs as a table, then the chosen run (`recovery_report`)."""
    print(RUNS_HEADING)
    show_table(results["runs"], results["runs"].to_string(index=False))
    print("\n" + run_report(results))


def recovery_report(results: Mapping[str, Any]) -> str:
    """Cell 33's text: the runs in the folder, then the chosen run's checkpoints and how far
    its metrics reach (steps logged after the last checkpoint are retrained on resume)."""
    return "\n".join([RUNS_HEADING, results["runs"].to_string(index=False), "",
                      run_report(results)])


def run_report(results: Mapping[str, Any]) -> str:
    """The chosen run of Cell 33: evaluations, best and latest checkpoints."""
    step, logged = results["global_step"], results["last_logged_step"]
    best = results["best_val_loss"]
    lines = [f"Run {results['run_id']}: {len(results['metrics'])} evaluations, logged up to "
             f"step {logged}; latest checkpoint at step {step}",
             f"Best checkpoint:   {results['checkpoint_path']}"
             + (f" (val loss {best:.4f}; {_resume_text(results, 'checkpoint_path')})"
                if best is not None else ""),
             f"Latest checkpoint: {results['latest_checkpoint_path']} "
             f"({_resume_text(results, 'latest_checkpoint_path')})"]
    if logged > step:
        lines.append(f"Steps {step + 1}-{logged} were logged after the last checkpoint: "
                     "resuming retrains them from the checkpoint (Cell 32).")
    return "\n".join(lines)


def _resume_text(results: Mapping[str, Any], key: str) -> str:
    """'resumable' or 'weights only' for the checkpoint `results[key]` names."""
    from utils.reports import resume_text

    info = next((info for info in results.get("checkpoints") or []
                 if str(info.path) == str(results[key])), None)
    return resume_text(info) if info is not None else "resumable"


def session_variables(results: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """Cell 35's variables (`RESULT_VARIABLES`' order) from Cell 33's `results`; None for
    what results lacks, and all None before Cell 33 ran."""
    results = results if isinstance(results, Mapping) else {}
    return tuple(results.get(key) for key in RESULT_VARIABLES.values())


def extract_session_variables(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """{variable: value} from the namespace's `results` (only what results has)."""
    results = namespace.get("results")
    if not isinstance(results, Mapping):
        return {}
    return {name: results[key] for name, key in RESULT_VARIABLES.items() if key in results}


def session_summary(namespace: Mapping[str, Any]) -> str:
    """A table of the session's variables, set or not; never empty.

    The reference design's Cell 35 printed only inside `if` branches, so a session where
    everything already existed printed nothing. This always prints every variable and its
    state.
    """
    lines = [RULE, "SESSION VARIABLES", RULE, ""]
    for name, cell in SESSION_VARIABLES.items():
        if name in namespace and namespace[name] is not None:
            lines.append(f"✅ {name:<23} {_describe(namespace[name])}")
        else:
            lines.append(f"⚪ {name:<23} not set (run Cell {cell})")
    results = namespace.get("results")
    if not isinstance(results, Mapping):
        lines += ["", "💡 No recovered results: run Cell 33 (Checkpoint Recovery), then "
                  "Cell 35 again."]
    lines.append(RULE)
    return "\n".join(lines)


# The notebook's side of the load report's NEXT STEPS (the report names no cells).
NEXT_CELLS = ("▶ In this notebook: Cell 38 generates text, Cell 39 measures validation "
              "perplexity, Cell 37 resumes training from the latest checkpoint.")


def _load_into_model(model: Any, path: Path, method: str, infos: list[Any] | None) -> dict:
    """Load `path` into `model` (strict, all or nothing), print the load reports."""
    from utils.reports import full_load_report
    from utils.training.engine.checkpoint import SIDECAR_KEYS
    from utils.training.engine.loading import load_model_weights

    load_report = load_model_weights(model, path)  # eval mode, CUDA > MPS > CPU
    # The file's scalars (what a sidecar holds), from the load itself: no second read, and
    # no optimizer state kept alive in the notebook's `checkpoint`.
    checkpoint = {key: load_report.metadata.get(key) for key in SIDECAR_KEYS}
    if infos is not None and in_notebook():  # the checkpoints as a rendered table
        from utils.reports import RULE as REPORT_RULE
        from utils.reports import checkpoints_table

        print(f"{REPORT_RULE}\nAVAILABLE CHECKPOINTS\n{REPORT_RULE}")
        show_table(checkpoints_table(infos, path), "")
        infos = None  # the text report goes on with the selection
    print(full_load_report(path, method, model, checkpoint, infos, load_report))
    print(NEXT_CELLS)
    return checkpoint


def load_weights_cell(namespace: Mapping[str, Any], checkpoint_dir: str | Path,
                      override: str | None = None, use_widget: bool = False
                      ) -> tuple[Path | None, dict | None]:
    """Cell 34: choose a checkpoint, load it into the session's `model`, print the reports.

    Order of choice (`select_checkpoint`): `override`, then Cell 33's
    `results["checkpoint_path"]`, then the best by val_loss. Raises the `CheckpointError`
    of the documented scenarios (no model, no checkpoints, architecture mismatch, ...), which
    `friendly_errors` prints as guidance. With `use_widget`, shows the ipywidgets picker
    (or, where widgets cannot render, the table) and loads when Load is clicked.
    """
    from utils.checkpoint_errors import ModelNotInitializedError
    from utils.training.engine.recovery import check_run, list_checkpoints, select_checkpoint

    model = namespace.get("model")
    if model is None:
        raise ModelNotInitializedError(
            "Model instance not found: there is no 'model' to load weights into.")
    run = notebook_run(namespace)  # the run Cell 33 recovered
    infos = list_checkpoints(checkpoint_dir, run=run)
    if not any(info.valid for info in infos):
        check_run(checkpoint_dir, run)  # a RUN_ID that names no run says so, with the runs
    path, method = select_checkpoint(results=namespace.get("results"),
                                     checkpoint_dir=checkpoint_dir, override=override or None,
                                     infos=infos)
    if use_widget:
        from utils.widgets import checkpoint_picker

        picker = checkpoint_picker(checkpoint_dir, selected=path, infos=infos,
                                   on_load=lambda chosen: _load_into_model(
                                       model, Path(chosen), "widget picker", infos),
                                   describe_error=format_error)
        if picker is not None:
            from IPython.display import display

            display(picker.widget)
        return None, None
    return path, _load_into_model(model, path, method, infos)


# --------------------------------------------------------------------------------------
# TensorBoard (Cell 17) and what the export cells export (Cells 41-42)
# --------------------------------------------------------------------------------------

def tensorboard_inline() -> bool:
    """Whether a notebook page shows this kernel's output: Colab's own kernel (its shell is
    google.colab's), or a kernel that a Jupyter server started for an open notebook
    ($JPY_SESSION_NAME). papermill and nbconvert run kernels that no page shows: a
    TensorBoard server started there would outlive them."""
    if not in_notebook():
        return False
    from IPython import get_ipython

    colab_shell = type(get_ipython()).__module__.startswith("google.colab")
    return colab_shell or bool(os.environ.get("JPY_SESSION_NAME"))


def show_tensorboard(training_config: Any, shell: Any = None, inline: bool | None = None
                     ) -> Path | None:
    """Cell 17: TensorBoard over every run's logs (`%load_ext tensorboard`, `%tensorboard
    --logdir ...`) where a notebook page can show it, else the command to run. Returns the
    log folder (None when LOG_TO has no tensorboard)."""
    if "tensorboard" not in training_config.loggers:
        print("📈 TensorBoard is off: add \"tensorboard\" to LOG_TO in "
              f"{SETTINGS_CELL} to log the curves for it.")
        return None
    folder = log_folder(training_config)
    folder.mkdir(parents=True, exist_ok=True)
    inline = tensorboard_inline() if inline is None else inline
    if inline:
        if shell is None:
            from IPython import get_ipython

            shell = get_ipython()
        shell.run_line_magic("load_ext", "tensorboard")
        shell.run_line_magic("tensorboard", f"--logdir {shlex.quote(str(folder))}")
        return folder
    print(f"📈 TensorBoard logs: {folder} (a folder per run). Not shown here (no notebook page "
          f"shows this kernel); to see them run:\n   tensorboard --logdir {shlex.quote(str(folder))}"
          "\n   or, in Jupyter or Colab: %load_ext tensorboard, then %tensorboard --logdir "
          f"{shlex.quote(str(folder))}")
    return folder


class ExportSource(NamedTuple):
    """What an export cell exports: the model, a sentence saying which, the file (if any)."""

    model: Any
    description: str
    checkpoint_path: Path | None


def model_to_export(namespace: Mapping[str, Any], export_from: str = "") -> ExportSource:
    """Cells 41-42: the model to export, and which it is. `export_from` empty: the checkpoint
    Cell 34 loaded (`checkpoint_path`), read again from its file, so training on in Cell 37
    does not change what is exported; "model": the session's `model` as it is now; otherwise
    a checkpoint file. Without a checkpoint from Cell 34, the model in memory, said so."""
    choice = export_from.strip()
    model = namespace.get("model")
    if choice.lower() == "model" or (not choice and not namespace.get("checkpoint_path")):
        if model is None:
            from utils.checkpoint_errors import ModelNotInitializedError

            raise ModelNotInitializedError("there is no 'model' to export")
        why = ("EXPORT_FROM is \"model\"" if choice else
               "Cell 34 loaded no checkpoint; set EXPORT_FROM to a checkpoint file to export one")
        trainer = namespace.get("trainer")
        step = f" at step {trainer.global_step}" if getattr(trainer, "global_step", None) else ""
        return ExportSource(model, f"the model in memory{step} ({why})", None)
    from utils.training.engine.loading import load_pretrained_model

    path = Path(choice or namespace["checkpoint_path"]).expanduser()
    if choice and not path.is_file():
        raise FormValueError("EXPORT_FROM", export_from,
                             "it must be empty (the checkpoint Cell 34 loaded), \"model\", or "
                             "a checkpoint file that exists")
    loaded, checkpoint = load_pretrained_model(path, device="cpu")
    origin = "EXPORT_FROM" if choice else "the checkpoint Cell 34 loaded"
    return ExportSource(loaded, f"{path} ({origin}: step {checkpoint.get('global_step')}, "
                        f"val loss {_describe(checkpoint.get('val_loss'))})", path)


# --------------------------------------------------------------------------------------
# Which run the cells after training use, and Cell 37 (train it further)
# --------------------------------------------------------------------------------------

def notebook_run(namespace: Mapping[str, Any]) -> str:
    """The run Cells 33, 34, 37 and 40 work on: RUN_ID when set, else the run Cell 32
    trained or found finished (`trainer.run_id`), else the most recent run ("latest", as
    after a crash in a fresh runtime). Another run written to the folder later is never
    taken for this notebook's."""
    chosen = namespace.get("RUN_ID")
    if isinstance(chosen, str) and chosen.strip():
        return chosen.strip()
    run_id = getattr(namespace.get("trainer"), "run_id", None)
    return run_id if isinstance(run_id, str) and run_id else "latest"


def continue_training(namespace: dict[str, Any]) -> Any:
    """Cell 37: train the notebook's run on to step MAX_STEPS + RESUME_EXTRA_STEPS.

    That step is a target, not "N more": run again (or "Run all" on a finished notebook),
    it finds the run there and trains nothing, so no file changes. The run is RUN_ID, else
    the one Cell 32 trained, else (a fresh runtime) the newest run trained with this
    notebook's settings. It continues from its newest checkpoint with its own saved
    training settings (learning rate, schedule, batch, ...: what makes it that run); the
    form gives only what does not change the run (folder, device, intervals, compile). On
    other data it is refused (`RunMismatchError`), on another model shape too
    (`ArchitectureMismatchError`). Returns the Trainer (the session's `trainer` when there
    was nothing to train).
    """
    from utils.training.engine.recovery import find_resume_checkpoint

    check_form(namespace, "MAX_STEPS", "RESUME_EXTRA_STEPS", "RUN_ID", "CHECKPOINT_DIR")
    folder, settings = namespace["CHECKPOINT_DIR"], namespace["training_config"]
    target = namespace["MAX_STEPS"] + namespace["RESUME_EXTRA_STEPS"]
    run_id = notebook_run(namespace)
    if run_id == "latest":  # no run chosen or trained in this session: the one of these settings
        run_id = _run_with_settings(folder, _cell_trainer(namespace, settings))
    path, saved = find_resume_checkpoint("latest", folder, run=run_id)
    step = int(saved["global_step"])
    if step >= target:
        print(f"✅ run {run_id} is at step {step}, at or past Cell 37's target MAX_STEPS + "
              f"RESUME_EXTRA_STEPS = {target}: nothing to train (raise RESUME_EXTRA_STEPS "
              "in Cell 3 to train further)")
        return namespace.get("trainer")
    trainer = _cell_trainer(namespace, continued_config(saved, settings, target))
    trainer.fit(resume_from=path, stop_at_step=target)
    print(f"✅ resumed run {run_id} from step {step} to step {trainer.global_step}")
    return trainer


def continued_config(saved: Mapping[str, Any], settings: Any, target: int) -> Any:
    """The TrainingConfig that continues a run to `target`: the run's saved settings, with
    those of the form (`settings`) that do not change the run (`NOT_IN_FINGERPRINT`).
    The schedule's horizon is the run's own budget, or `target` when that is further:
    an unfinished run keeps its learning-rate schedule, a finished one is extended."""
    from utils.config import TrainingConfig
    from utils.training.engine.runs import NOT_IN_FINGERPRINT

    values = dict(saved["training_config"])
    values.update({key: value for key, value in settings.to_dict().items()
                   if key in NOT_IN_FINGERPRINT})
    budget = saved.get("total_steps") or saved["training_config"].get("max_steps") or 0
    values.update(max_steps=max(int(budget), target), epochs=None)
    return TrainingConfig.from_dict(values)


def _cell_trainer(namespace: Mapping[str, Any], config: Any) -> Any:
    """A Trainer on the session's model and data (Cells 10, 13), as Cell 16 builds it."""
    from utils.training.engine.trainer import Trainer
    from utils.training.preparation import known_tokens_sha256

    train, val = namespace["train_loader"], namespace["val_loader"]
    return Trainer(namespace["model"], config, train, val,
                   tokenizer_name=namespace.get("TOKENIZER"),
                   init_from=namespace.get("initialised_from"),
                   data_sha256=known_tokens_sha256(namespace.get("data"), train, val))


def _run_with_settings(folder: str | Path, trainer: Any) -> str:
    """The newest run in `folder` trained with `trainer`'s settings (what Cell 32 would
    continue); `RunNotFoundError` listing the runs when there is none."""
    from utils.checkpoint_errors import RunNotFoundError
    from utils.training.engine.listing import describe_runs, list_runs

    runs = list_runs(folder)
    same = [run for run in runs if run.fingerprint == trainer.fingerprint]
    if not same:
        raise RunNotFoundError(
            f"no run in {folder} was trained with this notebook's settings (the runs there: "
            f"{describe_runs(runs)}). Fix: run Cell 32, which starts or continues this "
            "notebook's run, or set RUN_ID to the run to continue.")
    return same[0].run_id
