"""Nothing lost, nothing silent: a matrix of bad inputs and faults run through the real CLI.

Every case gives ``mritumor`` something wrong (an unreadable image, a damaged
run, a malformed config, a zip that tries to escape, a disk that fills up) and
asserts three things:

- the exit code (2 usage, 1 failure, 3 when ``infer``/``gradcam`` skipped some
  inputs, 0 when the input is odd but usable);
- the message: a distinctive substring, no traceback, and for exit 1 and 2
  exactly one ``error:`` line on stderr (``warning:``/``note:`` lines may precede it);
- the disk: every file that was there before (in the case's folder, the shared
  run and the shared data) is still there, byte for byte, and new files appear
  only where the case allows it, never as a stray temporary or partial file.

docs/refusals.md has one row per case; :func:`test_every_case_is_documented`
keeps the page and the matrix from drifting apart.

Runs are tiny: 32 px, small_cnn, one epoch, trained once per module and used
read-only (cases that damage a run damage a copy).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import traceback
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from helpers import SyntheticData, save, smooth_image
from mritumor.cli.main import app
from mritumor.core.environment import ENV_PREFIX
from mritumor.run.layout import LOCK_FILE

WIDE = {"COLUMNS": "200"}
REPO = Path(__file__).resolve().parents[1]
REFUSALS_PAGE = REPO / "docs" / "refusals.md"
SUBPROCESS_TIMEOUT_S = 180
TINY_TRAIN = (
    "--backbone",
    "small_cnn",
    "--weights",
    "none",
    "--freeze-epochs",
    "0",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--precision",
    "float32",
    "--set",
    "train.early_stopping_patience=0",
    "-q",
)
#: Names a half-written file may have: the atomic writer's and the checkpoint's temporaries,
#: and the hidden folder a zip is unpacked into.
#: What ``data check`` writes beside the dataset: the JSON report and the leaking pairs.
CHECK_REPORTS = ("data/check.json", "data/check-leaks.csv")
STRAY = re.compile(r"(\.tmp$|\.partial|^\.unzip-)")

Stream = Literal["stderr", "stdout", "output"]
Expectation = str | re.Pattern[str]


# --------------------------------------------------------------------------- the machinery


@dataclass
class Outcome:
    """What one command did: its exit code, its two streams and any exception that escaped."""

    exit_code: int
    stdout: str
    stderr: str
    escaped: str | None = None
    """The formatted traceback of an exception that escaped the CLI's error handler."""

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Workspace:
    """One case's folder (the working directory) plus the shared, read-only run and data."""

    root: Path
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch
    env: dict[str, str | None] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    """The shared fixtures the case's setup used: they are checked unchanged too."""

    @property
    def run(self) -> Path:
        """The module's tiny trained run (trained on first use). Never modify it: copy_run()."""
        self.used.add("tiny_run")
        return Path(self.request.getfixturevalue("tiny_run"))

    @property
    def data(self) -> Path:
        """The shared synthetic data root, read-only: copy_data() to change it."""
        self.used.add("data_root")
        return Path(self.request.getfixturevalue("data_root"))

    def shared(self) -> list[Path]:
        return [Path(self.request.getfixturevalue(name)) for name in sorted(self.used)]

    def path(self, relative: str) -> Path:
        return self.root / relative

    def copy_run(self, name: str = "run") -> Path:
        return Path(shutil.copytree(self.run, self.root / name, symlinks=True))

    def copy_data(self, name: str = "data") -> Path:
        return Path(shutil.copytree(self.data, self.root / name, symlinks=True))

    def good(self, name: str = "good.png", seed: int = 1, size: int = 48) -> Path:
        image_format = "JPEG" if Path(name).suffix.lower() in (".jpg", ".jpeg") else "PNG"
        return save(self.root / name, smooth_image(seed, size), format=image_format)

    def infer(self, *inputs: Path | str, run: Path | None = None) -> list[str]:
        """``infer INPUTS --run RUN --format json -q`` (the shared run by default)."""
        chosen = self.run if run is None else run
        return ["infer", *map(str, inputs), "--run", str(chosen), "--format", "json", "-q"]

    def train(self, *extra: str) -> list[str]:
        return ["train", *TINY_TRAIN, "--set", f"paths.runs_dir={self.root / 'runs'}", *extra]


@dataclass(frozen=True)
class Case:
    """One row of the matrix (and of docs/refusals.md)."""

    id: str
    area: str
    setup: Callable[[Workspace], list[str]]
    """Plants the bad input under the workspace and returns the command line."""
    exit_code: int
    expect: tuple[Expectation, ...]
    """Substrings (or patterns) the ``stream`` must contain."""
    stream: Stream = "stderr"
    check: Callable[[Workspace, Outcome], None] | None = None
    """Further assertions: what was predicted, what survived."""
    may_write: tuple[str, ...] = ()
    """Globs, relative to the workspace, of the files the command may create or change."""
    subprocess: bool = False
    """Run ``python -m mritumor`` in a child process (a hang fails on a timeout)."""
    error_line: bool | None = None
    """Exactly one ``error:`` line on stderr; default: for exit codes 1 and 2."""
    marks: tuple[Any, ...] = ()


