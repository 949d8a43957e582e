"""Grad-CAM for a run: panels for ``gradcam`` and ``infer --gradcam``, localisation for ``eval``.

Images reach Grad-CAM through the same :class:`~mritumor.predict.predictor.Predictor`
batches as predictions do, so a heat map explains exactly the input the model
classified. Panels show that model input (resized, padded as in training).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mritumor import plots
from mritumor.core.errors import UsageError
from mritumor.core.fsutil import atomic_write_bytes
from mritumor.core.progress import ProgressCallback
from mritumor.data.images import read_image
from mritumor.predict.gradcam import (
    METHOD_LABELS,
    Method,
    default_layer,
    energy_inside,
    explain,
    overlay,
    pointing_game_hit,
)
from mritumor.predict.inputs import ImageInput
from mritumor.predict.predictor import Predictor
from mritumor.predict.volumes import slice_inputs
from mritumor.volumes.reading import volume_stem
from mritumor.volumes.verdict import top_slices

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from mritumor.predict.gradcam import Explanation
    from mritumor.volumes.slicing import VolumeSlices


PANEL_SUFFIX = "_gradcam"


@dataclass(frozen=True)
class Panels:
    """What a Grad-CAM run wrote."""

    written: list[Path]
    layer: str
    failures: dict[str, str] = field(default_factory=dict)


def write_panels(
    predictor: Predictor,
    inputs: Sequence[ImageInput],
    out_dir: Path,
    *,
    class_name: str | None = None,
    layer: str | None = None,
    method: Method = "gradcam",
    save_maps: bool = False,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
) -> Panels:
    """A panel PNG (image | heat map | overlay) per readable input; ``.npy`` maps on request.

    The target is ``class_name`` for every image, else each image's predicted class.
    """
    chosen_layer = layer or default_layer(predictor.model, predictor.bundle.backbone)
    target = _class_index(predictor, class_name)
    names = _file_names(inputs)
    _refuse_to_overwrite_inputs(inputs, out_dir, names, save_maps)
    batches, failures = predictor.batches(inputs, batch_size)
    written: list[Path] = []
    done = 0
    for found in _explained(
        predictor, batches, _same_class(target), chosen_layer, method, batch_size
    ):
        for position, image, explanation in found:
            written.append(
                _write_panel(predictor, image, explanation, out_dir / f"{names[position]}.png")
            )
            if save_maps:
                path = out_dir / f"{names[position]}.npy"
                _save_map(path, explanation.heatmap)
                written.append(path)
        done += len(found)
        if progress is not None:
            progress(done + len(failures), len(inputs))
    return Panels(written, chosen_layer, dict(failures))


_Explained = list[tuple[int, "NDArray[np.float32]", "Explanation"]]


def _explained(
    predictor: Predictor,
    batches: Iterator[tuple[list[int], Any]],
    targets: Callable[[list[int]], list[int] | None],
    layer: str,
    method: Method,
    batch_size: int,
) -> Iterator[_Explained]:
    """Each batch's ``(input position, model input, explanation)`` triples.

    ``targets`` gives the classes to explain for a batch's input positions, or None
    for each image's predicted class.
    """
    for positions, images in batches:
        pixels = np.asarray(images, dtype=np.float32)
        found = explain(
            predictor.model,
            pixels,
            layer=layer,
            class_indices=targets(positions),
            method=method,
            temperature=predictor.temperature,
            batch_size=batch_size,
        )
        yield list(zip(positions, pixels, found, strict=True))


def _same_class(target: int | None) -> Callable[[list[int]], list[int] | None]:
    """Explain ``target`` for every image, or each image's predicted class when it is None."""
    return lambda positions: None if target is None else [target] * len(positions)


def _write_panel(
    predictor: Predictor, image: NDArray[np.float32], explanation: Explanation, path: Path
) -> Path:
    pixels = np.clip(np.round(image), 0, 255).astype(np.uint8)
    title = (
        f"{predictor.class_names[explanation.class_index]} {explanation.probability:.2f} "
        f"({METHOD_LABELS[explanation.method]}, {explanation.layer})"
    )
    blended = overlay(pixels, explanation.heatmap)
    return plots.plot_gradcam_panel(pixels, explanation.heatmap, blended, path, title=title)


def _save_map(path: Path, heatmap: NDArray[np.float32]) -> None:
    buffer = io.BytesIO()
    np.save(buffer, heatmap)
    atomic_write_bytes(path, buffer.getvalue())


def _class_index(predictor: Predictor, class_name: str | None) -> int | None:
    if class_name is None:
        return None
    if class_name not in predictor.class_names:
        raise UsageError(
            f"--class {class_name!r} is not one of the model's classes "
            f"{', '.join(predictor.class_names)}"
        )
    return predictor.class_names.index(class_name)


def _file_names(inputs: Sequence[ImageInput]) -> list[str]:
    """A distinct output stem per input: ``<stem>[_frame<k>][_<n>]_gradcam``."""
    taken: set[str] = set()
    return [f"{_unique(_stem(item), taken)}{PANEL_SUFFIX}" for item in inputs]


def _stem(item: ImageInput) -> str:
    """``<stem>``, ``<stem>_frame<k>`` or ``<volume>_<plane><k>``, numbers 1-based."""
    if item.plane is not None:
        return f"{volume_stem(item.path)}_{item.plane[0]}{item.plane[1] + 1}"
    return item.path.stem + ("" if item.frame is None else f"_frame{item.frame + 1}")


