"""The checkpoint format: names, timestamps, sidecars, and one crash-safe way to write.

A checkpoint is written as: temporary file in the same folder -> flush + fsync -> published
under its final name -> fsync of the folder -> sidecar `<name>.json` (written the same way).
A crash at any moment leaves either the previous state or the new complete file, never a
half-written `*.pt` under a checkpoint name: the only debris is a hidden `.*.tmp` file that
listing never shows.

Names follow DESIGN.md: `checkpoint_epoch{E:04d}_step{S:06d}_{YYYYmmdd_HHMMSS}.pt`, the time
in UTC. A new checkpoint never replaces an existing file: when the name is taken (two
trainings in one folder in the same second) the run's suffix or a counter is appended.
Timestamps inside files are ISO 8601 with their UTC offset; older files without an offset
are read as the local time of the machine reading them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.checkpoint_errors import (
    ArchitectureMismatchError,
    CheckpointWriteError,
    CorruptCheckpointError,
    NotACheckpointError,
    NotResumableError,
)
from utils.config import ModelConfig
from utils.fileio import write_atomically, write_bytes_atomically
from utils.reading import read_checkpoint, read_json_file, sniff_file
from utils.training.engine.rng import rng_state, set_rng_state

FORMAT_VERSION = 1
BEST_MODEL_NAME = "best_model.pt"
SIDECAR_SUFFIX = ".json"
# The optional last part tells apart two checkpoints that would share a name.
CHECKPOINT_NAME_RE = re.compile(
    r"^checkpoint_epoch(\d{4,})_step(\d{6,})_(\d{8}_\d{6})(?:_([0-9a-z]{1,16}))?\.pt$")

# Keys every checkpoint dict carries (DESIGN.md); `scaler_state_dict` is None without fp16;
# `precision` is the resolved choice (precision.PrecisionChoice.to_dict(): name, reason, ...).
CHECKPOINT_KEYS = (
    "format_version", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict",
    "scaler_state_dict", "config", "training_config", "epoch", "global_step", "train_loss",
    "val_loss", "learning_rate", "timestamp", "metrics_history", "rng_state", "data_state",
    "tokenizer", "run_id", "run_fingerprint", "precision", "total_steps", "data_identity",
)
# One `metrics_history` entry per evaluation.
METRIC_FIELDS = ("step", "epoch", "train_loss", "val_loss", "perplexity", "learning_rate",
                 "tokens_seen", "elapsed_s", "tokens_per_s", "mfu", "timestamp")
# `total_steps`: the run's step budget (an unfinished run is told from a finished one);
# `data_identity`: sha256 and sizes of the tokens it trained on (a resume on other data is
# refused).
# Scalars copied into the sidecar so listing never has to open the large file (plus
# `resumable`, whether the file holds what a resume restores).
SIDECAR_KEYS = ("format_version", "epoch", "global_step", "train_loss", "val_loss",
                "learning_rate", "timestamp", "tokenizer", "config", "run_id",
                "run_fingerprint", "total_steps", "weights_dtype")
# What a weights-only copy leaves out: the state only a resume needs. The storage plan
# (`TrainingConfig.keep_full`) keeps it in the run's newest checkpoint(s) alone; a
# weights-only copy carries `weights_dtype` (None: the weights as trained, else "bf16" or
# "fp16") and loads, lists, compares and exports like any checkpoint.
RESUME_ONLY_KEYS = ("optimizer_state_dict", "scheduler_state_dict", "scaler_state_dict",
                    "rng_state")
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Test hook: seconds to sleep between writing the temporary file and renaming it, so a test
# can SIGKILL the process in the middle of a checkpoint write. Never set in normal use.
_SLEEP_BEFORE_REPLACE_ENV = "UTILS_TEST_CHECKPOINT_SLEEP"


# With it, `UTILS_TEST_CHECKPOINT_PAUSED` names a file created as the pause starts: the
# condition a test waits for (the temp file is complete and fsynced) instead of a guess.
_PAUSED_MARKER_ENV = "UTILS_TEST_CHECKPOINT_PAUSED"


def _test_pause() -> None:
    delay = float(os.environ.get(_SLEEP_BEFORE_REPLACE_ENV, "0") or 0)
    if delay > 0:
        if marker := os.environ.get(_PAUSED_MARKER_ENV):
            Path(marker).touch()
        time.sleep(delay)

# Where checkpoints go while the checkpoint folder fails (Drive disconnected, quota, ...).
FALLBACK_ROOT_ENV = "UTILS_FALLBACK_CHECKPOINT_ROOT"


# --------------------------------------------------------------------------------------
# Time and names
# --------------------------------------------------------------------------------------

def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def timestamp_now() -> str:
    """ISO 8601 with the UTC offset, e.g. `2026-11-25T14:30:00.123456+00:00`."""
    return utc_now().isoformat(timespec="microseconds")


def parse_timestamp(value: Any) -> datetime | None:
    """An aware datetime from an ISO 8601 string; a naive one is this machine's local time
    (how files written before timestamps carried an offset are read). None if unreadable."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.astimezone()


