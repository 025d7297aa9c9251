"""Small helpers that the cells of `training.ipynb` call, so each cell stays a few lines.

Environment report, Colab detection and Google Drive, the checkpoint folder, friendly
error printing (the guidance, never a traceback), and Cell 35's session summary.
Heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

DRIVE_MOUNT_POINT = "/content/drive"
DRIVE_PROJECT_DIR = "/content/drive/MyDrive/gpt2-training"
RULE = "=" * 71

# Import names of what requirements.txt installs; when all are importable, nothing is installed.
REQUIRED_MODULES = ("torch", "numpy", "tiktoken", "safetensors", "transformers", "pandas",
                    "matplotlib", "tqdm", "ipywidgets")


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    if "google.colab" in sys.modules:
        return True
    try:  # find_spec of a submodule imports its parent, which raises when `google` is absent
        return importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:
        return False


def missing_modules(modules: tuple[str, ...] = REQUIRED_MODULES) -> list[str]:
    """The modules in `modules` that cannot be imported here."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def install_requirements(requirements: str | Path = "requirements.txt", force: bool = False) -> bool:
    """`pip install -r requirements.txt` when something is missing (or `force`).

    Returns True when pip ran. Colab brings its own torch, which requirements.txt does not
    pin, so this only adds the few packages Colab lacks.
    """
    missing = missing_modules()
    if not missing and not force:
        print("✅ All requirements already installed; nothing to do.")
        return False
    print(f"📦 Installing {requirements} (missing: {', '.join(missing) or 'none, forced'}) ...")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(requirements)],
                   check=True)
    return True


def environment_report() -> str:
    """Python, torch, device (GPU name and memory), CPU cores and RAM, as printable text."""
    import torch

    lines = [RULE, "ENVIRONMENT", RULE, ""]
    lines.append(f"🐍 Python {platform.python_version()} on {platform.system()} "
                 f"({platform.machine()})")
    lines.append(f"🔥 PyTorch {torch.__version__}")
    lines.append(f"☁️  Colab: {'yes' if in_colab() else 'no'}")
    lines.append(f"🧮 CPU cores: {os.cpu_count()}")
    ram_gb = _total_ram_gb()
    if ram_gb is not None:
        lines.append(f"💾 RAM: {ram_gb:.1f} GB")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            lines.append(f"🎮 GPU {index}: {props.name}, {props.total_memory / 1e9:.1f} GB")
        bf16 = torch.cuda.is_bf16_supported()
        lines.append(f"   bf16 supported: {'yes' if bf16 else 'no (fp16 with a GradScaler)'}")
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        lines.append("🍎 Apple GPU (MPS) available")
    else:
        lines.append("⚠️  No GPU: training runs on the CPU (fine for QUICK_MODE and tiny models;")
        lines.append("   in Colab choose Runtime → Change runtime type → GPU).")
    lines.append(f"📍 Device used: {default_device()}")
    return "\n".join(lines)


def default_device() -> str:
    """'cuda' if available, else 'mps', else 'cpu' (the Trainer's and the loaders' order)."""
    from utils.training.engine.distributed import default_device as best_device

    return best_device().type


def _total_ram_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None


def mount_drive(mount_point: str = DRIVE_MOUNT_POINT) -> bool:
    """Mount Google Drive in Colab (asks for permission once); False outside Colab."""
    if not in_colab():
        return False
    if not Path(mount_point, "MyDrive").is_dir():
        from google.colab import drive

        drive.mount(mount_point)
    return True


def choose_checkpoint_dir(requested: str | Path | None = None, use_drive: bool | None = None
                          ) -> Path:
    """The checkpoint folder: on Google Drive in Colab (it survives a runtime crash),
    `./checkpoints` elsewhere. An explicit `requested` path wins; a relative one is put
    under the Drive project folder in Colab. The folder is created.
    """
    use_drive = in_colab() if use_drive is None else use_drive
    if use_drive and mount_drive():
        base = Path(DRIVE_PROJECT_DIR)
        path = Path(requested) if requested else base / "checkpoints"
        if not path.is_absolute():
            path = base / path
    else:
        path = Path(requested or "checkpoints")
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def format_error(error: BaseException) -> str:
    """The guidance for an error a user can cause (seed 003's scenarios), as text."""
    try:
        from utils.reports import error_report
    except ImportError:  # reports not available: the message itself says cause and fix
        return f"❌ {type(error).__name__}: {error}\n{RULE}"
    return error_report(error)


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors a user can cause from a cell; printed as guidance instead of a traceback."""
    from utils.config import ConfigError
    from utils.training.engine.errors import CheckpointError

    return (CheckpointError, ConfigError, FileNotFoundError, NotADirectoryError,
            PermissionError, ValueError)


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Run a cell's body; print the guidance for a user error instead of a traceback.

    The kernel stays usable: the error is reported and swallowed. Programming errors
    (anything not in `user_error_types()`) still raise with their traceback.
    """
    try:
        yield
    except user_error_types() as error:
        print(format_error(error))


def _describe(value: Any) -> str:
    """One line about a session variable."""
    if value is None:
        return "None"
    if hasattr(value, "parameters") and hasattr(value, "training"):  # nn.Module
        from utils.model import count_parameters

        count = count_parameters(value)
        first = next(value.parameters(), None)
        device = first.device if first is not None else "no parameters"
        mode = "train" if value.training else "eval"
        return f"{type(value).__name__}, {count:,} parameters, on {device}, {mode} mode"
    if hasattr(value, "shape") and hasattr(value, "columns"):  # DataFrame
        return f"DataFrame, {value.shape[0]} rows × {value.shape[1]} columns"
    if hasattr(value, "global_step") and hasattr(value, "fit"):  # Trainer
        return f"{type(value).__name__} at step {value.global_step}"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, Mapping):
        return f"dict with {len(value)} keys"
    text = str(value)
    if len(text) <= 80:
        return text
    # a long path: keep its end, where the file name is
    return "..." + text[-77:] if isinstance(value, (str, Path)) else text[:77] + "..."


