"""The JSON sidecar of an export: what a client needs besides the model file.

``<output>.json`` beside a TensorFlow Lite or ONNX file, ``mritumor-export.json`` inside a
SavedModel folder. It carries the classes in output order, the negative class, the threshold
and how it was chosen, the temperature (already inside the graph), the input and output
specs, how the file was converted, the parity check's figures, and the bundle fingerprint.

The bundle fingerprint identifies the exact model and calibration exported: the sha256 of
the two lines that ``sha256sum bundle.json model.keras`` prints in the run folder, so

    (cd runs/train-3 && sha256sum bundle.json model.keras) | sha256sum

recomputes it. It changes when ``calibrate`` or ``threshold`` rewrites bundle.json, which
makes an export made before them recognisably stale. The dataset fingerprint, recorded
beside it, only names the data the run was trained on: two runs on the same data share it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mritumor import __version__
from mritumor.export.graph import (
    BYTES_INPUT,
    IMAGES_INPUT,
    PROBABILITIES,
    SERVING_BYTES,
    TUMOUR_SCORE,
)
from mritumor.export.writers import ExportFormat
from mritumor.run.layout import BUNDLE_FILE, MODEL_FILE
from mritumor.run.provenance import utc_now

if TYPE_CHECKING:
    from mritumor.export.parity import Parity
    from mritumor.run.bundle import Bundle

#: The sidecar's name inside a SavedModel folder.
SIDECAR_IN_FOLDER = "mritumor-export.json"
_CHUNK = 1 << 20


def sidecar_path(output: Path, fmt: ExportFormat) -> Path:
    if fmt == "savedmodel":
        return output / SIDECAR_IN_FOLDER
    return output.with_name(f"{output.name}.json")


def file_digests(run_dir: Path) -> dict[str, str]:
    """``{file name: sha256 hex}`` of bundle.json and model.keras."""
    digests = {}
    for name in (BUNDLE_FILE, MODEL_FILE):
        digest = hashlib.sha256()
        with (run_dir / name).open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        digests[name] = digest.hexdigest()
    return digests


def bundle_fingerprint(digests: dict[str, str]) -> str:
    """``sha256:<hex>`` of ``sha256sum bundle.json model.keras``'s output."""
    listing = "".join(f"{digest}  {name}\n" for name, digest in digests.items())
    return f"sha256:{hashlib.sha256(listing.encode()).hexdigest()}"


def sidecar(
    bundle: Bundle,
    run_dir: Path,
    fmt: ExportFormat,
    conversion: dict[str, Any],
    parity: Parity,
) -> dict[str, Any]:
    """The sidecar document; ``conversion`` is what the format's writer returned."""
    digests = file_digests(run_dir)
    document: dict[str, Any] = {
        "format": fmt,
        "mritumor_version": __version__,
        "created": utc_now(),
        "run": str(run_dir),
        "bundle_fingerprint": bundle_fingerprint(digests),
        "bundle_files": {name: f"sha256:{digest}" for name, digest in digests.items()},
        "dataset_fingerprint": bundle.dataset_fingerprint,
        "backbone": bundle.backbone,
        "classes": list(bundle.class_names),
        "negative_class": bundle.negative_class,
        "threshold": bundle.threshold,
        "threshold_info": bundle.threshold_info,
        "temperature": bundle.temperature,
        "temperature_source": bundle.temperature_source,
        "input": {
            "name": IMAGES_INPUT,
            "dtype": "uint8",
            "shape": [None, *bundle.preprocessing.input_shape],
            "image_size": bundle.image_size,
            "channels": bundle.channels,
            "resize": bundle.resize,
            "scaling": "none: raw 0-255 pixels (the model rescales inside)",
        },
        "outputs": {
            PROBABILITIES: {
                "dtype": "float32",
                "shape": [None, len(bundle.class_names)],
                "meaning": "softmax(logits / temperature), in the order of classes",
            },
            TUMOUR_SCORE: {
                "dtype": "float32",
                "shape": [None],
                "meaning": f"1 - probabilities[{bundle.negative_class!r}]",
            },
        },
        **conversion,
        "parity": parity.as_dict(),
    }
    if fmt == "savedmodel":
        document["bytes_input"] = {
            "signature": SERVING_BYTES,
            "name": BYTES_INPUT,
            "dtype": "string",
            "shape": [None],
            "meaning": "encoded image files, decoded and resized as mritumor reads them",
        }
    return document