def checkpoint_filename(epoch: int, global_step: int, when: datetime | None = None,
                        suffix: str | None = None) -> str:
    """`checkpoint_epoch{E:04d}_step{S:06d}_{YYYYmmdd_HHMMSS}[_{suffix}].pt` (DESIGN.md's
    name); an aware `when` is written in UTC, a naive one as it is."""
    when = when or utc_now()
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    tail = f"_{suffix}" if suffix else ""
    return f"checkpoint_epoch{epoch:04d}_step{global_step:06d}_{when:%Y%m%d_%H%M%S}{tail}.pt"


def name_time(filename: str) -> datetime | None:
    """The time in a checkpoint's name (UTC for files written since names carry UTC); None
    when the name has none, or an impossible one (`..._20251399_999999.pt`)."""
    match = CHECKPOINT_NAME_RE.match(filename)
    if not match:
        return None
    try:
        return datetime.strptime(match.group(3), "%Y%m%d_%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def names_beside(filename: str, run_id: str | None = None):
    """`filename`, then the same checkpoint name with the run's suffix, then with a
    counter: the names a checkpoint may take when its own is taken by another file."""
    yield filename
    match = CHECKPOINT_NAME_RE.match(filename)
    if match is None:
        return
    stem = filename[:match.start(4) - 1] if match.group(4) else filename[:-len(".pt")]
    run_suffix = str(run_id or "").rsplit("-", 1)[-1].lower()
    if re.fullmatch(r"[0-9a-z]{1,16}", run_suffix) and run_suffix != match.group(4):
        yield f"{stem}_{run_suffix}.pt"
    for counter in range(2, 1000):
        yield f"{stem}_{counter}.pt"


def sidecar_path(checkpoint_path: str | Path) -> Path:
    """`<name>.pt.json` next to the checkpoint."""
    checkpoint_path = Path(checkpoint_path)
    return checkpoint_path.with_name(checkpoint_path.name + SIDECAR_SUFFIX)


# Inside a fallback folder: which checkpoint folder it stands for (see `fallback_dir_for`).
FALLBACK_RECORD = ".checkpoint-folder.json"


def folder_identity(folder: str | Path) -> str | None:
    """`device:inode` of an existing folder: the same however it is spelled (a symlink, a
    bind mount, Colab's `My Drive` and `MyDrive`); None when it cannot be reached."""
    try:
        info = os.stat(Path(folder).expanduser())
    except OSError:
        return None
    return f"{info.st_dev}:{info.st_ino}"


def fallback_dir_for(checkpoint_dir: str | Path) -> Path:
    """The local folder that takes checkpoints while `checkpoint_dir` fails: one per
    checkpoint folder, so recovery finds it from the checkpoint folder's path alone.

    Named after the resolved path (symlinks followed), which still works while the folder
    is gone (Drive disconnected). A fallback folder written under another spelling of the
    same folder (a bind mount) is found by the device and inode its record names; while
    the folder cannot be reached, by the spelling its record names (a symlink inside an
    unmounted Drive no longer resolves)."""
    spelled = Path(checkpoint_dir).expanduser().absolute()
    folder = Path(os.path.realpath(spelled))
    root = Path(os.environ.get(FALLBACK_ROOT_ENV) or Path(tempfile.gettempdir())
                / "gpt2-checkpoint-fallback")
    digest = hashlib.sha1(str(folder).encode()).hexdigest()[:10]
    # the name shortened: a folder name near the file system's 255-byte limit plus the
    # digest would not fit (the digest keeps it unique)
    own = root / f"{folder.name[:64] or 'root'}-{digest}"
    if own.is_dir():
        return own
    identity = folder_identity(folder)
    for candidate in _fallback_folders(root):
        record = read_json_file(candidate / FALLBACK_RECORD)
        if not isinstance(record, dict):
            continue
        if (record.get("identity") == identity if identity is not None
                else record.get("checkpoint_dir") == str(spelled)):
            return candidate
    return own


def _fallback_folders(root: Path) -> list[Path]:
    try:
        return sorted(path for path in root.iterdir() if path.is_dir())
    except OSError:
        return []


def record_fallback_folder(fallback_dir: Path, checkpoint_dir: str | Path,
                           identity: str | None) -> None:
    """Note in `fallback_dir` which checkpoint folder it stands for (`identity`: taken
    while that folder could still be reached), so every spelling of it finds this one."""
    if identity is None or (fallback_dir / FALLBACK_RECORD).is_file():
        return
    record = {"checkpoint_dir": str(Path(checkpoint_dir).expanduser().absolute()),
              "identity": identity}
    fallback_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(fallback_dir / FALLBACK_RECORD, json.dumps(record).encode())


# --------------------------------------------------------------------------------------
# Durable writes
# --------------------------------------------------------------------------------------

def _write_failure(path: Path, error: BaseException) -> CheckpointWriteError:
    return CheckpointWriteError(
        f"could not write checkpoint {path}: {error}. Earlier checkpoints in {path.parent} "
        f"are intact. Free disk space (or pick another checkpoint folder) and resume; "
        "resuming continues from the newest checkpoint.")


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


# --------------------------------------------------------------------------------------
# Sidecars
# --------------------------------------------------------------------------------------

def _finite_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def sidecar_metadata(state: dict[str, Any], filename: str, size_bytes: int) -> dict[str, Any]:
    """The small JSON record listing reads instead of the checkpoint itself."""
    meta = {key: state.get(key) for key in SIDECAR_KEYS}
    for key in ("train_loss", "val_loss", "learning_rate"):
        meta[key] = _finite_or_none(meta[key])  # JSON has no NaN; a diverged loss reads None
    meta["resumable"] = is_resumable(state)
    meta["filename"] = filename
    meta["size_bytes"] = size_bytes
    return meta


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"sidecar value of type {type(value).__name__} is not JSON-serialisable")


