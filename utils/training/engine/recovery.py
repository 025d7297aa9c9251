"""Find checkpoints in a folder and recover the training metrics they carry.

Listing reads the small JSON sidecar next to each checkpoint, so it costs the same for a
1 MB and a 1.5 GB checkpoint. A checkpoint without a sidecar (copied by hand, or written by
a run killed between the rename and the sidecar) is opened memory-mapped, which reads only
the pickled metadata, not the tensors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from utils.training.engine.checkpoint import (
    BEST_MODEL_NAME,
    CHECKPOINT_NAME_RE,
    METRIC_FIELDS,
    read_sidecar,
)
from utils.training.engine.errors import (
    CorruptCheckpointError,
    NoCheckpointsError,
    UnsafeCheckpointError,
)


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

    def sort_time(self) -> tuple[float, int]:
        """(seconds since the epoch, global_step): larger is newer."""
        when = None
        if self.timestamp:
            try:
                when = datetime.fromisoformat(self.timestamp).timestamp()
            except ValueError:
                when = None
        if when is None:
            match = CHECKPOINT_NAME_RE.match(self.filename)
            if match:
                when = datetime.strptime(match.group(3), "%Y%m%d_%H%M%S").timestamp()
        if when is None:
            try:
                when = self.path.stat().st_mtime
            except OSError:
                when = 0.0
        return when, self.global_step or 0


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def load_checkpoint_file(path: str | Path, mmap: bool = True) -> dict[str, Any]:
    """A training checkpoint (a dict with `model_state_dict`), read safely onto the CPU.

    The file is read by `loading.read_checkpoint` (`weights_only=True`, its kind checked
    from its first bytes). `mmap=True` maps the tensors instead of reading them: reading
    only the metadata of a 1.5 GB checkpoint is then cheap. Raises `CorruptCheckpointError`
    (or a subclass) for empty, truncated or foreign files, `UnsafeCheckpointError` for
    pickles that need arbitrary code and `FileNotFoundError` for a missing file.
    """
    from utils.training.engine.loading import read_checkpoint

    checkpoint = read_checkpoint(path, mmap=mmap)
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
        raise CorruptCheckpointError(
            f"{path} is not a training checkpoint (no 'model_state_dict'); use a file written "
            f"by the Trainer or python -m utils train")
    return checkpoint


def _info_from_metadata(path: Path, meta: dict[str, Any], size_bytes: int) -> CheckpointInfo:
    return CheckpointInfo(
        path=path, filename=path.name,
        epoch=_int_or_none(meta.get("epoch")),
        global_step=_int_or_none(meta.get("global_step")),
        train_loss=_float_or_none(meta.get("train_loss")),
        val_loss=_float_or_none(meta.get("val_loss")),
        learning_rate=_float_or_none(meta.get("learning_rate")),
        timestamp=meta.get("timestamp"),
        size_bytes=size_bytes,
    )


def _checkpoint_info(path: Path) -> tuple[CheckpointInfo, dict[str, Any] | None]:
    """Metadata of one checkpoint file, marked invalid (with the reason) if unusable.

    Returns the info and the sidecar dict (None when the checkpoint itself was read).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        return CheckpointInfo(path, path.name, valid=False, error=str(error)), None
    meta = read_sidecar(path)  # None: fall back to the checkpoint itself
    if meta is not None:
        info = _info_from_metadata(path, meta, size)
        recorded = meta.get("size_bytes")
        if recorded is not None and int(recorded) != size:
            info.valid = False
            info.error = (f"file is {size} bytes but its sidecar recorded {recorded}: "
                          f"truncated or overwritten")
        return info, meta
    try:
        checkpoint = load_checkpoint_file(path, mmap=True)
    except (CorruptCheckpointError, UnsafeCheckpointError, FileNotFoundError) as error:
        return CheckpointInfo(path, path.name, size_bytes=size, valid=False,
                              error=str(error)), None
    return _info_from_metadata(path, checkpoint, size), None


def _sort_key(info: CheckpointInfo) -> tuple:
    # best val_loss first (None last), then newest first
    when, step = info.sort_time()
    return (not info.valid, info.val_loss is None,
            info.val_loss if info.val_loss is not None else 0.0, -when, -step)


