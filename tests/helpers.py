"""Small helpers shared by several test modules (images to plant, rich tables to read, runs).

The shared synthetic data roots and built runs (:class:`SyntheticData`, :class:`BuiltRuns`)
are handed out by the session fixtures ``synthetic_data`` and ``built_run`` of conftest.py.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

if TYPE_CHECKING:
    from mritumor.data.synth.writer import SynthConfig, SynthSummary
    from mritumor.run.bundle import Bundle

#: 8/4/4 images per class, 48 px: ``cli_data_root``, the data the train tests train on.
CLI_DATA: dict[str, Any] = {"train": 8, "val": 4, "test": 4, "image_size": 48, "seed": 5}
#: 2/2/3 images per class, 40 px: the data of the infer and gradcam command tests (both build
#: their run on it with the defaults of :func:`build_run`, hence share it).
PREDICT_DATA: dict[str, Any] = {"train": 2, "val": 2, "test": 3, "image_size": 40, "seed": 8}


def smooth_image(seed: int, size: int = 64) -> NDArray[np.uint8]:
    """A random smooth RGB image: distinct seeds give unrelated low frequencies."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 6), dtype=np.uint8)
    gray = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(gray.convert("RGB"))


def save(path: Path, pixels: NDArray[np.uint8], format: str = "PNG", **options: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=format, **options)
    return path


@functools.cache
def blank_png(width: int, height: int) -> bytes:
    """A valid black PNG of any size, 1 bit per pixel, built row by row: a few KB.

    A 14000x14000 one (a decompression bomb to Pillow) costs no memory to make;
    Pillow only has to read its header to refuse it.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = bytes(1 + (width + 7) // 8)  # filter type 0, then the packed bits
    compressor = zlib.compressobj(9)
    rows, rest = divmod(height, 256)
    data = b"".join(compressor.compress(row * 256) for _ in range(rows))
    data += compressor.compress(row * rest) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def write_bomb(path: Path, side: int = 14_000) -> Path:
    """``path`` holding :func:`blank_png` of ``side`` x ``side`` pixels (Pillow's limit: 9459²)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blank_png(side, side))
    return path


def table_names(text: str) -> list[str]:
    """First column of the rows of a rich table."""
    names = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) > 2 and cells[1] and cells[1] != "name":
            names.append(cells[1])
    return names


def build_run(run_dir: Path, data_root: Path, *, dropout: float = 0.0, seed: int = 1) -> Path:
    """A run directory as ``train`` leaves it, holding an untrained 32-px small_cnn.

    Built, not trained: tests of eval, infer and friends check wiring and
    files, and recompute the numbers themselves. TensorFlow is imported here,
    only by the modules that use this.
    """
    from mritumor.config.loading import load_settings
    from mritumor.core.classes import CLASS_NAMES
    from mritumor.data.splits import load_split
    from mritumor.models.classifier import build_classifier
    from mritumor.run.bundle import new_bundle, write_bundle, write_config
    from mritumor.run.layout import MODEL_FILE
    from mritumor.run.splits import write_splits

    settings = load_settings(
        None,
        {
            "model": {"backbone": "small_cnn", "weights": "none", "dropout": dropout},
            "data": {"image_size": 32},
            "paths": {"data_dir": data_root},
            "seed": seed,
        },
    ).settings
    import keras

    keras.utils.set_random_seed(seed)
    run_dir.mkdir(parents=True)
    build_classifier(settings).save(run_dir / MODEL_FILE)
    splits = [load_split(data_root, name, CLASS_NAMES) for name in ("train", "val", "test")]
    write_config(run_dir, settings)
    write_splits(run_dir, data_root, splits)
    write_bundle(run_dir, new_bundle(settings, "train"))
    return run_dir


def make_bundle(**changes: Any) -> Bundle:
    """A valid 4-class bundle (fixed time, versions and commit); ``changes`` replace fields."""
    from mritumor.core.classes import CLASS_NAMES
    from mritumor.run.bundle import Bundle

    values: dict[str, Any] = {
        "command": "train",
        "class_names": list(CLASS_NAMES),
        "negative_class": "no_tumor",
        "image_size": 224,
        "channels": 3,
        "resize": "pad",
        "backbone": "v2b0",
        "created": "2025-01-02T03:04:05+00:00",
        "versions": {"mritumor": "0.1.0"},
        "git_commit": None,
        **changes,
    }
    return Bundle(**values)


# --------------------------------------------------------------------------- shared folders

Fingerprint = dict[str, tuple[int, int] | None]


