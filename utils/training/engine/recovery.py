"""Find checkpoints and runs in a folder, pick one, and recover the metrics they carry.

Listing reads the small JSON sidecar next to each checkpoint, so it costs the same for a
1 MB and a 1.5 GB checkpoint. A checkpoint without a usable sidecar (copied by hand, written
by a run killed between the rename and the sidecar, or a sidecar someone edited) is opened
memory-mapped, which reads only the pickled metadata, not the tensors.

Listing is total: any single odd file (wrong types, NaN, a FIFO, unreadable, an odd name)
becomes an invalid entry with its reason, never an exception. The folder that takes
checkpoints while the checkpoint folder fails (`checkpoint.fallback_dir_for`) is listed too.

Order: within a run newer means a larger step; across runs, a later UTC timestamp.
"""

from __future__ import annotations

import math
import stat
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from utils.training.engine.checkpoint import (
    BEST_MODEL_NAME,
    METRIC_FIELDS,
    fallback_dir_for,
    load_checkpoint_file,
    name_time,
    parse_timestamp,
    read_sidecar,
)
from utils.training.engine.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    NoCheckpointsError,
)
from utils.training.engine.runs import (
    LEGACY_RUN_ID,
    metrics_log_path,
    read_metrics_log,
)

_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def printable_name(name: str) -> str:
    """A file name as it can be shown on one line: a name with a newline or another
    control character (someone's odd file) is shown quoted and escaped."""
    return name if name.isprintable() else repr(name)


class CheckpointWarning(UserWarning):
    """A file in the checkpoint folder was skipped because it cannot be used."""


@dataclass
class CheckpointInfo:
    """One checkpoint file as `list_checkpoints` sees it (metadata only, no tensors)."""

    path: Path
    filename: str
    epoch: int | None = None
    global_step: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    learning_rate: float | None = None
    timestamp: str | None = None  # ISO 8601, when the checkpoint was taken
    size_bytes: int = 0
    valid: bool = True
    error: str | None = None
    run_id: str | None = None  # None: written before runs existed (the legacy run)
    run_fingerprint: str | None = None
    local_only: bool = False  # in the fallback folder, not (yet) in the checkpoint folder
    config: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def run(self) -> str:
        return self.run_id or LEGACY_RUN_ID

    def when(self) -> datetime | None:
        """When the checkpoint was taken (aware): its timestamp, else its name's time."""
        return parse_timestamp(self.timestamp) or name_time(self.filename)

    def sort_time(self) -> tuple[float, int]:
        """(UTC seconds since the epoch, global_step): larger is newer."""
        when = self.when()
        if when is None:
            try:
                seconds = self.path.stat().st_mtime
            except OSError:
                seconds = 0.0
        else:
            seconds = when.timestamp()
        return seconds, self.global_step or 0


# --------------------------------------------------------------------------------------
# Metadata: a sidecar or the checkpoint's own dict, checked field by field
# --------------------------------------------------------------------------------------

def _integer(meta: dict, key: str) -> int | None:
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"field {key!r} is {str(value)[:40]!r}, not a whole number >= 0")
    return value


def _number(meta: dict, key: str) -> float | None:
    """A finite float; NaN and Inf read as missing (a diverged loss is never 'best')."""
    value = meta.get(key)
    if value is None:
        return None
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()  # a 0-d tensor in an older checkpoint dict
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"field {key!r} is {value!r}, not a number")
    value = float(value)
    return value if math.isfinite(value) else None


def _text(meta: dict, key: str, limit: int = 200) -> str | None:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"field {key!r} is {str(value)[:40]!r}, not a short text")
    return value


def _timestamp(meta: dict, key: str) -> str | None:
    """ISO 8601 text that names a real moment (a naive year-1 time cannot be made aware)."""
    value = _text(meta, key)
    try:
        if value is not None and parse_timestamp(value) is not None:
            parse_timestamp(value).timestamp()
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"field {key!r} is {value!r}, not a usable time") from None
    return value


def _identifier(meta: dict, key: str) -> str | None:
    value = _text(meta, key, limit=64)
    if value is not None and not set(value) <= _ID_CHARS:
        raise ValueError(f"field {key!r} is {value!r}, not an id")
    return value


