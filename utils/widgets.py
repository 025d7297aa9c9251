"""An ipywidgets checkpoint picker: a dropdown of checkpoints with their metrics and a Load
button. Where widgets cannot render (no ipywidgets, a terminal, papermill) it prints the
AVAILABLE CHECKPOINTS table instead, so the cell still shows the choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from utils.reports import (
    _number,
    available_checkpoints_report,
    error_report,
    full_load_report,
    resume_text,
)


def widgets_can_render() -> bool:
    """True inside a Jupyter/Colab kernel with ipywidgets installed."""
    from utils.plots import in_jupyter

    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return in_jupyter()


def option_label(index: int, info: Any) -> str:
    """`[0] epoch 9 | step 9 | val_loss=0.3876 | run 2026... | resumable |
    checkpoint_....pt` ("weights only" for a copy that cannot resume training)."""
    from utils.training.engine.recovery import printable_name

    run = getattr(info, "run", None)
    return (f"[{index}] epoch {info.epoch} | step {info.global_step} | "
            f"train_loss={_number(info.train_loss)} | val_loss={_number(info.val_loss)} | "
            + (f"run {run} | " if run else "") + f"{resume_text(info)} | "
            + printable_name(info.filename))


class CheckpointPicker:
    """The widgets (`dropdown`, `button`, `output`, `widget`) and what the last Load did.

    `on_load(path)` runs when Load is clicked; by default it builds the model with
    `load_pretrained_model` and prints the full report. Its return value is kept in
    `result`; an error is shown in `output` as `describe_error(error)` (the notebook passes
    `utils.forms.format_error`, which adds the cell to run) and kept in `error`.
    """

    def __init__(self, infos: Sequence[Any], on_load: Callable[[Path], Any] | None = None,
                 selected: str | Path | None = None,
                 describe_error: Callable[[BaseException], str] = error_report) -> None:
        import ipywidgets as widgets

        self.infos = list(infos)
        self.on_load = on_load or self._load_and_report
        self.describe_error = describe_error
        self.result: Any = None
        self.error: BaseException | None = None
        options = [(option_label(i, info), str(info.path)) for i, info in enumerate(self.infos)]
        value = str(selected) if selected is not None else options[0][1]
        self.dropdown = widgets.Dropdown(options=options, value=value, description="Checkpoint:",
                                         layout=widgets.Layout(width="95%"))
        self.button = widgets.Button(description="Load", button_style="primary", icon="upload")
        self.output = widgets.Output()
        self.button.on_click(self._clicked)
        self.widget = widgets.VBox([self.dropdown, self.button, self.output])

    @property
    def selected_path(self) -> Path:
        return Path(self.dropdown.value)

    def _clicked(self, _button: Any) -> None:
        self.output.clear_output()
        with self.output:
            try:
                self.result, self.error = self.on_load(self.selected_path), None
            except Exception as error:  # a widget callback must not raise: show it instead
                self.error = error
                print(self.describe_error(error))

    def _load_and_report(self, path: Path) -> tuple[Any, dict]:
        from utils.training.engine.loading import load_pretrained_model

        model, checkpoint = load_pretrained_model(path)
        print(full_load_report(path, "manual override (picker)", model, checkpoint, self.infos))
        return model, checkpoint

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def checkpoint_picker(checkpoint_dir: str | Path = "checkpoints",
                      on_load: Callable[[Path], Any] | None = None,
                      selected: str | Path | None = None, force_widgets: bool = False,
                      infos: Sequence[Any] | None = None,
                      describe_error: Callable[[BaseException], str] = error_report
                      ) -> CheckpointPicker | None:
    """A `CheckpointPicker` for the checkpoints in `checkpoint_dir` (best val_loss first).

    Without a widget frontend it prints the checkpoint table and returns None (unless
    `force_widgets`, which tests use to build the widgets without a browser). `infos`: the
    folder's `list_checkpoints` when the caller already has it (not listed again).
    """
    from utils.training.engine.recovery import list_checkpoints, no_checkpoints_error

    infos = list_checkpoints(checkpoint_dir) if infos is None else infos
    if not infos:
        raise no_checkpoints_error(checkpoint_dir)
    if not (force_widgets or widgets_can_render()):
        print(available_checkpoints_report(infos, selected or infos[0].path))
        print("(interactive picker unavailable here: set CHECKPOINT_OVERRIDE to a file name "
              "or an index from this table)")
        return None
    return CheckpointPicker(infos, on_load, selected, describe_error)
