"""Figures (mritumor.plots): files, PNG validity, and what is drawn where."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.axes
import pytest
from PIL import Image

from mritumor import plots
from mritumor.plots import (
    ACC_CURVE_FILE,
    DPI,
    FIGURE_SIZE,
    LOSS_CURVE_FILE,
    UNFREEZE_LABEL,
    TrainingCurves,
    plot_training_curves,
)


def history(epochs: int = 8, *, val: bool = True, frozen: int = 3) -> list[dict[str, Any]]:
    """Rows like training's: val_loss is smallest at epoch 6."""
    val_losses = [1.0, 0.8, 0.7, 0.6, 0.55, 0.5, 0.52, 0.58, 0.6, 0.61]
    rows: list[dict[str, Any]] = []
    for epoch in range(1, epochs + 1):
        row: dict[str, Any] = {
            "epoch": epoch,
            "stage": "frozen" if epoch <= frozen else "full",
            "lr": 1e-3,
            "loss": 1.2 / epoch,
            "accuracy": 1 - 0.5 / epoch,
        }
        if val:
            row["val_loss"] = val_losses[epoch - 1]
            row["val_accuracy"] = 0.9 - val_losses[epoch - 1] / 4
        rows.append(row)
    return rows


def assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        assert image.size == (round(FIGURE_SIZE[0] * DPI), round(FIGURE_SIZE[1] * DPI))


