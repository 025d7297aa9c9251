"""Choose a checkpoint or a run to continue, and recover what a dead runtime left behind.

Built on `listing` (what is in the folder): `plan_resume` decides what
`Trainer.fit(resume_from="auto")` does and `find_resume_checkpoint` which checkpoint an
explicit resume ("latest" or a path) continues, for the Trainer, the command line and the
notebook alike; `load_first_readable` is the one loop that skips an unreadable checkpoint;
`select_checkpoint` chooses which file to load, and
`recover_training_results` returns one run's checkpoints, metrics (up to the last logged
step, from the run's metrics log) and the table of every run. `list_checkpoints` is
importable from here too (its documented home).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from itertools import dropwhile
from pathlib import Path
from typing import Any

from utils.checkpoint_errors import (
    ArchitectureMismatchError,
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    NoCheckpointsError,
    NotResumableError,
    RunMismatchError,
    RunNotFoundError,
)
from utils.training.engine.checkpoint import (
    METRIC_FIELDS,
    check_resumable,
    fallback_dir_for,
    load_checkpoint_file,
)
from utils.training.engine.listing import (  # noqa: F401  (public here: DESIGN.md's names)
    CheckpointInfo,
    CheckpointWarning,
    RunInfo,
    _newest_in_run,
    _resolve_run,
    _sort_key,
    checkpoint_folders,
    describe_runs,
    latest_checkpoint,
    list_checkpoints,
    list_runs,
    printable_name,
    runs_table,
)
from utils.training.engine.runs import LEGACY_RUN_ID, metrics_log_path, read_metrics_log


@dataclass
class ResumePlan:
    """What `Trainer.fit(resume_from="auto")` does: "resume", "finished", "new", or
    "interrupted" (the run stopped before its own budget, and the budget asked for now
    is not past where it stopped: nothing to do, and the message says what to change)."""

    action: str
    run: RunInfo | None
    message: str
    runs: list[RunInfo]  # every run in the folder when the plan was made


def plan_resume(checkpoint_dir: str | Path, fingerprint: str, total_steps: int) -> ResumePlan:
    """Continue the newest run with this fingerprint if it is unfinished, report it if it
    has finished, else start a new run (the Trainer names the runs already there)."""
    runs = list_runs(checkpoint_dir)
    same = [run for run in runs if run.fingerprint == fingerprint]
    if not same:
        return ResumePlan("new", None, "no run with these settings: starting a new one", runs)
    run = same[0]
    budget = run.latest.total_steps  # the run's own, as its newest checkpoint recorded it
    if run.steps >= total_steps and budget is not None and budget > run.steps:
        return ResumePlan(
            "interrupted", run,
            f"run {run.run_id} stopped at step {run.steps} of its {budget} steps (it was "
            f"interrupted, or stopped early on purpose: its newest checkpoint is "
            f"{run.latest.filename}), and max_steps={total_steps} asks for no step past "
            f"that, so nothing was trained. Fix: to finish the run, set max_steps to "
            f"{budget} (or more); to train {total_steps} steps from scratch, start a new "
            "run (resume_from=None; command line: --new-run).", runs)
    if run.steps >= total_steps:
        return ResumePlan(
            "finished", run,
            f"run {run.run_id} already finished at step {run.steps} "
            f"({run.latest.filename}); nothing to train. To train further, raise the step "
            "budget (max_steps) and run again, or start another run (resume_from=None).", runs)
    newest = next((info for info in run.checkpoints if info.resumable), run.latest)
    return ResumePlan("resume", run,
                      f"resuming run {run.run_id} at step {newest.global_step or 0} from "
                      f"{newest.path}", runs)


def resumable_checkpoints(run: RunInfo) -> list[CheckpointInfo]:
    """The run's checkpoints that hold the training state, newest first (weights-only
    copies are left out); `NotResumableError` when the run keeps none."""
    found = [info for info in run.checkpoints if info.resumable]
    if found:
        return found
    raise NotResumableError(
        f"run {run.run_id} keeps only weights-only checkpoints (the newest, which held the "
        f"optimizer state, is gone or unreadable), so it cannot continue exactly. Fix: "
        f"start a new run (resume_from=None, --new-run); its weights still load "
        f"(load_pretrained_model({str(run.latest.path)!r})). keep_full=2 keeps a second "
        f"whole checkpoint for such a case.")


def resume_candidates(checkpoint_dir: str | Path, run: str = "latest") -> list[CheckpointInfo]:
    """The run's checkpoints to resume from, newest first (try the next if one is bad);
    weights-only copies are left out: they cannot resume."""
    infos = list_checkpoints(checkpoint_dir, run=run)
    if not infos:
        return []
    return resumable_checkpoints(RunInfo(infos[0].run, sorted(infos, key=_newest_in_run,
                                                                reverse=True)))


def run_not_found_error(checkpoint_dir: str | Path, run: str,
                        runs: list[RunInfo]) -> RunNotFoundError:
    """A run id that is not in the folder: say so and list the runs that are."""
    return RunNotFoundError(
        f"run {run!r} is not in {checkpoint_dir}: "
        + (f"the runs there are {describe_runs(runs)}" if runs else "it holds no checkpoints")
        + ". Fix: choose one of these run ids, or leave the run empty (or 'latest') for the "
        "most recent run.")


def check_run(checkpoint_dir: str | Path, run: str,
              infos: list[CheckpointInfo] | None = None) -> None:
    """Raise `RunNotFoundError` when `run` (a run id; "latest" always exists) names no run
    in the folder. `infos`: its listing, when the caller has it."""
    if run == "latest":
        return
    runs = list_runs(checkpoint_dir, infos=infos)
    if not any(each.run_id == run for each in runs):
        raise run_not_found_error(checkpoint_dir, run, runs)


def no_checkpoints_error(checkpoint_dir: str | Path) -> NoCheckpointsError:
    folder = Path(checkpoint_dir).absolute()
    where = "does not exist" if not folder.is_dir() else "holds no valid checkpoint_*.pt file"
    fallback = fallback_dir_for(folder)
    if fallback.is_dir():
        where += f" (nor does its local fallback folder {fallback})"
    return NoCheckpointsError(
        f"no checkpoints found: {folder} {where}. Fix: train first (Trainer.fit, or "
        f"python -m utils train --checkpoint-dir {checkpoint_dir}), or point checkpoint_dir "
        f"at the folder that holds your checkpoint_*.pt files (in Colab, mount Drive first).")


def read_resumable(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents (tensors left on disk) when training can continue it;
    `NotResumableError` for a weights-only file."""
    checkpoint = load_checkpoint_file(path, mmap=True)
    check_resumable(path, checkpoint)
    return checkpoint


