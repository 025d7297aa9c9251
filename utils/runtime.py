"""The runtime the notebook runs in: Colab or local Jupyter (`in_colab`), the requirements
it installs (`install_requirements`, Cell 2), what it runs on (`environment_report`,
`default_device`, `auto_precision`: Cells 1 and 4), and Google Drive (mount point from
$GPT2_DRIVE_MOUNT_POINT, so tests mount a stand-in) with the checkpoint folder on it
(`choose_checkpoint_dir`, Cell 5). Heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path

from utils.errors import describe_os_error
from utils.fileio import check_writable_folder
from utils.forms import FormValueError
from utils.reports import RULE
from utils.settings import file_in_the_way

DRIVE_MOUNT_POINT = "/content/drive"  # Colab's; GPT2_DRIVE_MOUNT_POINT overrides it
DRIVE_MOUNT_ENV = "GPT2_DRIVE_MOUNT_POINT"
DRIVE_PROJECT_NAME = "gpt2-training"  # the project folder inside MyDrive

# Import names of what requirements.txt installs; when all are importable, nothing is installed.
REQUIRED_MODULES = ("torch", "numpy", "tiktoken", "safetensors", "transformers", "pandas",
                    "matplotlib", "tqdm", "ipywidgets", "tensorboard")


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
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        lines.append("🍎 Apple GPU (MPS) available")
    else:
        lines.append("⚠️  No GPU: training runs on the CPU (fine for QUICK_MODE and tiny models;")
        lines.append("   in Colab choose Runtime → Change runtime type → GPU).")
    device = default_device()
    lines.append(f"📍 Device used: {device}")
    lines.append(f"🔢 Precision (PRECISION = \"auto\"): {auto_precision(device)}")
    return "\n".join(lines)


def auto_precision(device: str) -> str:
    """What training will choose with precision "auto" on `device`, and why: the Trainer's
    own choice (a T4 reports bf16 as supported, emulated: it trains in fp16)."""
    from utils.training.engine.precision import choose_precision_for

    choice = choose_precision_for(device, "auto")
    return f"{choice.name} ({choice.reason})"


def default_device() -> str:
    """'cuda' if available, else 'mps', else 'cpu' (the Trainer's and the loaders' order)."""
    from utils.training.engine.distributed import default_device as best_device

    return best_device().type


def _total_ram_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None


def drive_mount_point() -> Path:
    """Where Google Drive is mounted: /content/drive in Colab, or $GPT2_DRIVE_MOUNT_POINT
    (tests mount a stand-in Drive elsewhere; Cell 1 reads the same variable)."""
    return Path(os.environ.get(DRIVE_MOUNT_ENV) or DRIVE_MOUNT_POINT)


def drive_project_dir() -> Path:
    """The project's folder on Drive: `<mount>/MyDrive/gpt2-training`."""
    return drive_mount_point() / "MyDrive" / DRIVE_PROJECT_NAME


def mount_drive(mount_point: str | Path | None = None) -> bool:
    """Mount Google Drive in Colab (asks for permission once); False outside Colab."""
    if not in_colab():
        return False
    mount_point = Path(mount_point or drive_mount_point())
    if not (mount_point / "MyDrive").is_dir():
        from google.colab import drive

        drive.mount(str(mount_point))
    return True


def choose_checkpoint_dir(requested: str | Path | None = None, use_drive: bool | None = None
                          ) -> Path:
    """The checkpoint folder: on Google Drive in Colab (it survives a runtime crash),
    `./checkpoints` elsewhere. An explicit `requested` path wins; a relative one is put
    under the Drive project folder in Colab. The folder is created.
    """
    use_drive = in_colab() if use_drive is None else use_drive
    if use_drive and mount_drive():
        base = drive_project_dir()
        path = Path(requested) if requested else base / "checkpoints"
        if not path.is_absolute():
            path = base / path
    else:
        path = Path(requested or "checkpoints")
    path = path.expanduser()
    try:
        blocking = file_in_the_way(path)
        if blocking is not None:
            raise FormValueError("CHECKPOINT_DIR", str(requested or path),
                                 f"{blocking} is a file, not a folder; give a folder (it is "
                                 "created if missing), or leave it empty for the default")
        path.mkdir(parents=True, exist_ok=True)
        check_writable_folder(path)  # a read-only folder: checkpoints could not be written
    except OSError as error:  # a name too long, a read-only disk, a lost mount, ...
        raise FormValueError("CHECKPOINT_DIR", str(requested or path),
                             f"checkpoints cannot be written there: "
                             f"{describe_os_error(error)}") from None
    return path