def _refuse_to_overwrite_inputs(
    inputs: Sequence[ImageInput], out_dir: Path, names: Sequence[str], save_maps: bool
) -> None:
    sources = {item.path.resolve() for item in inputs}
    suffixes = (".png", ".npy") if save_maps else (".png",)
    for name in names:
        for suffix in suffixes:
            target = (out_dir / f"{name}{suffix}").resolve()
            if target in sources:
                raise UsageError(
                    f"a panel would replace the input image {target}; choose another --out"
                )


# --------------------------------------------------------------------------- volumes


MONTAGE_SUFFIX = "_gradcam_montage"


def write_montages(
    predictor: Predictor,
    volumes: Sequence[VolumeSlices],
    out_dir: Path,
    *,
    top_k: int = 3,
    class_name: str | None = None,
    layer: str | None = None,
    method: Method = "gradcam",
    batch_size: int = 16,
    chosen: Mapping[Path, Sequence[int]] | None = None,
) -> Panels:
    """A montage PNG per volume: its ``top_k`` slices by tumour score, each over its heat map.

    ``chosen`` gives the slices (0-based positions) to show per volume, such as the top
    slices of ``infer``'s verdicts; a volume without them is ranked here with this one
    model (no TTA). The target class is ``class_name``, else each slice's predicted class.
    """
    chosen_layer = layer or default_layer(predictor.model, predictor.bundle.backbone)
    targets = _same_class(_class_index(predictor, class_name))
    written: list[Path] = []
    taken: set[str] = set()
    for volume in volumes:
        shown = _montage_slices(predictor, volume, top_k, chosen, batch_size)
        if not shown:
            continue
        batches, _ = predictor.batches(shown, batch_size)
        images: list[NDArray[np.uint8]] = []
        overlays: list[NDArray[np.uint8]] = []
        titles: list[str] = []
        for found in _explained(predictor, batches, targets, chosen_layer, method, batch_size):
            for position, image, explanation in found:
                pixels = np.clip(np.round(image), 0, 255).astype(np.uint8)
                images.append(pixels)
                overlays.append(overlay(pixels, explanation.heatmap))
                plane, index = shown[position].plane or ("slice", 0)
                titles.append(
                    f"{plane} {index + 1}\n{predictor.class_names[explanation.class_index]} "
                    f"{explanation.probability:.2f}"
                )
        path = out_dir / f"{_unique(volume_stem(volume.source), taken)}{MONTAGE_SUFFIX}.png"
        title = (
            f"{volume.source.name}: top {len(images)} slices "
            f"({METHOD_LABELS[method]}, {chosen_layer})"
        )
        written.append(
            plots.plot_gradcam_montage(images, overlays, path, titles=titles, title=title)
        )
    return Panels(written, chosen_layer)


def _montage_slices(
    predictor: Predictor,
    volume: VolumeSlices,
    top_k: int,
    chosen: Mapping[Path, Sequence[int]] | None,
    batch_size: int,
) -> list[ImageInput]:
    """The slices a volume's montage shows: those ``chosen`` for it, else its ``top_k`` by
    this model's tumour score."""
    inputs = slice_inputs(volume)
    if chosen is not None and volume.source in chosen:
        by_position = {item.plane[1]: item for item in inputs if item.plane}
        return [by_position[position] for position in chosen[volume.source]]
    if not inputs:
        return []
    logits = predictor.predict(inputs, batch_size=batch_size)
    scores = predictor.tumour_scores(logits.logits)
    return [inputs[int(logits.kept[i])] for i in top_slices(scores, top_k)]


def _unique(stem: str, taken: set[str]) -> str:
    name, counter = stem, 1
    while name in taken:
        counter += 1
        name = f"{stem}_{counter}"
    taken.add(name)
    return name


# --------------------------------------------------------------------------- localisation


@dataclass(frozen=True)
class Localisation:
    """How well Grad-CAM finds the lesion, over tumour images with a lesion mask."""

    images: int
    pointing_game: float
    """Share of images whose heat-map maximum lies inside the lesion mask."""
    energy_inside: float
    """Mean share of heat-map energy inside the lesion mask."""
    layer: str
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "pointing_game": self.pointing_game,
            "energy_inside": self.energy_inside,
            "layer": self.layer,
            "method": self.method,
            "target": "the true class",
        }


def localisation(
    predictor: Predictor,
    paths: Sequence[Path],
    labels: Sequence[int],
    masks: Sequence[Path],
    *,
    method: Method = "gradcam",
    batch_size: int = 16,
) -> Localisation:
    """Pointing game and energy inside the mask, explaining each image's true class.

    Masks are brought to the model's input exactly as the images are (same
    resize and padding); a pixel counts as lesion when any of it was.
    """
    layer = default_layer(predictor.model, predictor.bundle.backbone)
    inputs = [ImageInput(path) for path in paths]
    batches, _ = predictor.batches(inputs, batch_size)
    hits: list[bool] = []
    shares: list[float] = []

    def true_classes(positions: list[int]) -> list[int]:
        return [labels[position] for position in positions]

    for found in _explained(predictor, batches, true_classes, layer, method, batch_size):
        for position, _, explanation in found:
            mask = _model_mask(predictor, masks[position])
            hits.append(pointing_game_hit(explanation.heatmap, mask))
            shares.append(energy_inside(explanation.heatmap, mask))
    return Localisation(
        images=len(hits),
        pointing_game=float(np.mean(hits)) if hits else float("nan"),
        energy_inside=float(np.mean(shares)) if shares else float("nan"),
        layer=layer,
        method=method,
    )


def _model_mask(predictor: Predictor, path: Path) -> NDArray[np.bool_]:
    import tensorflow as tf

    from mritumor.data.input_pipeline import resize_image

    bundle = predictor.bundle
    resized = resize_image(tf.constant(read_image(path, 1)), bundle.image_size, bundle.resize)
    return np.asarray(resized.numpy()[..., 0] > 0)
