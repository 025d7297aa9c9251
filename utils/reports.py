"""The printed reports of loading a checkpoint (the original design's output), one function
per section.

Each function returns text; the notebook and `python -m utils load` print it, so the text
names functions and settings, never notebook cells (`utils.forms` adds those). Parameter
counts are of unique tensors (GPT-2's tied head counted once, as Hugging Face counts), and
sizes use each tensor's actual dtype.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from utils.checkpoint_errors import (
    ArchitectureMismatchError,
    CheckpointConfigError,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptCheckpointError,
    EmptyCheckpointError,
    InsufficientStorageError,
    InvalidWeightsError,
    ModelNotInitializedError,
    NoCheckpointsError,
    NotACheckpointError,
    RunMismatchError,
    RunNotFoundError,
    TruncatedCheckpointError,
    UnrecognizedCheckpointError,
    UnsafeCheckpointError,
)

RULE = "=" * 71
ARROW = "→"
PREVIEW_COUNT = 5


def section(title: str, body: str) -> str:
    return f"{RULE}\n{title}\n{RULE}\n\n{body.rstrip()}\n"


def _number(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def _integer(value: Any, width: int = 0) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{int(value):>{width}d}"


def _name(path: str | Path | None) -> str:
    return Path(path).name if path else "n/a"


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------

def available_checkpoints_report(infos: Sequence[Any], selected_path: str | Path | None = None
                                 ) -> str:
    """AVAILABLE CHECKPOINTS: one row per `CheckpointInfo`, the selected one marked with →."""
    if not infos:
        return section("AVAILABLE CHECKPOINTS", "(no checkpoints)")
    from utils.training.engine.recovery import printable_name

    selected = Path(selected_path).resolve() if selected_path else None
    rows = []
    for index, info in enumerate(infos):
        mark = ARROW if selected is not None and Path(info.path).resolve() == selected else " "
        run = getattr(info, "run", None)
        rows.append(f"{mark} [{index}] Epoch {_integer(info.epoch, 2)} | "
                    f"Step {_integer(info.global_step, 4)} | "
                    f"train_loss={_number(info.train_loss)} | val_loss={_number(info.val_loss)}"
                    + (f" | run {run}" if run else "") + "\n"
                    f"     {printable_name(info.filename)} ({resume_text(info)})")
    return section("AVAILABLE CHECKPOINTS", "\n\n".join(rows))


def checkpoints_table(infos: Sequence[Any], selected_path: str | Path | None = None):
    """AVAILABLE CHECKPOINTS as a pandas DataFrame (the notebook renders it as a table):
    the same rows and index numbers as `available_checkpoints_report`, → on the selected,
    and which can resume training ("kept": resumable / weights only)."""
    import pandas as pd

    from utils.training.engine.recovery import printable_name

    selected = Path(selected_path).resolve() if selected_path else None
    rows = [{"": ARROW if selected is not None and Path(info.path).resolve() == selected
             else "",
             "epoch": info.epoch, "step": info.global_step,
             "train_loss": info.train_loss, "val_loss": info.val_loss,
             "run": getattr(info, "run", None) or "", "file": printable_name(info.filename),
             "kept": resume_text(info)}
            for info in infos]
    table = pd.DataFrame(rows, columns=["", "epoch", "step", "train_loss", "val_loss", "run",
                                        "file", "kept"])
    return table.round({"train_loss": 4, "val_loss": 4})


def resume_text(info: Any) -> str:
    """Whether a listed checkpoint can resume training: 'resumable' or 'weights only'
    (the storage plan keeps the optimizer state in a run's newest checkpoint only)."""
    return "resumable" if getattr(info, "resumable", True) else "weights only"


def selection_report(path: str | Path, method: str) -> str:
    """Which file was chosen and how (manual override / recovered results / best val_loss)."""
    return f"📂 Selected: {_name(path)}\n🔍 Selection Method: {method[:1].upper() + method[1:]}\n"


def mode_text(model: Any) -> str:
    return ("Training (dropout active)" if model.training
            else "Evaluation (dropout/batchnorm frozen)")


def model_device(model: Any) -> str:
    first = next(iter(model.parameters()), None)
    return "n/a" if first is None else str(first.device)


def loading_report(path: str | Path, model: Any, load_report: Any = None,
                   notes: Iterable[str] = ()) -> str:
    """LOADING MODEL WEIGHTS: the file, success, device and mode (and partial-load details).

    `notes` default to the `load_report`'s (what the loader recognised or converted)."""
    notes = list(notes) or list(getattr(load_report, "notes", ()))
    lines = [f"📂 Loading checkpoint: {_name(path)}"]
    if load_report is not None and not load_report.complete:
        lines.append(f"⚠️ Partial load: {load_report.summary()}")
    else:
        lines.append("✅ Weights loaded successfully!")
    lines += [f"   ℹ️ {note}" for note in notes]
    lines += ["", f"📍 Device: {model_device(model)}", f"🎯 Mode: {mode_text(model)}"]
    return section("LOADING MODEL WEIGHTS", "\n".join(lines))


def _timestamp(value: Any) -> str:
    if not value:
        return "n/a"
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if when.tzinfo is None:  # written before timestamps carried their offset: local time
        return when.strftime("%Y-%m-%d %H:%M:%S")
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def checkpoint_info_report(checkpoint: dict[str, Any]) -> str:
    """CHECKPOINT INFO: epoch, step, timestamp, train and val loss, learning rate."""
    body = (
        "📊 Training Progress:\n"
        f"   Epoch: {_integer(checkpoint.get('epoch'))}\n"
        f"   Global Step: {_integer(checkpoint.get('global_step'))}\n"
        f"   Timestamp: {_timestamp(checkpoint.get('timestamp'))}\n"
        f"   Run: {checkpoint.get('run_id') or 'legacy (written before runs)'}\n\n"
        "📈 Metrics:\n"
        f"   Train Loss: {_number(checkpoint.get('train_loss'))}\n"
        f"   Val Loss: {_number(checkpoint.get('val_loss'))}\n"
        f"   Learning Rate: {_number(checkpoint.get('learning_rate'), 6)}"
    )
    return section("CHECKPOINT INFO", body)


def parameter_counts(model: Any) -> dict[str, int]:
    """Unique parameters (a tied tensor counted once): total, trainable, frozen."""
    from utils.model import count_parameters

    total = count_parameters(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def model_size_bytes(model: Any) -> tuple[int, list[str]]:
    """Bytes of unique parameters and buffers at their actual dtypes, and the dtypes seen."""
    seen: set[int] = set()
    size, dtypes = 0, []
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        size += tensor.numel() * tensor.element_size()
        label = str(tensor.dtype).replace("torch.", "")
        label = {"float32": "FP32", "float16": "FP16", "bfloat16": "BF16",
                 "float64": "FP64"}.get(label, label.upper())
        if label not in dtypes:
            dtypes.append(label)
    return size, dtypes


def model_info_report(model: Any) -> str:
    """MODEL INFO: total / trainable / frozen parameters and the size in MB."""
    counts = parameter_counts(model)
    size, dtypes = model_size_bytes(model)
    body = (
        "🧠 Parameters:\n"
        f"   Total: {counts['total']:,}\n"
        f"   Trainable: {counts['trainable']:,}\n"
        f"   Frozen: {counts['frozen']:,}\n\n"
        "💾 Memory:\n"
        f"   Model Size: {size / 2**20:.2f} MB ({' + '.join(dtypes) or 'empty'})"
    )
    return section("MODEL INFO", body)


def architecture_preview(model: Any, n: int = PREVIEW_COUNT) -> str:
    """ARCHITECTURE PREVIEW: the first `n` parameters with shape and device, then the rest."""
    named = list(model.named_parameters())
    rows = [f"   {i}. {name}\n      Shape: {list(p.shape)}\n      Device: {p.device}"
            for i, (name, p) in enumerate(named[:n], start=1)]
    body = f"📐 First {min(n, len(named))} parameters:\n" + "\n\n".join(rows)
    if len(named) > n:
        body += f"\n\n   ... and {len(named) - n} more"
    return section("ARCHITECTURE PREVIEW", body)


def next_steps_report(model: Any = None) -> str:
    """NEXT STEPS: what the loaded model is ready for, and how to switch modes."""
    training = bool(model is not None and model.training)
    if training:
        body = ("💡 Model is in training mode, ready for:\n"
                "   → Resuming training (Trainer.fit(resume_from=\"latest\"))\n"
                "   → Fine-tuning (utils.finetune.freeze + a lower learning rate)\n\n"
                "🔍 For inference:\n"
                "   model.eval()  # Switch to evaluation mode")
    else:
        body = ("💡 Model is ready for:\n"
                "   → Inference on test data (generate_text, python -m utils generate)\n"
                "   → Evaluation/benchmarking (validation loss and perplexity)\n"
                "   → Feature extraction\n\n"
                "🔄 To resume training:\n"
                "   model.train()  # Switch to training mode\n"
                "   # Then train: Trainer.fit(resume_from=\"latest\") continues the latest checkpoint")
    return section("NEXT STEPS", body)


def full_load_report(path: str | Path, method: str, model: Any, checkpoint: dict[str, Any],
                     infos: Sequence[Any] | None = None, load_report: Any = None) -> str:
    """Every section in the original design's order, as one text."""
    parts = []
    if infos is not None:
        parts.append(available_checkpoints_report(infos, path) + "\n"
                     + selection_report(path, method))
    else:
        parts.append(selection_report(path, method))
    parts += [
        loading_report(path, model, load_report, checkpoint.get("load_notes", ())),
        checkpoint_info_report(checkpoint),
        model_info_report(model),
        architecture_preview(model),
        next_steps_report(model),
    ]
    return "\n".join(parts) + RULE + "\n"


# ---------------------------------------------------------------------------------------
# Error scenarios: what went wrong, then numbered steps to fix it (what to call or which
# setting to change; the notebook adds the cell to run: utils.forms.notebook_hint)
# ---------------------------------------------------------------------------------------

# (title, possible causes, fix steps), most specific class first.
ERROR_GUIDANCE: list[tuple[type[BaseException], str, list[str], list[str]]] = [
    (ModelNotInitializedError, "Model instance not found!", [],
     ["Build the model first: GPTModel(config), or load_pretrained_model(path), which "
      "builds it from the checkpoint", "Then load the weights again"]),
    (RunNotFoundError, "Run not found in this folder!", [],
     ["Choose one of the run ids the message lists (the runs table shows them all)",
      "Or leave the run empty (or 'latest') for the most recent run"]),
    (RunMismatchError, "This run was trained on other data!",
     ["The data given now differs from the data the run started on"],
     ["Give the data the run was trained on to continue it",
      "Or start a new run on this data (resume_from=None, --new-run)"]),
    (NoCheckpointsError, "No checkpoints found!", [],
     ["Train first: checkpoints are written every checkpoint_interval steps",
      "Or point the checkpoint folder (checkpoint_dir) at the folder that holds them"]),
    (ArchitectureMismatchError, "ERROR: Model architecture mismatch!",
     ["The model's config differs from the config the checkpoint was trained with",
      "Checkpoint is from a different model architecture",
      "Model definition was modified after training"],
     ["Build the model with the checkpoint's config (its 'config' entry)",
      "Check model definition hasn't changed",
      "Try loading a different checkpoint",
      "Or build the model from the checkpoint: load_pretrained_model(path)"]),
    (CheckpointNotFoundError, "Checkpoint file not found!", [],
     ["Check the path (a file, or a name or index from the checkpoint list)",
      "Leave the override empty to auto-select the best checkpoint"]),
    (UnsafeCheckpointError, "Refused an unsafe checkpoint (it could run code)!",
     ["The file was saved with Python objects other than tensors and plain values",
      "Or someone crafted it to run code on your machine"],
     ["Use a checkpoint written by this project's training",
      "Only if you made the file or trust its source: pass trust_checkpoint=True",
      "Then re-save it with plain dicts and tensors so it loads safely"]),
    (TruncatedCheckpointError, "Checkpoint file is truncated!",
     ["A copy, download or save was interrupted"],
     ["Copy or download the file again",
      "Or choose another checkpoint (list_checkpoints lists them)"]),
    (EmptyCheckpointError, "Checkpoint file is empty!", ["The save or copy never wrote data"],
     ["Delete the empty file", "Choose another checkpoint (list_checkpoints lists them)"]),
    (NotACheckpointError, "This file is not a checkpoint!",
     ["The path points at another kind of file"],
     ["Pass the .pt file written by training",
      "Or leave the override empty to auto-select the best checkpoint"]),
    (InvalidWeightsError, "The checkpoint's weights are unusable!",
     ["Training had diverged (NaN/Inf) when it was saved"],
     ["Load an earlier checkpoint", "Lower the learning rate for the next run"]),
    (CheckpointConfigError, "The checkpoint's model config is missing or invalid!", [],
     ["Pass config=ModelConfig(...) with the architecture it was trained with",
      "Or load a checkpoint written by this project's training"]),
    (UnrecognizedCheckpointError, "Unrecognised checkpoint contents!", [],
     ["Pass a checkpoint with model_state_dict and config (training writes these)",
      "Hugging Face GPT-2 and nanoGPT files also load; other models do not"]),
    (CorruptCheckpointError, "Checkpoint file is damaged!", [],
     ["Choose another checkpoint (list_checkpoints lists them)", "Or copy this one again"]),
    (InsufficientStorageError, "Not enough space for this run's checkpoints!",
     ["Full checkpoints hold the optimizer state too: about 3x the weights with AdamW",
      "Other runs in the folder (or other files on the drive) use the space"],
     ["Keep fewer checkpoints (keep_last, keep_best)",
      "Write the weights-only copies in half precision (weights_only_dtype='bf16')",
      "Use another folder with more free space (checkpoint_dir), or free space there"]),
    (CheckpointWriteError, "Checkpoint could not be written!",
     ["The disk is full or the folder is not writable"],
     ["Free disk space or choose another checkpoint folder (checkpoint_dir)",
      "Earlier checkpoints are intact; re-run training to continue"]),
    (CheckpointError, "Checkpoint problem!", [], ["Read the details below and retry"]),
]


def error_report(error: BaseException) -> str:
    """The error scenario text for `error`: what happened, causes, numbered fixes."""
    title, causes, fixes = next(
        ((title, causes, fixes) for kind, title, causes, fixes in ERROR_GUIDANCE
         if isinstance(error, kind)),
        (f"{type(error).__name__}!", [], ["Read the details below and retry"]))
    lines = [f"❌ {title}", "", str(error)]
    if causes:
        lines += ["", "💡 Possible causes:"] + [f"   {i}. {c}" for i, c in enumerate(causes, 1)]
    lines += ["", "🔧 To fix:" if causes else "💡 To fix:"]
    lines += [f"   {i}. {fix}" for i, fix in enumerate(fixes, 1)]
    lines += ["", f"📋 Technical details: {type(error).__name__}", "", RULE]
    return "\n".join(lines) + "\n"