# What Cell 35 takes out of `results` (Cell 33) into plain variables.
RESULT_VARIABLES = {
    "checkpoint_path": "checkpoint_path",
    "latest_checkpoint_path": "latest_checkpoint_path",
    "metrics": "metrics",
    "best_val_loss": "best_val_loss",
    "epoch": "epoch",
    "global_step": "global_step",
}

# Variables a session builds, with the cell that creates each (for the "missing" hint).
SESSION_VARIABLES = {
    "model": 13,
    "tokenizer": 6,
    "trainer": 32,
    "results": 33,
    "checkpoint_path": 33,
    "latest_checkpoint_path": 33,
    "metrics": 33,
    "best_val_loss": 33,
    "global_step": 33,
}


def extract_session_variables(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """Variables to define from Cell 33's `results` (only those results has)."""
    results = namespace.get("results")
    if not isinstance(results, Mapping):
        return {}
    return {name: results[key] for name, key in RESULT_VARIABLES.items() if key in results}


def session_summary(namespace: Mapping[str, Any]) -> str:
    """A table of the session's variables, set or not; never empty.

    Seed 003's Cell 35 printed only inside `if` branches, so a session where everything
    already existed printed nothing. This always prints every variable and its state.
    """
    lines = [RULE, "SESSION VARIABLES", RULE, ""]
    for name, cell in SESSION_VARIABLES.items():
        if name in namespace and namespace[name] is not None:
            lines.append(f"✅ {name:<23} {_describe(namespace[name])}")
        else:
            lines.append(f"⚪ {name:<23} not set (run Cell {cell})")
    results = namespace.get("results")
    if not isinstance(results, Mapping):
        lines += ["", "💡 No recovered results: run Cell 33 (Checkpoint Recovery) first."]
    lines.append(RULE)
    return "\n".join(lines)


def corpus_statistics(corpus: Any, tokenizer: Any, top: int = 5) -> Any:
    """A small table about a `TokenizedCorpus`: size, vocabulary used, most frequent tokens."""
    import json

    import numpy as np
    import pandas as pd

    tokens = np.asarray(corpus.tokens)
    counts = np.bincount(tokens, minlength=1)
    rows: dict[str, Any] = {"source": corpus.source, "tokenizer": corpus.tokenizer_name,
                            "tokens": f"{len(tokens):,}"}
    meta_path = Path(corpus.cache_path).with_suffix(".json")
    if meta_path.is_file():
        characters = json.loads(meta_path.read_text()).get("num_characters")
        if characters:
            rows["characters"] = f"{characters:,}"
            rows["characters per token"] = f"{characters / max(len(tokens), 1):.2f}"
    rows["distinct tokens used"] = f"{int((counts > 0).sum()):,} of {tokenizer.n_vocab:,}"
    for rank, token in enumerate(np.argsort(counts)[::-1][:top], start=1):
        rows[f"most frequent #{rank}"] = (f"{tokenizer.decode([int(token)])!r} "
                                          f"({counts[token] / len(tokens):.1%})")
    return pd.DataFrame({"value": rows})


def _load_into_model(model: Any, path: Path, method: str, infos: list[Any] | None) -> dict:
    """Load `path` into `model` (strict, all or nothing), print seed 003's reports."""
    from utils.reports import full_load_report
    from utils.training.engine.checkpoint import SIDECAR_KEYS
    from utils.training.engine.loading import load_model_weights

    load_report = load_model_weights(model, path)  # eval mode, CUDA > MPS > CPU
    # The file's scalars (what a sidecar holds), from the load itself: no second read, and
    # no optimizer state kept alive in the notebook's `checkpoint`.
    checkpoint = {key: load_report.metadata.get(key) for key in SIDECAR_KEYS}
    print(full_load_report(path, method, model, checkpoint, infos, load_report))
    return checkpoint


def load_weights_cell(namespace: Mapping[str, Any], checkpoint_dir: str | Path,
                      override: str | None = None, use_widget: bool = False
                      ) -> tuple[Path | None, dict | None]:
    """Cell 34: choose a checkpoint, load it into the session's `model`, print the reports.

    Order of choice (`select_checkpoint`): `override`, then Cell 33's
    `results["checkpoint_path"]`, then the best by val_loss. Raises the `CheckpointError`
    of seed 003's scenarios (no model, no checkpoints, architecture mismatch, ...), which
    `friendly_errors` prints as guidance. With `use_widget`, shows the ipywidgets picker
    (or, where widgets cannot render, the table) and loads when Load is clicked.
    """
    from utils.training.engine.errors import ModelNotInitializedError
    from utils.training.engine.recovery import list_checkpoints, select_checkpoint

    model = namespace.get("model")
    if model is None:
        raise ModelNotInitializedError(
            "Model instance not found: there is no 'model' to load weights into.")
    infos = list_checkpoints(checkpoint_dir) if Path(checkpoint_dir).is_dir() else []
    path, method = select_checkpoint(results=namespace.get("results"),
                                     checkpoint_dir=checkpoint_dir, override=override or None,
                                     infos=infos)
    if use_widget:
        from utils.widgets import checkpoint_picker

        picker = checkpoint_picker(checkpoint_dir, selected=path, infos=infos,
                                   on_load=lambda chosen: _load_into_model(
                                       model, Path(chosen), "widget picker", infos))
        if picker is not None:
            from IPython.display import display

            display(picker.widget)
        return None, None
    return path, _load_into_model(model, path, method, infos)