def find_resume_checkpoint(resume_from: str | Path, checkpoint_dir: str | Path,
                           load: Callable[[Path], Any] = read_resumable,
                           run: str = "latest") -> tuple[Path, Any]:
    """`(path, load(path))` for the checkpoint an explicit resume continues: "latest" is
    run `run`'s ("latest": the newest run's) newest checkpoint that `load` can read;
    anything else is a checkpoint path. The one resolution behind `Trainer.fit`, the
    command line's --resume and the notebook's continue cell ("auto" is `plan_resume`)."""
    if resume_from == "latest":
        return load_newest_readable(checkpoint_dir, load, run=run)
    path = Path(resume_from)
    return path, load(path)


def load_newest_readable(checkpoint_dir: str | Path, load: Callable[[Path], Any],
                         run: str = "latest") -> tuple[Path, Any]:
    """`(path, load(path))` for the run's newest checkpoint that `load` can read; each newer
    one that cannot is skipped with a `CheckpointWarning` naming it."""
    check_run(checkpoint_dir, run)
    path, loaded, _ = load_first_readable(resume_candidates(checkpoint_dir, run=run), load,
                                          checkpoint_dir, f"of run {run} ", "newest")
    return path, loaded


def load_first_readable(candidates: list[CheckpointInfo], load: Callable[[Path], Any],
                        checkpoint_dir: str | Path, which: str = "", order: str = "best"
                        ) -> tuple[Path, Any, list[str]]:
    """`(path, load(path), names skipped)` for the first of `candidates` that `load` can
    read; each one before it that cannot (damaged since it was listed) is skipped with a
    `CheckpointWarning` naming it. An architecture mismatch is not skipped (the model is
    wrong, not the file), nor other data (`RunMismatchError`). `which` and `order` word
    the messages ("of run X ", "newest")."""
    skipped, reasons = [], []
    for info in candidates:
        try:
            return info.path, load(info.path), skipped
        except (ArchitectureMismatchError, RunMismatchError):
            raise
        except (CheckpointError, OSError) as error:
            skipped.append(printable_name(info.filename))
            reasons.append(f"{skipped[-1]}: {error}")
            warnings.warn(f"skipping checkpoint {printable_name(str(info.path))}: {error}; "
                          f"trying the next {order}", CheckpointWarning, stacklevel=3)
    if not skipped:
        raise no_checkpoints_error(checkpoint_dir)
    raise CorruptCheckpointError(
        f"no checkpoint {which}in {checkpoint_dir} could be read ("
        + "; ".join(reasons) + "). Fix: copy the checkpoints into the folder again, or "
        "start a new run (resume_from=None).")