def _info_from_metadata(path: Path, meta: dict[str, Any], size_bytes: int) -> CheckpointInfo:
    """Raises ValueError naming the first field of the wrong type."""
    config = meta.get("config")
    return CheckpointInfo(
        path=path, filename=path.name,
        epoch=_integer(meta, "epoch"),
        global_step=_integer(meta, "global_step"),
        train_loss=_number(meta, "train_loss"),
        val_loss=_number(meta, "val_loss"),
        learning_rate=_number(meta, "learning_rate"),
        timestamp=_timestamp(meta, "timestamp"),
        size_bytes=size_bytes,
        run_id=_identifier(meta, "run_id"),
        run_fingerprint=_identifier(meta, "run_fingerprint"),
        config=config if isinstance(config, dict) else None,
    )


def _invalid(path: Path, reason: str, size: int = 0) -> CheckpointInfo:
    return CheckpointInfo(path, path.name, size_bytes=size, valid=False, error=reason)


def _checkpoint_info(path: Path) -> tuple[CheckpointInfo, dict[str, Any] | None]:
    """Metadata of one checkpoint file, marked invalid (with the reason) if unusable.

    Returns the info and the sidecar dict (None when the checkpoint itself was read).
    """
    try:
        status = path.stat()
    except OSError as error:
        return _invalid(path, f"cannot be read: {error.strerror or error}"), None
    if not stat.S_ISREG(status.st_mode):
        return _invalid(path, "not a regular file (a folder, FIFO or device)"), None
    size = status.st_size
    meta = read_sidecar(path)
    if meta is not None:
        try:
            info = _info_from_metadata(path, meta, size)
            recorded = _integer(meta, "size_bytes")
        except ValueError:
            meta = None  # a sidecar of the wrong shape: the checkpoint itself decides
        else:
            if recorded is not None and recorded != size:
                info.valid = False
                info.error = (f"file is {size} bytes but its sidecar recorded {recorded}: "
                              f"truncated or overwritten")
            return info, meta
    try:
        checkpoint = load_checkpoint_file(path, mmap=True)
        return _info_from_metadata(path, checkpoint, size), None
    except (CheckpointError, OSError, RecursionError) as error:
        return _invalid(path, str(error) or type(error).__name__, size), None
    except ValueError as error:
        return _invalid(path, f"its metadata is unusable: {error}", size), None


# --------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------

def checkpoint_folders(checkpoint_dir: str | Path) -> list[tuple[Path, bool]]:
    """(folder, local_only) for the checkpoint folder and its local fallback folder, each
    when it exists (the checkpoint folder may be gone: Drive disconnected)."""
    folder, fallback = Path(checkpoint_dir), fallback_dir_for(checkpoint_dir)
    found = [(folder, False)] if folder.is_dir() else []
    if fallback.is_dir() and fallback.absolute() != folder.absolute():
        found.append((fallback, True))
    return found


def _sort_key(info: CheckpointInfo) -> tuple:
    # best val_loss first (None last), then newest first
    when, step = info.sort_time()
    return (not info.valid, info.val_loss is None,
            info.val_loss if info.val_loss is not None else 0.0, -when, -step)


def _folder_infos(folder: Path, local_only: bool) -> list[CheckpointInfo]:
    infos: list[CheckpointInfo] = []
    best: tuple[CheckpointInfo, dict[str, Any] | None] | None = None
    try:
        paths = sorted(folder.glob("*.pt"))
    except OSError as error:  # the folder went away while listing (Drive disconnected)
        warnings.warn(f"cannot list {folder}: {error}", CheckpointWarning, stacklevel=3)
        return []
    for path in paths:
        if path.name.startswith("."):
            continue  # temporary files of a write in progress
        info, meta = _checkpoint_info(path)
        info.local_only = local_only
        if path.name == BEST_MODEL_NAME:
            best = (info, meta)
        else:
            infos.append(info)
    if best is not None and not _is_alias_of_listed(*best, infos):
        infos.append(best[0])
    return infos


def _is_alias_of_listed(best: CheckpointInfo, meta: dict[str, Any] | None,
                        listed: list[CheckpointInfo]) -> bool:
    source = meta.get("source") if meta is not None else None
    if isinstance(source, str):
        return any(info.filename == source and info.valid for info in listed)
    return any(info.valid and info.global_step == best.global_step
               and info.timestamp == best.timestamp for info in listed)


