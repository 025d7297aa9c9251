"""Writing checkpoints while training goes on: background writes, retention, fallback.

Writes are slow (a gpt2-small + AdamW checkpoint is ~1.5 GB), so `CheckpointWriter` does
them on one background thread: the training thread only copies the state to CPU buffers
(`snapshot`), then goes on while the writer saves, fsyncs, renames and prunes.

What the writer may touch: only files its own run wrote (the run id in their sidecar, or a
file this writer wrote, and DESIGN.md's name pattern). Any other file in the folder (an
older run, a colleague's model, a converted file, something someone resumed from) is
never deleted or overwritten.

The storage plan: only the run's newest `keep_full` checkpoints keep the training state
(optimizer, scheduler, scaler, RNG) that a resume needs; every other checkpoint retention
keeps is rewritten weights-only once it is no longer among them (`keep_newest_full`), and
`best_model.pt` is always a weights-only file of its own (never a link to a checkpoint,
so writing over it changes nothing else). `weights_only_dtype` writes those copies in
bf16 or fp16.

When the checkpoint folder fails (Google Drive disconnected, quota, read-only, gone), the
checkpoint is written to a local fallback folder and training goes on; the checkpoint
folder is tried again at every later checkpoint, and the local-only checkpoints are copied
back as soon as it works. On Google Drive a deleted file goes to Drive's trash and still
counts against the quota, so retention empties a file (truncates it) before unlinking it.
"""

from __future__ import annotations

import filecmp
import gc
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.checkpoint_errors import CheckpointError, CheckpointWriteError
from utils.fileio import (  # noqa: F401  (DRIVE_ROOTS, DRIVE_ROOT_ENV: public here too)
    DRIVE_ROOT_ENV,
    DRIVE_ROOTS,
    TEMP_SUFFIX,
    TempOwner,
    copy_atomically,
    fsync_directory,
    host_id,
    link_atomically,
    on_google_drive,
    temp_file_owner,
    temp_file_pid,
)
from utils.training.engine.checkpoint import (
    BEST_MODEL_NAME,
    CHECKPOINT_NAME_RE,
    SIDECAR_SUFFIX,
    fallback_dir_for,
    folder_identity,
    names_beside,
    read_sidecar,
    record_fallback_folder,
    replace_checkpoint_file,
    rewrite_weights_only,
    save_checkpoint_in,
    sidecar_path,
    weights_only_state,
    write_sidecar,
)
from utils.training.engine.listing import CheckpointInfo, named_checkpoints
from utils.training.engine.runs import is_lease_name

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

    def buffer_for(self, tensor: torch.Tensor, key: tuple) -> torch.Tensor:
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu",
                                 pin_memory=tensor.is_cuda)  # a GPU tensor: CUDA is up
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
    if copy and torch.cuda.is_initialized():  # never started: no GPU tensor was copied
        torch.cuda.synchronize()  # non_blocking copies must land before the writer reads them
    return copied



# --------------------------------------------------------------------------------------
# Deleting: only our own files, and without filling Drive's trash
# --------------------------------------------------------------------------------------

