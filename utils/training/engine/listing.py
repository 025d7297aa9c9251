"""What is in a checkpoint folder: its checkpoints and its runs, from metadata alone.

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

from utils.checkpoint_errors import CheckpointError
from utils.training.engine.checkpoint import (
    BEST_MODEL_NAME,
    CHECKPOINT_NAME_RE,
    fallback_dir_for,
    is_resumable,
    load_checkpoint_file,
    name_time,
    parse_timestamp,
    read_sidecar,
)
from utils.training.engine.runs import LEGACY_RUN_ID

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
    # False for a weights-only copy (the storage plan): it loads, but cannot resume training
    resumable: bool = True
    config: dict[str, Any] | None = field(default=None, repr=False)
    total_steps: int | None = None  # the run's step budget when it was written (None: older)

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


def _info_from_metadata(path: Path, meta: dict[str, Any], size_bytes: int,
                        resumable: bool) -> CheckpointInfo:
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
        resumable=resumable,
        config=config if isinstance(config, dict) else None,
        total_steps=_integer(meta, "total_steps"),
    )


def _sidecar_resumable(meta: dict[str, Any]) -> bool:
    """A sidecar's `resumable`; sidecars written before weights-only copies existed lack
    it, and every checkpoint training wrote then held the whole training state."""
    value = meta.get("resumable", True)
    if not isinstance(value, bool):
        raise ValueError(f"field 'resumable' is {str(value)[:40]!r}, not true or false")
    return value


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
            info = _info_from_metadata(path, meta, size, _sidecar_resumable(meta))
            recorded = _integer(meta, "size_bytes")
        except ValueError:
            meta = None  # a sidecar of the wrong shape: the checkpoint itself decides
        else:
            if recorded is None or recorded == size:
                return info, meta
            # A file rewritten (weights only) before its sidecar caught up reads fine; a
            # truncated one does not.
            info = _info_from_file(path, size)
            if not info.valid:
                info.error = (f"file is {size} bytes but its sidecar recorded {recorded}: "
                              f"truncated or overwritten")
            return info, None
    return _info_from_file(path, size), None


def _info_from_file(path: Path, size: int) -> CheckpointInfo:
    """Metadata read from the checkpoint itself (memory-mapped: no tensor is read)."""
    try:
        checkpoint = load_checkpoint_file(path, mmap=True)
        return _info_from_metadata(path, checkpoint, size, is_resumable(checkpoint))
    except (CheckpointError, OSError, RecursionError) as error:
        return _invalid(path, str(error) or type(error).__name__, size)
    except ValueError as error:
        return _invalid(path, f"its metadata is unusable: {error}", size)


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


def named_checkpoints(checkpoint_dir: str | Path, run: str | None = None
                      ) -> list[CheckpointInfo]:
    """The valid checkpoints (in the folder and its fallback folder) whose names follow
    DESIGN.md's pattern, of `run` (a run id) or every run; unsorted.

    What retention and the fallback copy-back may touch. Files with other names are not
    opened at all, and nothing is warned: a file that cannot be read is simply not here
    (this runs on the writer thread after every checkpoint).
    """
    infos = []
    for folder, local_only in checkpoint_folders(checkpoint_dir):
        try:
            paths = [path for path in folder.glob("checkpoint_*.pt")
                     if CHECKPOINT_NAME_RE.match(path.name)]
        except OSError:  # the folder went away (Drive disconnected): nothing to touch
            continue
        for path in paths:
            info, _ = _checkpoint_info(path)
            info.local_only = local_only
            if info.valid and (run is None or info.run == run):
                infos.append(info)
    return infos


def latest_checkpoint(checkpoint_dir: str | Path = "checkpoints",
                      run: str | None = "latest") -> CheckpointInfo | None:
    """The newest valid checkpoint of `run` (default: the newest run), or None."""
    infos = list_checkpoints(checkpoint_dir)
    if not infos:
        return None
    wanted = _resolve_run(run or "latest", infos)
    return max((info for info in infos if info.run == wanted), key=_newest_in_run)


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