def list_checkpoints(checkpoint_dir: str | Path = "checkpoints",
                     include_invalid: bool = False,
                     run: str | None = None) -> list[CheckpointInfo]:
    """Checkpoints in `checkpoint_dir`, best `val_loss` first (None last), then newest.

    Every `*.pt` file is considered (hidden temporary files never are). Unusable files
    (empty, truncated, not a checkpoint, odd metadata) are skipped with a
    `CheckpointWarning` naming them, or returned with `valid=False` and the reason in
    `error` when `include_invalid=True`. `best_model.pt` is listed only when the checkpoint
    it copies is no longer there. `run`: None (every run), "latest" (the newest run) or a
    run id ("legacy" for checkpoints written before runs existed); invalid files, whose run
    cannot be read, are listed with every run.
    """
    infos: list[CheckpointInfo] = []
    for folder, local_only in checkpoint_folders(checkpoint_dir):
        infos += _folder_infos(folder, local_only)
    for info in infos:
        if not info.valid and not include_invalid:
            warnings.warn(f"skipping checkpoint {printable_name(str(info.path))}: "
                          f"{info.error}", CheckpointWarning, stacklevel=2)
    if not include_invalid:
        infos = [info for info in infos if info.valid]
    if run is not None:  # an invalid file's run is unknown: it stays in every run's list
        wanted = _resolve_run(run, [info for info in infos if info.valid])
        infos = [info for info in infos if info.run == wanted or not info.valid]
    return sorted(infos, key=_sort_key)


def latest_checkpoint(checkpoint_dir: str | Path = "checkpoints",
                      run: str | None = "latest") -> CheckpointInfo | None:
    """The newest valid checkpoint of `run` (default: the newest run), or None."""
    infos = list_checkpoints(checkpoint_dir)
    if not infos:
        return None
    infos = [info for info in infos if info.run == _resolve_run(run or "latest", infos)]
    return max(infos, key=_newest_in_run)


def _newest_in_run(info: CheckpointInfo) -> tuple[int, float]:
    """Within one run a larger step is newer, whatever clocks and time zones said."""
    return info.global_step or 0, info.sort_time()[0]


# --------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------

@dataclass
class RunInfo:
    """One run in a checkpoint folder: its valid checkpoints, newest (largest step) first."""

    run_id: str
    checkpoints: list[CheckpointInfo]

    @property
    def latest(self) -> CheckpointInfo:
        return self.checkpoints[0]

    @property
    def fingerprint(self) -> str | None:
        return self.latest.run_fingerprint

    @property
    def steps(self) -> int:
        return self.latest.global_step or 0

    @property
    def best(self) -> CheckpointInfo | None:
        scored = [info for info in self.checkpoints if info.val_loss is not None]
        return min(scored, key=lambda info: info.val_loss) if scored else None

    @property
    def last_write(self) -> datetime | None:
        times = [info.when() for info in self.checkpoints if info.when() is not None]
        return max(times) if times else None

    @property
    def model(self) -> str:
        config = next((info.config for info in self.checkpoints if info.config), None) or {}
        try:
            return (f"{config['number_of_layers']} layers, {config['embedding_dimension']} "
                    f"wide, {config['number_of_heads']} heads, context "
                    f"{config['context_length']}")
        except KeyError:
            return "?"

    def sort_time(self) -> tuple[float, int]:
        return max(info.sort_time() for info in self.checkpoints)


def list_runs(checkpoint_dir: str | Path = "checkpoints",
              infos: list[CheckpointInfo] | None = None) -> list[RunInfo]:
    """Every run with a valid checkpoint in the folder, the most recently written first."""
    infos = list_checkpoints(checkpoint_dir) if infos is None else infos
    by_run: dict[str, list[CheckpointInfo]] = {}
    for info in infos:
        by_run.setdefault(info.run, []).append(info)
    runs = [RunInfo(run_id, sorted(members, key=_newest_in_run, reverse=True))
            for run_id, members in by_run.items()]
    return sorted(runs, key=RunInfo.sort_time, reverse=True)


def _resolve_run(run: str, infos: list[CheckpointInfo]) -> str:
    if run != "latest":
        return run
    runs = list_runs(infos=infos)
    return runs[0].run_id if runs else LEGACY_RUN_ID


def runs_table(runs: list[RunInfo]):
    """A pandas DataFrame, one row per run: id, model, steps, best val loss, last write."""
    import pandas as pd

    rows = [{"run_id": run.run_id, "model": run.model, "steps": run.steps,
             "best_val_loss": run.best.val_loss if run.best else None,
             "last_write": run.last_write.isoformat(timespec="seconds") if run.last_write
             else None,
             "checkpoints": len(run.checkpoints),
             "local_only": sum(info.local_only for info in run.checkpoints)}
            for run in runs]
    return pd.DataFrame(rows, columns=["run_id", "model", "steps", "best_val_loss",
                                       "last_write", "checkpoints", "local_only"])


