"""The tf.data input pipeline shared by train, eval and infer.

Order of work, and why::

    paths -> decode (Pillow, in parallel) -> resize -> drop failures -> cache (uint8)
          -> [train: shuffle -> augment] -> float32 -> batch -> [train: MixUp] -> weights
          -> prefetch

Decoding uses :func:`mritumor.data.images.read_image`, the same function every
other command uses, so training and inference see identical pixels whatever
the file's mode (L, RGB, RGBA, P, 16-bit) or misleading extension. Images are
cached as uint8 after resizing: a quarter of the memory of float32, and the
cache key covers every setting that shapes those pixels plus each file's size
and modification time, so a stale file cache is never reused. Augmentation and
MixUp use stateless random ops seeded from ``seed``: the same run gives the
same batches, and each epoch gets fresh draws. A file that fails to decode is
skipped and recorded in :attr:`InputPipeline.failures`, never an error in the
middle of epoch 7.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from mritumor.config.schema import AugmentSettings, Settings
from mritumor.core.environment import import_tensorflow
from mritumor.core.errors import UsageError
from mritumor.core.preprocessing import Preprocessing, ResizeMode
from mritumor.data.balance import class_weights, oversample_indices
from mritumor.data.image_errors import UnreadableImageError
from mritumor.data.images import read_image
from mritumor.data.splits import SplitFiles

if TYPE_CHECKING:
    import tensorflow as tf
else:
    tf = import_tensorflow()

CACHE_FORMAT_VERSION = 1
CacheMode = Literal["memory", "file", "none"]


@dataclass(frozen=True)
class PipelineOptions:
    """Everything that shapes the tensors the model sees."""

    preprocessing: Preprocessing
    """Image size, channels and resize: the settings' when training, the bundle's after."""
    batch_size: int
    seed: int
    cache: CacheMode = "memory"
    cache_dir: Path = Path(".mritumor-cache")
    augment: AugmentSettings | None = None
    """Augmentation for training; None for evaluation and inference."""
    shuffle: bool = False
    """Reshuffle every epoch (training); evaluation keeps the split's order."""
    use_class_weights: bool = False
    oversample: bool = False

    @classmethod
    def from_settings(
        cls, settings: Settings, *, training: bool, replicas: int = 1
    ) -> PipelineOptions:
        """Training gets augmentation, MixUp, class weights and oversampling; evaluation none.

        The batch is the global one: the settings' per-replica batch times ``replicas``.
        """
        augment = settings.augment if training and settings.augment.enabled else None
        batch_size = settings.train.batch_size if training else settings.inference.batch_size
        return cls(
            preprocessing=settings.data.preprocessing,
            batch_size=batch_size * replicas,
            seed=settings.seed,
            cache=settings.data.cache,
            cache_dir=settings.paths.cache_dir,
            augment=augment,
            shuffle=training,
            use_class_weights=training and settings.train.use_class_weights,
            oversample=training and settings.data.oversample,
        )


@dataclass
class DecodeFailures:
    """Paths that failed to decode, with the reason; filled while the pipeline runs."""

    _items: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, reason: str) -> None:
        with self._lock:
            self._items[path] = reason

    def items(self) -> dict[str, str]:
        with self._lock:
            return dict(self._items)


@dataclass
class InputPipeline:
    """A ready ``tf.data.Dataset`` plus what the caller needs to report on it."""

    dataset: tf.data.Dataset
    split: SplitFiles
    steps_per_epoch: int
    class_weights: NDArray[np.float64] | None
    failures: DecodeFailures


