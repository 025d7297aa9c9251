"""The cell helpers: what the cells of `training.ipynb` call after the set-up, so each cell
stays a few lines.

Which run the cells after training use (`notebook_run`) and Cell 37 (`continue_training`),
Cell 33's recovery report, Cell 34's load (`load_weights_cell`), Cell 35's session
variables and summary, Cell 17's TensorBoard, and what Cells 41-42 export
(`model_to_export`). The runtime (Colab, installs, device, Drive) is utils/runtime.py; the
form values and the errors shown against them are utils/forms.py. Heavy libraries are
imported inside the functions.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from utils.forms import SETTINGS_CELL, FormValueError, check_form, format_error
from utils.reports import RULE
from utils.training.engine.loggers import in_notebook, log_folder


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
        from utils.reports import checkpoints_table

        print(f"{RULE}\nAVAILABLE CHECKPOINTS\n{RULE}")
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