def list_checkpoints(checkpoint_dir: str | Path = "checkpoints",
                     include_invalid: bool = False) -> list[CheckpointInfo]:
    """Checkpoints in `checkpoint_dir`, best `val_loss` first (None last), then newest.

    Every `*.pt` file is considered (hidden temporary files never are). Unusable files
    (empty, truncated, not a checkpoint) are skipped with a `CheckpointWarning` naming them,
    or returned with `valid=False` and the reason in `error` when `include_invalid=True`.
    `best_model.pt` is listed only when the checkpoint it copies is no longer there.
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return []
    infos: list[CheckpointInfo] = []
    best_meta: tuple[CheckpointInfo, dict[str, Any] | None] | None = None
    for path in sorted(folder.glob("*.pt")):
        if path.name.startswith(".") or not path.is_file():
            continue
        info, meta = _checkpoint_info(path)
        if path.name == BEST_MODEL_NAME:
            best_meta = (info, meta)
            continue
        infos.append(info)
    if best_meta is not None and not _is_alias_of_listed(*best_meta, infos):
        infos.append(best_meta[0])
    for info in infos:
        if not info.valid and not include_invalid:
            warnings.warn(f"skipping checkpoint {info.path}: {info.error}", CheckpointWarning,
                          stacklevel=2)
    if not include_invalid:
        infos = [info for info in infos if info.valid]
    return sorted(infos, key=_sort_key)


def _is_alias_of_listed(best: CheckpointInfo, meta: dict[str, Any] | None,
                        listed: list[CheckpointInfo]) -> bool:
    if meta is not None and meta.get("source"):
        return any(info.filename == meta["source"] and info.valid for info in listed)
    return any(info.valid and info.global_step == best.global_step
               and info.timestamp == best.timestamp for info in listed)


def latest_checkpoint(checkpoint_dir: str | Path = "checkpoints") -> CheckpointInfo | None:
    """The newest valid checkpoint (by its timestamp, then step), or None."""
    infos = list_checkpoints(checkpoint_dir)
    return max(infos, key=CheckpointInfo.sort_time) if infos else None


def no_checkpoints_error(checkpoint_dir: str | Path) -> NoCheckpointsError:
    folder = Path(checkpoint_dir).resolve()
    where = "does not exist" if not folder.is_dir() else "holds no valid checkpoint_*.pt file"
    return NoCheckpointsError(
        f"no checkpoints found: {folder} {where}. Train first (Cell 32, or "
        f"python -m utils train --checkpoint-dir {checkpoint_dir}), or point checkpoint_dir "
        f"at the folder that holds your checkpoint_*.pt files (in Colab, mount Drive first)."
    )


def resume_path(resume_from: str | Path, checkpoint_dir: str | Path = "checkpoints") -> Path:
    """The checkpoint to resume from: `resume_from` itself, or for "latest" the newest
    valid checkpoint in `checkpoint_dir` (`NoCheckpointsError` when there is none)."""
    if str(resume_from) != "latest":
        return Path(resume_from)
    info = latest_checkpoint(checkpoint_dir)
    if info is None:
        raise no_checkpoints_error(checkpoint_dir)
    return info.path


def recover_training_results(checkpoint_dir: str | Path = "checkpoints") -> dict[str, Any]:
    """Everything a dead runtime left behind, from the checkpoints alone.

    Returns `checkpoint_path` (best by val_loss), `latest_checkpoint_path`, `metrics`
    (pandas DataFrame of the latest checkpoint's `metrics_history`, one row per evaluation),
    `best_val_loss`, `epoch` and `global_step` (of the latest), `config`,
    `training_config`, `tokenizer` and `checkpoints` (the `list_checkpoints` list).
    """
    import pandas as pd

    infos = list_checkpoints(checkpoint_dir)
    if not infos:
        raise no_checkpoints_error(checkpoint_dir)
    # The latest checkpoint carries the longest metrics history. If its contents turn out
    # unreadable despite a good sidecar, fall back to the next newest.
    checkpoint, latest = None, None
    errors, unreadable = [], set()
    for info in sorted(infos, key=CheckpointInfo.sort_time, reverse=True):
        try:
            checkpoint = load_checkpoint_file(info.path, mmap=True)
            latest = info
            break
        except (CorruptCheckpointError, UnsafeCheckpointError, FileNotFoundError) as error:
            errors.append(str(error))
            unreadable.add(info.path)
            warnings.warn(f"skipping checkpoint {info.path}: {error}", CheckpointWarning,
                          stacklevel=2)
    if checkpoint is None:
        raise CorruptCheckpointError(f"no checkpoint in {checkpoint_dir} could be read: "
                                     + "; ".join(errors))
    infos = [info for info in infos if info.path not in unreadable]
    best = infos[0]
    return {
        "checkpoint_path": str(best.path),
        "latest_checkpoint_path": str(latest.path),
        "metrics": pd.DataFrame(checkpoint.get("metrics_history") or [],
                                columns=list(METRIC_FIELDS)),
        "best_val_loss": best.val_loss,
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "config": checkpoint.get("config"),
        "training_config": checkpoint.get("training_config"),
        "tokenizer": checkpoint.get("tokenizer"),
        "checkpoints": infos,
    }
