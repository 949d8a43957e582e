"""Figures (mritumor.plots): files, PNG validity, and what is drawn where."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.axes
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Annotation
from PIL import Image

from mritumor import plots
from mritumor.plots import (
    ACC_CURVE_FILE,
    CM_FILE,
    CM_NORM_FILE,
    CONFIDENCE_HIST_FILE,
    DPI,
    EMPTY_CELL,
    ERROR_GALLERY_FILE,
    FIGURE_SIZE,
    GALLERY_TILE_SIZE,
    LOSS_CURVE_FILE,
    MATRIX_FIGURE_SIZE,
    NO_ERRORS_TEXT,
    NO_IMAGES_LABEL,
    OPERATING_POINT_LABEL,
    PR_FILE,
    RELIABILITY_FILE,
    ROC_FILE,
    SQUARE_FIGURE_SIZE,
    THRESHOLD_ROC_FILE,
    UNFREEZE_LABEL,
    TrainingCurves,
    plot_confidence_histogram,
    plot_confusion_matrix,
    plot_error_gallery,
    plot_pr_curves,
    plot_reliability_diagram,
    plot_roc_curves,
    plot_threshold_roc,
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


def assert_png(path: Path, size: tuple[float, float] = FIGURE_SIZE) -> None:
    """A whole PNG (signature, decodable) of ``size`` inches at DPI."""
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        assert image.size == (round(size[0] * DPI), round(size[1] * DPI))


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


# Evaluation figures ---------------------------------------------------------------------------

NAMES = ("glioma", "meningioma", "pituitary")


@dataclass(frozen=True)
class Roc:
    class_name: str
    fpr: Any
    tpr: Any
    auc: float


@dataclass(frozen=True)
class Pr:
    class_name: str
    recall: Any
    precision: Any
    ap: float


def rocs() -> list[Roc]:
    return [
        Roc("glioma", [0.0, 0.1, 1.0], [0.0, 0.8, 1.0], 0.9123),
        Roc("meningioma", [0.0, 0.3, 1.0], [0.0, 0.6, 1.0], 0.75),
        Roc("pituitary", np.array([]), np.array([]), math.nan),
    ]


def prs() -> list[Pr]:
    return [
        Pr("glioma", [1.0, 0.5, 0.0], [0.5, 0.8, 1.0], 0.8768),
        Pr("pituitary", [], [], math.nan),
    ]


def reliability_bins() -> dict[str, Any]:
    """Four bins over [0, 1]; the second is empty (NaN accuracy and confidence)."""
    return {
        "edges": [0.0, 0.25, 0.5, 0.75, 1.0],
        "counts": [3, 0, 12, 40],
        "accuracy": [0.33, math.nan, 0.5, 0.9],
        "confidence": [0.2, math.nan, 0.62, 0.88],
    }


def uint8_image(height: int, width: int, channels: int) -> Any:
    return np.arange(height * width * channels, dtype=np.uint8).reshape(height, width, channels)


def matrix_cells(figure: Any) -> dict[tuple[int, int], Any]:
    """The annotation in each (row, column) cell of a confusion-matrix figure."""
    texts = figure.axes[0].texts
    return {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in texts}


def legend_of(axes: Any) -> list[str]:
    return [text.get_text() for text in axes.get_legend().get_texts()]


def line_data(line: Any) -> tuple[list[float], list[float]]:
    return [float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()]


def pixel_shape(image: Any) -> tuple[int, ...]:
    return tuple(image.get_array().shape)


def bar_heights(container: Any) -> list[float]:
    return [patch.get_height() for patch in container]


EVERY_FIGURE: dict[str, tuple[Any, tuple[float, float]]] = {
    CM_FILE: (
        lambda path: plot_confusion_matrix(np.eye(3) * 5, NAMES, path, normalised=False),
        MATRIX_FIGURE_SIZE,
    ),
    CM_NORM_FILE: (
        lambda path: plot_confusion_matrix(np.eye(3), NAMES, path, normalised=True),
        MATRIX_FIGURE_SIZE,
    ),
    ROC_FILE: (lambda path: plot_roc_curves(rocs(), path), SQUARE_FIGURE_SIZE),
    PR_FILE: (lambda path: plot_pr_curves(prs(), path), SQUARE_FIGURE_SIZE),
    RELIABILITY_FILE: (
        lambda path: plot_reliability_diagram(**reliability_bins(), path=path, ece=0.05, mce=0.12),
        SQUARE_FIGURE_SIZE,
    ),
    CONFIDENCE_HIST_FILE: (
        lambda path: plot_confidence_histogram([0.9, 0.6], [True, False], path),
        FIGURE_SIZE,
    ),
    ERROR_GALLERY_FILE: (
        lambda path: plot_error_gallery(
            [uint8_image(8, 8, 1)] * 5, ["a"] * 5, path, columns=2
        ),  # 2 columns, 3 rows
        (2 * GALLERY_TILE_SIZE[0], 3 * GALLERY_TILE_SIZE[1]),
    ),
    THRESHOLD_ROC_FILE: (
        lambda path: plot_threshold_roc(
            [0, 0.2, 1], [0, 0.9, 1], 0.2, 0.9, path, auc=0.95, label="t = 0.5"
        ),
        SQUARE_FIGURE_SIZE,
    ),
}


@pytest.mark.parametrize("name", list(EVERY_FIGURE))
def test_every_figure_is_a_whole_png_in_a_new_folder(tmp_path: Path, name: str) -> None:
    draw, size = EVERY_FIGURE[name]
    path = tmp_path / "missing" / "reports" / name
    assert draw(path) == path
    assert_png(path, size)
    assert [entry.name for entry in path.parent.iterdir()] == [name]


def test_a_figure_that_fails_to_render_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("renderer failed")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="renderer failed"):
        plot_roc_curves(rocs(), tmp_path / ROC_FILE)
    assert list(tmp_path.iterdir()) == []


def test_file_names_match_the_reference_framework() -> None:
    assert (CM_FILE, CM_NORM_FILE, ROC_FILE, PR_FILE) == (
        "cm.png",
        "cm_norm.png",
        "roc_curves.png",
        "pr_curves.png",
    )
    assert (RELIABILITY_FILE, CONFIDENCE_HIST_FILE, ERROR_GALLERY_FILE, THRESHOLD_ROC_FILE) == (
        "reliability_diagram.png",
        "confidence_hist.png",
        "error_gallery.png",
        "threshold_roc.png",
    )


def test_confusion_matrix_annotates_counts() -> None:
    counts = np.array([[50, 3, 0], [4, 40, 6], [0, 1, 59]])
    figure = plots._confusion_matrix_figure(counts, NAMES, normalised=False)
    axes, colorbar = figure.axes
    cells = matrix_cells(figure)
    assert {cell: text.get_text() for cell, text in cells.items()} == {
        (row, column): str(counts[row, column]) for row in range(3) for column in range(3)
    }
    assert axes.get_title() == "Confusion matrix"
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("Predicted", "True")
    assert [label.get_text() for label in axes.get_xticklabels()] == list(NAMES)
    assert [label.get_text() for label in axes.get_yticklabels()] == list(NAMES)
    assert colorbar.get_ylim() == (0.0, 59.0)
    # The darkest cell is written in white, a light one in black.
    assert cells[(2, 2)].get_color() == "white"
    assert cells[(0, 1)].get_color() == "black"


def test_row_normalised_matrix_has_two_decimals_and_dashes_for_an_empty_class() -> None:
    fractions = np.array([[2 / 3, 1 / 3, 0.0], [math.nan] * 3, [0.1, 0.0, 0.9]])
    figure = plots._confusion_matrix_figure(fractions, NAMES, normalised=True)
    texts = {cell: text.get_text() for cell, text in matrix_cells(figure).items()}
    assert [texts[(0, column)] for column in range(3)] == ["0.67", "0.33", "0.00"]
    assert [texts[(1, column)] for column in range(3)] == [EMPTY_CELL] * 3
    assert [texts[(2, column)] for column in range(3)] == ["0.10", "0.00", "0.90"]
    assert figure.axes[0].get_title() == "Confusion matrix (row-normalised)"
    assert figure.axes[1].get_ylim() == (0.0, 1.0)


def test_long_class_names_are_rotated() -> None:
    short = plots._confusion_matrix_figure(np.eye(2), ["a", "b"], normalised=True)
    long = plots._confusion_matrix_figure(np.eye(2), ["a", "pituitary_adenoma"], normalised=True)
    assert {label.get_rotation() for label in short.axes[0].get_xticklabels()} == {0.0}
    assert {label.get_rotation() for label in long.axes[0].get_xticklabels()} == {45.0}


def test_confusion_matrix_must_match_the_class_names() -> None:
    with pytest.raises(ValueError, match="3x3"):
        plots._confusion_matrix_figure(np.eye(2), NAMES, normalised=False)


def test_roc_legend_gives_auc_to_three_decimals_and_names_empty_classes() -> None:
    axes = plots._roc_figure(rocs()).axes[0]
    assert legend_of(axes) == [
        "glioma (AUC 0.912)",
        "meningioma (AUC 0.750)",
        f"pituitary {NO_IMAGES_LABEL}",
        "chance",
    ]
    glioma, _, pituitary, chance = axes.get_lines()
    assert line_data(glioma)[0] == [0.0, 0.1, 1.0]
    assert line_data(pituitary) == ([], [])  # named, not drawn
    assert line_data(chance) == ([0.0, 1.0], [0.0, 1.0])
    assert (axes.get_xlim(), axes.get_ylim()) == ((0.0, 1.0), (0.0, 1.0))
    assert axes.get_aspect() == 1.0


def test_a_class_keeps_its_colour_when_an_earlier_one_is_empty() -> None:
    roc = plots._roc_figure(rocs()).axes[0].get_lines()
    pr = plots._pr_figure([Pr("glioma", [], [], math.nan), Pr("meningioma", [1], [1], 1.0)])
    assert pr.axes[0].get_lines()[1].get_color() == roc[1].get_color()


def test_pr_curves_are_steps_with_ap_in_the_legend() -> None:
    axes = plots._pr_figure(prs()).axes[0]
    assert legend_of(axes) == ["glioma (AP 0.877)", f"pituitary {NO_IMAGES_LABEL}"]
    glioma = axes.get_lines()[0]
    assert glioma.get_drawstyle() == "steps-post"
    assert line_data(glioma)[1] == [0.5, 0.8, 1.0]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("Recall", "Precision")


def test_reliability_diagram_draws_the_non_empty_bins() -> None:
    figure = plots._reliability_figure(**reliability_bins(), ece=0.0321, mce=0.115, title=None)
    axes = figure.axes[0]
    accuracy, gap = axes.containers
    assert [patch.get_x() for patch in accuracy] == [0.0, 0.5, 0.75]
    assert bar_heights(accuracy) == [0.33, 0.5, 0.9]
    assert bar_heights(gap) == pytest.approx([0.2 - 0.33, 0.62 - 0.5, 0.88 - 0.9])
    assert [patch.get_y() for patch in gap] == [0.33, 0.5, 0.9]
    *counts, box = axes.texts
    assert [text.get_text() for text in counts] == ["3", "12", "40"]
    assert box.get_text() == "ECE 3.2%\nMCE 11.5%"
    assert legend_of(axes) == ["perfect calibration", "accuracy", "gap"]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("Confidence", "Accuracy")
    assert axes.get_title() == "Reliability diagram"


def test_reliability_diagram_title_and_unknown_errors() -> None:
    bins = reliability_bins()
    figure = plots._reliability_figure(
        **bins, ece=math.nan, mce=math.nan, title="After temperature scaling"
    )
    assert figure.axes[0].get_title() == "After temperature scaling"
    assert figure.axes[0].texts[-1].get_text() == "ECE n/a\nMCE n/a"
    with pytest.raises(ValueError, match="n \\+ 1 edges"):
        plots._reliability_figure(**{**bins, "edges": [0.0, 1.0]}, ece=0, mce=0, title=None)


def test_confidence_histogram_stacks_correct_and_wrong() -> None:
    confidences = [0.3, 0.55, 0.9, 0.95, 1.0, 0.99, 0.7, 0.92]
    correct = [False, True, True, True, True, True, False, True]
    figure = plots._confidence_histogram_figure(confidences, correct, n_bins=10)
    axes = figure.axes[0]
    right, wrong = axes.containers
    assert len(right) == len(wrong) == 10
    assert sum(bar_heights(right)) == 6
    assert sum(bar_heights(wrong)) == 2
    stacked = [patch.get_y() + patch.get_height() for patch in wrong]
    assert sum(stacked) == len(confidences)
    assert stacked[-1] == 5  # 0.9 to 1.0 inclusive is the last bin
    accuracy, mean = (line_data(line)[0][0] for line in axes.get_lines())
    assert (accuracy, mean) == pytest.approx((0.75, sum(confidences) / 8))
    assert legend_of(axes) == ["correct", "wrong", "accuracy 0.750", "mean confidence 0.789"]


def test_confidence_histogram_of_nothing() -> None:
    axes = plots._confidence_histogram_figure([], [], n_bins=15).axes[0]
    assert axes.get_lines() == []
    assert legend_of(axes) == ["correct", "wrong"]
    with pytest.raises(ValueError, match="2 confidences but 1"):
        plots._confidence_histogram_figure([0.5, 0.6], [True], n_bins=15)


def test_error_gallery_shows_each_image_with_its_caption() -> None:
    images = [uint8_image(20, 20, 1), uint8_image(10, 30, 3), uint8_image(16, 16, 1)]
    captions = ["true glioma\npred meningioma 0.97", "b", "c"]
    figure = plots._error_gallery_figure(images, captions, columns=2)
    assert len(figure.axes) == 3
    assert [len(axes.images) for axes in figure.axes] == [1, 1, 1]
    assert [axes.get_title() for axes in figure.axes] == captions
    assert not any(axes.axison for axes in figure.axes)
    grey, colour, _ = (axes.images[0] for axes in figure.axes)
    assert pixel_shape(grey) == (20, 20)
    assert grey.get_cmap().name == "gray"
    assert grey.get_clim() == (0, 255)
    assert pixel_shape(colour) == (10, 30, 3)
    assert tuple(figure.get_size_inches()) == (2 * GALLERY_TILE_SIZE[0], 2 * GALLERY_TILE_SIZE[1])


def test_error_gallery_without_errors(tmp_path: Path) -> None:
    figure = plots._error_gallery_figure([], [], columns=4)
    assert [text.get_text() for text in figure.axes[0].texts] == [NO_ERRORS_TEXT]
    assert NO_ERRORS_TEXT == "No misclassified images"
    assert_png(plot_error_gallery([], [], tmp_path / ERROR_GALLERY_FILE))
    with pytest.raises(ValueError, match="1 images but 0 captions"):
        plots._error_gallery_figure([uint8_image(4, 4, 1)], [], columns=4)


def test_threshold_roc_marks_and_annotates_the_operating_point() -> None:
    label = "t = 0.412\nsens 0.95, spec 0.88"
    figure = plots._threshold_roc_figure(
        [0.0, 0.12, 1.0], [0.0, 0.95, 1.0], 0.12, 0.95, auc=0.9534, label=label
    )
    axes = figure.axes[0]
    assert legend_of(axes) == ["tumour vs no tumour (AUC 0.953)", "chance", OPERATING_POINT_LABEL]
    curve, _, point = axes.get_lines()
    assert line_data(curve)[1] == [0.0, 0.95, 1.0]
    assert line_data(point) == ([0.12], [0.95])
    assert point.get_marker() == "o"
    (annotation,) = axes.texts
    assert isinstance(annotation, Annotation)
    assert annotation.get_text() == label
    assert annotation.xy == (0.12, 0.95)


def gradcam_inputs() -> tuple[Any, Any, Any]:
    heatmap = np.zeros((12, 16), dtype=np.float32)
    heatmap[2:5, 3:7] = np.linspace(0.2, 1.0, 12).reshape(3, 4)
    image = uint8_image(12, 16, 1)
    blended = np.repeat(image, 3, axis=-1)
    return image, heatmap, blended


def test_gradcam_panel_shows_image_heat_map_and_overlay() -> None:
    image, heatmap, blended = gradcam_inputs()
    title = "glioma 0.93 (Grad-CAM, top_conv)"
    figure = plots._gradcam_panel_figure(image, heatmap, blended, title=title)
    with_images = [axes for axes in figure.axes if axes.images]
    assert len(with_images) == 3
    assert len(figure.axes) == 4  # and the heat map's colour bar
    assert [axes.get_title() for axes in with_images] == ["image", "heat map", "overlay"]
    assert not any(axes.axison for axes in with_images)
    assert figure.get_suptitle() == title
    grey, heat, colour = (axes.images[0] for axes in with_images)
    assert pixel_shape(grey) == (12, 16)
    assert grey.get_cmap().name == "gray"
    assert pixel_shape(heat) == (12, 16)
    assert heat.get_cmap().name == "jet"
    assert heat.get_clim() == (0.0, 1.0)
    assert pixel_shape(colour) == (12, 16, 3)
    with pytest.raises(ValueError, match="2-D"):
        plots._gradcam_panel_figure(image, heatmap[..., np.newaxis], blended, title=title)


def test_gradcam_panel_is_a_whole_png(tmp_path: Path) -> None:
    image, heatmap, blended = gradcam_inputs()
    path = tmp_path / "gradcam" / "glioma_0001.png"
    assert plots.plot_gradcam_panel(image, heatmap, blended, path, title="glioma 0.93") == path
    assert_png(path, plots.GRADCAM_FIGURE_SIZE)
    assert [entry.name for entry in path.parent.iterdir()] == ["glioma_0001.png"]
