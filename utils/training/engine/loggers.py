"""What training reports besides its checkpoints: metric loggers and headless progress lines.

Loggers (`TrainingConfig.log_to`): TensorBoard event files, a CSV file and Weights & Biases.
`open_loggers` opens the chosen ones for one run, in `<log folder>/<run_id>/` (the log
folder is `config.log_dir`, else `<checkpoint_dir>/logs`), and the Trainer calls one small
interface, `RunLoggers.log(step, values, kind)`:
- "train", at each log interval: train_loss, learning_rate, tokens_per_s, mfu (where a
  peak is known), grad_norm;
- "eval", at each evaluation: val_loss, perplexity;
- "sample", at the evaluations that print a text sample: sample (the text);
then `flush()` at each checkpoint, `close()` at the end.

A run resumed from step S continues the same curves: TensorBoard's writer gets
`purge_step=S+1` (TensorBoard's reader drops the earlier session's events from that step
on), the CSV file is rewritten without its rows from S+1 on, and W&B resumes the run of the
same id. Everything up to a checkpoint's step is flushed before that checkpoint is written,
so nothing before the resumed step is missing either.

A logger that fails while training (its folder vanished, W&B lost its connection) warns once
and stops; training never stops for a logger. Libraries are imported only when chosen:
tensorboard (through torch's SummaryWriter) and wandb; a chosen one that is not installed
is refused before training with one line that says what to install.

Headless lines: where no progress bar is seen (`progress=False`, or the output goes to a file
or a pipe rather than a terminal or a notebook: `is_live`), `train_line` and `eval_line`
give one line per log interval and per evaluation: step, loss, learning rate, tokens/s, ETA.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import math
import os
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from utils.errors import UserError
from utils.fileio import write_bytes_atomically

LOG_FOLDER_NAME = "logs"  # under the checkpoint folder when log_dir is empty
CSV_NAME = "metrics.csv"
FLUSH_SECONDS = 5  # TensorBoard's writer hands events to the file at least this often
WANDB_PROJECT = "gpt2-training"  # unless $WANDB_PROJECT names another
# Our names -> the tags of TensorBoard and W&B (grouped by their prefix in both).
TAGS = {"train_loss": "train/loss", "learning_rate": "train/learning_rate",
        "tokens_per_s": "train/tokens_per_s", "mfu": "train/mfu",
        "grad_norm": "train/grad_norm", "val_loss": "val/loss",
        "perplexity": "val/perplexity", "sample": "samples/text"}
CSV_COLUMNS = ("step", "kind", "train_loss", "learning_rate", "tokens_per_s", "mfu",
               "grad_norm", "val_loss", "perplexity", "sample", "time")
# logger name -> (the module it needs, the pip package that brings it)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class LoggerUnavailableError(UserError):
    """A logger named in `log_to` cannot run here (its package is missing, W&B refused)."""


def log_folder(config: Any) -> Path:
    """Where the runs' log folders go: `log_dir`, else `<checkpoint_dir>/logs`, else ./logs."""
    if config.log_dir:
        return Path(config.log_dir).expanduser()
    return Path(config.checkpoint_dir or ".") / LOG_FOLDER_NAME


def check_loggers_available(names: tuple[str, ...]) -> None:
    """Refuse, before any work, a logger whose package is not installed (nothing imported)."""
    for name in names:
        module, package = PACKAGES.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise LoggerUnavailableError(
                f"log_to names {name}, but the {package} package is not installed here; "
                f"install it (pip install {package}) or leave {name} out of log_to")


class CsvLogger:
    """One row per logged step, evaluation and sample, handed to the operating system at
    once (a killed process loses nothing written before)."""

    def __init__(self, path: Path, first_step: int | None) -> None:
        self.path = path
        if first_step is not None and path.exists():
            self._drop_rows_from(first_step)
        new = not path.exists() or path.stat().st_size == 0
        self._handle = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.DictWriter(self._handle, CSV_COLUMNS, extrasaction="ignore")
        if new:
            self._writer.writeheader()
            self._handle.flush()

    def _drop_rows_from(self, first_step: int) -> None:
        """Rewrite the file (atomically) without the rows a resumed run logs again."""
        with open(self.path, newline="", encoding="utf-8", errors="replace") as handle:
            rows = [row for row in csv.DictReader(handle)
                    if _step_of(row) is not None and _step_of(row) < first_step]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_bytes_atomically(self.path, text.getvalue().encode("utf-8"))

    def log(self, step: int, values: dict[str, Any], kind: str) -> None:
        self._writer.writerow({**values, "step": step, "kind": kind,
                               "time": datetime.now(timezone.utc).isoformat()})
        self._handle.flush()

    def flush(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.flush()
        self._handle.close()


def _step_of(row: dict[str, Any]) -> int | None:
    try:
        return int(row.get("step") or "")
    except ValueError:
        return None  # a line torn by a crash


class TensorBoardLogger:
    """Scalars under TAGS, samples as text (a code block: TensorBoard renders markdown)."""

    def __init__(self, folder: Path, first_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=first_step,
                                    flush_secs=FLUSH_SECONDS)

    def log(self, step: int, values: dict[str, Any], kind: str) -> None:
        for key, value in values.items():
            if key not in TAGS or value is None:
                continue
            if isinstance(value, str):
                self.writer.add_text(TAGS[key], "    " + value.replace("\n", "\n    "), step)
            else:
                self.writer.add_scalar(TAGS[key], float(value), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A W&B run with the training run's id (resumed when it exists). $WANDB_MODE (offline,
    disabled) and $WANDB_PROJECT are W&B's own settings and apply as usual."""

    def __init__(self, folder: Path, run_id: str, settings: dict[str, Any]) -> None:
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT,
                                  id=run_id, name=run_id, dir=str(folder), config=settings,
                                  resume="allow")
        except Exception as error:  # wandb raises its own kinds: not logged in, no network
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise LoggerUnavailableError(
                f"W&B could not start a run ({first}); log in once (wandb login), set "
                "WANDB_MODE=offline to log on this machine only, or leave wandb out of "
                "log_to") from None

    def log(self, step: int, values: dict[str, Any], kind: str) -> None:
        data = {TAGS[key]: value for key, value in values.items()
                if key in TAGS and value is not None}
        if data:
            self.run.log(data, step=step)

    def flush(self) -> None:
        pass  # W&B writes on its own schedule

    def close(self) -> None:
        self.run.finish()