def write_sidecar(checkpoint_path: Path, metadata: dict[str, Any]) -> None:
    payload = json.dumps(metadata, indent=2, allow_nan=False, default=_json_default).encode()
    write_bytes_atomically(sidecar_path(checkpoint_path), payload)


def read_sidecar(checkpoint_path: str | Path) -> dict[str, Any] | None:
    """The checkpoint's JSON sidecar, or None when it is missing, not a small regular file,
    or not a JSON object (listing then reads the checkpoint itself)."""
    meta = read_json_file(sidecar_path(checkpoint_path))
    return meta if isinstance(meta, dict) else None


# --------------------------------------------------------------------------------------
# Saving and reading whole checkpoints
# --------------------------------------------------------------------------------------

def _candidate_names(state: dict[str, Any]):
    """The checkpoint's name, then the same with the run's suffix, then with a counter."""
    epoch, step = int(state["epoch"]), int(state["global_step"])
    when = parse_timestamp(state.get("timestamp"))
    yield from names_beside(checkpoint_filename(epoch, step, when), state.get("run_id"))


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Durably write `state` to `path` (a file name, or a folder to name it in) + its sidecar.

    `path` is a file name only when it ends in a checkpoint suffix (.pt, .pth, .ckpt, .bin);
    anything else is a folder, even with a dot in its name (`runs/v1.2`). An existing file
    is replaced only when it is a checkpoint (or an empty/truncated one); someone's other
    file (`corpus.txt`, a text file named `.pt`) is refused, never overwritten.
    In a folder the checkpoint gets DESIGN.md's name (`save_checkpoint_in`).
    Raises `CheckpointWriteError` when the disk is full or the folder is not writable (its
    `__cause__` is the OSError); the temporary file is removed, no earlier file is touched.
    """
    path = Path(path)
    if _is_folder_target(path):
        return save_checkpoint_in(state, path)
    return _save(state, path.parent, True, path,
                 lambda: write_atomically(path, lambda handle: _torch_save(state, handle),
                                          before_publish=_test_pause)
                 and path)


def save_checkpoint_in(state: dict[str, Any], folder: str | Path, create_parents: bool = True
                       ) -> Path:
    """Write `state` into `folder` under DESIGN.md's name, never replacing an existing file
    (the run's suffix or a counter is added on a collision). `create_parents=False` creates
    at most the folder itself: when a mounted drive goes away, its path must fail, not be
    recreated on the local disk under the mount point."""
    folder = Path(folder)

    def publish() -> Path:
        for name in _candidate_names(state):
            if write_atomically(folder / name, lambda handle: _torch_save(state, handle),
                                replace=False, before_publish=_test_pause):
                return folder / name
        raise FileExistsError(f"every candidate name for step {state['global_step']} is "
                              f"taken in {folder}")

    return _save(state, folder, create_parents, folder / next(_candidate_names(state)), publish)


def replace_checkpoint_file(state: dict[str, Any], path: str | Path) -> Path:
    """Durably write `state` as the file `path` (+ its sidecar), replacing the checkpoint
    there atomically, in a folder that must exist: a mounted drive that went away fails
    (`CheckpointWriteError`) instead of being recreated on the local disk. Someone's other
    file under that name is refused, as by `save_checkpoint`."""
    path = Path(path)
    if path.is_dir() or _is_folder_target(path):
        raise CheckpointWriteError(f"{path} is a folder; it was left untouched")
    return _save(state, path.parent, False, path,
                 lambda: write_atomically(path, lambda handle: _torch_save(state, handle),
                                          before_publish=_test_pause) and path,
                 make_folder=False)


def _save(state: dict[str, Any], folder: Path, create_parents: bool, target: Path,
          publish, make_folder: bool = True) -> Path:
    """Create the folder (unless `make_folder` is False), `publish()` the checkpoint
    (returns its path), write the sidecar; failures become `CheckpointWriteError` naming
    `target`, the file being written."""
    try:
        if make_folder:
            folder.mkdir(parents=create_parents, exist_ok=True)
        path = publish()
    except (OSError, RuntimeError) as error:  # torch reports short writes as RuntimeError
        raise _write_failure(target, error) from error
    try:
        write_sidecar(path, sidecar_metadata(state, path.name, path.stat().st_size))
    except (OSError, RuntimeError) as error:
        # The checkpoint itself is complete and listable (listing falls back to reading it).
        raise _write_failure(sidecar_path(path), error) from error
    return path


CHECKPOINT_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def make_checkpoint_folder(folder: str | Path) -> Path:
    """Create the checkpoint folder (and its parents); a file already at that path is
    refused, never replaced by checkpoints."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise CheckpointWriteError(
            f"checkpoint_dir {folder} is a file, not a folder; it was left untouched. Fix: "
            "name a folder for the checkpoints (it is created if missing).")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _is_folder_target(path: Path) -> bool:
    """Whether `save_checkpoint` should name a checkpoint inside `path`; raises
    `CheckpointWriteError` when `path` is a file that is not a checkpoint."""
    if path.is_dir():
        return True
    if not (path.exists() or path.is_symlink()):
        return path.suffix.lower() not in CHECKPOINT_FILE_SUFFIXES
    if path.suffix.lower() in CHECKPOINT_FILE_SUFFIXES and path.is_file() \
            and _replaceable(path):
        return False
    raise CheckpointWriteError(
        f"{path} is an existing file that is not a checkpoint; it was left untouched. Fix: "
        "give a new .pt file name, or a folder for the checkpoints (created if missing).")


