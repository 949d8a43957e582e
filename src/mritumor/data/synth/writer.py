"""Synthetic datasets: phantoms written in the standard layout, with masks; the offline default.

``data synth`` writes phantoms (:mod:`.render`) of every class into
``<root>/{train,val,test}/<class>/``, optionally a yes/no set of another
acquisition domain into ``external/<name>/``, and a binary lesion mask for every
image (all zero for no_tumor) in a ``masks/`` tree beside the class folders, with
the same stem as the image. JPEG quality, image size and channel mode are drawn
per file, independently of the class. ``synth.json`` records the config and the
files written.

Randomness: every image's generator is keyed by ``(seed, split, folder, index)``
through :class:`numpy.random.SeedSequence`, so the bytes written do not depend
on the number of worker processes, on the order the work is done, or on the
counts asked for in other splits.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

import numpy as np

from mritumor import __version__
from mritumor.core.classes import CLASS_NAMES
from mritumor.core.errors import UsageError
from mritumor.core.fsutil import atomic_write_bytes, atomic_write_text
from mritumor.core.progress import ProgressCallback
from mritumor.data.files import EXTERNAL_DIR, NO_TUMOUR_LABEL, SPLITS, TUMOUR_LABEL
from mritumor.data.images import MIN_IMAGE_SIDE
from mritumor.data.synth.lesions import NO_TUMOR, TUMOUR_CLASSES
from mritumor.data.synth.render import Domain, render_slice

if TYPE_CHECKING:
    from PIL.Image import Image as PILImageType

MASKS_DIR = "masks"
MANIFEST_NAME = "synth.json"

_BATCH_SIZE = 16
_IMAGE_SUFFIX = {"JPEG": ".jpg", "PNG": ".png"}


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Counts are images per class (per yes/no label for ``external``)."""

    train: int = 200
    val: int = 40
    test: int = 60
    image_size: int = 256
    seed: int = 42
    class_names: tuple[str, ...] = CLASS_NAMES
    external: int = 0
    external_name: str = "synthetic"
    vary_size: bool = True
    """Draw each image's width and height around ``image_size`` (else exactly square)."""
    rgb_fraction: float = 0.35
    """Share of files saved as 3-channel RGB (grey replicated); the rest are mode L."""
    png_fraction: float = 0.15
    """Share of files saved as PNG; the rest are JPEG."""
    jpeg_quality: tuple[int, int] = (70, 95)
    """Inclusive range the JPEG quality of each file is drawn from."""
    lesion_scale: float = 1.0
    """Multiplies every lesion's radius: above 1 gives easier data for CPU demos and tests."""

    def __post_init__(self) -> None:
        # Accept any sequence (settings hold lists) but store tuples, so the config stays hashable.
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "jpeg_quality", tuple(self.jpeg_quality))
        for name in (*SPLITS, "external"):
            _require(_is_count(getattr(self, name)), f"{name} must be an integer >= 0")
        _require(
            isinstance(self.image_size, int) and 32 <= self.image_size <= 2048,
            f"image_size must be an integer from 32 to 2048, got {self.image_size!r}",
        )
        _require(_is_count(self.seed), f"seed must be an integer >= 0, got {self.seed!r}")
        self._validate_class_names()
        _require(
            bool(self.external_name) and _is_plain_name(self.external_name),
            f"external_name must be a plain folder name (no '/', no leading '.'), "
            f"got {self.external_name!r}",
        )
        for name in ("rgb_fraction", "png_fraction"):
            value = getattr(self, name)
            _require(0.0 <= value <= 1.0, f"{name} must be within [0, 1], got {value!r}")
        _require(
            0.25 <= self.lesion_scale <= 3.0,
            f"lesion_scale must be within [0.25, 3], got {self.lesion_scale!r}",
        )
        quality = self.jpeg_quality
        _require(
            len(quality) == 2 and 1 <= quality[0] <= quality[1] <= 100,
            f"jpeg_quality must be (low, high) with 1 <= low <= high <= 100, got {quality}",
        )

    def _validate_class_names(self) -> None:
        names = self.class_names
        _require(len(names) >= 2, f"class_names needs at least two classes, got {list(names)}")
        _require(len(set(names)) == len(names), f"class_names has duplicates: {list(names)}")
        unknown = sorted(set(names) - set(CLASS_NAMES))
        _require(
            not unknown,
            f"class_names {unknown} cannot be synthesised; choose from {list(CLASS_NAMES)}",
        )

    def split_counts(self) -> dict[str, int]:
        """Images per class for each split, in split order."""
        return {split: int(getattr(self, split)) for split in SPLITS}


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synthetic_dataset` wrote."""

    root: Path
    counts: dict[str, dict[str, int]]
    """Images per split and class, e.g. ``counts["train"]["glioma"]``."""
    external: dict[str, int]
    """Images per yes/no label in ``external/<external_name>/``; empty when none."""
    seconds: float

    @property
    def total(self) -> int:
        """Number of images written (masks not counted)."""
        per_split = sum(sum(per_class.values()) for per_class in self.counts.values())
        return per_split + sum(self.external.values())


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_plain_name(name: str) -> bool:
    """A visible folder name: no separators, and no leading dot (image readers skip those)."""
    return not name.startswith(".") and not any(sep in name for sep in ("/", "\\"))


@dataclass(frozen=True)
class _FileStyle:
    """How one image is stored; drawn independently of its class."""

    height: int
    width: int
    mode: Literal["L", "RGB"]
    format: Literal["JPEG", "PNG"]
    quality: int


@dataclass(frozen=True)
class _Job:
    folder: PurePosixPath
    """Image folder relative to the root, e.g. ``train/glioma`` or ``external/synthetic/yes``."""
    stem: str
    class_name: str
    domain: Domain
    style: _FileStyle
    scene_seed: np.random.SeedSequence
    lesion_scale: float

    @property
    def image_path(self) -> PurePosixPath:
        return self.folder / f"{self.stem}{_IMAGE_SUFFIX[self.style.format]}"

    @property
    def mask_path(self) -> PurePosixPath:
        return PurePosixPath(MASKS_DIR) / self.folder / f"{self.stem}.png"


def mask_path(root: Path, image: Path) -> Path:
    """Where the lesion mask of ``image`` (a file under ``root``) is stored."""
    return root / MASKS_DIR / image.relative_to(root).with_suffix(".png")


def find_mask(image: Path, max_depth: int = 4) -> Path | None:
    """The lesion mask of ``image`` in the synthetic layout, looked up from its folders.

    Tries ``<ancestor>/masks/<path below the ancestor>.png`` for the nearest
    ``max_depth`` ancestors, so masks are found wherever the dataset was moved.
    """
    for ancestor in list(image.parents)[:max_depth]:
        candidate = mask_path(ancestor, image)
        if candidate.is_file():
            return candidate
    return None


def _plan(config: SynthConfig) -> list[_Job]:
    """Every image to write, with its file style and scene seed fixed up front."""
    jobs: list[_Job] = []
    for split, count in config.split_counts().items():
        for class_name in config.class_names:
            folder = PurePosixPath(split, class_name)
            jobs.extend(_job(config, folder, index, "source", class_name) for index in range(count))
    if config.external:
        external = PurePosixPath(EXTERNAL_DIR, config.external_name)
        labels: tuple[tuple[str, str | None], ...] = (
            (TUMOUR_LABEL, None),
            (NO_TUMOUR_LABEL, NO_TUMOR),
        )
        for label, rendered_class in labels:
            jobs.extend(
                _job(config, external / label, index, "external", rendered_class)
                for index in range(config.external)
            )
    return jobs


def _job(
    config: SynthConfig, folder: PurePosixPath, index: int, domain: Domain, class_name: str | None
) -> _Job:
    """One image, seeded by (seed, folder, index) so it never depends on the other images.

    ``class_name`` None draws one of the tumour types (the external "yes" folder).
    """
    key = np.random.SeedSequence(config.seed, spawn_key=(zlib.crc32(str(folder).encode()), index))
    style_seed, scene_seed = key.spawn(2)
    style_rng = np.random.default_rng(style_seed)
    style = _draw_file_style(style_rng, config)
    if class_name is None:
        class_name = str(style_rng.choice(TUMOUR_CLASSES))
    stem = f"{str(folder).replace('/', '_')}_{index:05d}"
    return _Job(folder, stem, class_name, domain, style, scene_seed, config.lesion_scale)


def _draw_file_style(rng: np.random.Generator, config: SynthConfig) -> _FileStyle:
    side = config.image_size * rng.uniform(0.8, 1.25)
    aspect = rng.uniform(0.8, 1.25) if rng.random() < 0.4 else 1.0
    mode: Literal["L", "RGB"] = "RGB" if rng.random() < config.rgb_fraction else "L"
    file_format: Literal["JPEG", "PNG"] = "PNG" if rng.random() < config.png_fraction else "JPEG"
    quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    if not config.vary_size:
        side, aspect = config.image_size, 1.0
    # Never below the smallest image that `data check` accepts, whatever the jitter.
    width, height = (max(MIN_IMAGE_SIDE, round(length)) for length in (side, side * aspect))
    return _FileStyle(width, height, mode, file_format, quality)


def _write_batch(root: Path, jobs: Sequence[_Job]) -> int:
    """Write ``jobs``; BLAS stays on one thread.

    One thread per process because the processes already fill the cores (more
    only oversubscribes them), and so that the matrix products behind the
    smooth fields sum in the same order whatever the machine or worker count.
    """
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    with threadpool_limits(limits=1, user_api="blas"):
        for job in jobs:
            _write_job(root, job)
    return len(jobs)


def _write_job(root: Path, job: _Job) -> None:
    from PIL import Image as PILImage

    rng = np.random.default_rng(job.scene_seed)
    shape = (job.style.height, job.style.width)
    image, mask = render_slice(rng, job.class_name, shape, job.domain, job.lesion_scale)
    grey = PILImage.fromarray(np.round(image * 255.0).astype(np.uint8))
    stored = grey.convert(job.style.mode)
    if job.style.format == "JPEG":
        _save_atomically(stored, root / job.image_path, "JPEG", quality=job.style.quality)
    else:
        _save_atomically(stored, root / job.image_path, "PNG")
    _save_atomically(PILImage.fromarray(mask.astype(np.uint8) * 255), root / job.mask_path, "PNG")


def _save_atomically(image: PILImageType, path: Path, file_format: str, **options: int) -> None:
    """Encode in memory, then write through a temporary file and a rename."""
    buffer = io.BytesIO()
    image.save(buffer, format=file_format, **options)
    atomic_write_bytes(path, buffer.getvalue())


def write_synthetic_dataset(
    root: Path,
    config: SynthConfig,
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    force: bool = False,
) -> SynthSummary:
    """Write the synthetic dataset in the standard layout under ``root``, with masks.

    Layout: ``<root>/{train,val,test}/<class>/<stem>.{jpg,png}``, optionally
    ``<root>/external/<external_name>/{yes,no}/``, and a mask for every image at
    ``<root>/masks/<same folders>/<stem>.png``; ``<root>/synth.json`` records the
    config and every file written.

    A non-empty ``root`` is refused unless ``force``; then the files listed in
    its ``synth.json`` (a previous synthetic run) are removed first and anything
    else is left alone. ``workers`` defaults to the CPU count; the output is
    byte-identical for any number of workers.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    started = time.perf_counter()
    prepare_output_root(root, force=force)
    jobs = _plan(config)
    _write_manifest(root, config, jobs, seconds=None)
    completed = 0
    for finished in _run(root, jobs, workers or os.cpu_count() or 1):
        completed += finished
        if progress is not None:
            progress(completed, len(jobs))
    seconds = time.perf_counter() - started
    _write_manifest(root, config, jobs, seconds=seconds)
    return SynthSummary(root, _class_counts(config), _external_counts(config), seconds)


def _class_counts(config: SynthConfig) -> dict[str, dict[str, int]]:
    return {
        split: dict.fromkeys(config.class_names, count)
        for split, count in config.split_counts().items()
    }


def _external_counts(config: SynthConfig) -> dict[str, int]:
    if not config.external:
        return {}
    return dict.fromkeys((TUMOUR_LABEL, NO_TUMOUR_LABEL), config.external)


def prepare_output_root(root: Path, *, force: bool) -> None:
    """An empty folder ``root``; with ``force`` a used one, less the files its ``synth.json`` lists."""
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} is a file; give a folder for the synthetic dataset")
    if root.is_dir() and any(root.iterdir()):
        if not force:
            raise UsageError(
                f"{root} is not empty; choose an empty folder or pass --force to write into it"
            )
        _remove_previous_run(root)
    root.mkdir(parents=True, exist_ok=True)


def _remove_previous_run(root: Path) -> None:
    """Delete the files a previous synthetic run recorded in its manifest, nothing else."""
    try:
        listed = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    resolved_root = root.resolve()
    folders: set[Path] = set()
    for relative in listed:
        path = (root / str(relative)).resolve()
        if path.is_relative_to(resolved_root) and path.is_file():
            path.unlink()
            folders.update(p for p in path.parents if p.is_relative_to(resolved_root))
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder != resolved_root and not any(folder.iterdir()):
            folder.rmdir()


def _write_manifest(
    root: Path, config: SynthConfig, jobs: Sequence[_Job], *, seconds: float | None
) -> None:
    """Record the config and the files; written before the images so a crash can be cleaned."""
    manifest = {
        "generator": "mritumor.data.synth",
        "mritumor_version": __version__,
        "complete": seconds is not None,
        "seconds": seconds,
        "config": asdict(config),
        "files": [str(path) for job in jobs for path in (job.image_path, job.mask_path)],
    }
    atomic_write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")


def _run(root: Path, jobs: Sequence[_Job], workers: int) -> Iterator[int]:
    """Write ``jobs`` and yield how many finished after each batch."""
    batch_size = max(1, min(_BATCH_SIZE, math.ceil(len(jobs) / (4 * workers))))
    batches = [jobs[start : start + batch_size] for start in range(0, len(jobs), batch_size)]
    if workers == 1 or len(batches) <= 1:
        for batch in batches:
            yield _write_batch(root, batch)
        return
    # spawn, not fork: the caller may hold TensorFlow threads that a fork would copy mid-flight.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(min(workers, len(batches)), mp_context=context)
    try:
        futures = [pool.submit(_write_batch, root, batch) for batch in batches]
        for future in as_completed(futures):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
