"""Crash-safe checkpoint writing: timestamped files, JSON sidecars, retention, best model.

A checkpoint is written as: temporary file in the same folder -> flush + fsync ->
`os.replace` onto its final name -> fsync of the folder -> sidecar `<name>.json` (written
the same way). A crash at any moment leaves either the previous state or the new complete
file, never a half-written `*.pt` under a checkpoint name: the only debris is a hidden
`.*.tmp` file that `list_checkpoints` never lists.

Writes are slow (a gpt2-small + AdamW checkpoint is ~1.5 GB), so `CheckpointWriter` does
them on one background thread: the training thread only copies the state to CPU buffers
(`snapshot`), then goes on while the writer saves, fsyncs, renames and prunes.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import threading
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.training.engine.errors import CheckpointWriteError

FORMAT_VERSION = 1
BEST_MODEL_NAME = "best_model.pt"
SIDECAR_SUFFIX = ".json"
TEMP_SUFFIX = ".tmp"
CHECKPOINT_NAME_RE = re.compile(r"^checkpoint_epoch(\d{4,})_step(\d{6,})_(\d{8}_\d{6})\.pt$")

# Keys every checkpoint dict carries (DESIGN.md); `scaler_state_dict` is None without fp16.
CHECKPOINT_KEYS = (
    "format_version", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict",
    "scaler_state_dict", "config", "training_config", "epoch", "global_step", "train_loss",
    "val_loss", "learning_rate", "timestamp", "metrics_history", "rng_state", "data_state",
    "tokenizer",
)
# One `metrics_history` entry per evaluation.
METRIC_FIELDS = ("step", "epoch", "train_loss", "val_loss", "perplexity", "learning_rate",
                 "tokens_seen", "elapsed_s", "timestamp")
# Scalars copied into the sidecar so listing never has to open the large file.
SIDECAR_KEYS = ("format_version", "epoch", "global_step", "train_loss", "val_loss",
                "learning_rate", "timestamp", "tokenizer", "config")

# Test hook: seconds to sleep between writing the temporary file and renaming it, so a test
# can SIGKILL the process in the middle of a checkpoint write. Never set in normal use.
_SLEEP_BEFORE_REPLACE_ENV = "UTILS_TEST_CHECKPOINT_SLEEP"


def checkpoint_filename(epoch: int, global_step: int, when: datetime | None = None) -> str:
    """`checkpoint_epoch{E:04d}_step{S:06d}_{YYYYmmdd_HHMMSS}.pt` (DESIGN.md's name)."""
    when = when or datetime.now()
    return f"checkpoint_epoch{epoch:04d}_step{global_step:06d}_{when:%Y%m%d_%H%M%S}.pt"


def _parse_time(timestamp: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(timestamp) if isinstance(timestamp, str) else None
    except ValueError:
        return None


def sidecar_path(checkpoint_path: str | Path) -> Path:
    """`<name>.pt.json` next to the checkpoint."""
    checkpoint_path = Path(checkpoint_path)
    return checkpoint_path.with_name(checkpoint_path.name + SIDECAR_SUFFIX)


def temp_path(final_path: Path) -> Path:
    """Hidden temporary name in the same folder (same file system, so the rename is atomic)."""
    return final_path.with_name(f".{final_path.name}{TEMP_SUFFIX}")


# --------------------------------------------------------------------------------------
# Snapshot: a CPU copy of the training state that the writer thread can save at leisure.
# --------------------------------------------------------------------------------------

_NUMPY_COPYABLE = {torch.float32, torch.float64, torch.float16, torch.int64, torch.int32,
                   torch.int16, torch.int8, torch.uint8, torch.bool}


class SnapshotBuffers:
    """Reusable CPU buffers for `snapshot`.

    Copying into buffers allocated by the previous checkpoint avoids re-faulting ~1.5 GB
    of fresh pages every time, which is most of the cost of a plain `clone()`. The writer
    holds at most one snapshot, and the next snapshot waits for that write to finish, so
    the buffers are free again whenever `snapshot` runs.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}
        self.pin_memory = torch.cuda.is_available()

    def buffer_for(self, tensor: torch.Tensor, key: tuple) -> torch.Tensor:
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu",
                                 pin_memory=self.pin_memory and tensor.is_cuda)
            self._buffers[key] = buffer
        return buffer

    def allocate(self, tensor: torch.Tensor, key: tuple) -> torch.Tensor:
        """Allocate (and touch, so the page faults happen now) the buffer for `tensor`."""
        return self.buffer_for(tensor, key).zero_()

    def copy(self, tensor: torch.Tensor, key: tuple) -> torch.Tensor:
        tensor = tensor.detach()
        buffer = self.buffer_for(tensor, key)
        if tensor.is_cuda:
            buffer.copy_(tensor, non_blocking=True)
        elif tensor.dtype in _NUMPY_COPYABLE and tensor.is_contiguous():
            # One plain memcpy per tensor. torch's copy_ splits large copies over its
            # thread pool, which on a busy CPU was 2-6x slower (bench/checkpoint.py).
            np.copyto(buffer.numpy(), tensor.numpy())
        else:
            buffer.copy_(tensor)
        return buffer


def snapshot(state: Any, buffers: SnapshotBuffers | None = None,
             copy: bool = True) -> Any:
    """Deep copy of `state` with every tensor copied to CPU; other values copied as-is.

    Tensors that share storage (GPT-2's tied embedding and head) stay shared in the copy,
    so the checkpoint stores them once, exactly as `torch.save` of the live state would.
    `copy=False` only allocates the buffers (see `CheckpointWriter.prepare`).
    """
    buffers = buffers or SnapshotBuffers()
    transfer = buffers.copy if copy else buffers.allocate
    seen: dict[tuple, torch.Tensor] = {}

    def visit(value: Any, path: tuple) -> Any:
        if isinstance(value, torch.Tensor):
            identity = (value.device, value.untyped_storage().data_ptr(), value.storage_offset(),
                        tuple(value.shape), tuple(value.stride()), value.dtype)
            if identity not in seen:
                seen[identity] = transfer(value, path)
            return seen[identity]
        if isinstance(value, dict):
            return type(value)((k, visit(v, (*path, k))) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return type(value)(visit(v, (*path, i)) for i, v in enumerate(value))
        return value

    copied = visit(state, ())
    if copy and torch.cuda.is_available():
        torch.cuda.synchronize()  # non_blocking copies must land before the writer reads them
    return copied


# --------------------------------------------------------------------------------------
# Durable writes
# --------------------------------------------------------------------------------------

def _fsync_directory(directory: Path) -> None:
    """Make a rename durable; some file systems (and Windows) cannot open folders: skip there."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomically(final_path: Path, write) -> None:
    """Call `write(file)` on a temporary file, fsync it and rename it onto `final_path`."""
    temporary = temp_path(final_path)
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        delay = float(os.environ.get(_SLEEP_BEFORE_REPLACE_ENV, "0") or 0)
        if delay > 0 and final_path.suffix == ".pt":
            time.sleep(delay)
        os.replace(temporary, final_path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(final_path.parent)


def _write_failure(path: Path, error: BaseException) -> CheckpointWriteError:
    return CheckpointWriteError(
        f"could not write checkpoint {path}: {error}. Earlier checkpoints in {path.parent} "
        f"are intact. Free disk space (or pick another --checkpoint-dir / checkpoint_dir) "
        f"and resume with resume_from='latest'."
    )


def sidecar_metadata(state: dict[str, Any], filename: str, size_bytes: int) -> dict[str, Any]:
    """The small JSON record `list_checkpoints` reads instead of the checkpoint itself."""
    meta = {key: state.get(key) for key in SIDECAR_KEYS}
    for key in ("train_loss", "val_loss", "learning_rate"):
        meta[key] = _finite_or_none(meta[key])  # JSON has no NaN; a diverged loss reads None
    meta["filename"] = filename
    meta["size_bytes"] = size_bytes
    return meta


def write_sidecar(checkpoint_path: Path, metadata: dict[str, Any]) -> None:
    payload = json.dumps(metadata, indent=2, allow_nan=False, default=_json_default).encode()
    _write_atomically(sidecar_path(checkpoint_path), lambda handle: handle.write(payload))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"sidecar value of type {type(value).__name__} is not JSON-serialisable")


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class _ErrorRecordingFile:
    """File wrapper that remembers the OSError of a failed write.

    torch.save's zip writer turns a failed write into an opaque "unexpected pos" error;
    keeping the OSError lets the message say "No space left on device" / "File too large".
    """

    def __init__(self, handle) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def _torch_save(state: dict[str, Any], handle) -> None:
    recorder = _ErrorRecordingFile(handle)
    try:
        torch.save(state, recorder)
    except RuntimeError as error:
        if recorder.error is not None:
            raise recorder.error from error
        raise


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Durably write `state` to `path` (a file name, or a folder to name it in) + its sidecar.

    Raises `CheckpointWriteError` when the disk is full or the folder is not writable; the
    temporary file is removed and no earlier checkpoint is touched.
    """
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / checkpoint_filename(int(state["epoch"]), int(state["global_step"]),
                                          _parse_time(state.get("timestamp")))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, lambda handle: _torch_save(state, handle))
    except (OSError, RuntimeError) as error:  # torch reports short writes as RuntimeError
        raise _write_failure(path, error) from error
    try:
        write_sidecar(path, sidecar_metadata(state, path.name, path.stat().st_size))
    except (OSError, RuntimeError) as error:
        # The checkpoint itself is complete and listable (listing falls back to reading it).
        raise _write_failure(sidecar_path(path), error) from error
    return path


def update_best_model(checkpoint_path: Path) -> Path:
    """Point `best_model.pt` (and its sidecar) at `checkpoint_path`, atomically.

    A hard link costs nothing; where links are not supported (some network mounts) the
    file is copied. Either way the old best stays in place until the rename.
    """
    best = checkpoint_path.with_name(BEST_MODEL_NAME)
    temporary = temp_path(best)
    temporary.unlink(missing_ok=True)
    try:
        try:
            os.link(checkpoint_path, temporary)
        except OSError:
            with open(checkpoint_path, "rb") as source, open(temporary, "wb") as target:
                shutil.copyfileobj(source, target, length=16 << 20)
                target.flush()
                os.fsync(target.fileno())
        os.replace(temporary, best)
        _fsync_directory(best.parent)
        meta = json.loads(sidecar_path(checkpoint_path).read_text())
        meta["source"] = checkpoint_path.name
        write_sidecar(best, meta)
    except (OSError, RuntimeError, ValueError) as error:
        temporary.unlink(missing_ok=True)
        raise _write_failure(best, error) from error
    return best


def read_sidecar(checkpoint_path: str | Path) -> dict[str, Any] | None:
    """The checkpoint's JSON sidecar, or None when it is missing or unreadable."""
    try:
        meta = json.loads(sidecar_path(checkpoint_path).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def read_best_val_loss(checkpoint_dir: str | Path) -> float | None:
    """val_loss recorded in `best_model.pt.json`, or None when there is none to read."""
    meta = read_sidecar(Path(checkpoint_dir) / BEST_MODEL_NAME)
    return None if meta is None else _finite_or_none(meta.get("val_loss"))


def apply_retention(checkpoint_dir: str | Path, keep_last: int | None,
                    keep_best: int | None, protect: tuple[Path, ...] = ()) -> list[Path]:
    """Delete checkpoints that are neither among the newest `keep_last` nor the best
    `keep_best` by val_loss, plus their sidecars; return the deleted paths.

    `None` for either means "keep all of that kind", so nothing is deleted. `best_model.pt`,
    the paths in `protect` and files that do not read as checkpoints are never deleted.
    """
    if keep_last is None or keep_best is None:
        return []
    from utils.training.engine.recovery import list_checkpoints

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        infos = [info for info in list_checkpoints(checkpoint_dir)
                 if info.filename != BEST_MODEL_NAME]
    newest = sorted(infos, key=lambda info: info.sort_time(), reverse=True)[:keep_last]
    scored = [info for info in infos if info.val_loss is not None]
    best = sorted(scored, key=lambda info: info.val_loss)[:keep_best]
    keep = {info.path.resolve() for info in (*newest, *best)}
    keep |= {Path(p).resolve() for p in protect}
    deleted = []
    for info in infos:
        if info.path.resolve() in keep:
            continue
        sidecar_path(info.path).unlink(missing_ok=True)
        info.path.unlink(missing_ok=True)
        deleted.append(info.path)
    if deleted:
        _fsync_directory(Path(checkpoint_dir))
    return deleted


def remove_stale_temp_files(checkpoint_dir: str | Path) -> list[Path]:
    """Delete `.*.tmp` files left by a write that was killed (they can be gigabytes)."""
    removed = []
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return removed
    for candidate in folder.glob(f".*{TEMP_SUFFIX}"):
        if candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


# --------------------------------------------------------------------------------------
# Writer: one write in flight, on a background thread (or inline when background=False)
# --------------------------------------------------------------------------------------

class CheckpointWriter:
    """Writes checkpoints to `checkpoint_dir`, then updates `best_model.pt` and prunes.

    `submit(state, is_best)` snapshots `state` to CPU on the calling thread (the only
    time training is blocked), waits for the previous write if it is still running, and
    hands the snapshot to a writer thread. An error in the writer is raised on the
    training thread by the next `submit` or by `close()`; `close()` waits for the last write.
    """

    def __init__(self, checkpoint_dir: str | Path, keep_last: int | None = 3,
                 keep_best: int | None = 1, background: bool = True) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.background = background
        self.buffers = SnapshotBuffers()
        self.last_path: Path | None = None
        self.last_blocked_s = 0.0  # time the caller spent in the latest submit()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, state: dict[str, Any], is_best: bool = False) -> None:
        started = time.perf_counter()
        self.wait()  # at most one write in flight; re-raises the previous write's error
        copied = snapshot(state, self.buffers) if self.background else state
        if self.background:
            self._thread = threading.Thread(target=self._run, args=(copied, is_best),
                                            name="checkpoint-writer", daemon=True)
            self._thread.start()
        else:
            self._write(copied, is_best)
        self.last_blocked_s = time.perf_counter() - started

    def prepare(self, state: dict[str, Any]) -> None:
        """Allocate the snapshot buffers for states shaped like `state`, on the writer
        thread, so the first checkpoint does not pay ~1.5 GB of page faults (gpt2-small +
        AdamW) while training waits. Call it once the optimizer state exists."""
        if not self.background:
            return
        self.wait()
        self._thread = threading.Thread(target=self._allocate, args=(state,),
                                        name="checkpoint-buffers", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the write in flight is done; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    close = wait

    def _allocate(self, state: dict[str, Any]) -> None:
        try:
            snapshot(state, self.buffers, copy=False)
        except (MemoryError, RuntimeError) as error:  # the first snapshot allocates instead
            warnings.warn(f"could not preallocate checkpoint buffers: {error}", stacklevel=2)

    def _run(self, state: dict[str, Any], is_best: bool) -> None:
        try:
            self._write(state, is_best)
        except BaseException as error:  # handed to the training thread
            self._error = error

    def _write(self, state: dict[str, Any], is_best: bool) -> None:
        path = save_checkpoint(state, self.checkpoint_dir)
        self.last_path = path
        if is_best:
            update_best_model(path)
        try:
            apply_retention(self.checkpoint_dir, self.keep_last, self.keep_best, protect=(path,))
        except OSError as error:  # pruning is housekeeping: warn, keep training
            warnings.warn(f"could not prune old checkpoints in {self.checkpoint_dir}: {error}",
                          stacklevel=2)