def build_pipeline(split: SplitFiles, options: PipelineOptions) -> InputPipeline:
    """Batches of ``(images float32 0-255, one-hot labels[, sample weights])`` for ``split``.

    Images keep raw 0-255 values: every backbone rescales inside the model, so
    the saved model alone defines its preprocessing.
    """
    _require_dicom_reader(split.paths)
    indices = np.arange(len(split))
    if options.oversample:
        indices = oversample_indices(split.labels, options.seed)
    paths = [str(split.paths[i]) for i in indices]
    labels = np.asarray(split.labels, dtype=np.int32)[indices]
    num_classes = len(split.class_names)
    weights = class_weights(labels, num_classes) if options.use_class_weights else None
    failures = DecodeFailures()

    images = _decoded_images(paths, labels, options, failures)
    images = _cached(images, split, paths, options)
    if options.shuffle:
        images = images.shuffle(len(paths), seed=options.seed, reshuffle_each_iteration=True)
    if options.augment is not None:
        images = _augmented(images, options.augment, options.seed)
    batches = images.map(
        lambda image, label: (tf.cast(image, tf.float32), tf.one_hot(label, num_classes)),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).batch(options.batch_size)
    if options.augment is not None and options.augment.mixup_alpha > 0:
        batches = _mixed_up(batches, options.augment.mixup_alpha, options.seed)
    if weights is not None:
        weight_vector = tf.constant(weights, tf.float32)
        batches = batches.map(
            lambda x, y: (x, y, tf.linalg.matvec(y, weight_vector)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return InputPipeline(
        dataset=batches.prefetch(tf.data.AUTOTUNE),
        split=split,
        steps_per_epoch=math.ceil(len(paths) / options.batch_size),
        class_weights=weights,
        failures=failures,
    )


def _require_dicom_reader(paths: Sequence[Path]) -> None:
    """One clear error up front: inside tf.data a missing pydicom would surface as a traceback."""
    from mritumor.data.dicom import MISSING_PYDICOM, is_dicom_file, pydicom_available

    if not pydicom_available() and any(is_dicom_file(path) for path in paths):
        raise UsageError(MISSING_PYDICOM)


def cache_key(paths: list[str], options: PipelineOptions) -> str:
    """Digest of the settings that shape decoded pixels and of every file's size and mtime."""
    digest = hashlib.sha256()
    preprocessing = options.preprocessing
    shape = (
        f"v{CACHE_FORMAT_VERSION}|{preprocessing.image_size}|{preprocessing.channels}"
        f"|{preprocessing.resize}"
    )
    digest.update(shape.encode())
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _decoded_images(
    paths: list[str], labels: NDArray[np.int32], options: PipelineOptions, failures: DecodeFailures
) -> tf.data.Dataset:
    channels, size = options.preprocessing.channels, options.preprocessing.image_size

    def decode(path: bytes) -> tuple[NDArray[np.uint8], bool]:
        name = path.decode()
        try:
            return read_image(Path(name), channels), True
        except UnreadableImageError as error:
            failures.add(name, str(error))
            return np.zeros((1, 1, channels), np.uint8), False

    def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        image, ok = tf.numpy_function(decode, [path], (tf.uint8, tf.bool), stateful=False)
        image.set_shape([None, None, channels])
        return resize_image(image, size, options.preprocessing.resize), label, ok

    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.filter(lambda image, label, ok: ok)
    return dataset.map(lambda image, label, ok: (image, label))


def resize_image(image: tf.Tensor, size: int, mode: ResizeMode) -> tf.Tensor:
    """uint8 image of any size -> uint8 ``size x size``: stretched, or padded to keep aspect."""
    pixels = tf.cast(image, tf.float32)
    if mode == "pad":
        resized = tf.image.resize_with_pad(pixels, size, size, antialias=True)
    else:
        resized = tf.image.resize(pixels, (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def _cached(
    dataset: tf.data.Dataset, split: SplitFiles, paths: list[str], options: PipelineOptions
) -> tf.data.Dataset:
    if options.cache == "none":
        return dataset
    if options.cache == "memory":
        return dataset.cache()
    options.cache_dir.mkdir(parents=True, exist_ok=True)
    return dataset.cache(str(options.cache_dir / f"{split.name}-{cache_key(paths, options)}"))


def _augmented(dataset: tf.data.Dataset, augment: AugmentSettings, seed: int) -> tf.data.Dataset:
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    paired = tf.data.Dataset.zip((dataset, seeds))
    return paired.map(
        lambda pair, seed: (augment_image(pair[0], seed, augment), pair[1]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def augment_image(image: tf.Tensor, seed: tf.Tensor, augment: AugmentSettings) -> tf.Tensor:
    """Random flips, rotation, zoom, brightness and contrast; uint8 in, uint8 out.

    ``seed`` is a shape-[2] integer tensor; the same seed gives the same result.
    """
    flip_lr, flip_ud, affine, brightness, contrast = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=5)
    )
    pixels = tf.cast(image, tf.float32)
    if augment.horizontal_flip:
        pixels = tf.image.stateless_random_flip_left_right(pixels, flip_lr)
    if augment.vertical_flip:
        pixels = tf.image.stateless_random_flip_up_down(pixels, flip_ud)
    if augment.rotation > 0 or augment.zoom > 0:
        pixels = _random_rotation_and_zoom(pixels, augment.rotation, augment.zoom, affine)
    if augment.brightness > 0:
        shift = tf.random.stateless_uniform([], brightness, -augment.brightness, augment.brightness)
        pixels = pixels + 255.0 * shift
    if augment.contrast > 0:
        factor = tf.random.stateless_uniform(
            [], contrast, 1.0 - augment.contrast, 1.0 + augment.contrast
        )
        mean = tf.reduce_mean(pixels, axis=(0, 1), keepdims=True)
        pixels = (pixels - mean) * factor + mean
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)


def _random_rotation_and_zoom(
    pixels: tf.Tensor, rotation: float, zoom: float, seed: tf.Tensor
) -> tf.Tensor:
    """Rotate by up to ``rotation`` of a full turn and zoom by up to ``zoom``, about the centre."""
    angle_seed, scale_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    angle = tf.random.stateless_uniform([], angle_seed, -rotation, rotation) * 2.0 * math.pi
    scale = tf.random.stateless_uniform([], scale_seed, 1.0 - zoom, 1.0 + zoom)
    return rotate_and_zoom(pixels[tf.newaxis], angle, scale)[0]


def rotate_and_zoom(
    images: tf.Tensor, angle: tf.Tensor | float, scale: tf.Tensor | float
) -> tf.Tensor:
    """Rotate a float batch ``N x H x W x C`` by ``angle`` radians and zoom by ``scale``.

    About the image centre. The projective transform maps each output pixel to
    the input pixel it samples; the background outside the image is black,
    like an MRI's.
    """
    angle = tf.cast(angle, tf.float32)
    scale = tf.cast(scale, tf.float32)
    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a0, a1 = tf.cos(angle) / scale, tf.sin(angle) / scale
    b0, b1 = -tf.sin(angle) / scale, tf.cos(angle) / scale
    transform = tf.stack([a0, a1, cx - a0 * cx - a1 * cy, b0, b1, cy - b0 * cx - b1 * cy, 0.0, 0.0])
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transform[tf.newaxis],
        output_shape=tf.shape(images)[1:3],
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
        fill_value=0.0,
    )


def _mixed_up(batches: tf.data.Dataset, alpha: float, seed: int) -> tf.data.Dataset:
    seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((batches, seeds)).map(
        lambda pair, batch_seed: mixup(pair[0], pair[1], batch_seed, alpha),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def mixup(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, alpha: float) -> Any:
    """MixUp with a per-sample ``lambda ~ Beta(alpha, alpha)`` and a random partner.

    Beta comes from two Gamma draws, ``g1 / (g1 + g2)``, so no
    tensorflow-probability is needed. Mixed labels still sum to 1.
    """
    first, second, order = tf.unstack(tf.random.experimental.stateless_split(seed, num=3))
    count = tf.shape(images)[0]
    gamma_a = tf.random.stateless_gamma([count], first, alpha)
    gamma_b = tf.random.stateless_gamma([count], second, alpha)
    lam = tf.math.divide_no_nan(gamma_a, gamma_a + gamma_b)
    partner = tf.random.experimental.stateless_shuffle(tf.range(count), order)
    image_weight = tf.reshape(lam, [-1, 1, 1, 1])
    label_weight = tf.reshape(lam, [-1, 1])
    mixed_images = image_weight * images + (1.0 - image_weight) * tf.gather(images, partner)
    mixed_labels = label_weight * labels + (1.0 - label_weight) * tf.gather(labels, partner)
    return mixed_images, mixed_labels