class AxvlineSpy:
    """Records the x of every Axes.axvline call, then draws as usual."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[float, str]] = []
        original = matplotlib.axes.Axes.axvline

        def spy(axes: matplotlib.axes.Axes, x: float = 0, *args: Any, **kwargs: Any) -> Any:
            self.calls.append((x, str(kwargs.get("label", ""))))
            return original(axes, x, *args, **kwargs)

        monkeypatch.setattr(matplotlib.axes.Axes, "axvline", spy)


def curve_figure(rows: Sequence[Mapping[str, Any]], metric: str, **kwargs: Any) -> Any:
    curves = TrainingCurves.from_history(rows)
    return plots._training_curve_figure(curves, metric, **{"unfreeze_epoch": None, **kwargs})


def legend_texts(figure: Any) -> list[str]:
    legend = figure.axes[0].get_legend()
    return [text.get_text() for text in legend.get_texts()] if legend else []


def test_training_curves_are_written_as_png(tmp_path: Path) -> None:
    reports = tmp_path / "run" / "reports"
    acc, loss = plot_training_curves(history(), reports, unfreeze_epoch=3)
    assert (acc, loss) == (reports / ACC_CURVE_FILE, reports / LOSS_CURVE_FILE)
    assert acc.name == "acc_curve.png"
    assert loss.name == "loss_curve.png"
    assert_png(acc)
    assert_png(loss)
    assert sorted(path.name for path in reports.iterdir()) == ["acc_curve.png", "loss_curve.png"]


def test_existing_figures_are_replaced_whole(tmp_path: Path) -> None:
    (tmp_path / ACC_CURVE_FILE).write_bytes(b"old")
    plot_training_curves(history(), tmp_path, unfreeze_epoch=None)
    assert_png(tmp_path / ACC_CURVE_FILE)
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


def test_unfreeze_line_is_drawn_between_the_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = AxvlineSpy(monkeypatch)
    # Three epochs frozen: the backbone first trains in epoch 4.
    plot_training_curves(history(frozen=3), tmp_path, unfreeze_epoch=3)
    assert spy.calls == [
        (3.5, f"{UNFREEZE_LABEL} (from epoch 4)"),
        (3.5, f"{UNFREEZE_LABEL} (from epoch 4)"),
    ]


@pytest.mark.parametrize("unfreeze_epoch", [None, 0])
def test_no_unfreeze_line_without_a_frozen_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unfreeze_epoch: int | None
) -> None:
    spy = AxvlineSpy(monkeypatch)
    plot_training_curves(history(), tmp_path, unfreeze_epoch=unfreeze_epoch)
    assert spy.calls == []


def test_unfreeze_right_after_the_last_epoch_is_still_visible() -> None:
    figure = curve_figure(history(epochs=3), "loss", unfreeze_epoch=3)
    axes = figure.axes[0]
    (line,) = [line for line in axes.get_lines() if line.get_linestyle() == "--"]
    assert list(line.get_xdata()) == [3.5, 3.5]
    left, right = axes.get_xlim()
    assert left < 1 and right > 3.5


def test_loss_figure_contents() -> None:
    figure = curve_figure(history(), "loss", unfreeze_epoch=3)
    axes = figure.axes[0]
    assert axes.get_xlabel() == "epoch"
    assert axes.get_ylabel() == "loss"
    assert axes.get_xlim() == (0.5, 8.5)  # epochs numbered from 1
    assert legend_texts(figure) == [
        "train",
        "val",
        f"{UNFREEZE_LABEL} (from epoch 4)",
        "best val_loss (epoch 6)",
    ]
    train, val, unfreeze, best = axes.get_lines()
    assert list(train.get_xdata()) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert list(val.get_ydata())[:2] == [1.0, 0.8]
    assert list(unfreeze.get_xdata()) == [3.5, 3.5]
    assert unfreeze.get_linestyle() == "--"
    assert (list(best.get_xdata()), list(best.get_ydata())) == ([6], [0.5])


def test_accuracy_figure_marks_the_best_val_loss_epoch() -> None:
    figure = curve_figure(history(), "accuracy")
    axes = figure.axes[0]
    assert axes.get_ylabel() == "accuracy"
    *_, best = axes.get_lines()
    assert list(best.get_xdata()) == [6]
    assert list(best.get_ydata()) == [pytest.approx(0.9 - 0.5 / 4)]


def test_an_explicit_best_epoch_wins() -> None:
    figure = curve_figure(history(), "loss", best_epoch=2)  # e.g. monitor val_accuracy
    assert legend_texts(figure)[-1] == "best epoch (2)"
    *_, best = figure.axes[0].get_lines()
    assert (list(best.get_xdata()), list(best.get_ydata())) == ([2], [0.8])
    figure = curve_figure(history(), "loss", best_epoch=99)  # not an epoch: val_loss decides
    assert legend_texts(figure)[-1] == "best val_loss (epoch 6)"


def test_plot_training_curves_passes_the_best_epoch_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[tuple[str, int | None, int | None]] = []
    original = plots._training_curve_figure

    def spy(curves: TrainingCurves, metric: str, **kwargs: Any) -> Any:
        drawn.append((metric, kwargs["unfreeze_epoch"], kwargs["best_epoch"]))
        return original(curves, metric, **kwargs)

    monkeypatch.setattr(plots, "_training_curve_figure", spy)
    plot_training_curves(history(), tmp_path, unfreeze_epoch=3, best_epoch=2)
    assert drawn == [("accuracy", 3, 2), ("loss", 3, 2)]


def test_history_without_val_metrics(tmp_path: Path) -> None:
    rows = history(val=False)
    acc, loss = plot_training_curves(rows, tmp_path, unfreeze_epoch=3)
    assert_png(acc)
    assert_png(loss)
    figure = curve_figure(rows, "loss", unfreeze_epoch=3)
    assert legend_texts(figure) == ["train", f"{UNFREEZE_LABEL} (from epoch 4)"]


def test_gaps_nan_and_missing_metrics_do_not_crash(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"epoch": 1, "loss": 1.0},
        {"epoch": 2, "loss": math.nan, "val_loss": 0.9},
        {"epoch": 3, "loss": 0.5, "val_loss": None},
    ]
    acc, loss = plot_training_curves(rows, tmp_path, unfreeze_epoch=1)
    assert_png(acc)
    assert_png(loss)
    figure = curve_figure(rows, "accuracy")
    assert [text.get_text() for text in figure.axes[0].texts] == ["no accuracy recorded"]
    assert TrainingCurves.from_history(rows).best_epoch() == 2


def test_empty_history_still_gives_figures(tmp_path: Path) -> None:
    acc, loss = plot_training_curves([], tmp_path, unfreeze_epoch=None)
    assert_png(acc)
    assert_png(loss)


def test_epochs_default_to_the_row_position() -> None:
    curves = TrainingCurves.from_history([{"loss": 1.0}, {"loss": 0.5, "stage": "full"}])
    assert curves.epochs == (1, 2)
    assert set(curves.series) == {"loss"}