def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint and its sidecar. On Google Drive the file is first truncated, so
    the copy Drive keeps in its trash costs no quota, unless it is also `best_model.pt`
    (a hard link to the same data, as folders written before best_model.pt was a file of
    its own may hold)."""
    best = path.with_name(BEST_MODEL_NAME)
    if on_google_drive(path) and not _same_file(path, best):
        try:
            with open(path, "r+b") as handle:
                handle.truncate(0)
                os.fsync(handle.fileno())
        except OSError:
            pass  # deleting still frees the folder; only the trash keeps the bytes
    sidecar_path(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def write_best_model(state: dict[str, Any], checkpoint_path: Path,
                     weights_only_dtype: str | None = None) -> Path:
    """Write `best_model.pt` beside `checkpoint_path`: the weights of `state` (the
    checkpoint just written there), weights-only, in a file of its own, durably (the old
    best stays whole until the atomic rename). Its sidecar names the source checkpoint and
    the run."""
    best = checkpoint_path.with_name(BEST_MODEL_NAME)
    try:
        replace_checkpoint_file(weights_only_state(state, weights_only_dtype), best)
        meta = read_sidecar(best) or {}
        meta["source"] = checkpoint_path.name
        write_sidecar(best, meta)
    except (OSError, RuntimeError, ValueError) as error:
        raise CheckpointWriteError(f"could not update {best}: {error}") from error
    return best


def copy_checkpoint(source: Path, folder: Path, run_id: str | None = None) -> Path:
    """Copy a checkpoint and its sidecar into `folder` the crash-safe way (temp + rename),
    never replacing a file: when its name is taken (another run's checkpoint of the same
    name), the copy takes the next free name (`names_beside`). A file there with the same
    bytes is an earlier copy of this one (interrupted before the local file was removed)."""
    meta = read_sidecar(source)
    for name in names_beside(source.name, run_id or (meta or {}).get("run_id")):
        target = folder / name
        if target.is_file() and filecmp.cmp(source, target, shallow=False):
            break
        if copy_atomically(source, target, replace=False):
            break
    else:
        raise FileExistsError(f"every name for {source.name} is taken in {folder}")
    if meta is not None:
        write_sidecar(target, {**meta, "filename": target.name})
    return target


def own_checkpoints(checkpoint_dir: str | Path, run_id: str | None = None,
                    written: set[Path] | None = None) -> list[CheckpointInfo]:
    """The writing run's checkpoints: DESIGN.md's name pattern and run id `run_id`, or one
    of `written` (files this writer made)."""
    written = {Path(p).absolute() for p in written or ()}
    return [info for info in named_checkpoints(checkpoint_dir)
            if info.path.absolute() in written
            or (run_id is not None and info.run_id == run_id)]


def _newest_first(infos: list[CheckpointInfo]) -> list[CheckpointInfo]:
    return sorted(infos, key=lambda i: (i.global_step or 0, i.sort_time()), reverse=True)


def apply_retention(checkpoint_dir: str | Path, keep_last: int | None,
                    keep_best: int | None, protect: tuple[Path, ...] = (),
                    run_id: str | None = None, written: set[Path] | None = None) -> list[Path]:
    """Delete the writing run's checkpoints that are neither among its newest `keep_last`
    (by step) nor its best `keep_best` (by val_loss), with their sidecars.

    A checkpoint is the run's own when its name follows DESIGN.md's pattern and its run id
    is `run_id`, or it is one of `written` (files this writer made). Everything else in the
    folder, `best_model.pt` and the paths in `protect` are never deleted. `None` for
    keep_last or keep_best means "keep all of that kind". Returns the deleted paths.
    """
    if keep_last is None or keep_best is None:
        return []
    infos = own_checkpoints(checkpoint_dir, run_id, written)
    newest = _newest_first(infos)[:keep_last]
    scored = [info for info in infos if info.val_loss is not None]
    best = sorted(scored, key=lambda info: info.val_loss)[:keep_best]
    keep = {info.path.absolute() for info in (*newest, *best)}
    keep |= {Path(p).absolute() for p in protect}
    deleted = []
    for info in infos:
        if info.path.absolute() in keep:
            continue
        try:
            remove_checkpoint(info.path)
        except OSError as error:
            warnings.warn(f"could not delete old checkpoint {info.path}: {error}", stacklevel=2)
            continue
        deleted.append(info.path)
    for folder in {path.parent for path in deleted}:
        fsync_directory(folder)
    return deleted


def keep_newest_full(checkpoint_dir: str | Path, keep_full: int | None,
                     weights_only_dtype: str | None = None, run_id: str | None = None,
                     written: set[Path] | None = None) -> list[Path]:
    """Rewrite the writing run's checkpoints weights-only (`rewrite_weights_only`), all but
    its newest `keep_full` (by step): those keep the training state a resume needs.
    `None` keeps every checkpoint whole. Which checkpoints are the run's own: as in
    `apply_retention`. A checkpoint that cannot be rewritten stays whole (a warning says
    why). Returns the rewritten paths."""
    if keep_full is None:
        return []
    older = _newest_first(own_checkpoints(checkpoint_dir, run_id, written))[keep_full:]
    rewritten, failed = [], False
    for info in older:
        if not info.resumable:
            continue  # already weights-only
        try:
            rewrite_weights_only(info.path, weights_only_dtype)
        except (CheckpointError, OSError) as error:
            warnings.warn(f"could not rewrite {info.path} weights-only (it stays whole): "
                          f"{error}", stacklevel=2)
            failed = True
            continue
        rewritten.append(info.path)
    if failed:
        # A failed write's traceback holds the file it read (memory-mapped) in a reference
        # cycle; release it now, so that a drive that turned read-only can be unmounted.
        gc.collect()
    return rewritten


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


# A temporary file of another machine (or one named before names carried the machine)
# counts as abandoned once nothing has been written to it for this long: a write in progress
# keeps changing it, and the same machine's dead writers are recognised at once by pid.
STALE_TEMP_SECONDS = 3600.0


def is_our_file_name(name: str) -> bool:
    """Whether `name` is one this package writes into a checkpoint folder: a checkpoint,
    best_model.pt, their sidecars, a run's lease."""
    if is_lease_name(name):
        return True
    if name.endswith(SIDECAR_SUFFIX):
        name = name[:-len(SIDECAR_SUFFIX)]
    return bool(CHECKPOINT_NAME_RE.match(name)) or name == BEST_MODEL_NAME