# --------------------------------------------------------------------------------------
# Choosing which checkpoint to load
# --------------------------------------------------------------------------------------

METHOD_OVERRIDE = "manual override"
METHOD_RECOVERY = "from the recovered results (best of the run)"
METHOD_BEST = "auto-selected best val_loss"


def select_checkpoint(results: dict | None = None, checkpoint_dir: str | Path = "checkpoints",
                      override: str | Path | int | None = None,
                      infos: list | None = None) -> tuple[Path, str]:
    """`(path, method)`: a manual override wins, then `results["checkpoint_path"]`
    (from `recover_training_results`), then the best of `list_checkpoints` by val_loss.

    `override` may be a path, a file name inside `checkpoint_dir`, or an index into the
    listing (as printed by `available_checkpoints_report`). `infos`: that listing, when
    the caller has it already (the folder is then not listed again).
    """
    folder = Path(checkpoint_dir)

    def listing() -> list:
        return infos if infos is not None else list_checkpoints(folder)

    if override is not None and override != "":
        return _resolve_override(override, folder, listing()), METHOD_OVERRIDE
    recovered = (results or {}).get("checkpoint_path")
    if recovered and Path(recovered).is_file():
        return Path(recovered), METHOD_RECOVERY
    infos = listing()
    if not infos:
        raise no_checkpoints_error(folder)
    method = METHOD_BEST
    if recovered:
        method += f" (the recovered {Path(recovered).name} no longer exists)"
    return Path(infos[0].path), method


def _resolve_override(override: str | Path | int, folder: Path, infos: list) -> Path:
    text = str(override).strip()
    if isinstance(override, int) or text.isdigit():
        index = int(text)
        if 0 <= index < len(infos):
            return Path(infos[index].path)
    else:
        for candidate in (Path(text).expanduser(), folder / text):
            if candidate.is_file():
                return candidate
    choices = [f"[{i}] {printable_name(info.filename)}" for i, info in enumerate(infos)]
    raise CheckpointNotFoundError(
        f"Checkpoint override {override!r} matches no file (not a path, not a file name in "
        f"{folder}/, not an index 0..{len(infos) - 1}). Fix: set the override to one of: "
        f"{', '.join(choices) if choices else '(no checkpoints in ' + str(folder) + ')'}.")


# --------------------------------------------------------------------------------------
# Recovering a run's results
# --------------------------------------------------------------------------------------

