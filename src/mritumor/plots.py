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

A layer of its own, below models: training, Grad-CAM panels and evaluation all draw.
May import: core, config, data, stats.
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mritumor.core.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from numpy.typing import ArrayLike, NDArray

DPI = 150
FIGURE_SIZE = (7.0, 4.5)
SQUARE_FIGURE_SIZE = (6.0, 6.0)
MATRIX_FIGURE_SIZE = (6.5, 5.5)
GALLERY_TILE_SIZE = (2.5, 3.0)
ACC_CURVE_FILE = "acc_curve.png"
LOSS_CURVE_FILE = "loss_curve.png"
CM_FILE = "cm.png"
CM_NORM_FILE = "cm_norm.png"
ROC_FILE = "roc_curves.png"
PR_FILE = "pr_curves.png"
RELIABILITY_FILE = "reliability_diagram.png"
CONFIDENCE_HIST_FILE = "confidence_hist.png"
ERROR_GALLERY_FILE = "error_gallery.png"
THRESHOLD_ROC_FILE = "threshold_roc.png"
UNFREEZE_LABEL = "backbone unfrozen"
NO_IMAGES_LABEL = "(no images)"
EMPTY_CELL = "\u2013"  # an en dash, in the cells of a class without images
NO_ERRORS_TEXT = "No misclassified images"
OPERATING_POINT_LABEL = "operating point"

_TRAIN_COLOUR = "tab:blue"
_VAL_COLOUR = "tab:orange"
_BEST_COLOUR = "tab:red"
_UNFREEZE_COLOUR = "0.35"
_CHANCE_COLOUR = "0.5"
_CORRECT_COLOUR = "tab:green"
_WRONG_COLOUR = "tab:red"
_LONG_LABEL = 10  # class names longer than this are rotated under the matrix
_MANY_BINS = 20  # reliability bins beyond this get their counts written vertically


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


class RocCurve(Protocol):
    """One class's one-vs-rest ROC curve, as :func:`plot_roc_curves` reads it."""

    @property
    def class_name(self) -> str: ...
    @property
    def fpr(self) -> ArrayLike: ...
    @property
    def tpr(self) -> ArrayLike: ...
    @property
    def auc(self) -> float: ...


class PrCurve(Protocol):
    """One class's one-vs-rest precision-recall curve, as :func:`plot_pr_curves` reads it."""

    @property
    def class_name(self) -> str: ...
    @property
    def recall(self) -> ArrayLike: ...
    @property
    def precision(self) -> ArrayLike: ...
    @property
    def ap(self) -> float: ...


def plot_confusion_matrix(
    matrix: ArrayLike, class_names: Sequence[str], path: Path, *, normalised: bool
) -> Path:
    """A confusion matrix, rows the true class and columns the predicted one.

    ``matrix`` holds image counts, or with ``normalised`` the row-normalised
    fractions (a NaN row, a class without images, shows a dash in every cell).
    """
    return save_figure(_confusion_matrix_figure(matrix, class_names, normalised=normalised), path)


def plot_roc_curves(curves: Sequence[RocCurve], path: Path) -> Path:
    """One-vs-rest ROC curves, one per class; a class whose AUC is NaN is only named."""
    return save_figure(_roc_figure(curves), path)


def plot_pr_curves(curves: Sequence[PrCurve], path: Path) -> Path:
    """One-vs-rest precision-recall curves, one per class; a NaN AP is only named."""
    return save_figure(_pr_figure(curves), path)


def plot_reliability_diagram(
    edges: ArrayLike,
    counts: ArrayLike,
    accuracy: ArrayLike,
    confidence: ArrayLike,
    path: Path,
    *,
    ece: float,
    mce: float,
    title: str | None = None,
) -> Path:
    """A reliability diagram (Guo et al. 2017): per-bin accuracy against mean confidence.

    ``edges`` holds the ``n + 1`` bin edges; ``counts``, ``accuracy`` and
    ``confidence`` one value per bin (NaN allowed where a bin is empty). ``ece``
    and ``mce`` are fractions; the figure shows them as percentages.
    """
    figure = _reliability_figure(edges, counts, accuracy, confidence, ece=ece, mce=mce, title=title)
    return save_figure(figure, path)


def plot_confidence_histogram(
    confidences: ArrayLike, correct: ArrayLike, path: Path, *, n_bins: int = 15
) -> Path:
    """The max-probability confidences, stacked into correct and wrong predictions."""
    return save_figure(_confidence_histogram_figure(confidences, correct, n_bins=n_bins), path)


