"""The storage plan of a run: what its checkpoint folder will hold at most, said before
the first step, and a refusal (with the settings that fit) when that is more than is free.

A run keeps its newest `keep_last` checkpoints and its best `keep_best` (retention); of
those, only the newest `keep_full` carry the optimizer state a resume needs (about 3x the
weights with AdamW), the others are weights-only copies, and `best_model.pt` is a
weights-only file of its own (`writer.py`). The sizes are estimated without serialising
anything: each stored tensor's bytes plus what `torch.save` adds per tensor, plus the
pickle of everything else (metrics history, RNG state, configs), with the optimizer's
AdamW moments predicted before the first step creates them.

Free space is `shutil.disk_usage` of the folder: on a Google Drive mount, Drive's quota
as the mount reports it. A resumed run counts its own files already there as its own.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass, replace
from itertools import combinations
from math import lcm
from pathlib import Path
from typing import Any

import torch

from utils.checkpoint_errors import InsufficientStorageError
from utils.training.engine.checkpoint import (
    BEST_MODEL_NAME,
    read_sidecar,
    sidecar_metadata,
    sidecar_path,
    storage_identity,
    weights_only_state,
)
from utils.training.engine.runs import metrics_log_path
from utils.training.engine.writer import on_google_drive, own_checkpoints

BLOCK_BYTES = 4096  # files take whole blocks of the file system
# What `torch.save` writes beyond the tensors' bytes and the pickle of the rest (measured
# with torch 2.x, tests/test_storage.py checks the estimate against real files): per
# stored tensor a zip entry (local header, central directory record, its name) and the
# 64-byte alignment of its data; per tensor reference its rebuild call in the pickle; per
# file the archive's own records.
STORAGE_OVERHEAD_BYTES = 160
REFERENCE_OVERHEAD_BYTES = 110
ARCHIVE_OVERHEAD_BYTES = 1200


# --------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------

def serialized_bytes(state: Any) -> int:
    """About how many bytes `torch.save(state)` writes, without serialising any tensor:
    each storage once (tied tensors share theirs) and the pickle of everything else.
    Meta tensors count as their shape and dtype (a prediction)."""
    storages: dict[Any, int] = {}
    references = 0

    def strip(value: Any) -> Any:
        nonlocal references
        if isinstance(value, torch.Tensor):
            references += 1
            storages[storage_identity(value)] = value.untyped_storage().nbytes()
            return None
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [strip(item) for item in value]
        return value

    skeleton = pickle.dumps(strip(state), protocol=2)
    return (ARCHIVE_OVERHEAD_BYTES + len(skeleton) + sum(storages.values())
            + STORAGE_OVERHEAD_BYTES * len(storages) + REFERENCE_OVERHEAD_BYTES * references)


def as_meta(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same names, shapes and dtypes on the meta device (no memory), tied tensors still
    one tensor: what a size estimate needs, and free to cast to half precision."""
    made: dict[tuple, torch.Tensor] = {}
    out = {}
    for key, tensor in state_dict.items():
        identity = (storage_identity(tensor), tensor.storage_offset(), tuple(tensor.shape))
        if identity not in made:
            made[identity] = torch.empty_like(tensor, device="meta")
        out[key] = made[identity]
    return out


