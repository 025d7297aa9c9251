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

While a process trains a run it holds the run's lock (`RunLock`: this machine's processes)
and its lease (`RunLease`: a file in the folder that other machines sharing it, such as two
Colab runtimes on one Drive folder, can see).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import secrets
import socket
import stat
import tempfile
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from utils.checkpoint_errors import RunInUseError, RunMismatchError
from utils.fileio import host_id, write_bytes_atomically
from utils.reading import read_json_file, read_small_file
from utils.training.engine.checkpoint import (
    BEST_MODEL_NAME,
    folder_identity,
    read_sidecar,
    utc_now,
)

LEGACY_RUN_ID = "legacy"
METRICS_LOG_PREFIX = "metrics_"
METRICS_LOG_SUFFIX = ".jsonl"
# Settings that do not change which weights a run produces: a run resumed with other
# values of these is still the same run (the step budget can grow to train further).
NOT_IN_FINGERPRINT = frozenset({
    "max_steps", "epochs", "checkpoint_dir", "checkpoint_interval", "checkpoint_every_epoch",
    "keep_last", "keep_best", "background_checkpointing", "eval_interval", "eval_batches",
    "device", "compile", "log_interval", "activation_checkpointing",
    "log_to", "log_dir", "sample_every", "sample_prompt",  # what is reported, not trained
    "keep_full", "weights_only_dtype", "check_storage",  # where and how checkpoints are kept
})


def settings_differences(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """The settings that make a run (those in its fingerprint) whose values differ between
    a checkpoint's `training_config` (`saved`) and the ones `given`, as "name: saved in
    the checkpoint, given now" phrases."""
    names = sorted((set(saved) | set(given)) - NOT_IN_FINGERPRINT)
    return [f"{name}: {saved.get(name)!r} in the checkpoint, {given.get(name)!r} given"
            for name in names if saved.get(name) != given.get(name)]


def check_same_data(path: Path, state: dict[str, Any], identity: dict[str, Any]) -> None:
    """Refuse to continue a run on other tokens than it was trained on: the data position
    would be replayed on another corpus and the run's name would lie. `identity` is the
    data's now (`Trainer.data_identity`); a checkpoint written before data identities were
    recorded is not checked."""
    saved = state.get("data_identity")
    if not isinstance(saved, dict) or not isinstance(saved.get("sha256"), str):
        return
    if saved["sha256"] == identity["sha256"]:
        return
    counts = ""
    if isinstance(saved.get("train_tokens"), int):
        counts = (f" ({saved['train_tokens']:,} training tokens then, "
                  f"{identity['train_tokens']:,} now)")
    raise RunMismatchError(
        f"{path} (run {state.get('run_id') or 'legacy'}) was trained on other data than "
        f"this{counts}: its tokens' sha256 begins {saved['sha256'][:12]}, this data's "
        f"{identity['sha256'][:12]}. Continuing it would mix two corpora in one run. Fix: "
        "give the data that run was trained on (command line: --data; notebook: "
        "DATA_PATH), or start a new run on this data "
        "(resume_from=None; command line: --new-run).")


def best_val_loss_of_run(history: list[dict[str, Any]], checkpoint_dir: str | Path | None,
                         run_id: str | None) -> float:
    """The best val_loss run `run_id` recorded: in its metrics history, or in the folder's
    best_model.pt when that is the run's (best_model.pt follows the newest run)."""
    scores = [entry.get("val_loss") for entry in history]
    if checkpoint_dir and run_id is not None:
        best = read_sidecar(Path(checkpoint_dir) / BEST_MODEL_NAME) or {}
        if best.get("run_id") == run_id:
            scores.append(best.get("val_loss"))
    finite = [float(s) for s in scores if isinstance(s, (int, float)) and math.isfinite(float(s))]
    return min(finite, default=math.inf)


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
    A log deleted during training (the file, or its whole folder) is noticed at the next
    line, said once, and started again where the writer puts checkpoints then: in the
    checkpoint folder (recreated, but never the folders above it: a mount that went away
    must not be recreated on the local disk), else in the fallback folder.
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
        self._moved_said = False
        self._step: Any = None  # the step of the latest record, for messages

    def append(self, record: dict[str, Any]) -> None:
        self._step = record.get("step", self._step)
        self._pending.append(json.dumps({k: _json_safe(v) for k, v in record.items()},
                                        default=str))
        self._write(sync=time.monotonic() - self._last_sync >= self.flush_seconds)

    def flush(self) -> bool:
        """Write the waiting lines and fsync; False when the folder refused them."""
        return self._write(sync=True)

    def _write(self, sync: bool) -> bool:
        try:
            if self._handle is not None and not self._still_there():
                self._reopen_elsewhere()
            if self._handle is None:
                self._handle = self._open()
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

    def _open(self):
        """The log opened for appending, first ending a torn last line (a crash in the
        middle of a line): the next record then starts on its own line instead of being
        glued to the torn one and lost with it."""
        handle = open(self.path, "a+b")  # noqa: SIM115  (held while training)
        try:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # a FIFO would block
                raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or folder)")
            if handle.seek(0, 2) > 0:
                handle.seek(-1, 2)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
        except BaseException:
            handle.close()
            raise
        return _TextAppender(handle)

    def _still_there(self) -> bool:
        """Whether the open log is still the file at its path (not deleted or replaced)."""
        try:
            now, opened = os.stat(self.path), os.fstat(self._handle.fileno())
        except OSError:  # deleted, its folder gone, or the mount lost
            return False
        return (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)

    def _reopen_elsewhere(self) -> None:
        """The log vanished: start it again in its folder (recreated if it alone was
        deleted) or in the fallback folder, and say so once."""
        self._drop_handle()
        gone = self.path
        try:
            self.path.parent.mkdir(exist_ok=True)  # the folder itself, never its parents
            self._handle = self._open()
        except OSError:
            if self.fallback is None:
                raise
            self.fallback.parent.mkdir(parents=True, exist_ok=True)
            self.path = self.fallback
            self._handle = self._open()
        if not self._moved_said:
            self._moved_said = True
            warnings.warn(f"the metrics log {gone} was deleted during training (or its "
                          f"folder went away) at step {self._step}; the lines from there "
                          f"on are written to {self.path} (earlier evaluations are also in "
                          "the checkpoints)", stacklevel=4)

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