def plot_error_gallery(
    images: Sequence[ArrayLike], captions: Sequence[str], path: Path, *, columns: int = 4
) -> Path:
    """A grid of uint8 images (HxWx1 shown grey, or HxWx3), each titled by its caption."""
    return save_figure(_error_gallery_figure(images, captions, columns=columns), path)


def plot_threshold_roc(
    fpr: ArrayLike,
    tpr: ArrayLike,
    point_fpr: float,
    point_tpr: float,
    path: Path,
    *,
    auc: float,
    label: str,
) -> Path:
    """The tumour-vs-no-tumour ROC curve with the chosen operating point annotated."""
    figure = _threshold_roc_figure(fpr, tpr, point_fpr, point_tpr, auc=auc, label=label)
    return save_figure(figure, path)


def _confusion_matrix_figure(
    matrix: ArrayLike, class_names: Sequence[str], *, normalised: bool
) -> Figure:
    import matplotlib

    values = np.asarray(matrix, dtype=float)
    count = len(class_names)
    if values.shape != (count, count):
        raise ValueError(f"{count} class names need a {count}x{count} matrix, not {values.shape}")
    figure = _new_figure(_matrix_figure_size(count))
    axes = figure.add_subplot()
    colourmap = matplotlib.colormaps["Blues"].with_extremes(bad="white")
    top = 1.0 if normalised else max(float(np.nanmax(values, initial=0.0)), 1.0)
    image = axes.imshow(np.ma.masked_invalid(values), cmap=colourmap, vmin=0.0, vmax=top)
    figure.colorbar(image, ax=axes, label="fraction of the true class" if normalised else "images")
    for (row, column), value in np.ndenumerate(values):
        axes.text(
            column,
            row,
            _cell_text(value, normalised=normalised),
            horizontalalignment="center",
            verticalalignment="center",
            color=_contrasting_text_colour(image.to_rgba(value)),
        )
    rotate = max(map(len, class_names), default=0) > _LONG_LABEL
    axes.set_xticks(
        range(count),
        labels=list(class_names),
        rotation=45 if rotate else 0,
        horizontalalignment="right" if rotate else "center",
        rotation_mode="anchor",
    )
    axes.set_yticks(range(count), labels=list(class_names))
    axes.set_xlabel("Predicted")
    axes.set_ylabel("True")
    axes.set_title("Confusion matrix (row-normalised)" if normalised else "Confusion matrix")
    return figure


def _matrix_figure_size(classes: int) -> tuple[float, float]:
    """:data:`MATRIX_FIGURE_SIZE`, three quarters of an inch larger per class beyond five."""
    extra = 0.75 * max(classes - 5, 0)
    return (MATRIX_FIGURE_SIZE[0] + extra, MATRIX_FIGURE_SIZE[1] + extra)


def _cell_text(value: float, *, normalised: bool) -> str:
    if not math.isfinite(value):
        return EMPTY_CELL
    return f"{value:.2f}" if normalised else str(round(value))


def _contrasting_text_colour(rgba: Any) -> str:
    """Black on a light cell, white on a dark one (by the cell's luminance)."""
    red, green, blue = (float(channel) for channel in tuple(rgba)[:3])
    return "black" if 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.5 else "white"


def _roc_figure(curves: Sequence[RocCurve]) -> Figure:
    figure, axes = _unit_square_axes(
        "False positive rate (FPR)", "True positive rate (TPR)", "ROC curves (one-vs-rest)"
    )
    for index, curve in enumerate(curves):
        _draw_class_curve(axes, index, curve.class_name, curve.fpr, curve.tpr, "AUC", curve.auc)
    _draw_chance(axes)
    axes.legend(loc="lower right", fontsize="small")
    return figure


def _pr_figure(curves: Sequence[PrCurve]) -> Figure:
    figure, axes = _unit_square_axes("Recall", "Precision", "Precision-recall curves (one-vs-rest)")
    for index, curve in enumerate(curves):
        _draw_class_curve(
            axes,
            index,
            curve.class_name,
            curve.recall,
            curve.precision,
            "AP",
            curve.ap,
            drawstyle="steps-post",
        )
    axes.legend(loc="lower left", fontsize="small")
    return figure