def predicted_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict as it will be after its first step: Adam/AdamW's moments
    (and `step`) for every trainable parameter, on the meta device, where they do not
    exist yet; the real state dict otherwise."""
    state = optimizer.state_dict()
    if state["state"] or not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return state
    predicted, index = {}, 0
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if parameter.requires_grad:
                moments = {"step": torch.empty((), dtype=torch.float32, device="meta")}
                names = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group.get("amsgrad")
                                                     else [])
                moments.update({name: torch.empty_like(parameter, device="meta")
                                for name in names})
                predicted[index] = moments
            index += 1
    return {**state, "state": predicted}


def count_due_steps(total: int, intervals: list[int | None], extra: tuple[int, ...] = ()
                    ) -> int:
    """How many steps in 1..total are a multiple of one of `intervals` (None: no such
    interval) or one of `extra`; counted by inclusion-exclusion, not step by step."""
    intervals = sorted({interval for interval in intervals if interval})
    count = 0
    for size in range(1, len(intervals) + 1):
        for chosen in combinations(intervals, size):
            count += (-1) ** (size + 1) * (total // lcm(*chosen))
    extras = {step for step in extra if 1 <= step <= total
              and not any(step % interval == 0 for interval in intervals)}
    return count + len(extras)


def blocks(size: int) -> int:
    """`size` bytes as the file system allocates them (whole blocks)."""
    return -(-size // BLOCK_BYTES) * BLOCK_BYTES


def _json_line(record: dict[str, Any]) -> int:
    return len(json.dumps(record, default=str)) + 1


# --------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------

@dataclass
class StoragePlan:
    """What one run keeps at most in its checkpoint folder (sizes in allocated bytes)."""

    folder: Path
    full_bytes: int  # one checkpoint with the training state (model + AdamW + RNG ...)
    weights_bytes: int  # one weights-only copy (in `weights_only_dtype`)
    weights_fp32_bytes: int  # the same in fp32 (to say what bf16 would save)
    sidecar_bytes: int  # one checkpoint's JSON sidecar
    log_bytes: int  # the run's metrics log at the end
    checkpoints: int  # checkpoints the run writes (from step 0 to the end)
    keep_last: int | None
    keep_best: int | None
    keep_full: int | None  # None: every kept checkpoint whole
    best_model: bool  # whether best_model.pt is written (there is validation data)

    @property
    def kept(self) -> int:
        """Checkpoints of the run that retention keeps at most."""
        if self.keep_last is None or self.keep_best is None:
            return self.checkpoints
        best = self.keep_best if self.best_model else 0
        return min(self.checkpoints, max(self.keep_last, 1) + best)

    @property
    def full_files(self) -> int:
        return self.kept if self.keep_full is None else min(self.kept, self.keep_full)

    @property
    def weights_files(self) -> int:
        """Weights-only files: older kept checkpoints, then best_model.pt."""
        return self.kept - self.full_files + int(self.best_model)

    @property
    def kept_bytes(self) -> int:
        """What the folder holds for this run at most once a checkpoint write is done."""
        files = self.kept + int(self.best_model)
        return (self.full_files * self.full_bytes + self.weights_files * self.weights_bytes
                + files * self.sidecar_bytes + self.log_bytes)

    @property
    def writing_bytes(self) -> int:
        """What a checkpoint write adds for a moment, before retention frees the oldest."""
        return self.full_bytes + self.sidecar_bytes if self.checkpoints > 1 else 0

    def smallest(self) -> StoragePlan:
        """The same run keeping one checkpoint (and best_model.pt) with bf16 copies."""
        return replace(self, keep_last=1, keep_best=0, keep_full=1,
                       weights_bytes=min(self.weights_bytes, self.weights_fp32_bytes // 2))

    def parts(self) -> str:
        """'1 full checkpoint of 1.49 GB (...) + 4 weights-only files of 498 MB (...) +
        metrics log and sidecars (0.2 MB)'."""
        s = "s" if self.full_files != 1 else ""
        text = (f"{self.full_files} full checkpoint{s} of {size_text(self.full_bytes)} "
                "(weights + optimizer state: what a resume needs)")
        if self.weights_files:
            older = self.weights_files - int(self.best_model)
            what = ([f"{older} older or best checkpoint{'s' if older != 1 else ''}"]
                    if older else []) + ([BEST_MODEL_NAME] if self.best_model else [])
            s = "s" if self.weights_files != 1 else ""
            text += (f" + {self.weights_files} weights-only file{s} of "
                     f"{size_text(self.weights_bytes)} ({', '.join(what)})")
        small = self.log_bytes + self.sidecar_bytes * (self.kept + int(self.best_model))
        return text + f" + metrics log and sidecars ({size_text(small)})"