def describe_runs(runs: list[RunInfo]) -> str:
    """One line per run, for messages."""
    if not runs:
        return "(none)"
    return "; ".join(f"{run.run_id} ({run.model}, step {run.steps})" for run in runs)


@dataclass
class ResumePlan:
    """What `Trainer.fit(resume_from="auto")` does: "resume", "finished" or "new"."""

    action: str
    run: RunInfo | None
    message: str
    others: list[RunInfo] = field(default_factory=list)


def plan_resume(checkpoint_dir: str | Path, fingerprint: str, total_steps: int) -> ResumePlan:
    """Continue the newest run with this fingerprint if it is unfinished, report it if it
    has finished, else start a new run (and say which runs are there, untouched)."""
    runs = list_runs(checkpoint_dir)
    same = [run for run in runs if run.fingerprint == fingerprint]
    if not same:
        return ResumePlan("new", None, "no run with these settings: starting a new one",
                          others=runs)
    run = same[0]
    if run.steps >= total_steps:
        return ResumePlan(
            "finished", run,
            f"run {run.run_id} already finished at step {run.steps} "
            f"({run.latest.filename}); nothing to train. To train further, raise the step "
            "budget (max_steps) and run again, or start another run (resume_from=None).")
    return ResumePlan("resume", run,
                      f"resuming run {run.run_id} at step {run.steps} from {run.latest.path}")


def resume_candidates(checkpoint_dir: str | Path, run: str = "latest") -> list[CheckpointInfo]:
    """The run's checkpoints to resume from, newest first (try the next if one is bad)."""
    infos = list_checkpoints(checkpoint_dir, run=run)
    return sorted(infos, key=_newest_in_run, reverse=True)


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


def resume_path(resume_from: str | Path, checkpoint_dir: str | Path = "checkpoints") -> Path:
    """The checkpoint to resume from: `resume_from` itself, or for "latest" the newest
    checkpoint of the newest run in `checkpoint_dir` that reads (a newer one that does not
    is skipped with a `CheckpointWarning` naming it; `NoCheckpointsError` if none)."""
    if str(resume_from) != "latest":
        return Path(resume_from)
    for info in resume_candidates(checkpoint_dir):
        try:
            load_checkpoint_file(info.path, mmap=True)  # metadata only: tensors stay on disk
        except (CheckpointError, OSError) as error:
            warnings.warn(f"skipping checkpoint {printable_name(str(info.path))}: {error}; "
                          "trying the next newest", CheckpointWarning, stacklevel=2)
            continue
        return info.path
    raise no_checkpoints_error(checkpoint_dir)


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

def _readable_latest(run: RunInfo) -> tuple[CheckpointInfo, dict[str, Any], set[Path]]:
    """The run's newest checkpoint whose contents read; earlier ones when the newest fail."""
    errors, unreadable = [], set()
    for info in run.checkpoints:
        try:
            return info, load_checkpoint_file(info.path, mmap=True), unreadable
        except (CheckpointError, OSError) as error:
            errors.append(str(error))
            unreadable.add(info.path)
            warnings.warn(f"skipping checkpoint {info.path}: {error}", CheckpointWarning,
                          stacklevel=3)
    raise CorruptCheckpointError(f"no checkpoint of run {run.run_id} could be read: "
                                 + "; ".join(errors))


def _metrics_frames(run: RunInfo, checkpoint: dict[str, Any], latest_step: int):
    """(evaluations, per-step training curve) from the run's log, else the checkpoint."""
    import pandas as pd

    records = []
    for folder in {info.path.parent for info in run.checkpoints}:
        if run.run_id != LEGACY_RUN_ID:
            records += read_metrics_log(metrics_log_path(folder, run.run_id))
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
                                         "tokens_per_s", "mfu", "timestamp",
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
        raise NoCheckpointsError(
            f"no run {run!r} in {checkpoint_dir}. Fix: choose one of: "
            f"{', '.join(each.run_id for each in runs)}.")
    latest, checkpoint, unreadable = _readable_latest(chosen)
    members = [info for info in chosen.checkpoints if info.path not in unreadable]
    best = min(members, key=_sort_key)
    latest_step = latest.global_step or 0
    metrics, curve = _metrics_frames(chosen, checkpoint, latest_step)
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