def _draw_class_curve(
    axes: Axes,
    index: int,
    name: str,
    xs: ArrayLike,
    ys: ArrayLike,
    score_name: str,
    score: float,
    **line: Any,
) -> None:
    """One class's curve, coloured by its position; a NaN score only puts its name in the legend.

    Colouring by position (not by drawn line) keeps a class one colour in every figure.
    """
    if not math.isfinite(score):
        axes.plot([], [], linestyle="none", label=f"{name} {NO_IMAGES_LABEL}")
        return
    axes.plot(
        np.asarray(xs, dtype=float),
        np.asarray(ys, dtype=float),
        color=_class_colour(index),
        linewidth=1.8,
        clip_on=False,
        label=f"{name} ({score_name} {score:.3f})",
        **line,
    )


def _class_colour(index: int) -> tuple[float, ...]:
    import matplotlib

    colourmap = matplotlib.colormaps["tab10"]
    return tuple(colourmap(index % colourmap.N))


def _draw_chance(axes: Axes) -> None:
    axes.plot(
        [0.0, 1.0], [0.0, 1.0], linestyle="--", linewidth=1.0, color=_CHANCE_COLOUR, label="chance"
    )


def _unit_square_axes(xlabel: str, ylabel: str, title: str) -> tuple[Figure, Axes]:
    """A square figure with one equal-aspect axes spanning 0 to 1 on both sides."""
    figure = _new_figure(SQUARE_FIGURE_SIZE)
    axes = figure.add_subplot()
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.set_aspect("equal")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    return figure, axes


def _reliability_figure(
    edges: ArrayLike,
    counts: ArrayLike,
    accuracy: ArrayLike,
    confidence: ArrayLike,
    *,
    ece: float,
    mce: float,
    title: str | None,
) -> Figure:
    from matplotlib.colors import to_rgba

    left, width, sizes, hits, means = _filled_bins(edges, counts, accuracy, confidence)
    figure, axes = _unit_square_axes("Confidence", "Accuracy", title or "Reliability diagram")
    axes.bar(
        left,
        hits,
        width=width,
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.6,
        label="accuracy",
    )
    axes.bar(
        left,
        means - hits,
        bottom=hits,
        width=width,
        align="edge",
        facecolor=to_rgba("tab:red", 0.25),
        edgecolor="tab:red",
        hatch="//",
        linewidth=0.6,
        label="gap",
    )
    axes.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="0.3", label="perfect calibration")
    for centre, top, size in zip(left + width / 2, np.maximum(hits, means), sizes, strict=True):
        axes.text(
            centre,
            top + 0.01,
            str(round(size)),
            horizontalalignment="center",
            verticalalignment="bottom",
            fontsize="x-small",
            rotation=90 if np.size(counts) > _MANY_BINS else 0,
        )
    axes.text(
        0.04,
        0.96,
        f"ECE {_percent(ece)}\nMCE {_percent(mce)}",
        transform=axes.transAxes,
        verticalalignment="top",
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85},
    )
    axes.legend(loc="lower right", fontsize="small")
    return figure


def _filled_bins(
    edges: ArrayLike, counts: ArrayLike, accuracy: ArrayLike, confidence: ArrayLike
) -> tuple[NDArray[np.float64], ...]:
    """The left edge, width, count, accuracy and mean confidence of every non-empty bin."""
    bounds = np.asarray(edges, dtype=float)
    columns = [np.asarray(series, dtype=float) for series in (counts, accuracy, confidence)]
    if bounds.ndim != 1 or any(column.shape != (bounds.size - 1,) for column in columns):
        raise ValueError("a reliability diagram needs n + 1 edges and n values per bin series")
    sizes, hits, means = columns
    filled = (sizes > 0) & np.isfinite(hits) & np.isfinite(means)
    return bounds[:-1][filled], np.diff(bounds)[filled], sizes[filled], hits[filled], means[filled]


def _percent(fraction: float) -> str:
    return f"{fraction:.1%}" if math.isfinite(fraction) else "n/a"


def _confidence_histogram_figure(
    confidences: ArrayLike, correct: ArrayLike, *, n_bins: int
) -> Figure:
    values = np.asarray(confidences, dtype=float).ravel()
    hits = np.asarray(correct, dtype=bool).ravel()
    if values.shape != hits.shape:
        raise ValueError(f"{values.size} confidences but {hits.size} correct flags")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, not {n_bins}")
    figure = _new_figure()
    axes = figure.add_subplot()
    axes.hist(
        [values[hits], values[~hits]],
        bins=np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        stacked=True,
        color=[_CORRECT_COLOUR, _WRONG_COLOUR],
        edgecolor="white",
        linewidth=0.5,
        label=["correct", "wrong"],
    )
    if values.size:
        accuracy, mean = float(hits.mean()), float(values.mean())
        axes.axvline(accuracy, color="black", linestyle="--", label=f"accuracy {accuracy:.3f}")
        axes.axvline(mean, color="tab:purple", linestyle=":", label=f"mean confidence {mean:.3f}")
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("Confidence (max probability)")
    axes.set_ylabel("Images")
    axes.set_title("Confidence of the predictions")
    axes.grid(alpha=0.3, axis="y")
    axes.legend(loc="upper left")
    return figure