def size_text(size: float) -> str:
    """Bytes for people: '498 MB', '1.49 GB', '12 kB' (decimal units, as Drive shows)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            value = size / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(size)} B"


def plan_storage(folder: str | Path, state: dict[str, Any], optimizer: torch.optim.Optimizer,
                 config: Any, *, checkpoints: int, log_lines: tuple[int, int],
                 records: int, best_model: bool) -> StoragePlan:
    """The plan for a run whose last checkpoint looks like `state` (live tensors are only
    measured, never copied): `checkpoints` written in all, `records` evaluations in its
    metrics history, `log_lines` (train, eval) lines in its metrics log."""
    history = list(state.get("metrics_history") or [])
    record = dict(history[-1]) if history else sample_record(state)
    # distinct records with distinct strings, as training makes them (pickle would store
    # one object repeated `records` times only once)
    stamp = str(record.get("timestamp"))
    history += [{**record, "timestamp": stamp.encode().decode()}  # a new string each time
                for _ in range(records - len(history))]
    full = {**state, "model_state_dict": as_meta(state["model_state_dict"]),
            "metrics_history": history,
            "optimizer_state_dict": predicted_optimizer_state(optimizer)}
    weights = weights_only_state(full, config.weights_only_dtype)
    fp32 = weights_only_state(full)
    sidecar = sidecar_metadata(full, "checkpoint_epoch0000_step000000_20250101_000000.pt", 0)
    train_line = {"kind": "train", **{key: record.get(key) for key in (
        "step", "epoch", "train_loss", "learning_rate", "tokens_per_s", "mfu", "timestamp")}}
    log = log_lines[0] * _json_line(train_line) + log_lines[1] * _json_line(
        {"kind": "eval", **record})
    return StoragePlan(
        folder=Path(folder), full_bytes=blocks(serialized_bytes(full)),
        weights_bytes=blocks(serialized_bytes(weights)),
        weights_fp32_bytes=blocks(serialized_bytes(fp32)),
        sidecar_bytes=blocks(len(json.dumps(sidecar, indent=2, default=str)) + 40),
        log_bytes=blocks(log), checkpoints=checkpoints, keep_last=config.keep_last,
        keep_best=config.keep_best, keep_full=config.keep_full, best_model=best_model)


def sample_record(state: dict[str, Any]) -> dict[str, Any]:
    """An evaluation record as training writes them (full-precision floats) at the step
    and epoch of `state` (a checkpoint dict, or just those two keys)."""
    step = int(state.get("global_step") or 0)
    return {"step": step, "epoch": int(state.get("epoch") or 0),
            "train_loss": 3.3219280948873623, "val_loss": 3.4657359027997265,
            "perplexity": 31.999999999999996, "learning_rate": 0.00059947290368394,
            "tokens_seen": step * 65536, "elapsed_s": 1234.5678901234567,
            "tokens_per_s": 54321.12345678901, "mfu": 0.41234567890123456,
            "timestamp": str(state.get("timestamp") or "2025-01-01T00:00:00.000000+00:00")}


# --------------------------------------------------------------------------------------
# What is there, and the check
# --------------------------------------------------------------------------------------

def _allocated(path: Path) -> int:
    try:
        status = path.stat()
    except OSError:
        return 0
    used = getattr(status, "st_blocks", None)
    return used * 512 if used is not None else blocks(status.st_size)


def run_bytes(folder: str | Path, run_id: str | None) -> int:
    """What run `run_id` already holds in `folder` (a resumed run): its checkpoints with
    their sidecars, its best_model.pt and its metrics log. The plan replaces these."""
    if run_id is None or not Path(folder).is_dir():
        return 0
    paths = [info.path for info in own_checkpoints(folder, run_id) if not info.local_only]
    best = Path(folder) / BEST_MODEL_NAME
    if (read_sidecar(best) or {}).get("run_id") == run_id:
        paths.append(best)
    total = sum(_allocated(path) + _allocated(sidecar_path(path)) for path in paths)
    return total + _allocated(metrics_log_path(folder, run_id))


def free_bytes(folder: str | Path) -> int | None:
    """Free space where `folder` is (Drive's quota on a Drive mount); None if unknown."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def check_storage(plan: StoragePlan, run_id: str | None, refuse: bool = True) -> str:
    """The footprint message (what the run keeps at most, and the free space); raises
    `InsufficientStorageError` with the fix when the plan does not fit (unless `refuse`
    is False: then the message says so and training goes on)."""
    free = free_bytes(plan.folder)
    where = (f"free in {plan.folder}"
             + (" (Google Drive's quota, as the mount reports it)"
                if on_google_drive(plan.folder) else ""))
    message = (f"storage plan: this run keeps at most {size_text(plan.kept_bytes)} in "
               f"{plan.folder}: {plan.parts()}; writing a checkpoint briefly needs "
               f"{size_text(plan.writing_bytes)} more")
    if free is None:
        return message + "; the free space there is unknown"
    available = free + run_bytes(plan.folder, run_id)
    message += f"; {where}: {size_text(free)}"
    if plan.kept_bytes > available:
        problem = (f"the checkpoints of this run need up to {size_text(plan.kept_bytes)} in "
                   f"{plan.folder} ({plan.parts()}), but only {size_text(free)} is free there")
        if refuse:
            raise InsufficientStorageError(problem + _fix(plan))
        return (message + f". WARNING: {problem}; checkpoints that do not fit go to the "
                "local fallback folder (check_storage=False)")
    if plan.kept_bytes + plan.writing_bytes > available:
        message += (". WARNING: while a checkpoint is written the folder is short of space: "
                    "such a checkpoint goes to the local fallback folder first and is "
                    "copied back later")
    return message


def _fix(plan: StoragePlan) -> str:
    smallest = plan.smallest()
    return (f"; nothing was trained. Fix: keep fewer checkpoints (keep_last=1 and "
            f"keep_best=0 with weights_only_dtype='bf16' need "
            f"{size_text(smallest.kept_bytes)}), write the weights-only copies in half "
            "precision (weights_only_dtype='bf16'), choose a folder with more free space "
            "(checkpoint_dir), or free space there. To train anyway, set "
            "check_storage=False (command line: --ignore-storage-check); checkpoints that "
            "do not fit then go to the local fallback folder, which dies with the runtime.")