class RunLoggers:
    """The chosen loggers of one run, called together; one that fails is dropped with a
    warning (training goes on). Empty when nothing was chosen."""

    def __init__(self, loggers: dict[str, Any] | None = None,
                 folder: Path | None = None) -> None:
        self.loggers = dict(loggers or {})
        self.folder = folder  # the run's log folder (TensorBoard, CSV)

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def log(self, step: int, values: dict[str, Any], kind: str) -> None:
        self._each("log", step, values, kind)

    def flush(self) -> None:
        self._each("flush")

    def close(self) -> None:
        self._each("close")
        self.loggers.clear()

    def _each(self, method: str, *args: Any) -> None:
        for name, logger in list(self.loggers.items()):
            try:
                getattr(logger, method)(*args)
            except Exception as error:  # OSError, a library's own: never stop training
                self.loggers.pop(name, None)
                warnings.warn(f"the {name} logger stopped: {error}; training goes on without "
                              "it", stacklevel=3)


def open_loggers(config: Any, run_id: str, resumed_at: int) -> RunLoggers:
    """The loggers `config.log_to` names, for run `run_id` continuing after `resumed_at`
    (0: a new run). Raises `LoggerUnavailableError` when one cannot start."""
    names = config.loggers
    if not names:
        return RunLoggers()
    check_loggers_available(names)
    root = log_folder(config)
    folder = root / run_id
    folder.mkdir(parents=True, exist_ok=True)
    first_step = resumed_at + 1 if resumed_at > 0 else None
    opened: dict[str, Any] = {}
    try:
        for name in names:
            if name == "tensorboard":
                opened[name] = TensorBoardLogger(folder, first_step)
            elif name == "csv":
                opened[name] = CsvLogger(folder / CSV_NAME, first_step)
            elif name == "wandb":
                opened[name] = WandbLogger(root, run_id, _plain_settings(config))
    except BaseException:
        RunLoggers(opened).close()
        raise
    return RunLoggers(opened, folder)


def _plain_settings(config: Any) -> dict[str, Any]:
    to_dict = getattr(config, "to_dict", None)
    return to_dict() if callable(to_dict) else {}


# --------------------------------------------------------------------------------------
# Headless progress lines
# --------------------------------------------------------------------------------------

def in_notebook() -> bool:
    """True inside a Jupyter/Colab kernel (where tqdm.auto shows its widget bar)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def is_live(stream: Any) -> bool:
    """Whether `stream` reaches a person as it is written: a terminal, or a notebook's
    output (a file or a pipe does not: a progress bar there is noise)."""
    isatty = getattr(stream, "isatty", None)
    try:
        terminal = bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        terminal = False
    return terminal or in_notebook()


def duration(seconds: float | None) -> str:
    """`1h02m`, `3m05s`, `12s`; `?` while unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def eta_seconds(steps_left: int, tokens_per_step: int, tokens_per_s: float | None
                ) -> float | None:
    """Seconds the remaining steps take at the current rate (evaluations not counted)."""
    if not tokens_per_s:
        return None
    return steps_left * tokens_per_step / tokens_per_s


def train_line(step: int, total: int, values: dict[str, Any], eta: float | None) -> str:
    """`step 40/120 | loss 3.4567 | lr 6.00e-04 | grad norm 0.912 | 12,345 tok/s | ...`"""
    parts = [f"step {step}/{total}", f"loss {values['train_loss']:.4f}",
             f"lr {values['learning_rate']:.2e}"]
    if values.get("grad_norm") is not None:
        parts.append(f"grad norm {values['grad_norm']:.3f}")
    if values.get("tokens_per_s") is not None:
        parts.append(f"{values['tokens_per_s']:,.0f} tok/s")
    if values.get("mfu") is not None:
        parts.append(f"mfu {values['mfu']:.1%}")
    parts.append(f"ETA {duration(eta)}")
    return " | ".join(parts)


def eval_line(step: int, total: int, record: dict[str, Any], eta: float | None) -> str:
    """`step 40/120 | val loss 3.5123 | perplexity 33.53 | train loss 3.45 | ... | ETA 1m20s`"""
    parts = [f"step {step}/{total}"]
    if record.get("val_loss") is not None:
        parts += [f"val loss {record['val_loss']:.4f}", f"perplexity {record['perplexity']:.2f}"]
    else:
        parts.append("no validation data")
    if record.get("train_loss") is not None:
        parts.append(f"train loss {record['train_loss']:.4f}")
    parts += [f"lr {record['learning_rate']:.2e}"]
    if record.get("tokens_per_s") is not None:
        parts.append(f"{record['tokens_per_s']:,.0f} tok/s")
    parts.append(f"ETA {duration(eta)}")
    return " | ".join(parts)


def sample_block(step: int, prompt: str, text: str) -> str:
    """The printed sample: a header line naming the step and prompt, then the text."""
    shown = repr(prompt) if prompt else "end-of-text"
    return f"--- sample at step {step} (prompt: {shown}) ---\n{text}\n---"
