"""utils.plots: the curves hold exactly the metrics given, and the live plot behaves."""

from __future__ import annotations

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from utils import plots  # noqa: E402

HISTORY = [
    {"step": 10, "train_loss": 9.0, "val_loss": 9.5, "learning_rate": 1e-4},
    {"step": 20, "train_loss": 7.0, "val_loss": None, "learning_rate": 3e-4},
    {"step": 30, "train_loss": 5.5, "val_loss": 6.0, "learning_rate": 2e-4},
]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def lines_by_label(ax) -> dict[str, tuple[list[float], list[float]]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in ax.get_lines()}


@pytest.mark.parametrize("metrics", [HISTORY, pd.DataFrame(HISTORY)], ids=["list", "dataframe"])
def test_loss_curves_plot_the_given_values(metrics):
    fig = plots.plot_loss_curves(metrics)
    lines = lines_by_label(fig.axes[0])
    assert lines["train loss"] == ([10.0, 20.0, 30.0], [9.0, 7.0, 5.5])
    # the evaluation without a validation loss is left out, not drawn as zero
    assert lines["validation loss"] == ([10.0, 30.0], [9.5, 6.0])
    assert fig.axes[0].get_xlabel() == "step"


def test_global_step_column_is_used_when_present():
    history = [{"global_step": 5, "train_loss": 2.0}, {"global_step": 9, "train_loss": 1.0}]
    fig = plots.plot_loss_curves(history)
    assert lines_by_label(fig.axes[0])["train loss"] == ([5.0, 9.0], [2.0, 1.0])


def test_learning_rate_curve():
    fig = plots.plot_learning_rate(HISTORY)
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [10.0, 20.0, 30.0]
    assert list(line.get_ydata()) == [1e-4, 3e-4, 2e-4]


def test_training_curves_has_loss_and_lr_panels_and_saves_png(tmp_path):
    fig = plots.plot_training_curves(HISTORY, title="run")
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Learning rate"]
    path = plots.save_figure(fig, tmp_path / "sub" / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_history_says_so_instead_of_failing():
    fig = plots.plot_training_curves([])
    for ax in fig.axes:
        assert ax.get_lines() == []
        assert any("no" in text.get_text() for text in ax.texts)


def test_live_plot_outside_jupyter_records_silently(capsys):
    live = plots.LiveLossPlot()
    assert live.enabled is False  # pytest is not a Jupyter kernel
    figures_before = plt.get_fignums()
    for row in HISTORY:
        live(row)
    live(step=40, train_loss=5.0)
    live.close()
    assert len(live.records) == 4 and live.records[-1] == {"step": 40, "train_loss": 5.0}
    assert plt.get_fignums() == figures_before
    assert capsys.readouterr().out == ""


def test_live_plot_in_jupyter_updates_one_display(monkeypatch):
    import IPython.display

    shown = []

    class Handle:
        def update(self, fig):
            shown.append(("update", lines_by_label(fig.axes[0])["train loss"][1]))

    def fake_display(fig, display_id=False):
        assert display_id is True
        shown.append(("display", lines_by_label(fig.axes[0])["train loss"][1]))
        return Handle()

    monkeypatch.setattr(IPython.display, "display", fake_display)
    live = plots.LiveLossPlot(min_interval_s=0.0, enabled=True)
    live(HISTORY[0])
    live(HISTORY[1])
    assert shown == [("display", [9.0]), ("update", [9.0, 7.0])]
    assert plt.get_fignums() == []  # each drawn figure is closed after display
    live.close()  # nothing new since the last draw: no redraw
    assert len(shown) == 2


def test_live_plot_throttles_redraws(monkeypatch):
    import IPython.display

    calls = []
    monkeypatch.setattr(IPython.display, "display",
                        lambda fig, display_id=False: calls.append(fig) or type(
                            "H", (), {"update": lambda self, f: calls.append(f)})())
    live = plots.LiveLossPlot(min_interval_s=3600.0, enabled=True)
    for row in HISTORY:
        live(row)
    assert len(calls) == 1  # the first draw only; the rest wait for the interval
    live.close()  # ... and close() draws the final state
    assert len(calls) == 2
    assert len(live.records) == 3
