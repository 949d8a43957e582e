"""``mritumor export``: check the request, write the export, check its parity, put it in place.

Nothing appears at the output until the export has passed its parity check: the model file
(or SavedModel folder) and its sidecar are written into a hidden staging folder beside the
output, checked there, and then renamed into place. A converter that fails, a parity check
that fails and Ctrl-C all leave the output as it was. An existing output is replaced only
with ``force``, and a folder only when it holds a SavedModel.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from mritumor.core.errors import MritumorError, UsageError
from mritumor.core.fsutil import atomic_write_json
from mritumor.export.parity import Parity, check_parity
from mritumor.export.sidecar import SIDECAR_IN_FOLDER, sidecar, sidecar_path
from mritumor.export.writers import (
    ExportFormat,
    check_format,
    require_onnx_packages,
    write_export,
)
from mritumor.run.bundle import read_bundle
from mritumor.run.layout import MODEL_FILE, TRAIN_HINT, BundleError, RunLayout

FORMAT_NAMES: dict[ExportFormat, str] = {
    "savedmodel": "SavedModel",
    "tflite": "TensorFlow Lite",
    "onnx": "ONNX",
}
#: The folder of a run that holds its exports unless ``--output`` says otherwise.
EXPORT_DIR = "export"


@dataclass(frozen=True)
class ExportResult:
    output: Path
    sidecar: Path
    parity: Parity
    run_precision: str
    """The precision policy the run computes in; the export computes in float32."""


def default_output(run_dir: Path, fmt: ExportFormat, *, quantize: bool = False) -> Path:
    """``<run>/export/saved_model``, ``model.onnx``, ``model.tflite`` or
    ``model-dynamic-range.tflite``."""
    names: dict[ExportFormat, str] = {
        "savedmodel": "saved_model",
        "onnx": "model.onnx",
        "tflite": "model-dynamic-range.tflite" if quantize else "model.tflite",
    }
    return RunLayout(run_dir).root / EXPORT_DIR / names[fmt]


def export_run(
    run_dir: Path,
    format_name: str,
    *,
    output: Path | None = None,
    quantize: bool = False,
    force: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export the run's model as ``format_name``; every refusal comes before any work."""
    from mritumor.export.graph import ServingGraph, compute_precision, float32_model
    from mritumor.predict.predictor import Predictor

    fmt = check_format(format_name)
    if quantize and fmt != "tflite":
        raise UsageError("--quantize applies to --format tflite only")
    if fmt == "onnx":
        require_onnx_packages()
    bundle = read_bundle(run_dir)
    if not RunLayout(run_dir).model.is_file():
        raise BundleError(
            f"{run_dir} has no {MODEL_FILE}, so there is nothing to export; {TRAIN_HINT}"
        )
    target = output if output is not None else default_output(run_dir, fmt, quantize=quantize)
    _check_target(target, fmt, force=force, explicit=output is not None)
    step = on_step or (lambda _: None)
    predictor = Predictor(run_dir)
    precision = compute_precision(predictor.model)
    # The export computes in float32 (see mritumor.export.graph), and so does its reference.
    predictor.model = float32_model(predictor.model)
    name = FORMAT_NAMES[fmt] + (" (dynamic-range quantised)" if quantize else "")
    with _staging(target) as staging:
        staged = staging / target.name
        step(f"Converting to {name}")
        try:
            conversion = write_export(
                ServingGraph(predictor.model, bundle), fmt, staged, quantize=quantize
            )
        except Exception as error:  # a converter's own failure, e.g. an op it cannot convert
            raise MritumorError(
                f"the {name} conversion failed ({type(error).__name__}: {_first_line(error)}); "
                "nothing was written (--debug shows the traceback)"
            ) from error
        step("Checking parity with the Predictor")
        try:
            parity = check_parity(predictor, fmt, staged, quantised=quantize)
        except MritumorError:
            raise
        except Exception as error:  # the runtime refuses the file the converter wrote
            raise MritumorError(
                f"the {name} export does not run ({type(error).__name__}: {_first_line(error)}); "
                "nothing was written (--debug shows the traceback)"
            ) from error
        if not parity.passed:
            raise MritumorError(f"parity check failed: {parity.summary()}; nothing was written")
        conversion = {**conversion, "compute_dtype": "float32", "run_precision": precision}
        atomic_write_json(
            sidecar_path(staged, fmt), sidecar(bundle, run_dir, fmt, conversion, parity)
        )
        _place(staged, target, staging)
        if fmt != "savedmodel":
            _place(sidecar_path(staged, fmt), sidecar_path(target, fmt), staging)
    return ExportResult(target, sidecar_path(target, fmt), parity, precision)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _check_target(target: Path, fmt: ExportFormat, *, force: bool, explicit: bool) -> None:
    """Refuse an output that cannot be written, or that exists without ``force``."""
    folder = target.parent
    if explicit and not folder.is_dir():
        raise UsageError(f"--output {target}: the folder {folder} does not exist")
    if fmt != "savedmodel" and target.is_dir():
        raise UsageError(f"--output {target} is a directory; give a file name")
    if fmt == "savedmodel" and target.is_dir() and not _holds_savedmodel(target):
        raise UsageError(
            f"--output {target} is a folder that holds no SavedModel; give a new folder name"
        )
    existing = [path for path in (target, sidecar_path(target, fmt)) if path.exists()]
    if existing and not force:
        raise UsageError(f"{existing[0]} exists; pass --force to replace it")


def _holds_savedmodel(folder: Path) -> bool:
    return (folder / "saved_model.pb").is_file() or (folder / SIDECAR_IN_FOLDER).is_file()


@contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A hidden folder beside ``target`` (same file system: renames out of it are atomic),
    removed at the end with whatever is left in it. The folder of ``target`` is created when
    missing (``<run>/export``), and removed again if the export fails."""
    created = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    succeeded = False
    try:
        yield folder
        succeeded = True
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if created and not succeeded:
            with suppress(OSError):
                target.parent.rmdir()


def _place(staged: Path, target: Path, staging: Path) -> None:
    """Rename ``staged`` to ``target``; an existing ``target`` is moved into ``staging`` first
    (a folder cannot be replaced in one rename) and moved back if the rename fails."""
    previous = staging / f"previous-{target.name}"
    had_previous = target.exists() or target.is_symlink()
    if had_previous:
        target.replace(previous)
    try:
        staged.replace(target)
    except OSError:
        if had_previous:
            previous.replace(target)
        raise