def _error_gallery_figure(
    images: Sequence[ArrayLike], captions: Sequence[str], *, columns: int
) -> Figure:
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if columns < 1:
        raise ValueError(f"columns must be at least 1, not {columns}")
    if not images:
        figure = _new_figure()
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.text(
            0.5,
            0.5,
            NO_ERRORS_TEXT,
            transform=axes.transAxes,
            fontsize="large",
            horizontalalignment="center",
            verticalalignment="center",
            color="0.4",
        )
        return figure
    width = min(columns, len(images))
    rows = math.ceil(len(images) / width)
    figure = _new_figure((width * GALLERY_TILE_SIZE[0], rows * GALLERY_TILE_SIZE[1]))
    for position, (image, caption) in enumerate(zip(images, captions, strict=True), start=1):
        axes = figure.add_subplot(rows, width, position)
        _show_image(axes, image)
        axes.set_title(caption, fontsize="small")
        axes.set_axis_off()
    return figure


def _show_image(axes: Axes, image: ArrayLike) -> None:
    """A uint8 image at its own scale: one channel in grey over 0 to 255, three in colour."""
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 2:
        axes.imshow(pixels, cmap="gray", vmin=0, vmax=255)
    else:
        axes.imshow(pixels)


def _threshold_roc_figure(
    fpr: ArrayLike,
    tpr: ArrayLike,
    point_fpr: float,
    point_tpr: float,
    *,
    auc: float,
    label: str,
) -> Figure:
    figure, axes = _unit_square_axes(
        "False positive rate (1 - specificity)",
        "True positive rate (sensitivity)",
        "Tumour vs no tumour: ROC and operating point",
    )
    auc_text = f"{auc:.3f}" if math.isfinite(auc) else "n/a"
    axes.plot(
        np.asarray(fpr, dtype=float),
        np.asarray(tpr, dtype=float),
        color=_TRAIN_COLOUR,
        linewidth=1.8,
        clip_on=False,
        label=f"tumour vs no tumour (AUC {auc_text})",
    )
    _draw_chance(axes)
    axes.plot(
        [point_fpr],
        [point_tpr],
        linestyle="none",
        marker="o",
        markersize=10,
        markerfacecolor=_BEST_COLOUR,
        markeredgecolor="black",
        clip_on=False,
        zorder=4,
        label=OPERATING_POINT_LABEL,
    )
    _annotate_point(axes, point_fpr, point_tpr, label)
    axes.legend(loc="lower right", fontsize="small")
    return figure


def _annotate_point(axes: Axes, x: float, y: float, label: str) -> None:
    """``label`` beside the point at (x, y), on the side that stays inside the unit square."""
    right, low = x > 0.6, y < 0.4
    axes.annotate(
        label,
        xy=(x, y),
        xytext=(-24 if right else 24, 24 if low else -36),
        textcoords="offset points",
        horizontalalignment="right" if right else "left",
        verticalalignment="bottom" if low else "top",
        fontsize="small",
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9},
        arrowprops={"arrowstyle": "->", "color": "0.3"},
    )


GRADCAM_FIGURE_SIZE = (10.5, 3.8)
GRADCAM_PANEL_TITLES = ("image", "heat map", "overlay")


def plot_gradcam_panel(
    image: ArrayLike, heatmap: ArrayLike, overlay: ArrayLike, path: Path, *, title: str
) -> Path:
    """Image, heat map and overlay side by side, under ``title``.

    ``image`` is uint8 (H x W or H x W x 1 shown grey, or H x W x 3), ``heatmap``
    a 2-D map in [0, 1] drawn in "jet" with a colour bar, ``overlay`` the uint8
    H x W x 3 blend (:func:`mritumor.predict.gradcam.overlay`). ``title`` is e.g.
    ``"glioma 0.93 (Grad-CAM, top_activation)"``.
    """
    return save_figure(_gradcam_panel_figure(image, heatmap, overlay, title=title), path)