def _abandoned(path: Path, owner: TempOwner) -> bool:
    """Provably left behind: written on this machine by a process that is gone, or (another
    machine's, whose processes cannot be asked) untouched for `STALE_TEMP_SECONDS`."""
    if owner.host == host_id():
        return not _alive(owner.pid)
    try:
        return time.time() - path.stat().st_mtime > STALE_TEMP_SECONDS
    except OSError:
        return False


def remove_stale_temp_files(checkpoint_dir: str | Path) -> list[Path]:
    """Delete the temporary files of our writes that were killed (they can be gigabytes).
    Only our own temp names (`fileio.temp_path` of a file we write) are considered, and only
    when `_abandoned`: a user's `.notes.tmp`, and a write in progress here or on another
    machine sharing the folder, are left alone."""
    removed = []
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return removed
    for candidate in folder.glob(f".*{TEMP_SUFFIX}"):
        owner = temp_file_owner(candidate)
        if owner is None or not is_our_file_name(owner.final_name):
            continue
        if candidate.is_file() and not candidate.is_symlink() and _abandoned(candidate, owner):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


# --------------------------------------------------------------------------------------
# Writer: one write in flight, on a background thread (or inline when background=False)
# --------------------------------------------------------------------------------------

class CheckpointWriter:
    """Writes checkpoints to `checkpoint_dir`, then prunes (retention, then the storage
    plan's weights-only rewrites) and writes `best_model.pt`.

    `submit(state, is_best)` snapshots `state` to CPU on the calling thread (the only
    time training is blocked), waits for the previous write if it is still running, and
    hands the snapshot to a writer thread. An error in the writer is raised on the
    training thread by the next `submit` or by `close()`; `close()` waits for the last write.
    `notices` collects what the training thread should tell the user (fallback writes).
    """

    def __init__(self, checkpoint_dir: str | Path, keep_last: int | None = 3,
                 keep_best: int | None = 1, background: bool = True,
                 run_id: str | None = None, keep_full: int | None = 1,
                 weights_only_dtype: str | None = None) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.fallback_dir = fallback_dir_for(checkpoint_dir)
        # Taken now, while the folder works: the fallback folder records it when first used.
        self.folder_identity = folder_identity(checkpoint_dir)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.keep_full = keep_full  # newest checkpoints that stay whole (None: all)
        self.weights_only_dtype = weights_only_dtype
        self.background = background
        self.run_id = run_id
        self.buffers = SnapshotBuffers()
        self.last_path: Path | None = None
        self.last_blocked_s = 0.0  # time the caller spent in the latest submit()
        self.written: set[Path] = set()
        self.local_only: list[Path] = []  # written to the fallback folder, not copied back
        self.notices: list[str] = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._adopt_local_checkpoints()

    def _adopt_local_checkpoints(self) -> None:
        """Checkpoints of this run that an earlier session could only write locally are
        copied back, like this session's own, at the first write that reaches the folder."""
        if self.run_id is None or not self.fallback_dir.is_dir():
            return
        self.local_only = sorted((info.path for info in named_checkpoints(
            self.checkpoint_dir, run=self.run_id) if info.local_only),
            key=lambda path: path.name)

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

    def take_notices(self) -> list[str]:
        notices, self.notices = self.notices, []
        return notices

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
        try:
            path = save_checkpoint_in(state, self.checkpoint_dir,
                                      create_parents=not self.written)
        except CheckpointWriteError as error:
            path = self._write_locally(state, error)
        else:
            self._copy_back()
        self.last_path = path
        self.written.add(path.absolute())
        self._prune(protect=(path,))  # before best_model.pt: the folder's peak stays lower
        if is_best:
            try:
                write_best_model(state, path, self.weights_only_dtype)
            except CheckpointWriteError as error:  # the checkpoint itself is safe
                self.notices.append(f"best_model.pt not updated: {error}")

    def _write_locally(self, state: dict[str, Any], error: CheckpointWriteError) -> Path:
        """The checkpoint folder failed: write to the fallback folder, keep training."""
        cause = error.__cause__ or error
        try:
            record_fallback_folder(self.fallback_dir, self.checkpoint_dir, self.folder_identity)
            path = save_checkpoint_in(state, self.fallback_dir)
        except (CheckpointWriteError, OSError) as local_error:
            raise CheckpointWriteError(
                f"could not write checkpoint step {state.get('global_step')} to "
                f"{self.checkpoint_dir} ({cause}) nor to the local fallback folder "
                f"{self.fallback_dir} ({local_error.__cause__ or local_error}). Earlier "
                "checkpoints are intact. Fix: free disk space or reconnect the folder, then "
                "resume.") from error
        self.local_only.append(path)
        self.notices.append(
            f"checkpoint folder {self.checkpoint_dir} failed ({cause}); step "
            f"{state.get('global_step')} was written locally to {path} and training goes "
            f"on. The folder is tried again at the next checkpoint.")
        return path

    def _copy_back(self) -> None:
        """The checkpoint folder works again: move local-only checkpoints into it."""
        for local in list(self.local_only):
            try:
                copied = copy_checkpoint(local, self.checkpoint_dir, self.run_id)
            except OSError:
                return  # still failing: try again at the next checkpoint
            self.written.add(copied.absolute())
            remove_checkpoint(local)
            self.local_only.remove(local)
            renamed = f" as {copied.name} (its name was taken)" if copied.name != local.name else ""
            self.notices.append(f"copied {local.name} back into {self.checkpoint_dir}{renamed}")

    def _prune(self, protect: tuple[Path, ...]) -> None:
        # Listing the checkpoint folder includes its fallback folder: one retention over
        # both. While the checkpoint folder is gone, prune the fallback folder alone.
        # Retention first: a checkpoint about to be deleted is never rewritten.
        folder = self.checkpoint_dir if self.checkpoint_dir.is_dir() else self.fallback_dir
        try:
            apply_retention(folder, self.keep_last, self.keep_best, protect=protect,
                            run_id=self.run_id, written=self.written)
            keep_newest_full(folder, self.keep_full, self.weights_only_dtype,
                             run_id=self.run_id, written=self.written)
        except OSError as error:  # pruning is housekeeping: warn, keep training
            warnings.warn(f"could not prune old checkpoints in {folder}: {error}",
                          stacklevel=2)
        self.local_only = [path for path in self.local_only if path.exists()]