class _TextAppender:
    """Text lines onto a binary append handle (UTF-8)."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def write(self, text: str) -> None:
        self._handle.write(text.encode("utf-8"))

    def flush(self) -> None:
        self._handle.flush()

    def fileno(self) -> int:
        return self._handle.fileno()

    def close(self) -> None:
        self._handle.close()


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
        # in the machine's temporary folder, which every process on this machine sees. The
        # folder is named by what it is (device and inode), not how it was spelled: through
        # a symlink or a bind mount it is the same lock.
        where = hashlib.sha1(folder_key(folder).encode()).hexdigest()
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


def folder_key(folder: str | Path) -> str:
    """The folder itself: its device and inode when it exists (however it is spelled),
    else its resolved path (symlinks followed)."""
    identity = folder_identity(folder)
    if identity is not None:
        return f"inode:{identity}"
    return f"path:{os.path.realpath(Path(folder).expanduser())}"


# --------------------------------------------------------------------------------------
# Leases: which machine trains a run, for other machines sharing the folder
# --------------------------------------------------------------------------------------

LEASE_PREFIX = "lease_"
LEASE_SUFFIX = ".json"
LEASE_HEARTBEAT_SECONDS = 30.0
# A lease whose heartbeat is older than this is stale: its machine died or lost the folder.
LEASE_SECONDS = 180.0
_LEASE_NAME_RE = re.compile(r"^lease_[A-Za-z0-9._-]{1,64}\.json$")


def lease_path(folder: str | Path, run_id: str) -> Path:
    return Path(folder) / f"{LEASE_PREFIX}{run_id}{LEASE_SUFFIX}"


def is_lease_name(name: str) -> bool:
    return bool(_LEASE_NAME_RE.match(name))


class RunLease:
    """A small file in the checkpoint folder, `lease_<run_id>.json`, saying that a machine
    trains this run: host name, `fileio.host_id()`, pid, and a heartbeat refreshed every
    `LEASE_HEARTBEAT_SECONDS` by a background thread while training runs.

    Another machine that wants to train the same run (two Colab runtimes on one Drive
    folder) refuses while the heartbeat is younger than `LEASE_SECONDS`. A lease of this
    machine is never honoured: `RunLock` already decides between its processes, so this
    machine's lease is one left by a killed process. Best effort: Google Drive syncs a file
    between machines with a delay, so two runtimes started within that delay both go on.
    """

    def __init__(self, folder: str | Path, run_id: str,
                 heartbeat_seconds: float = LEASE_HEARTBEAT_SECONDS,
                 lease_seconds: float = LEASE_SECONDS) -> None:
        self.path = lease_path(folder, run_id)
        self.run_id = run_id
        self.heartbeat_seconds = heartbeat_seconds
        self.lease_seconds = lease_seconds
        self._token = secrets.token_hex(8)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict[str, Any] | None:
        """The lease of another machine whose heartbeat is recent, or None."""
        lease = read_json_file(self.path)
        if not isinstance(lease, dict) or lease.get("host_id") == host_id():
            return None
        beat = lease.get("heartbeat_unix")
        if isinstance(beat, bool) or not isinstance(beat, (int, float)) or not math.isfinite(beat):
            return None
        age = time.time() - beat
        # A heartbeat far in the future is no heartbeat (a wrong clock, or a forged file).
        return lease if -self.lease_seconds <= age <= self.lease_seconds else None

    def acquire(self) -> None:
        """Take the lease, or raise `RunInUseError` naming the machine that holds it."""
        other = self.holder()
        if other is not None:
            age = max(0.0, time.time() - float(other["heartbeat_unix"]))
            raise RunInUseError(
                f"run {self.run_id} in {self.path.parent} is being trained on another machine "
                f"({str(other.get('host'))[:64]!r}, pid {other.get('pid')}; its last heartbeat "
                f"was {age:.0f} s ago, per {self.path.name}). Fix: stop it there, or start a "
                f"separate run (resume_from=None, --new-run); if that machine is gone, wait "
                f"{self.lease_seconds:.0f} s after its last heartbeat or delete {self.path}.")
        self._beat()
        self._thread = threading.Thread(target=self._keep_alive, name="run-lease",
                                        daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still this one."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        lease = read_json_file(self.path)
        if isinstance(lease, dict) and lease.get("token") == self._token:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def _beat(self) -> None:
        now = time.time()
        lease = {"run_id": self.run_id, "host": socket.gethostname(), "host_id": host_id(),
                 "pid": os.getpid(), "token": self._token, "heartbeat_unix": now,
                 "heartbeat": datetime.fromtimestamp(now, timezone.utc).isoformat(
                     timespec="seconds")}
        with contextlib.suppress(OSError):  # a flaky folder: the checkpoint writes say so
            write_bytes_atomically(self.path, json.dumps(lease).encode())

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            self._beat()
