"""Runs: which checkpoints belong to one training trajectory, and its metrics log.

A run is one training trajectory from step 0, however often it is resumed. It gets a
`run_id` at step 0 (readable: UTC time + a short random suffix) that every checkpoint and
sidecar of the run carries, with a fingerprint of what makes two trainings the same run:
model config, tokenizer, data, and the training settings that change the trajectory (not
the step budget, the checkpoint folder or how often to evaluate or save). Checkpoints
written before runs existed carry no id: they form one legacy run.

Each run keeps an append-only metrics log, `metrics_<run_id>.jsonl`, beside its
checkpoints: one JSON line per logged step and per evaluation, flushed every few seconds,
so the curve survives up to the moment of a crash, not only up to the last checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from utils.training.engine.checkpoint import utc_now
from utils.training.engine.reading import read_small_file

LEGACY_RUN_ID = "legacy"
METRICS_LOG_PREFIX = "metrics_"
METRICS_LOG_SUFFIX = ".jsonl"
# Settings that do not change which weights a run produces: a run resumed with other
# values of these is still the same run (the step budget can grow to train further).
NOT_IN_FINGERPRINT = frozenset({
    "max_steps", "epochs", "checkpoint_dir", "checkpoint_interval", "checkpoint_every_epoch",
    "keep_last", "keep_best", "background_checkpointing", "eval_interval", "eval_batches",
    "device", "compile", "log_interval", "activation_checkpointing",
    "keep_full", "weights_only_dtype", "check_storage",  # where and how checkpoints are kept
})


def new_run_id() -> str:
    """`YYYYmmdd-HHMMSS-xxxxxx`: when the run started (UTC) and 6 random hex digits."""
    return f"{utc_now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def run_fingerprint(model_config: dict[str, Any] | None, tokenizer: str | None,
                    data_sha256: str | None, training_config: dict[str, Any]) -> str:
    """16 hex digits that are equal exactly when two trainings would be the same run."""
    settings = {k: v for k, v in sorted(training_config.items()) if k not in NOT_IN_FINGERPRINT}
    identity = {"model": model_config, "tokenizer": tokenizer, "data": data_sha256,
                "training": settings}
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_sha256(*arrays: Any) -> str:
    """sha256 of token arrays (numpy, memmap, tensor, or a view made of several parts such
    as `utils.data.TokenView`), read in 64 MB pieces: never a copy of a whole corpus."""
    import numpy as np

    digest = hashlib.sha256()
    for array in arrays:
        parts = getattr(array, "parts", None) or [array]
        for part in parts:
            if part is None:
                digest.update(b"none")
                continue
            if hasattr(part, "numpy") and not isinstance(part, np.ndarray):
                part = part.detach().cpu().numpy()
            flat = np.asarray(part).reshape(-1)
            digest.update(f"{flat.dtype.str}:{flat.size};".encode())
            step = max(1, (64 << 20) // max(1, flat.itemsize))
            for start in range(0, flat.size, step):
                digest.update(np.ascontiguousarray(flat[start:start + step]).tobytes())
    return digest.hexdigest()


def metrics_log_path(folder: str | Path, run_id: str) -> Path:
    return Path(folder) / f"{METRICS_LOG_PREFIX}{run_id}{METRICS_LOG_SUFFIX}"


def _json_safe(value: Any) -> Any:
    """JSON has no NaN/Inf: a diverged loss is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends one JSON line per record to the run's log.

    Each line is handed to the operating system at once (a killed process loses nothing)
    and fsynced every `flush_seconds` (a machine that dies loses at most that much). A
    failing folder (Drive disconnected) never stops training: lines wait in memory and
    are written by the next append or flush that works; `close()` says if some never were.
    """

    def __init__(self, folder: str | Path, run_id: str, flush_seconds: float = 5.0,
                 fallback_folder: str | Path | None = None) -> None:
        self.path = metrics_log_path(folder, run_id)
        self.fallback = metrics_log_path(fallback_folder, run_id) if fallback_folder else None
        self.flush_seconds = flush_seconds
        self._pending: list[str] = []
        self._handle = None
        self._last_sync = time.monotonic()
        self._warned = False

    def append(self, record: dict[str, Any]) -> None:
        self._pending.append(json.dumps({k: _json_safe(v) for k, v in record.items()},
                                        default=str))
        self._write(sync=time.monotonic() - self._last_sync >= self.flush_seconds)

    def flush(self) -> bool:
        """Write the waiting lines and fsync; False when the folder refused them."""
        return self._write(sync=True)

    def _write(self, sync: bool) -> bool:
        try:
            if self._handle is None:
                self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            if self._pending:
                self._handle.write("\n".join(self._pending) + "\n")
                self._handle.flush()
                self._pending.clear()
            if sync:
                os.fsync(self._handle.fileno())
                self._last_sync = time.monotonic()
        except OSError as error:
            self._drop_handle()
            if not self._warned:
                warnings.warn(f"could not append to the metrics log {self.path}: {error}; "
                              "training goes on and retries with the next line",
                              stacklevel=3)
                self._warned = True
            return False
        return True

    def _drop_handle(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):  # the lines it held are still pending
                self._handle.close()
            self._handle = None

    def close(self) -> None:
        """Flush; lines the folder still refuses go to the fallback folder's log (beside the
        checkpoints written there), so recovery finds them."""
        if not self.flush() and self.fallback is not None:
            self.path, self._warned = self.fallback, True
            self._drop_handle()
            with contextlib.suppress(OSError):
                self.fallback.parent.mkdir(parents=True, exist_ok=True)
            self.flush()
        if self._pending:
            warnings.warn(f"{len(self._pending)} metrics line(s) could not be written to "
                          f"{self.path}", stacklevel=2)
        self._drop_handle()


def read_metrics_log(path: str | Path, limit_bytes: int = 256 << 20) -> list[dict[str, Any]]:
    """The records of a metrics log, in order; torn or foreign lines are skipped.

    A record that repeats a step (a resumed run logs the steps after its checkpoint again)
    replaces the earlier one of the same kind, so the curve is continuous.
    """
    data = read_small_file(path, limit=limit_bytes)
    if data is None:
        return []
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue  # the last line of a log cut off by a crash
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
            key = (str(record.get("kind", "train")), step)
            records.pop(key, None)
            records[key] = record
    return sorted(records.values(), key=lambda r: (r["step"], r.get("kind") == "eval"))


class RunLock:
    """An advisory lock on one run in one folder, held while a process trains it, so two
    processes never resume the same run at once. Where the file system cannot lock (some
    network mounts), training goes on unlocked."""

    def __init__(self, folder: str | Path, run_id: str) -> None:
        # Kept out of the checkpoint folder (it is the user's): one file per folder and run
        # in the machine's temporary folder, which every process on this machine sees.
        where = hashlib.sha1(str(Path(folder).expanduser().absolute()).encode()).hexdigest()
        self.path = Path(tempfile.gettempdir()) / "gpt2-run-locks" / f"{where[:12]}-{run_id}.lock"
        self._handle = None

    def acquire(self) -> bool:
        """True when locked (or locking is unsupported); False when another process holds it."""
        try:
            import fcntl
        except ImportError:  # Windows: no fcntl
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")  # noqa: SIM115  (held while training)
        except OSError:
            return True
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        except OSError:
            handle.close()
            return True
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            # Closing drops the lock. The file stays: unlinking it would let a process that
            # opened it just before lock a file nobody else can see any more.
            self._handle.close()
            self._handle = None