def run_cli(args: list[str], ws: Workspace, *, in_subprocess: bool) -> Outcome:
    if in_subprocess:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
        env.update(WIDE, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
        env.update({k: v for k, v in ws.env.items() if v is not None})
        completed = subprocess.run(
            [sys.executable, "-m", "mritumor", *args],
            cwd=ws.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
            check=False,
        )
        escaped = completed.stderr if "Traceback" in completed.stderr else None
        return Outcome(completed.returncode, completed.stdout, completed.stderr, escaped)
    result = CliRunner().invoke(app, args, env={**WIDE, **ws.env})
    escaped = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        assert result.exc_info is not None
        escaped = "".join(traceback.format_exception(*result.exc_info))
    return Outcome(result.exit_code, result.stdout, result.stderr, escaped)


def snapshot(*roots: Path) -> dict[Path, str]:
    """Every file and symlink under ``roots``: a digest of its bytes, or where the link points."""
    entries: dict[Path, str] = {}
    for root in roots:
        if not root.exists():
            continue
        for folder, dirs, files in os.walk(root):
            base = Path(folder)
            links = [name for name in dirs if (base / name).is_symlink()]
            for name in [*files, *links]:
                path = base / name
                if path.is_symlink():
                    entries[path] = "-> " + str(path.readlink())
                else:
                    entries[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def assert_nothing_lost(
    before: dict[Path, str], after: dict[Path, str], root: Path, may_write: tuple[str, ...]
) -> None:
    def allowed(path: Path) -> bool:
        return path.is_relative_to(root) and any(
            fnmatch(path.relative_to(root).as_posix(), pattern) for pattern in may_write
        )

    lost = sorted(str(path) for path in before if path not in after)
    assert not lost, f"files lost: {lost}"
    changed = sorted(
        str(path) for path, digest in before.items() if after.get(path, digest) != digest
    )
    assert all(allowed(Path(path)) for path in changed), f"files changed: {changed}"
    new = sorted(path for path in after if path not in before)
    stray = [str(path) for path in new if is_stray(path, root)]
    assert not stray, f"stray partial files: {stray}"
    unexpected = [str(path) for path in new if not allowed(path)]
    assert not unexpected, f"unexpected new files: {unexpected}"


def is_stray(path: Path, root: Path) -> bool:
    """A temporary or partial file, or anything in a hidden folder (a staging area).

    A run's ``.lock`` is no stray: it stays by design and locks nothing once its process ended.
    """
    if STRAY.search(path.name):
        return True
    parts = path.relative_to(root).parts if path.is_relative_to(root) else (path.name,)
    return any(part.startswith(".") and part != LOCK_FILE for part in parts)


def assert_one_error_line(stderr: str) -> None:
    """One ``error:`` line, and it is the last: the message does not run on over lines.

    Warnings, notes or a progress display's final frame may come before it.
    """
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, f"expected one error line:\n{stderr}"
    assert lines[-1] == errors[0], f"the error runs on past its line:\n{stderr}"


def contains(text: str, expected: Expectation) -> bool:
    if isinstance(expected, re.Pattern):
        return expected.search(text) is not None
    return expected in text


# --------------------------------------------------------------------------- planting files


def write_blank_png(path: Path, width: int, height: int) -> Path:
    """A valid 8-bit grayscale PNG of any size without holding its pixels in memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    compressor = zlib.compressobj(6)
    rows_per_block = max(1, 4_000_000 // (width + 1))
    block = b"\0" * ((width + 1) * rows_per_block)
    parts = []
    for start in range(0, height, rows_per_block):
        rows = min(rows_per_block, height - start)
        parts.append(compressor.compress(block[: (width + 1) * rows]))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )
    return path


def truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def picture(seed: int) -> Image.Image:
    return Image.fromarray(smooth_image(seed, 48))


def standard_layout(root: Path, *, seed: int = 100, splits: tuple[str, ...] = ("train",)) -> Path:
    """``root/<split>/{glioma,no_tumor}/`` with two distinct images each."""
    for s, split in enumerate(splits):
        for c, class_name in enumerate(("glioma", "no_tumor")):
            for i in range(2):
                save(
                    root / split / class_name / f"{i}.png", smooth_image(seed + 10 * s + 4 * c + i)
                )
    return root


def zip_with(ws: Workspace, member: str) -> Path:
    archive = ws.path("download.zip")
    image = save(ws.path("zip-source/ok.png"), smooth_image(3, 40))
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("glioma/ok.png", image.read_bytes())
        bundle.writestr(member, b"payload")
    shutil.rmtree(ws.path("zip-source"))
    return archive


def json_document(outcome: Outcome) -> dict[str, Any]:
    document = json.loads(outcome.stdout)
    assert isinstance(document, dict)
    return document


def predictions(outcome: Outcome) -> dict[str, dict[str, Any]]:
    return {Path(r["path"]).name: r for r in json_document(outcome)["predictions"]}


def unreadable(outcome: Outcome) -> set[str]:
    return {Path(path).name for path in json_document(outcome)["unreadable"]}


def probabilities(record: dict[str, Any]) -> np.ndarray:
    return np.array(list(record["probabilities"].values()), dtype=np.float64)


def predicted(*names: str) -> Callable[[Workspace, Outcome], None]:
    """The images ``names`` (file names) were predicted."""

    def check(ws: Workspace, outcome: Outcome) -> None:
        got = predictions(outcome)
        missing = [name for name in names if name not in got]
        assert not missing, f"not predicted: {missing}; predicted: {sorted(got)}"

    return check


def partial(good: str, bad: str) -> Callable[[Workspace, Outcome], None]:
    """``good`` was predicted and ``bad`` is listed as unreadable (exit 3)."""

    def check(ws: Workspace, outcome: Outcome) -> None:
        predicted(good)(ws, outcome)
        assert bad in unreadable(outcome), json_document(outcome)["unreadable"]
        assert bad not in predictions(outcome)

    return check


def no_run_left(ws: Workspace, outcome: Outcome) -> None:
    runs = ws.path("runs")
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


def check_report_lists(kind: str, name: str) -> Callable[[Workspace, Outcome], None]:
    def check(ws: Workspace, outcome: Outcome) -> None:
        report = json.loads(ws.path("data/check.json").read_text(encoding="utf-8"))
        problems = {Path(f["path"]).name: f["problem"] for f in report["files"] if f["problem"]}
        assert problems.get(name) == kind, problems

    return check


def check_case(bad: Callable[[Path], object], kind: str, name: str, **options: Any) -> Case:
    """``data check --strict`` on a small layout with one bad file planted in train/glioma."""

    def setup(ws: Workspace) -> list[str]:
        root = standard_layout(ws.path("data"))
        bad(root / "train" / "glioma" / name)
        return ["data", "check", str(root), "--workers", "1", "--strict"]

    return Case(
        setup=setup,
        exit_code=1,
        expect=("Unusable files",),
        stream="stdout",
        check=check_report_lists(kind, name),
        may_write=CHECK_REPORTS,
        error_line=False,
        **options,
    )


# --------------------------------------------------------------------------- images for infer


def infer_missing_file(ws: Workspace) -> list[str]:
    return ws.infer(ws.path("no such scan.png"))


def infer_missing_beside_good(ws: Workspace) -> list[str]:
    return ws.infer(ws.good(), ws.path("no such scan.png"))


def infer_empty_folder(ws: Workspace) -> list[str]:
    ws.path("empty").mkdir()
    return ws.infer(ws.path("empty"))


def infer_beside_good(plant: Callable[[Workspace], Path]) -> Callable[[Workspace], list[str]]:
    def setup(ws: Workspace) -> list[str]:
        return ws.infer(ws.good(), plant(ws))

    return setup


def text_named_jpg(ws: Workspace) -> Path:
    path = ws.path("notes.jpg")
    path.write_text("patient notes, not an image\n", encoding="utf-8")
    return path


def truncated_png(ws: Workspace) -> Path:
    return truncated(ws.good("cut.png", seed=5))


def truncated_jpeg(ws: Workspace) -> Path:
    return truncated(ws.good("cut.jpg", seed=6))


def zero_byte(ws: Workspace) -> Path:
    path = ws.path("empty.png")
    path.write_bytes(b"")
    return path


def huge_png(ws: Workspace) -> Path:
    return write_blank_png(ws.path("huge.png"), 14000, 14000)


def infer_one_pixel(ws: Workspace) -> list[str]:
    Image.new("RGB", (1, 1), (200, 60, 60)).save(ws.path("one-pixel.png"))
    return ws.infer(ws.path("one-pixel.png"))


def infer_16bit(ws: Workspace) -> list[str]:
    pixels = smooth_image(7, 48)[..., 0].astype(np.uint16) * 257
    path = ws.path("deep.png")
    Image.fromarray(pixels).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I"), image.mode  # really 16 bits per sample
    return ws.infer(path)


def infer_cmyk(ws: Workspace) -> list[str]:
    path = ws.path("cmyk.jpg")
    picture(8).convert("CMYK").save(path, "JPEG")
    with Image.open(path) as image:
        assert image.mode == "CMYK"
    return ws.infer(path)


def infer_palette(ws: Workspace) -> list[str]:
    path = ws.path("palette.png")
    picture(9).quantize(colors=16).save(path)
    with Image.open(path) as image:
        assert image.mode == "P"
    return ws.infer(path)


def infer_rgba(ws: Workspace) -> list[str]:
    path = ws.path("alpha.png")
    image = picture(10).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    image.save(path)
    return ws.infer(path)


def infer_exif_rotated(ws: Workspace) -> list[str]:
    """The same picture three ways: upright, stored sideways with EXIF Orientation=6, and
    stored sideways without EXIF. Read upright, the first two give the same prediction."""
    upright = np.zeros((32, 48, 3), np.uint8)  # landscape, an unmistakable top-left
    upright[:14, :18] = 255
    upright[20:, 30:, 1] = 160
    picture = Image.fromarray(upright)
    sideways = picture.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    options: dict[str, Any] = {"quality": 100, "subsampling": 0}
    picture.save(ws.path("upright.jpg"), "JPEG", **options)
    sideways.save(ws.path("rotated.jpg"), "JPEG", exif=exif.tobytes(), **options)
    sideways.save(ws.path("sideways.jpg"), "JPEG", **options)
    with Image.open(ws.path("rotated.jpg")) as image:
        shown = np.asarray(ImageOps.exif_transpose(image), dtype=np.int16)
    assert shown.shape == upright.shape and np.abs(shown - upright).max() < 16
    return ws.infer(ws.path("upright.jpg"), ws.path("rotated.jpg"), ws.path("sideways.jpg"))


def read_upright(ws: Workspace, outcome: Outcome) -> None:
    got = predictions(outcome)
    upright, rotated, sideways = (
        probabilities(got[name]) for name in ("upright.jpg", "rotated.jpg", "sideways.jpg")
    )
    turned = np.abs(sideways - upright).max()
    assert turned > 1e-5, "the model cannot tell the orientations apart: the case proves nothing"
    assert np.abs(rotated - upright).max() < turned / 10, (
        "the EXIF-rotated JPEG was read as stored (sideways), not upright: "
        f"upright {upright}, exif {rotated}, sideways {sideways}"
    )


def animated_gif(path: Path) -> Path:
    frames = [Image.fromarray(smooth_image(seed, 48)) for seed in (11, 12, 13)]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=80, loop=0)
    with Image.open(path) as image:
        assert image.n_frames == 3
    return path


def infer_gif_file(ws: Workspace) -> list[str]:
    return ws.infer(animated_gif(ws.path("cine.gif")))


def infer_gif_folder(ws: Workspace) -> list[str]:
    animated_gif(ws.path("gifs/cine.gif"))
    return ws.infer(ws.path("gifs"))


def infer_8000(ws: Workspace) -> list[str]:
    return ws.infer(write_blank_png(ws.path("big.png"), 8000, 8000))


def infer_unicode_path(ws: Workspace) -> list[str]:
    folder = ws.path("scans ü 脑 MRT")
    save(folder / "Bild é 1.png", smooth_image(14, 48))
    return ws.infer(folder)


def infer_uppercase_extension(ws: Workspace) -> list[str]:
    save(ws.path("upper/SCAN.JPEG"), smooth_image(15, 48), format="JPEG")
    return ws.infer(ws.path("upper"))


def infer_png_named_jpg(ws: Workspace) -> list[str]:
    return ws.infer(save(ws.path("really-a-png.jpg"), smooth_image(16, 48), format="PNG"))


# --------------------------------------------------------------------------- gradcam


def gradcam_partial(ws: Workspace) -> list[str]:
    folder = ws.path("scans")
    save(folder / "good.png", smooth_image(1, 48))
    truncated(save(folder / "cut.png", smooth_image(5, 48)))
    return ["gradcam", str(folder), "--run", str(ws.run), "--out", str(ws.path("panels")), "-q"]


def panel_for_good(ws: Workspace, outcome: Outcome) -> None:
    panels = sorted(path.name for path in ws.path("panels").iterdir())
    assert any(name.startswith("good") for name in panels), panels
    assert not any(name.startswith("cut") for name in panels), panels


def gradcam_with(*options: str) -> Callable[[Workspace], list[str]]:
    def setup(ws: Workspace) -> list[str]:
        out = str(ws.path("panels"))
        return ["gradcam", str(ws.good()), "--run", str(ws.run), "--out", out, "-q", *options]

    return setup


# --------------------------------------------------------------------------- infer output


def infer_output_exists(ws: Workspace) -> list[str]:
    ws.path("predictions.json").write_text("keep me", encoding="utf-8")
    return [*ws.infer(ws.good()), "--output", str(ws.path("predictions.json"))]


def infer_output_directory(ws: Workspace) -> list[str]:
    ws.path("results").mkdir()
    ws.path("results/keep.txt").write_text("keep me", encoding="utf-8")
    return [*ws.infer(ws.good()), "--output", str(ws.path("results")), "--force"]


class _FullDisk:
    """A file handle that writes half of what it is given, then reports a full disk."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def write(self, data: bytes) -> int:
        self.handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _OsWithFullDisk:
    """``os`` as mritumor.core.fsutil sees it, except that every file it opens fills the disk."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def fdopen(descriptor: int, mode: str = "r", *args: Any, **kwargs: Any) -> _FullDisk:
        return _FullDisk(os.fdopen(descriptor, mode, *args, **kwargs))


def infer_output_disk_full(ws: Workspace) -> list[str]:
    from mritumor.core import fsutil

    ws.monkeypatch.setattr(fsutil, "os", _OsWithFullDisk())
    return [*ws.infer(ws.good()), "--output", str(ws.path("predictions.json"))]


def no_output_file(ws: Workspace, outcome: Outcome) -> None:
    assert not ws.path("predictions.json").exists()


# --------------------------------------------------------------------------- data check


def check_missing_root(ws: Workspace) -> list[str]:
    return ["data", "check", str(ws.path("nowhere")), "--workers", "1"]


def check_empty_root(ws: Workspace) -> list[str]:
    ws.path("data").mkdir()
    return ["data", "check", str(ws.path("data")), "--workers", "1"]


def check_symlink_loop(ws: Workspace) -> list[str]:
    root = standard_layout(ws.path("data"))
    (root / "train" / "glioma" / "loop").symlink_to(root / "train", target_is_directory=True)
    (root / "train" / "no_tumor" / "self.png").symlink_to(root / "train" / "no_tumor" / "self.png")
    return ["data", "check", str(root), "--workers", "1"]


def four_usable(ws: Workspace, outcome: Outcome) -> None:
    report = json.loads(ws.path("data/check.json").read_text(encoding="utf-8"))
    usable = [f["path"] for f in report["files"] if not f["problem"]]
    assert len(usable) == 4, report["files"]


def text_file(path: Path) -> None:
    path.write_text("not an image\n", encoding="utf-8")


def zero_file(path: Path) -> None:
    path.write_bytes(b"")


def cut_png(path: Path) -> None:
    truncated(save(path, smooth_image(21, 40)))


def huge_file(path: Path) -> None:
    write_blank_png(path, 14000, 14000)


def tiny_file(path: Path) -> None:
    save(path, smooth_image(22, 16))


# --------------------------------------------------------------------------- data prepare


def prepare_zip(member: Callable[[Workspace], str]) -> Callable[[Workspace], list[str]]:
    def setup(ws: Workspace) -> list[str]:
        archive = zip_with(ws, member(ws))
        return ["data", "prepare", str(archive), "--out", str(ws.path("out/data"))]

    return setup


def nothing_unpacked(ws: Workspace, outcome: Outcome) -> None:
    assert not ws.path("out").exists(), list(ws.path("out").rglob("*"))
    assert not ws.path("evil.png").exists()


def prepare_broken_zip(ws: Workspace) -> list[str]:
    ws.path("broken.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    return ["data", "prepare", str(ws.path("broken.zip")), "--out", str(ws.path("data"))]


def prepare_missing_source(ws: Workspace) -> list[str]:
    return ["data", "prepare", str(ws.path("downloads")), "--out", str(ws.path("data"))]


def prepare_text_source(ws: Workspace) -> list[str]:
    ws.path("notes.txt").write_text("not a dataset\n", encoding="utf-8")
    return ["data", "prepare", str(ws.path("notes.txt")), "--out", str(ws.path("data"))]


def prepare_over_existing(ws: Workspace) -> list[str]:
    source = standard_layout(ws.path("download"), splits=("train", "val", "test"))
    save(ws.path("data/train/glioma/mine.png"), smooth_image(40, 40))
    return ["data", "prepare", str(source), "--out", str(ws.path("data"))]


def prepare_zero_byte_source(ws: Workspace) -> list[str]:
    source = standard_layout(ws.path("download"), splits=("train", "val", "test"))
    (source / "train" / "glioma" / "empty.png").write_bytes(b"")
    return ["data", "prepare", str(source), "--out", str(ws.path("data"))]


def zero_byte_left_out(ws: Workspace, outcome: Outcome) -> None:
    assert not ws.path("data/train/glioma/empty.png").exists()
    assert len(list(ws.path("data/train/glioma").iterdir())) == 2
    manifest = ws.path("data/manifests/train.csv").read_text(encoding="utf-8")
    assert "empty.png" not in manifest


# --------------------------------------------------------------------------- volumes


def phantom_volume(ws: Workspace, name: str = "scan.nii.gz", class_name: str = "glioma") -> Path:
    """A 32 x 32 x 12 phantom volume (NIfTI) in the workspace."""
    from mritumor.volumes.synth import nifti_bytes, render_volume

    volume = render_volume(np.random.SeedSequence(3), class_name, 32, 12)
    path = ws.path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(nifti_bytes(np.rint(volume.image * 1000).astype(np.int16), (1.0, 1.0, 2.7)))
    return path


def garbage_volume(ws: Workspace) -> Path:
    path = ws.path("scan.nii.gz")
    path.write_bytes(b"not a NIfTI file" * 30)
    return path


def four_d_volume(ws: Workspace) -> Path:
    import nibabel

    path = ws.path("series.nii.gz")
    nibabel.save(nibabel.Nifti1Image(np.zeros((8, 8, 4, 3), np.int16), np.eye(4)), path)
    return path


def blank_volume(ws: Workspace) -> list[str]:
    from mritumor.volumes.synth import nifti_bytes

    path = ws.path("air.nii.gz")
    path.write_bytes(nifti_bytes(np.zeros((6, 32, 32), np.int16), (1.0, 1.0, 1.0)))
    return ws.infer(path)


def no_verdict_for_air(ws: Workspace, outcome: Outcome) -> None:
    (verdict,) = json_document(outcome)["volumes"]
    assert verdict["scored_slices"] == 0 and verdict["blank_slices"] == 6
    assert verdict["tumour_score"] is None and verdict["predicted_class"] is None


def volume_with_window(ws: Workspace) -> list[str]:
    return [*ws.infer(phantom_volume(ws)), "--window", "dicom"]


def prepare_volumes_from(folder: str) -> Callable[[Workspace], list[str]]:
    def setup(ws: Workspace) -> list[str]:
        phantom_volume(ws, f"volumes/{folder}/case-1.nii.gz")
        return ["data", "prepare", str(ws.path("volumes")), "--out", str(ws.path("out"))]

    return setup


def nothing_prepared(ws: Workspace, outcome: Outcome) -> None:
    assert not ws.path("out").exists(), list(ws.path("out").rglob("*"))


# --------------------------------------------------------------------------- train


def train_without_val(ws: Workspace) -> list[str]:
    data = standard_layout(ws.path("data"))
    return ws.train("--epochs", "1", "--data", str(data))


def train_zero_byte(ws: Workspace) -> list[str]:
    data = ws.copy_data()
    (data / "train" / "glioma" / "empty.png").write_bytes(b"")
    return ws.train("--epochs", "1", "--data", str(data))


def train_name_holds_run(ws: Workspace) -> list[str]:
    run = ws.run
    args = ws.train("--epochs", "1", "--data", str(ws.data), "--name", run.name, "--exist-ok")
    return [*args, "--set", f"paths.runs_dir={run.parent}"]


def train_resume_not_a_run(ws: Workspace) -> list[str]:
    ws.path("notes").mkdir()
    ws.path("notes/readme.txt").write_text("not a run\n", encoding="utf-8")
    return ["train", "--resume", str(ws.path("notes"))]


def train_resume_without_last(ws: Workspace) -> list[str]:
    run = ws.copy_run()
    (run / "last.keras").unlink()
    return ["train", "--resume", str(run), "-q"]


def says_last_keras_is_missing(ws: Workspace, outcome: Outcome) -> None:
    """The run finished an epoch (bundle.json says so): its last.keras went missing later."""
    assert "first epoch" not in outcome.stderr, (
        "bundle.json records 1 completed epoch, so the run did not stop before its first epoch: "
        f"the message misreads the run\n{outcome.stderr}"
    )
    assert ws.path("run/model.keras").is_file()


def train_unknown_recipe(ws: Workspace) -> list[str]:
    return ws.train("--recipe", "cpu-fsat", "--data", str(ws.path("data")))


def train_missing_data(ws: Workspace) -> list[str]:
    return ws.train("--epochs", "1", "--data", str(ws.path("nowhere")))


def train_disk_full(ws: Workspace) -> list[str]:
    """The third checkpoint save (epoch 2's last.keras) finds the disk full half way."""
    import keras

    original = keras.Model.save
    run = ws.path("runs/full")
    calls: list[Path] = []

    def save_until_full(model: Any, filepath: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(Path(filepath))
        if len(calls) == 3:
            ws.notes["last"] = (run / "last.keras").read_bytes()
            Path(filepath).write_bytes(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))
        return original(model, filepath, *args, **kwargs)

    ws.monkeypatch.setattr(keras.Model, "save", save_until_full)
    return ws.train("--epochs", "2", "--data", str(ws.data), "--name", "full")


def previous_checkpoint_survives(ws: Workspace, outcome: Outcome) -> None:
    from mritumor.run.bundle import read_bundle

    run = ws.path("runs/full")
    assert "last" in ws.notes, "the disk never filled: fewer than three checkpoint saves"
    assert (run / "last.keras").read_bytes() == ws.notes["last"]
    assert (run / "model.keras").is_file()
    assert read_bundle(run).epochs_completed == 1


# --------------------------------------------------------------------------- configuration


def config_file(text: str | bytes) -> Callable[[Workspace], list[str]]:
    def setup(ws: Workspace) -> list[str]:
        path = ws.path("mritumor.yaml")
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return ["--config", str(path), "config", "show"]

    return setup


def with_env(name: str, value: str) -> Callable[[Workspace], list[str]]:
    def setup(ws: Workspace) -> list[str]:
        ws.env[name] = value
        return ["config", "show"]

    return setup


def config_missing_file(ws: Workspace) -> list[str]:
    return ["--config", str(ws.path("nope.yaml")), "config", "show"]


def config_show_set(assignment: str) -> Callable[[Workspace], list[str]]:
    def setup(ws: Workspace) -> list[str]:
        return ["config", "show", "--set", assignment]

    return setup


def config_init_exists(ws: Workspace) -> list[str]:
    ws.path("mritumor.yaml").write_text("seed: 7  # mine\n", encoding="utf-8")
    return ["config", "init", str(ws.path("mritumor.yaml"))]


# --------------------------------------------------------------------------- run folders


def run_missing(ws: Workspace) -> list[str]:
    return ws.infer(ws.good(), run=ws.path("runs/train-9"))


def run_is_a_file(ws: Workspace) -> list[str]:
    ws.path("run.txt").write_text("not a folder\n", encoding="utf-8")
    return ws.infer(ws.good(), run=ws.path("run.txt"))


def run_not_a_run(ws: Workspace) -> list[str]:
    ws.path("empty").mkdir()
    return ws.infer(ws.good(), run=ws.path("empty"))


def run_none_at_all(ws: Workspace) -> list[str]:
    return ["infer", str(ws.good()), "--format", "json", "-q"]


def damaged_run(damage: Callable[[Path], object]) -> Callable[[Workspace], list[str]]:
    def setup(ws: Workspace) -> list[str]:
        run = ws.copy_run()
        damage(run)
        return ws.infer(ws.good(), run=run)

    return setup


def cut_model(run: Path) -> None:
    truncated(run / "model.keras")


def empty_model(run: Path) -> None:
    (run / "model.keras").write_bytes(b"")


def corrupt_bundle(run: Path) -> None:
    text = (run / "bundle.json").read_text(encoding="utf-8")
    (run / "bundle.json").write_text(text[: len(text) // 3], encoding="utf-8")


def edit_bundle(**changes: Any) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        data = json.loads((run / "bundle.json").read_text(encoding="utf-8"))
        data.update(changes)
        (run / "bundle.json").write_text(json.dumps(data, indent=2), encoding="utf-8")

    return edit


def lambda_model(run: Path) -> None:
    import keras

    inputs = keras.Input((32, 32, 3), name="image")
    scaled = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(scaled)
    logits = keras.layers.Dense(4, name="logits")(pooled)
    (run / "model.keras").unlink()
    keras.Model(inputs, logits).save(run / "model.keras")


def eval_split_gone(ws: Workspace) -> list[str]:
    run = ws.copy_run()
    listing = run / "splits" / "test.csv"
    lines = listing.read_text(encoding="utf-8").splitlines()
    gone = ws.path("moved away/scan.png").as_posix()
    lines[1] = f"{gone},{lines[1].split(',')[1]},test/glioma/scan.png"
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ["eval", "--run", str(run), "-q"]


def demo_out_is_file(ws: Workspace) -> list[str]:
    ws.path("demo.txt").write_text("my notes, not a folder\n", encoding="utf-8")
    return ["demo", "--out", str(ws.path("demo.txt")), "--quick", "-q"]


# --------------------------------------------------------------------------- the matrix

SLOW = (pytest.mark.slow,)

CASES: tuple[Case, ...] = (
    # images for infer ------------------------------------------------------------------
    Case("infer-missing-file", "images", infer_missing_file, 2, ("no images found",)),
    Case(
        "infer-missing-beside-good",
        "images",
        infer_missing_beside_good,
        3,
        ("no image matches", "no such scan.png"),
        check=predicted("good.png"),
    ),
    Case("infer-empty-folder", "images", infer_empty_folder, 2, ("no images found", "empty")),
    Case(
        "infer-text-named-jpg",
        "images",
        infer_beside_good(text_named_jpg),
        3,
        ("unreadable", "notes.jpg"),
        check=partial("good.png", "notes.jpg"),
    ),
    Case(
        "infer-truncated-png",
        "images",
        infer_beside_good(truncated_png),
        3,
        ("unreadable", "cut.png"),
        check=partial("good.png", "cut.png"),
    ),
    Case(
        "infer-truncated-jpeg",
        "images",
        infer_beside_good(truncated_jpeg),
        3,
        ("unreadable", "cut.jpg"),
        check=partial("good.png", "cut.jpg"),
    ),
    Case(
        "infer-zero-byte",
        "images",
        infer_beside_good(zero_byte),
        3,
        ("unreadable", "empty.png"),
        check=partial("good.png", "empty.png"),
    ),
    Case(
        "infer-1x1",
        "images",
        infer_one_pixel,
        0,
        ("one-pixel.png", re.compile(r"32 ?px")),
        check=predicted("one-pixel.png"),
    ),
    Case("infer-16bit-png", "images", infer_16bit, 0, ("deep.png",), "stdout"),
    Case("infer-cmyk-jpeg", "images", infer_cmyk, 0, ("cmyk.jpg",), "stdout"),
    Case("infer-palette-png", "images", infer_palette, 0, ("palette.png",), "stdout"),
    Case("infer-rgba-png", "images", infer_rgba, 0, ("alpha.png",), "stdout"),
    Case(
        "infer-exif-rotated-jpeg",
        "images",
        infer_exif_rotated,
        0,
        ("rotated.jpg",),
        "stdout",
        check=read_upright,
    ),
    Case(
        "infer-animated-gif-file",
        "images",
        infer_gif_file,
        0,
        ("cine.gif",),
        "stdout",
        check=predicted("cine.gif"),
    ),
    Case("infer-gif-in-folder", "images", infer_gif_folder, 2, ("no images found", "gifs")),
    Case(
        "infer-8000px",
        "images",
        infer_8000,
        0,
        ("big.png",),
        "stdout",
        check=predicted("big.png"),
        marks=SLOW,
    ),
    Case(
        "infer-14000px-png",
        "images",
        infer_beside_good(huge_png),
        3,
        ("unreadable", "huge.png"),
        check=partial("good.png", "huge.png"),
    ),
    Case(
        "infer-unicode-path",
        "images",
        infer_unicode_path,
        0,
        ("Bild ",),
        "stdout",
        check=predicted("Bild é 1.png"),
    ),
    Case(
        "infer-uppercase-extension",
        "images",
        infer_uppercase_extension,
        0,
        ("SCAN.JPEG",),
        "stdout",
        check=predicted("SCAN.JPEG"),
    ),
    Case(
        "infer-png-named-jpg",
        "images",
        infer_png_named_jpg,
        0,
        ("really-a-png.jpg",),
        "stdout",
        check=predicted("really-a-png.jpg"),
    ),
    # gradcam ---------------------------------------------------------------------------
    Case(
        "gradcam-truncated-beside-good",
        "gradcam",
        gradcam_partial,
        3,
        ("unreadable", "cut.png"),
        check=panel_for_good,
        may_write=("panels/*",),
    ),
    Case(
        "gradcam-unknown-class",
        "gradcam",
        gradcam_with("--class", "tumour"),
        2,
        ("--class 'tumour' is not one of",),
    ),
    Case(
        "gradcam-unknown-method",
        "gradcam",
        gradcam_with("--method", "saliency"),
        2,
        ("--method must be one of",),
    ),
    # infer's output file -----------------------------------------------------------------
    Case(
        "infer-output-exists",
        "writers",
        infer_output_exists,
        2,
        ("predictions.json exists", "--force"),
    ),
    Case(
        "infer-output-is-a-folder",
        "writers",
        infer_output_directory,
        2,
        ("results", "directory"),
    ),
    Case(
        "infer-output-disk-full",
        "writers",
        infer_output_disk_full,
        1,
        ("predictions.json", "No space left on device"),
        check=no_output_file,
    ),
    Case(
        "infer-unknown-format",
        "writers",
        lambda ws: [*ws.infer(ws.good()), "--format", "xml"],
        2,
        ("--format must be one of",),
    ),
    Case(
        "train-disk-full-checkpoint",
        "writers",
        train_disk_full,
        1,
        ("No space left on device",),
        check=previous_checkpoint_survives,
        may_write=("runs/*",),
    ),
    # data check --------------------------------------------------------------------------
    Case("check-missing-root", "data check", check_missing_root, 2, ("is not a folder",)),
    Case(
        "check-no-class-folders",
        "data check",
        check_empty_root,
        2,
        ("has no train/, val/, test/",),
    ),
    check_case(zero_file, "zero_bytes", "empty.png", id="check-zero-byte", area="data check"),
    check_case(cut_png, "truncated", "cut.png", id="check-truncated-png", area="data check"),
    check_case(
        text_file, "not_an_image", "notes.jpg", id="check-text-named-jpg", area="data check"
    ),
    check_case(
        animated_gif, "not_an_image", "cine.gif", id="check-animated-gif", area="data check"
    ),
    check_case(huge_file, "too_large", "huge.png", id="check-14000px-png", area="data check"),
    check_case(tiny_file, "too_small", "tiny.png", id="check-image-under-32px", area="data check"),
    Case(
        "check-symlink-loop",
        "data check",
        check_symlink_loop,
        0,
        ("Usable images",),
        "stdout",
        check=four_usable,
        may_write=CHECK_REPORTS,
        subprocess=True,
    ),
    # volumes -----------------------------------------------------------------------------
    Case(
        "infer-volume-not-nifti",
        "volumes",
        infer_beside_good(garbage_volume),
        3,
        ("unreadable", "cannot read NIfTI file"),
        check=partial("good.png", "scan.nii.gz"),
    ),
    Case(
        "infer-volume-4d",
        "volumes",
        infer_beside_good(four_d_volume),
        3,
        ("not one 3-D volume",),
        check=partial("good.png", "series.nii.gz"),
    ),
    Case(
        "infer-volume-all-blank",
        "volumes",
        blank_volume,
        0,
        ("no slice was scored: all 6 are blank",),
        check=no_verdict_for_air,
    ),
    Case(
        "infer-volume-window-dicom-on-nifti",
        "volumes",
        volume_with_window,
        2,
        ("--window dicom needs the series' own VOI window", "use --window percentile"),
    ),
    Case(
        "prepare-volumes-unknown-class",
        "volumes",
        prepare_volumes_from("tumours"),
        2,
        ("unknown class folder 'tumours'",),
        check=nothing_prepared,
    ),
    Case(
        "prepare-volumes-too-few-cases",
        "volumes",
        prepare_volumes_from("glioma"),
        0,
        ("tumour case(s) without a mask", "val has no case of glioma (1 case(s) in all)"),
        may_write=("out/**",),
    ),
    # data prepare ------------------------------------------------------------------------
    Case(
        "prepare-zip-dotdot",
        "data prepare",
        prepare_zip(lambda ws: "glioma/../../evil.png"),
        2,
        ("outside the target", "../evil.png"),
        check=nothing_unpacked,
    ),
    Case(
        "prepare-zip-absolute",
        "data prepare",
        prepare_zip(lambda ws: ws.path("evil.png").as_posix()),
        2,
        ("outside the target", "evil.png"),
        check=nothing_unpacked,
    ),
    Case(
        "prepare-zip-broken",
        "data prepare",
        prepare_broken_zip,
        2,
        ("cannot read the zip", "broken.zip"),
    ),
    Case(
        "prepare-missing-source",
        "data prepare",
        prepare_missing_source,
        2,
        ("downloads does not exist",),
    ),
    Case(
        "prepare-source-not-a-folder",
        "data prepare",
        prepare_text_source,
        2,
        ("neither a folder nor a .zip",),
    ),
    Case(
        "prepare-target-holds-splits",
        "data prepare",
        prepare_over_existing,
        2,
        ("already holds", "--force"),
    ),
    Case(
        "prepare-zero-byte-in-source",
        "data prepare",
        prepare_zero_byte_source,
        0,
        ("left out 1 file(s)", "empty.png", "zero_bytes"),
        check=zero_byte_left_out,
        may_write=("data/*",),
    ),
    # train -------------------------------------------------------------------------------
    Case(
        "train-no-val-split",
        "train",
        train_without_val,
        2,
        ("no val split",),
        check=no_run_left,
    ),
    Case(
        "train-zero-byte-image",
        "train",
        train_zero_byte,
        0,
        ("skipped unreadable image", "empty.png"),
        may_write=("runs/*",),
    ),
    Case(
        "train-name-holds-run",
        "train",
        train_name_holds_run,
        2,
        ("already holds a run", "--resume"),
    ),
    Case(
        "train-resume-not-a-run",
        "train",
        train_resume_not_a_run,
        2,
        ("not a mritumor run directory", "bundle.json"),
    ),
    Case(
        "train-resume-without-last",
        "train",
        train_resume_without_last,
        2,
        ("last.keras",),
        check=says_last_keras_is_missing,
        may_write=(f"run/{LOCK_FILE}",),
    ),
    Case(
        "train-unknown-recipe",
        "train",
        train_unknown_recipe,
        2,
        ("unknown recipe 'cpu-fsat'", "did you mean 'cpu-fast'?"),
        check=no_run_left,
    ),
    Case(
        "train-missing-data",
        "train",
        train_missing_data,
        2,
        ("no train split", "nowhere"),
        check=no_run_left,
    ),
    # configuration -----------------------------------------------------------------------
    Case(
        "config-malformed-yaml",
        "configuration",
        config_file("seed: 1\ntrain:\n  epochs: 3\n bad: [\n"),
        2,
        ("mritumor.yaml: not valid YAML at line",),
    ),
    Case(
        "config-unknown-key",
        "configuration",
        config_file("train:\n  epochz: 3\n"),
        2,
        ("unknown key 'train.epochz'", "did you mean 'train.epochs'?"),
    ),
    Case(
        "config-unknown-section",
        "configuration",
        config_file("trian:\n  epochs: 3\n"),
        2,
        ("unknown key 'trian'", "did you mean 'train'?"),
    ),
    Case(
        "config-not-a-mapping",
        "configuration",
        config_file("- train\n- data\n"),
        2,
        ("expected a mapping of sections",),
    ),
    Case(
        "config-not-utf8",
        "configuration",
        config_file(b"seed: \xff\xfe\x00\x81\n"),
        2,
        ("cannot read config file",),
    ),
    Case(
        "config-missing-file",
        "configuration",
        config_missing_file,
        2,
        ("nope.yaml does not exist",),
    ),
    Case(
        "config-unknown-recipe",
        "configuration",
        config_file("recipe: fast\n"),
        2,
        ("unknown recipe 'fast'", "mritumor recipes list"),
    ),
    Case(
        "env-not-a-number",
        "configuration",
        with_env("MRITUMOR_TRAIN__EPOCHS", "abc"),
        2,
        ("invalid value 'abc' for 'train.epochs'", "MRITUMOR_TRAIN__EPOCHS"),
    ),
    Case(
        "env-misspelt-variable",
        "configuration",
        with_env("MRITUMOR_TRIAN__EPOCHS", "3"),
        2,
        ("unknown environment variable MRITUMOR_TRIAN__EPOCHS", "MRITUMOR_TRAIN__EPOCHS"),
    ),
    Case(
        "env-list-not-json",
        "configuration",
        with_env("MRITUMOR_DATA__CLASS_NAMES", "glioma,no_tumor"),
        2,
        ("MRITUMOR_DATA__CLASS_NAMES", "are JSON"),
    ),
    Case(
        "env-config-missing",
        "configuration",
        with_env("MRITUMOR_CONFIG", "gone.yaml"),
        2,
        ("gone.yaml does not exist", "MRITUMOR_CONFIG"),
    ),
    Case(
        "set-without-equals",
        "configuration",
        config_show_set("train.epochs"),
        2,
        ("--set expects KEY=VALUE",),
    ),
    Case(
        "set-out-of-range",
        "configuration",
        config_show_set("data.image_size=8"),
        2,
        ("invalid value 8 for 'data.image_size'", "(from flag)"),
    ),
    Case(
        "set-settings-internal-key",
        "configuration",
        config_show_set("_env_prefix=3"),
        2,
        ("unknown key '_env_prefix'",),
    ),
    Case(
        "config-init-exists",
        "configuration",
        config_init_exists,
        2,
        ("already exists", "--force"),
    ),
    # run folders ---------------------------------------------------------------------------
    Case("run-missing", "run folders", run_missing, 2, ("train-9 does not exist",)),
    Case("run-is-a-file", "run folders", run_is_a_file, 2, ("run.txt is not a directory",)),
    Case(
        "run-not-a-run",
        "run folders",
        run_not_a_run,
        2,
        ("not a mritumor run directory",),
    ),
    Case(
        "run-none-at-all",
        "run folders",
        run_none_at_all,
        2,
        ("no run with a bundle.json", "mritumor train"),
    ),
    Case(
        "run-model-truncated",
        "run folders",
        damaged_run(cut_model),
        1,
        ("model.keras", "damaged", re.compile(r"last\.keras|retrain|mritumor train")),
    ),
    Case(
        "run-model-zero-byte",
        "run folders",
        damaged_run(empty_model),
        1,
        ("model.keras", "damaged", re.compile(r"last\.keras|retrain|mritumor train")),
    ),
    Case(
        "run-bundle-corrupt",
        "run folders",
        damaged_run(corrupt_bundle),
        2,
        ("bundle.json is not valid JSON",),
    ),
    Case(
        "run-bundle-future-schema",
        "run folders",
        damaged_run(edit_bundle(schema_version=99)),
        2,
        ("newer mritumor", "pip install -U mritumor"),
    ),
    Case(
        "run-bundle-fewer-classes",
        "run folders",
        damaged_run(edit_bundle(class_names=["glioma", "meningioma", "no_tumor"])),
        2,
        ("class", "output"),
    ),
    Case(
        "run-bundle-other-input-size",
        "run folders",
        damaged_run(edit_bundle(image_size=64)),
        2,
        ("mixes files of different runs",),
    ),
    Case(
        "run-lambda-layer",
        "run folders",
        damaged_run(lambda_model),
        1,
        ("model.keras", "Lambda"),
    ),
    Case(
        "eval-split-files-gone",
        "run folders",
        eval_split_gone,
        2,
        ("no longer exist", "moved away/scan.png"),
    ),
    Case("demo-out-is-a-file", "run folders", demo_out_is_file, 2, ("demo.txt",)),
)


def _case_params() -> Iterator[Any]:
    for case in CASES:
        yield pytest.param(case, id=case.id, marks=case.marks)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data_root(synthetic_data: SyntheticData) -> Path:
    return synthetic_data(train=4, val=2, test=2, image_size=40, seed=11)


@pytest.fixture(scope="module")
def tiny_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mritumor train``: small_cnn, 32 px, one epoch, 16 images; shared read-only."""
    runs = tmp_path_factory.mktemp("fault runs") / "runs"
    args = ["train", *TINY_TRAIN, "--epochs", "1", "--data", str(data_root)]
    args += ["--set", f"paths.runs_dir={runs}", "--name", "tiny"]
    unset: dict[str, str | None] = {k: None for k in os.environ if k.upper().startswith(ENV_PREFIX)}
    result = CliRunner().invoke(app, args, env={**WIDE, **unset})
    assert result.exit_code == 0, result.output
    return runs / "tiny"


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("case", list(_case_params()))
def test_fault(
    case: Case,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ws = Workspace(root=tmp_path / "ws", request=request, monkeypatch=monkeypatch)
    ws.root.mkdir()
    monkeypatch.chdir(ws.root)
    args = case.setup(ws)
    watched = [ws.root, *ws.shared()]
    before = snapshot(*watched)

    outcome = run_cli(args, ws, in_subprocess=case.subprocess)

    after = snapshot(*watched)
    assert outcome.escaped is None, f"an exception escaped:\n{outcome.escaped}"
    assert "Traceback" not in outcome.output, outcome.output
    assert outcome.exit_code == case.exit_code, (
        f"exit {outcome.exit_code}, expected {case.exit_code}\n"
        f"stdout:\n{outcome.stdout}\nstderr:\n{outcome.stderr}"
    )
    text = getattr(outcome, case.stream)
    missing = [str(item) for item in case.expect if not contains(text, item)]
    assert not missing, f"{case.stream} lacks {missing}:\n{text}"
    error_line = case.error_line if case.error_line is not None else case.exit_code in (1, 2)
    if error_line:
        assert_one_error_line(outcome.stderr)
    assert_nothing_lost(before, after, ws.root, case.may_write)
    if case.check is not None:
        case.check(ws, outcome)


def test_the_matrix_is_large_and_its_ids_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 45
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", case_id) for case_id in ids)


def documented_ids(text: str) -> list[str]:
    return re.findall(r"^\| `([a-z0-9-]+)` \|", text, flags=re.MULTILINE)


def test_every_case_is_documented() -> None:
    """docs/refusals.md has one row per case, and no row for a case that does not exist."""
    documented = documented_ids(REFUSALS_PAGE.read_text(encoding="utf-8"))
    assert len(documented) == len(set(documented)), "a case is documented twice"
    ids = {case.id for case in CASES}
    assert sorted(ids - set(documented)) == [], "cases missing from docs/refusals.md"
    assert sorted(set(documented) - ids) == [], "rows in docs/refusals.md without a case"


def test_the_refusals_page_is_in_the_navigation() -> None:
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    assert "refusals.md" in nav


def test_the_disk_check_catches_loss_changes_and_strays(tmp_path: Path) -> None:
    """The matrix's third assertion really fails when a command loses or half-writes a file."""
    (tmp_path / "scan.png").write_bytes(b"pixels")
    (tmp_path / "runs" / "train-1").mkdir(parents=True)
    (tmp_path / "runs" / "train-1" / "model.keras").write_bytes(b"weights")
    before = snapshot(tmp_path)
    assert_nothing_lost(before, snapshot(tmp_path), tmp_path, ())

    (tmp_path / "scan.png").write_bytes(b"other pixels")
    with pytest.raises(AssertionError, match="files changed"):
        assert_nothing_lost(before, snapshot(tmp_path), tmp_path, ())
    (tmp_path / "scan.png").unlink()
    with pytest.raises(AssertionError, match="files lost"):
        assert_nothing_lost(before, snapshot(tmp_path), tmp_path, ("*",))
    (tmp_path / "scan.png").write_bytes(b"pixels")
    (tmp_path / "runs" / "train-1" / ".model.partial.keras").write_bytes(b"half")
    with pytest.raises(AssertionError, match="stray partial files"):
        assert_nothing_lost(before, snapshot(tmp_path), tmp_path, ("runs/*",))
    (tmp_path / "runs" / "train-1" / ".model.partial.keras").unlink()
    (tmp_path / "runs" / "train-1" / LOCK_FILE).write_text("123\n")
    (tmp_path / "runs" / "train-1" / "last.keras").write_bytes(b"state")
    assert_nothing_lost(before, snapshot(tmp_path), tmp_path, ("runs/*",))
    with pytest.raises(AssertionError, match="unexpected new files"):
        assert_nothing_lost(before, snapshot(tmp_path), tmp_path, ())
