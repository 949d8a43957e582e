"""Every matplotlib figure mritumor draws, one function per figure.

Figures are drawn headless with the Agg renderer and saved as PNG at
:data:`DPI`, atomically (rendered in memory, written to a temporary file in the
target folder, then renamed), so a report folder never holds half a PNG.

Figures are built with :class:`matplotlib.figure.Figure` and an Agg canvas, not
through ``pyplot``: no global backend switch (a notebook that imports mritumor
keeps its own backend), no figure registry to leak into, nothing left open. An
internal ``_..._figure`` function builds each figure and returns it, so tests
can inspect what was drawn before it is saved. matplotlib is imported inside
the functions: importing this module is cheap.
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mritumor.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 150
FIGURE_SIZE = (7.0, 4.5)
ACC_CURVE_FILE = "acc_curve.png"
LOSS_CURVE_FILE = "loss_curve.png"
UNFREEZE_LABEL = "backbone unfrozen"

_TRAIN_COLOUR = "tab:blue"
_VAL_COLOUR = "tab:orange"
_BEST_COLOUR = "tab:red"
_UNFREEZE_COLOUR = "0.35"


@dataclass(frozen=True)
class TrainingCurves:
    """Per-epoch series taken from history rows; NaN where a row lacks a value."""

    epochs: tuple[int, ...]
    series: Mapping[str, tuple[float, ...]]

    @classmethod
    def from_history(cls, history: Sequence[Mapping[str, Any]]) -> TrainingCurves:
        epochs = tuple(
            int(row["epoch"]) if _is_number(row.get("epoch")) else position
            for position, row in enumerate(history, start=1)
        )
        keys = {key for row in history for key in row if key not in ("epoch", "stage")}
        series = {key: tuple(_number(row.get(key)) for row in history) for key in keys}
        return cls(epochs=epochs, series=series)

    def values(self, key: str) -> tuple[float, ...] | None:
        """The series of ``key`` when it has at least one finite value."""
        values = self.series.get(key)
        if values is None or not any(math.isfinite(value) for value in values):
            return None
        return values

    def best_epoch(self, key: str = "val_loss") -> int | None:
        """The epoch of the smallest finite ``key`` (the first on a tie), or None."""
        values = self.values(key)
        if values is None:
            return None
        finite = [
            (value, position) for position, value in enumerate(values) if math.isfinite(value)
        ]
        return self.epochs[min(finite)[1]]


def plot_training_curves(
    history: Sequence[Mapping[str, Any]],
    reports_dir: Path,
    *,
    unfreeze_epoch: int | None,
    best_epoch: int | None = None,
) -> tuple[Path, Path]:
    """Write ``reports/acc_curve.png`` and ``reports/loss_curve.png``; returns their paths.

    ``history`` holds one row per epoch (``epoch`` 1-based, ``loss``, ``accuracy``,
    ``val_loss``, ``val_accuracy``; other keys are ignored). Both stages share one
    axis. ``unfreeze_epoch`` is the number of epochs trained with the backbone
    frozen (the 0-based index of the first epoch that trained it): a dashed
    vertical line labelled "backbone unfrozen" is drawn between epoch
    ``unfreeze_epoch`` and the next, at ``unfreeze_epoch + 0.5``; None or 0 draws
    none. The best epoch (``best_epoch``, else the one with the smallest
    ``val_loss``) is marked on the val curve. Metrics that are missing (no val
    split, no accuracy) are left out of the plot, not an error.
    """
    curves = TrainingCurves.from_history(history)
    paths = (reports_dir / ACC_CURVE_FILE, reports_dir / LOSS_CURVE_FILE)
    for metric, path in zip(("accuracy", "loss"), paths, strict=True):
        figure = _training_curve_figure(
            curves, metric, unfreeze_epoch=unfreeze_epoch, best_epoch=best_epoch
        )
        save_figure(figure, path)
    return paths


def save_figure(figure: Figure, path: Path) -> Path:
    """Save ``figure`` as a PNG at :data:`DPI` through a temporary file and a rename."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    figure.clear()
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _training_curve_figure(
    curves: TrainingCurves,
    metric: str,
    *,
    unfreeze_epoch: int | None,
    best_epoch: int | None = None,
) -> Figure:
    """The train and val ``metric`` per epoch, stage boundary and best epoch marked.

    ``best_epoch`` None (or not one of the epochs) marks the smallest ``val_loss``.
    """
    from matplotlib.ticker import MaxNLocator

    if best_epoch in curves.epochs:
        best_label = f"best epoch ({best_epoch})"
    else:
        best_epoch = curves.best_epoch("val_loss")
        best_label = f"best val_loss (epoch {best_epoch})"
    figure = _new_figure()
    axes = figure.add_subplot()
    epochs = list(curves.epochs)
    train, val = curves.values(metric), curves.values(f"val_{metric}")
    if train is not None:
        axes.plot(epochs, train, marker="o", markersize=3, color=_TRAIN_COLOUR, label="train")
    if val is not None:
        axes.plot(epochs, val, marker="o", markersize=3, color=_VAL_COLOUR, label="val")
    last = max(epochs, default=0)
    if unfreeze_epoch is not None and 0 < unfreeze_epoch <= last:
        axes.axvline(
            unfreeze_epoch + 0.5,
            color=_UNFREEZE_COLOUR,
            linestyle="--",
            linewidth=1.2,
            label=f"{UNFREEZE_LABEL} (from epoch {unfreeze_epoch + 1})",
        )
    if val is not None and best_epoch is not None:
        value = val[epochs.index(best_epoch)]
        if math.isfinite(value):
            axes.plot(
                [best_epoch],
                [value],
                linestyle="none",
                marker="*",
                markersize=14,
                color=_BEST_COLOUR,
                label=best_label,
                zorder=3,
            )
    if train is None and val is None:
        axes.text(
            0.5,
            0.5,
            f"no {metric} recorded",
            transform=axes.transAxes,
            horizontalalignment="center",
            verticalalignment="center",
            color="0.4",
        )
    if epochs:
        axes.set_xlim(min(epochs) - 0.5, max(last + 0.5, (unfreeze_epoch or 0) + 1.0))
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(f"Training and validation {metric}")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="best")
    return figure