def fingerprint(root: Path) -> Fingerprint:
    """Every entry under ``root``: a file's (size, mtime_ns), None for a folder."""
    entries: Fingerprint = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        if path.is_dir() and not path.is_symlink():
            entries[relative] = None
        else:
            status = path.lstat()
            entries[relative] = (status.st_size, status.st_mtime_ns)
    return entries


class SharedFolders:
    """Folders made once a session and read by many tests: :meth:`changes` names any written to."""

    def __init__(self) -> None:
        self._prints: dict[Path, Fingerprint] = {}

    def keep(self, root: Path) -> Path:
        self._prints[root] = fingerprint(root)
        return root

    def changes(self) -> list[str]:
        """What changed in each folder since it was made (or last reported, not to blame twice)."""
        problems = []
        for root, before in self._prints.items():
            after = fingerprint(root)
            if after == before:
                continue
            added = sorted(set(after) - set(before))
            removed = sorted(set(before) - set(after))
            changed = sorted(
                name for name in before.keys() & after.keys() if before[name] != after[name]
            )
            problems.append(f"{root}: added {added}, removed {removed}, changed {changed}")
            self._prints[root] = after
        return problems


class SyntheticData:
    """Synthetic data roots, one per :class:`SynthConfig`, written on first use and then shared.

    ``synthetic_data(config)`` or ``synthetic_data(train=2, val=2, test=3, image_size=40)``
    (fields replace those of ``config``, else of the defaults) returns the root, which is
    read-only: :meth:`copy` it to change anything. ``workers`` only sets how fast it is
    written (the bytes are the same).
    """

    def __init__(self, mktemp: Callable[[str], Path], shared: SharedFolders) -> None:
        self._mktemp = mktemp
        self._shared = shared
        self._made: dict[SynthConfig, tuple[Path, SynthSummary]] = {}

    @staticmethod
    def config(config: SynthConfig | None = None, /, **fields: Any) -> SynthConfig:
        from mritumor.data.synth.writer import SynthConfig

        return dataclasses.replace(config if config is not None else SynthConfig(), **fields)

    def _made_for(self, config: SynthConfig, workers: int) -> tuple[Path, SynthSummary]:
        if config not in self._made:
            from mritumor.data.synth.writer import write_synthetic_dataset

            root = self._mktemp("synthetic data") / "data"
            summary = write_synthetic_dataset(root, config, workers=workers)
            self._made[config] = (self._shared.keep(root), summary)
        return self._made[config]

    def __call__(
        self, config: SynthConfig | None = None, /, *, workers: int = 1, **fields: Any
    ) -> Path:
        return self._made_for(self.config(config, **fields), workers)[0]

    def summary(self, config: SynthConfig | None = None, /, **fields: Any) -> SynthSummary:
        """What writing the root returned."""
        return self._made_for(self.config(config, **fields), 1)[1]

    def copy(self, target: Path, config: SynthConfig | None = None, /, **fields: Any) -> Path:
        """A writable copy of the root at ``target``."""
        return Path(shutil.copytree(self(config, **fields), target))


class BuiltRuns:
    """:func:`build_run` once per (data root, dropout, seed), then shared read-only.

    ``built_run(data_root, seed=2)`` returns ``<folder>/train-1``, alone in its folder;
    copy it (the ``run_copy`` fixture) to change anything.
    """

    def __init__(self, mktemp: Callable[[str], Path], shared: SharedFolders) -> None:
        self._mktemp = mktemp
        self._shared = shared
        self._made: dict[tuple[Path, float, int], Path] = {}

    def __call__(self, data_root: Path, *, dropout: float = 0.0, seed: int = 1) -> Path:
        key = (data_root.resolve(), dropout, seed)
        if key not in self._made:
            run_dir = build_run(
                self._mktemp("built-run") / "train-1", data_root, dropout=dropout, seed=seed
            )
            self._made[key] = self._shared.keep(run_dir)
        return self._made[key]


#: The SOP class of the MR images :func:`write_dicom` writes.
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_dicom(
    path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **attributes: Any
) -> Path:
    """Write ``pixels`` as an uncompressed DICOM file (needs pydicom, imported here).

    ``pixels`` is (rows, cols) or (frames, rows, cols) for grey, (rows, cols, 3)
    or (frames, rows, cols, 3) for colour; uint8, uint16 or int16. Extra
    keyword arguments become data elements (``WindowCenter=500``, ...).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    colour = photometric in ("RGB", "YBR_FULL")
    frame_ndim = 3 if colour else 2
    frames = pixels.shape[0] if pixels.ndim > frame_ndim else 1
    rows, columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    bits = pixels.dtype.itemsize * 8

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()

    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.is_little_endian = True
        ds.is_implicit_VR = False
        ds.save_as(path, write_like_original=False)
    return path