def _gradcam_panel_figure(
    image: ArrayLike, heatmap: ArrayLike, overlay: ArrayLike, *, title: str
) -> Figure:
    heat = np.asarray(heatmap, dtype=float)
    if heat.ndim != 2:
        raise ValueError(f"a heat map must be 2-D, not shape {heat.shape}")
    figure = _new_figure(GRADCAM_FIGURE_SIZE)
    image_axes, heat_axes, overlay_axes = figure.subplots(1, 3)
    _show_image(image_axes, image)
    drawn = heat_axes.imshow(heat, cmap="jet", vmin=0.0, vmax=1.0)
    figure.colorbar(drawn, ax=heat_axes, fraction=0.046, pad=0.04)
    _show_image(overlay_axes, overlay)
    for axes, name in zip((image_axes, heat_axes, overlay_axes), GRADCAM_PANEL_TITLES, strict=True):
        axes.set_title(name, fontsize="medium")
        axes.set_axis_off()
    figure.suptitle(title)
    return figure


def plot_gradcam_montage(
    images: Sequence[ArrayLike],
    overlays: Sequence[ArrayLike],
    path: Path,
    *,
    titles: Sequence[str],
    title: str,
) -> Path:
    """A volume's top slices: each slice above its Grad-CAM overlay, one column per slice."""
    return save_figure(_gradcam_montage_figure(images, overlays, titles=titles, title=title), path)


def _gradcam_montage_figure(
    images: Sequence[ArrayLike],
    overlays: Sequence[ArrayLike],
    *,
    titles: Sequence[str],
    title: str,
) -> Figure:
    if not len(images) == len(overlays) == len(titles) > 0:
        raise ValueError("a montage needs one image, overlay and title per slice, and a slice")
    columns = len(images)
    figure = _new_figure((2.4 * columns + 0.4, 5.4))
    grid = np.asarray(figure.subplots(2, columns, squeeze=False))
    for column, (image, blended, name) in enumerate(zip(images, overlays, titles, strict=True)):
        _show_image(grid[0, column], image)
        _show_image(grid[1, column], blended)
        grid[0, column].set_title(name, fontsize="small")
        for axes in grid[:, column]:
            axes.set_axis_off()
    figure.suptitle(title, fontsize="medium")
    return figure


FINETUNE_METRICS = (
    ("ext_holdout", "sensitivity", "sensitivity\n(ext. holdout)"),
    ("ext_holdout", "specificity", "specificity\n(ext. holdout)"),
    ("ext_holdout", "auc", "AUC\n(ext. holdout)"),
    ("test", "accuracy", "accuracy\n(4-class test)"),
    ("test", "macro_f1", "macro-F1\n(4-class test)"),
)


def plot_finetune_comparison(report: Mapping[str, Any], path: Path) -> Path:
    """Before and after fine-tuning, side by side, with 95% intervals where there are some.

    ``report`` is ``finetune_report.json``: ``before`` and ``after`` each hold
    ``ext_holdout`` (sensitivity, specificity, auc, ci95) and optionally ``test``.
    """
    return save_figure(_finetune_comparison_figure(report), path)


def _finetune_comparison_figure(report: Mapping[str, Any]) -> Figure:
    shown = [m for m in FINETUNE_METRICS if m[0] in report["before"] and m[0] in report["after"]]
    figure = _new_figure()
    axes = figure.subplots()
    width = 0.38
    for offset, (when, colour) in enumerate((("before", _TRAIN_COLOUR), ("after", _VAL_COLOUR))):
        values, errors = [], []
        for part, key, _ in shown:
            value = float(report[when][part][key])
            low, high = report[when][part].get("ci95", {}).get(key, (None, None))
            values.append(value)
            errors.append((_spread(value, low), _spread(high, value)))
        positions = [i + (offset - 0.5) * width for i in range(len(shown))]
        axes.bar(
            positions, values, width, color=colour, label=when,
            yerr=np.asarray(errors).T if errors else None, capsize=3,
        )  # fmt: skip
        for x, value, (_, above) in zip(positions, values, errors, strict=True):
            axes.text(x, value + above + 0.015, f"{value:.2f}", ha="center", fontsize=7)
    axes.set_xticks(range(len(shown)), [label for _, _, label in shown], fontsize=8)
    axes.set_ylim(0.0, 1.12)
    axes.set_title("Before and after fine-tuning")
    axes.legend(loc="lower right")
    return figure


def _spread(upper: Any, lower: Any) -> float:
    """``upper - lower`` for an error bar; 0 where an interval end is missing or not finite."""
    if upper is None or lower is None or not math.isfinite(float(upper) - float(lower)):
        return 0.0
    return max(float(upper) - float(lower), 0.0)