def _metrics_frames(run: RunInfo, checkpoint: dict[str, Any], latest_step: int,
                    checkpoint_dir: str | Path):
    """(evaluations, per-step training curve) from the run's log, else the checkpoint.

    The log is read in every folder that holds the run's checkpoints and in the checkpoint
    folder and its fallback folder (lines written while the folder was gone land there)."""
    import pandas as pd

    folders = {info.path.parent.absolute() for info in run.checkpoints}
    folders |= {folder.absolute() for folder, _ in checkpoint_folders(checkpoint_dir)}
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for folder in sorted(folders):
        if run.run_id != LEGACY_RUN_ID:
            for record in read_metrics_log(metrics_log_path(folder, run.run_id)):
                key = (str(record.get("kind", "train")), record["step"])
                earlier = records.get(key)
                if earlier is None or str(record.get("timestamp")) >= \
                        str(earlier.get("timestamp")):
                    records[key] = record  # a step logged twice (resumed): the later one
    records = sorted(records.values(), key=lambda r: (r["step"], r.get("kind") == "eval"))
    evaluations = [r for r in records if r.get("kind") == "eval"]
    if not evaluations:
        evaluations = [dict(entry) for entry in checkpoint.get("metrics_history") or []
                       if isinstance(entry, dict)]
    train = [r for r in records if r.get("kind", "train") == "train"]
    for row in (*evaluations, *train):
        step = row.get("step")
        row["after_last_checkpoint"] = isinstance(step, int) and step > latest_step
    metrics = pd.DataFrame(evaluations, columns=[*METRIC_FIELDS, "after_last_checkpoint"])
    curve = pd.DataFrame(train, columns=["step", "epoch", "train_loss", "learning_rate",
                                         "tokens_per_s", "mfu", "grad_norm", "timestamp",
                                         "after_last_checkpoint"])
    return metrics.drop_duplicates("step", keep="last").reset_index(drop=True), curve


def recover_training_results(checkpoint_dir: str | Path = "checkpoints",
                             run: str = "latest") -> dict[str, Any]:
    """Everything a dead runtime left behind for one run, from the folder alone.

    `run`: "latest" (the most recently written run), or a run id from `runs`.
    Returns `checkpoint_path` (best of the run by val_loss), `latest_checkpoint_path`,
    `metrics` (pandas DataFrame, one row per evaluation up to the last one logged, with
    `after_last_checkpoint`), `train_curve` (one row per logged training step, up to the
    crash), `best_val_loss`, `epoch` and `global_step` (of the latest checkpoint),
    `last_logged_step`, `config`, `training_config`, `tokenizer`, `run_id`, `runs` (a table
    of every run in the folder) and `checkpoints` (the run's `list_checkpoints` list).
    """
    infos = list_checkpoints(checkpoint_dir)
    if not infos:
        raise no_checkpoints_error(checkpoint_dir)
    runs = list_runs(infos=infos)
    wanted = _resolve_run(run, infos)
    chosen = next((each for each in runs if each.run_id == wanted), None)
    if chosen is None:
        raise run_not_found_error(checkpoint_dir, run, runs)
    # the run's newest checkpoint that reads; newer ones that do not are left out
    path, checkpoint, _ = load_first_readable(chosen.checkpoints, load_checkpoint_file,
                                              checkpoint_dir, f"of run {chosen.run_id} ",
                                              "newest")
    members = list(dropwhile(lambda info: info.path != path, chosen.checkpoints))
    latest = members[0]
    best = min(members, key=_sort_key)
    latest_step = latest.global_step or 0
    metrics, curve = _metrics_frames(chosen, checkpoint, latest_step, checkpoint_dir)
    steps = [*metrics["step"].dropna(), *curve["step"].dropna(), latest_step]
    return {
        "checkpoint_path": str(best.path),
        "latest_checkpoint_path": str(latest.path),
        "metrics": metrics,
        "train_curve": curve,
        "best_val_loss": best.val_loss,
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "last_logged_step": int(max(steps)),
        "config": checkpoint.get("config"),
        "training_config": checkpoint.get("training_config"),
        "tokenizer": checkpoint.get("tokenizer"),
        "run_id": chosen.run_id,
        "runs": runs_table(runs),
        "checkpoints": sorted(members, key=_sort_key),
    }