def _replaceable(path: Path) -> bool:
    """An existing checkpoint file (even an empty or truncated one) may be replaced."""
    try:
        sniff_file(path)
    except NotACheckpointError:
        return False
    except CorruptCheckpointError:
        return True  # empty or truncated: a checkpoint write that failed earlier
    return True


# What a resume restores (`Trainer.load_checkpoint`); weights alone (a `convert` output) lack it.
TRAINING_STATE = ("optimizer_state_dict", "scheduler_state_dict", "data_state", "rng_state",
                  "training_config", "config")


def is_resumable(checkpoint: dict[str, Any]) -> bool:
    """Whether the checkpoint holds everything a resume restores (not weights alone)."""
    return all(checkpoint.get(key) is not None for key in TRAINING_STATE)


def check_resumable(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Refuse, with the fix, a checkpoint that holds weights but no training state."""
    missing = [key for key in TRAINING_STATE if checkpoint.get(key) is None]
    if not missing:
        return
    if "weights_dtype" in checkpoint:  # a weights-only copy of the storage plan
        raise NotResumableError(
            f"{path} is a weights-only copy (the storage plan keeps the optimizer state in "
            "the run's newest checkpoint only), so training cannot continue from it exactly; "
            "resume from the run's newest checkpoint (resume_from='latest', or 'auto' with "
            "the same settings; on the command line --resume latest), or load these weights "
            "for inference or fine-tuning (load_pretrained_model)")
    source = checkpoint.get("source")
    weights = source if isinstance(source, str) else "the weights' Hugging Face folder or file"
    raise NotResumableError(
        f"{path} holds model weights but no training state ({', '.join(missing)} missing), "
        f"so training cannot continue it; resume from a checkpoint written by training, or "
        f"start a new run from these weights (init_from={weights!r}; on the command line "
        f"--init-from {weights})")


def load_checkpoint_file(path: str | Path, mmap: bool = True) -> dict[str, Any]:
    """A training checkpoint (a dict with `model_state_dict`), read safely onto the CPU.

    `mmap=True` maps the tensors instead of reading them: reading only the metadata of a
    1.5 GB checkpoint is then cheap. Raises `CorruptCheckpointError` (or a subclass) for
    empty, truncated or foreign files, `UnsafeCheckpointError` for pickles that need
    arbitrary code and `CheckpointNotFoundError` (a FileNotFoundError) for a missing file.
    """
    checkpoint = read_checkpoint(path, mmap=mmap)
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
        raise CorruptCheckpointError(
            f"{path} is not a training checkpoint (no 'model_state_dict'); resume from a "
            "file written by the Trainer (python -m utils train), or load it for inference")
    check_metrics_history(path, checkpoint.get("metrics_history"))
    return checkpoint


# The type of each field of a `metrics_history` entry (None is allowed for every one: a
# diverged loss, a device without a peak FLOP figure). Other keys must hold plain scalars.
_WHOLE, _REAL, _TEXT = (int,), (int, float), (str,)
METRIC_TYPES = {"step": _WHOLE, "epoch": _WHOLE, "tokens_seen": _WHOLE, "train_loss": _REAL,
                "val_loss": _REAL, "perplexity": _REAL, "learning_rate": _REAL,
                "elapsed_s": _REAL, "tokens_per_s": _REAL, "mfu": _REAL, "timestamp": _TEXT}
_TEXT_LIMIT = 1000


def check_metrics_history(path: str | Path, history: Any) -> None:
    """Refuse (`CorruptCheckpointError` naming the entry and field) a `metrics_history`
    that is not a list of flat records of the types training writes (`METRIC_TYPES`)."""
    def bad(where: str, value: Any, wanted: str) -> CorruptCheckpointError:
        shown = f"a {type(value).__name__}" if isinstance(value, (list, dict, tuple, set)) \
            else repr(value)[:40]
        return CorruptCheckpointError(
            f"{path}: metrics_history{where} is {shown}, not {wanted}; the file is damaged "
            "or was not written by training. Fix: use another checkpoint.")

    if history is None:
        return
    if not isinstance(history, list):
        raise bad("", history, "a list of records")
    for index, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise bad(f"[{index}]", entry, "a record (dict)")
        for key, value in entry.items():
            if not isinstance(key, str) or len(key) > 100:
                raise bad(f"[{index}] key", key, "a field name")
            wanted = METRIC_TYPES.get(key, (bool, int, float, str))
            if value is not None and (not isinstance(value, wanted) or (
                    isinstance(value, bool) and bool not in wanted)):
                raise bad(f"[{index}][{key!r}]", value,
                          " or ".join(kind.__name__ for kind in wanted) + " or None")
            if isinstance(value, str) and len(value) > _TEXT_LIMIT:
                raise bad(f"[{index}][{key!r}]", value, f"a text of at most {_TEXT_LIMIT} "
                          "characters")


def model_config_dict(model: nn.Module) -> dict[str, Any]:
    """The checkpoint's `config`: `ModelConfig.to_dict()` for a GPTModel.

    Any other model (e.g. Hugging Face's GPT2LMHeadModel) gets its own config as plain
    JSON types plus `"architecture": <class name>`; `ModelConfig.from_dict` rejects such a
    dict on purpose, since it does not describe a GPTModel.
    """
    config = getattr(model, "config", None)
    if isinstance(config, ModelConfig):
        return config.to_dict()
    raw = config.to_dict() if hasattr(config, "to_dict") else {}
    plain = json.loads(json.dumps(raw, default=str))
    plain["architecture"] = type(model).__name__
    return plain


# --------------------------------------------------------------------------------------
# Weights-only copies (the storage plan)
# --------------------------------------------------------------------------------------

def check_fits(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    """Raise ArchitectureMismatchError unless the checkpoint's tensors fit `model` exactly."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in state["model_state_dict"].items()}
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    wrong = sorted(k for k in set(expected) & set(saved) if expected[k] != saved[k])
    if not (missing or unexpected or wrong):
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
    if wrong:
        parts.append(f"{len(wrong)} with other shapes (e.g. {wrong[0]}: checkpoint "
                     f"{saved[wrong[0]]}, model {expected[wrong[0]]})")
    raise ArchitectureMismatchError(
        f"{path} does not fit this model: {'; '.join(parts)} keys. Build the model from the "
        f"checkpoint's config {state.get('config')} to resume it")


@dataclass
class TrainingParts:
    """The live objects of a training run that a resumable checkpoint saves and restores."""

    model: nn.Module  # the plain module: no DDP or torch.compile wrapper around it
    optimizer: torch.optim.Optimizer
    scheduler: Any  # an LR scheduler (state_dict / load_state_dict)
    scaler: Any  # a GradScaler; its state is kept only when it is enabled (fp16)
    data: Any  # the training BatchLoader: its position in the data


def training_checkpoint(parts: TrainingParts, record: dict[str, Any],
                        run: dict[str, Any]) -> dict[str, Any]:
    """DESIGN.md's checkpoint dict: the state of `parts` (live tensors, not copies), this
    step's evaluation `record` (train_loss, val_loss, learning_rate, timestamp), every RNG,
    and `run`'s facts (the CHECKPOINT_KEYS that describe the run: global_step, epoch,
    precision, training_config, metrics_history, tokenizer, run_id, run_fingerprint,
    total_steps, data_identity)."""
    return {
        "format_version": FORMAT_VERSION,
        "model_state_dict": parts.model.state_dict(),
        "optimizer_state_dict": parts.optimizer.state_dict(),
        "scheduler_state_dict": parts.scheduler.state_dict(),
        "scaler_state_dict": parts.scaler.state_dict() if parts.scaler.is_enabled() else None,
        "precision": run["precision"],
        "config": model_config_dict(parts.model),
        "training_config": run["training_config"],
        "epoch": run["epoch"],
        "global_step": run["global_step"],
        "train_loss": record["train_loss"],
        "val_loss": record["val_loss"],
        "learning_rate": record["learning_rate"],
        "timestamp": record["timestamp"],
        "metrics_history": [dict(entry) for entry in run["metrics_history"]],
        "rng_state": rng_state(),
        "data_state": parts.data.state_dict(),
        "tokenizer": run["tokenizer"],
        "run_id": run["run_id"],
        "run_fingerprint": run["run_fingerprint"],
        "total_steps": run["total_steps"],
        "data_identity": run["data_identity"],
    }


def restore_training_checkpoint(parts: TrainingParts, state: dict[str, Any]) -> None:
    """Put what `training_checkpoint` saved back into `parts`, then every RNG, so the run
    continues bit for bit. The model loads strictly; the scaler's state only where both
    the checkpoint and this run use one. Check the file first (`check_resumable`, shapes,
    data): this changes the objects as it goes."""
    parts.model.load_state_dict(state["model_state_dict"], strict=True)
    parts.optimizer.load_state_dict(state["optimizer_state_dict"])
    parts.scheduler.load_state_dict(state["scheduler_state_dict"])
    if parts.scaler.is_enabled() and state.get("scaler_state_dict"):
        parts.scaler.load_state_dict(state["scaler_state_dict"])
    parts.data.load_state_dict(state["data_state"])
    set_rng_state(state["rng_state"])


def storage_identity(tensor: torch.Tensor) -> tuple:
    """Which storage holds a tensor's bytes: tensors that share one (GPT-2's tied embedding
    and head) are saved once. Holds for meta tensors too (size estimates use them)."""
    return tensor.device.type, tensor.untyped_storage()._cdata


def _cast_weights(state_dict: dict[str, torch.Tensor], dtype: torch.dtype
                  ) -> dict[str, torch.Tensor]:
    """Floating tensors in `dtype`; tensors that share storage (GPT-2's tied embedding and
    head) stay shared, so the copy stores them once."""
    cast: dict[tuple, torch.Tensor] = {}
    out = {}
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point() or tensor.dtype == dtype:
            out[key] = tensor
            continue
        identity = (storage_identity(tensor), tensor.storage_offset(), tuple(tensor.shape),
                    tuple(tensor.stride()))
        if identity not in cast:
            cast[identity] = tensor.to(dtype)
        out[key] = cast[identity]
    return out


def weights_only_state(state: dict[str, Any], dtype: str | None = None) -> dict[str, Any]:
    """`state` without what only a resume needs (`RESUME_ONLY_KEYS` become None), its
    weights in `dtype` ("bf16", "fp16"; None: as they are). Everything else stays:
    config, metrics history, losses, run id."""
    out = {key: None if key in RESUME_ONLY_KEYS else value for key, value in state.items()}
    if dtype is not None:
        out["model_state_dict"] = _cast_weights(state["model_state_dict"], HALF_DTYPES[dtype])
    out["weights_dtype"] = dtype
    return out


def rewrite_weights_only(path: str | Path, dtype: str | None = None) -> Path:
    """Replace the checkpoint at `path` by its weights-only copy (`weights_only_state`).

    The copy goes to a temporary file, is fsynced and renamed over `path` (one atomic
    step), then its sidecar follows: a kill at any moment leaves the full file or the
    weights-only one whole under the name, never neither (while the sidecar still
    describes the other one, listing reads the file itself). Raises `CheckpointError`
    subclasses when the file cannot be read or the copy cannot be written (the full file
    then stays as it was)."""
    path = Path(path)
    state = load_checkpoint_file(path, mmap=True)  # tensors are read while the copy is written
    return replace_checkpoint_file(weights_only_state(state, dtype), path)
