"""Training curves with matplotlib: loss, validation loss and learning rate against step.

Every function takes the metrics history the way the project keeps it: a pandas DataFrame
(`recover_training_results(...)["metrics"]`) or the list of dicts stored in a checkpoint's
`metrics_history`. matplotlib is imported inside the functions so `import utils` stays fast,
and each function returns its `Figure` so callers can show it, save it or test it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Column names used across versions of the metrics history; the first one present wins.
STEP_KEYS = ("global_step", "step", "iteration")
TRAIN_LOSS_KEYS = ("train_loss", "loss")
VAL_LOSS_KEYS = ("val_loss", "validation_loss")
LR_KEYS = ("learning_rate", "lr")


def metrics_to_records(metrics: Any) -> list[dict[str, Any]]:
    """A DataFrame, a list of dicts or None -> a list of plain dicts."""
    if metrics is None:
        return []
    if hasattr(metrics, "to_dict") and hasattr(metrics, "columns"):  # pandas DataFrame
        return metrics.to_dict("records")
    return [dict(row) for row in metrics]


def _first_key(records: list[dict[str, Any]], keys: Iterable[str]) -> str | None:
    for key in keys:
        if any(_is_number(row.get(key)) for row in records):
            return key
    return None


def _is_number(value: Any) -> bool:
    try:
        return value is not None and float(value) == float(value)  # NaN != NaN
    except (TypeError, ValueError):
        return False


def _series(records: list[dict[str, Any]], x_key: str | None, y_key: str | None
            ) -> tuple[list[float], list[float]]:
    """(x, y) for the rows where y is a number; x falls back to the row index."""
    xs: list[float] = []
    ys: list[float] = []
    if y_key is None:
        return xs, ys
    for index, row in enumerate(records):
        if _is_number(row.get(y_key)):
            x = row.get(x_key) if x_key else None
            xs.append(float(x) if _is_number(x) else float(index))
            ys.append(float(row[y_key]))
    return xs, ys


def _prepare(metrics: Any, ax: Any, figsize: tuple[float, float], ylabel: str, title: str
             ) -> tuple[list[dict[str, Any]], Any, Any, str | None]:
    """Records, Figure, labelled Axes (a new Figure unless `ax` is given), and the step key."""
    records = metrics_to_records(metrics)
    if ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=figsize)
    else:
        fig = ax.figure
    step_key = _first_key(records, STEP_KEYS)
    ax.set_xlabel(step_key or "evaluation")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return records, fig, ax, step_key


def plot_loss_curves(metrics: Any, ax: Any = None, title: str = "Loss") -> Any:
    """Train and validation loss against step; returns the Figure."""
    records, fig, ax, step_key = _prepare(metrics, ax, (7, 4), "cross-entropy loss", title)
    for keys, label, style in ((TRAIN_LOSS_KEYS, "train loss", "-"),
                               (VAL_LOSS_KEYS, "validation loss", "o-")):
        xs, ys = _series(records, step_key, _first_key(records, keys))
        if xs:
            ax.plot(xs, ys, style, label=label, markersize=3)
    if ax.get_lines():
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no metrics yet", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_learning_rate(metrics: Any, ax: Any = None, title: str = "Learning rate") -> Any:
    """Learning rate against step (warm-up then cosine decay); returns the Figure."""
    records, fig, ax, step_key = _prepare(metrics, ax, (7, 3), "learning rate", title)
    xs, ys = _series(records, step_key, _first_key(records, LR_KEYS))
    if xs:
        ax.plot(xs, ys, "-", color="tab:green")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    else:
        ax.text(0.5, 0.5, "no learning-rate values", ha="center", va="center",
                transform=ax.transAxes)
    return fig


def plot_training_curves(metrics: Any, title: str | None = None) -> Any:
    """Loss curves and the learning rate side by side in one Figure."""
    import matplotlib.pyplot as plt

    fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(12, 4))
    plot_loss_curves(metrics, ax=loss_ax)
    plot_learning_rate(metrics, ax=lr_ax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write the figure (format from the suffix, e.g. .png), creating parent folders.
    Atomically (`fileio.write_atomically`): a run that stops midway leaves the previous
    image, and another name of the old file (a hard link) keeps it."""
    from utils.fileio import write_atomically

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix[1:].lower() or "png"
    write_atomically(path, lambda out: fig.savefig(out, format=fmt, dpi=dpi,
                                                   bbox_inches="tight"))
    return path


def in_jupyter() -> bool:
    """True inside a Jupyter/Colab kernel (where figures can be displayed and updated)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class LiveLossPlot:
    """A training callback that redraws the loss curves in a notebook as metrics arrive.

    Call it with one metrics dict per evaluation (or per logged step):
    `live({"global_step": 10, "train_loss": 4.2, "val_loss": 4.3, "learning_rate": 3e-4})`.
    In Jupyter it keeps one output area and updates it in place (at most every
    `min_interval_s` seconds, so plotting never slows training much; `close()` draws the
    final state). Outside Jupyter it only records: no windows, no output.
    """

    def __init__(self, min_interval_s: float = 2.0, title: str = "Training progress",
                 enabled: bool | None = None) -> None:
        self.records: list[dict[str, Any]] = []
        self.min_interval_s = min_interval_s
        self.title = title
        self.enabled = in_jupyter() if enabled is None else enabled
        self._handle: Any = None
        self._last_draw = float("-inf")
        self._dirty = False

    def __call__(self, record: Mapping[str, Any] | None = None, **values: Any) -> None:
        row = dict(record or {})
        row.update(values)
        if row:
            self.records.append(row)
            self._dirty = True
        if self.enabled and time.monotonic() - self._last_draw >= self.min_interval_s:
            self.draw()

    update = __call__

    def draw(self) -> None:
        """Redraw now (in Jupyter); a no-op elsewhere."""
        if not self.enabled:
            return
        import matplotlib.pyplot as plt
        from IPython.display import display

        fig = plot_training_curves(self.records, title=self.title)
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)  # displayed as an image; do not also show it at the end of the cell
        self._last_draw = time.monotonic()
        self._dirty = False

    def close(self) -> None:
        """Draw the final state if anything arrived since the last redraw."""
        if self._dirty:
            self.draw()