def _new_figure(figsize: tuple[float, float] = FIGURE_SIZE) -> Figure:
    """A figure on an Agg canvas, outside pyplot (nothing global to switch or close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _number(value: Any) -> float:
    """``value`` as a float; NaN for a missing or non-numeric cell."""
    if value is None or isinstance(value, (str, bool)):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def plot_kfold_summary(
    folds: Sequence[int],
    scores: Mapping[str, Sequence[float]],
    intervals: Mapping[str, tuple[float, float, float]],
    path: Path,
) -> Path:
    """Per-fold scores as points, with each metric's mean and confidence interval as a band.

    ``scores`` maps a metric name to one value per fold in ``folds``; ``intervals``
    maps it to ``(mean, low, high)`` (NaN bounds, as for a single fold, draw no band).
    """
    return save_figure(_kfold_summary_figure(folds, scores, intervals), path)


def _kfold_summary_figure(
    folds: Sequence[int],
    scores: Mapping[str, Sequence[float]],
    intervals: Mapping[str, tuple[float, float, float]],
) -> Figure:
    figure = _new_figure()
    axes = figure.add_subplot()
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:purple")
    count = max(len(scores), 1)
    width = 0.8 / count
    for position, (name, values) in enumerate(scores.items()):
        colour = colours[position % len(colours)]
        offset = (position - (count - 1) / 2) * width
        xs = [fold + offset for fold in folds]
        axes.bar(xs, list(values), width=width * 0.9, color=colour, alpha=0.6, label=name)
        axes.scatter(xs, list(values), color=colour, zorder=3, s=16)
        mean, low, high = intervals.get(name, (math.nan, math.nan, math.nan))
        if math.isfinite(mean):
            label = f"mean {name} {mean:.3f}"
            if math.isfinite(low) and math.isfinite(high):
                axes.axhspan(low, high, color=colour, alpha=0.15)
                label += f" [{low:.3f}, {high:.3f}]"
            axes.axhline(mean, color=colour, linestyle="--", linewidth=1.2, label=label)
    axes.set_xticks(list(folds))
    axes.set_xlabel("fold")
    axes.set_ylabel("score")
    axes.set_ylim(0.0, 1.05)
    axes.set_title("k-fold cross-validation (mean and 95% CI)")
    axes.legend(loc="lower right", fontsize="small")
    return figure
