"""``mritumor export`` (mritumor.cli.export, mritumor.export): the SavedModel, TensorFlow Lite
and ONNX exports against the Predictor, the sidecar, the file decoding of ``serving_bytes``,
and every refusal.

One tiny run is shared by the module: a 32-px small_cnn fitted for a few seconds (so its
predictions differ between images and classes, which makes top-1 agreement mean something),
at temperature 2.5 with a threshold. Each format is exported once, through the command line.
The parity here is computed with the runtimes themselves, not with the command's own check.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from helpers import BuiltRuns
from mritumor.cli.main import app
from mritumor.core.errors import EXIT_FAILURE, EXIT_USAGE
from mritumor.predict.inputs import ImageInput
from mritumor.predict.predictor import Predictor
from mritumor.run.bundle import update_bundle
from mritumor.run.splits import read_split

TEMPERATURE = 2.5
THRESHOLD = 0.42
THRESHOLD_INFO = {"strategy": "youden", "split": "val"}
#: The dynamic-range quantised model: the floor of its top-1 agreement with the Predictor
#: (measured: 31 of these 32 images, 96.9%) and the ceiling of its largest tumour-score
#: difference (measured: 1.8e-3).
QUANTISED_AGREEMENT_FLOOR = 0.9
QUANTISED_SCORE_CEILING = 0.05

Outputs = tuple[np.ndarray, np.ndarray]


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250", **(env or {})})


def one_error_line(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# --------------------------------------------------------------------------- the shared run


@pytest.fixture(scope="module")
def fitted_run(
    cli_data_root: Path, built_run: BuiltRuns, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A copy of the shared 32-px run, fitted 25 epochs on its train split with BatchNorm
    frozen (its moving statistics would need far more steps), at T = 2.5, with a threshold."""
    import keras

    run = Path(shutil.copytree(built_run(cli_data_root), tmp_path_factory.mktemp("export") / "run"))
    predictor = Predictor(run)
    train = read_split(run, "train", predictor.class_names)
    images = model_inputs(predictor, train.paths)
    model = predictor.model
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    keras.utils.set_random_seed(0)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(images, np.asarray(train.labels), epochs=25, batch_size=16, verbose=0)
    model.save(run / "model.keras")
    update_bundle(run, temperature=TEMPERATURE, threshold=THRESHOLD, threshold_info=THRESHOLD_INFO)
    return run


@pytest.fixture(scope="module")
def predictor(fitted_run: Path) -> Predictor:
    return Predictor(fitted_run)


@pytest.fixture(scope="module")
def files(fitted_run: Path, predictor: Predictor) -> list[Path]:
    """The run's test and val files: 32 images, PNG and JPEG, grey and RGB, of varied sizes."""
    return [
        path
        for split in ("test", "val")
        for path in read_split(fitted_run, split, predictor.class_names).paths
    ]


@pytest.fixture(scope="module")
def expected(predictor: Predictor, files: list[Path]) -> Outputs:
    logits = predictor.logits(files).logits
    return predictor.probabilities(logits), predictor.tumour_scores(logits)


@pytest.fixture(scope="module")
def images(predictor: Predictor, files: list[Path]) -> np.ndarray:
    return model_inputs(predictor, files)


def model_inputs(predictor: Predictor, paths: Any) -> np.ndarray:
    """What the Predictor feeds its model, as the uint8 batch a client would send."""
    batches, failures = predictor.batches([ImageInput(path) for path in paths], 64)
    stacked = np.concatenate([np.asarray(batch) for _, batch in batches])
    assert not failures
    return stacked.astype(np.uint8)


@pytest.fixture(scope="module")
def exports(fitted_run: Path) -> dict[str, Any]:
    """Each format exported once through the command line, to its default output."""
    results = {}
    for key, extra in (
        ("savedmodel", []),
        ("onnx", []),
        ("tflite", []),
        ("tflite-quantised", ["--quantize"]),
    ):
        fmt = key.split("-")[0]
        result = invoke("export", "--run", str(fitted_run), "--format", fmt, *extra)
        assert result.exit_code == 0, result.output + result.stderr
        results[key] = result
    return results


def export_dir(fitted_run: Path) -> Path:
    return fitted_run / "export"


def largest_difference(found: Outputs, wanted: Outputs) -> float:
    return float(max(np.abs(found[0] - wanted[0]).max(), np.abs(found[1] - wanted[1]).max()))


def run_savedmodel(folder: Path, signature: str, **inputs: Any) -> Outputs:
    import tensorflow as tf

    outputs = tf.saved_model.load(str(folder)).signatures[signature](**inputs)
    return outputs["probabilities"].numpy(), outputs["tumour_score"].numpy()


def run_tflite(path: Path, images: np.ndarray) -> Outputs:
    import tensorflow as tf

    with warnings.catch_warnings():  # "deprecated": ai_edge_litert's has the same API
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    outputs = interpreter.get_signature_runner("serving_default")(images=images)
    return outputs["probabilities"], outputs["tumour_score"]


# --------------------------------------------------------------------------- parity


def test_savedmodel_matches_the_predictor_on_uint8_images_and_on_file_bytes(
    exports: dict[str, Any],
    fitted_run: Path,
    files: list[Path],
    images: np.ndarray,
    expected: Outputs,
) -> None:
    import tensorflow as tf

    folder = export_dir(fitted_run) / "saved_model"
    by_images = run_savedmodel(folder, "serving_default", images=tf.constant(images))
    assert largest_difference(by_images, expected) <= 1e-4
    assert {path.suffix for path in files} == {".png", ".jpg"}
    data = tf.constant([path.read_bytes() for path in files])
    by_bytes = run_savedmodel(folder, "serving_bytes", image_bytes=data)
    assert largest_difference(by_bytes, expected) <= 1e-4
    assert "serving_bytes on the 16 file(s)" in exports["savedmodel"].stdout


def test_onnx_matches_the_predictor_in_onnxruntime(
    exports: dict[str, Any], fitted_run: Path, images: np.ndarray, expected: Outputs
) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(export_dir(fitted_run) / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (spec,) = session.get_inputs()
    assert (spec.name, spec.type, spec.shape[1:]) == ("images", "tensor(uint8)", [32, 32, 3])
    probabilities, scores = session.run(["probabilities", "tumour_score"], {"images": images})
    assert largest_difference((probabilities, scores), expected) <= 1e-4


def test_tflite_float32_matches_the_predictor(
    exports: dict[str, Any], fitted_run: Path, images: np.ndarray, expected: Outputs
) -> None:
    found = run_tflite(export_dir(fitted_run) / "model.tflite", images)
    assert largest_difference(found, expected) <= 1e-3


def test_quantised_tflite_agrees_on_top1_and_stays_close_in_score(
    exports: dict[str, Any], fitted_run: Path, images: np.ndarray, expected: Outputs
) -> None:
    quantised = export_dir(fitted_run) / "model-dynamic-range.tflite"
    assert quantised.stat().st_size < 0.5 * (export_dir(fitted_run) / "model.tflite").stat().st_size
    probabilities, scores = run_tflite(quantised, images)
    agreement = float(np.mean(probabilities.argmax(1) == expected[0].argmax(1)))
    assert len(images) >= 16
    assert len(set(expected[0].argmax(1))) >= 2  # the predicted classes differ between images
    assert agreement >= QUANTISED_AGREEMENT_FLOOR
    assert float(np.abs(scores - expected[1]).max()) <= QUANTISED_SCORE_CEILING
    assert "top-1 agreement" in exports["tflite-quantised"].stdout


def test_the_temperature_is_inside_the_graph(
    exports: dict[str, Any],
    fitted_run: Path,
    predictor: Predictor,
    files: list[Path],
    images: np.ndarray,
) -> None:
    from mritumor.stats.calibration import softmax

    logits = predictor.logits(files).logits
    found, _ = run_tflite(export_dir(fitted_run) / "model.tflite", images)
    assert np.abs(found - softmax(logits, TEMPERATURE)).max() <= 1e-3
    assert np.abs(found - softmax(logits, 1.0)).max() > 1e-2


def test_the_command_prints_where_it_wrote_and_the_parity(
    exports: dict[str, Any], fitted_run: Path
) -> None:
    folder = export_dir(fitted_run)
    for key, written in (
        ("savedmodel", folder / "saved_model"),
        ("onnx", folder / "model.onnx"),
        ("tflite", folder / "model.tflite"),
        ("tflite-quantised", folder / "model-dynamic-range.tflite"),
    ):
        out = exports[key].stdout
        assert f"Wrote {written}\n" in out
        assert "Parity: largest" in out and "on 16 test/val split image(s)" in out
    assert sorted(path.name for path in folder.iterdir()) == [
        "model-dynamic-range.tflite",
        "model-dynamic-range.tflite.json",
        "model.onnx",
        "model.onnx.json",
        "model.tflite",
        "model.tflite.json",
        "saved_model",
    ]


# --------------------------------------------------------------------------- the sidecar


def test_the_sidecar_carries_the_bundle(exports: dict[str, Any], fitted_run: Path) -> None:
    bundle = json.loads((fitted_run / "bundle.json").read_text(encoding="utf-8"))
    listing = "".join(
        f"{hashlib.sha256((fitted_run / name).read_bytes()).hexdigest()}  {name}\n"
        for name in ("bundle.json", "model.keras")
    )
    fingerprint = f"sha256:{hashlib.sha256(listing.encode()).hexdigest()}"
    folder = export_dir(fitted_run)
    for fmt, sidecar in (
        ("savedmodel", folder / "saved_model" / "mritumor-export.json"),
        ("onnx", folder / "model.onnx.json"),
        ("tflite", folder / "model.tflite.json"),
        ("tflite", folder / "model-dynamic-range.tflite.json"),
    ):
        document = json.loads(sidecar.read_text(encoding="utf-8"))
        assert document["format"] == fmt
        assert document["classes"] == bundle["class_names"]
        assert document["negative_class"] == bundle["negative_class"] == "no_tumor"
        assert document["threshold"] == THRESHOLD
        assert document["threshold_info"] == THRESHOLD_INFO
        assert document["temperature"] == TEMPERATURE
        assert document["input"] == {
            "name": "images",
            "dtype": "uint8",
            "shape": [None, 32, 32, 3],
            "image_size": 32,
            "channels": 3,
            "resize": bundle["resize"],
            "scaling": "none: raw 0-255 pixels (the model rescales inside)",
        }
        assert document["outputs"]["probabilities"]["shape"] == [None, 4]
        assert document["outputs"]["tumour_score"]["shape"] == [None]
        assert document["bundle_fingerprint"] == fingerprint
        assert document["dataset_fingerprint"] == bundle["dataset_fingerprint"]
        assert document["parity"]["passed"] is True
        assert ("bytes_input" in document) == (fmt == "savedmodel")
    onnx = json.loads((folder / "model.onnx.json").read_text(encoding="utf-8"))
    assert onnx["converter"].startswith("tf2onnx ") and onnx["opset"] == 17
    quantised = json.loads((folder / "model-dynamic-range.tflite.json").read_text("utf-8"))
    assert quantised["quantization"] == "dynamic_range"


# --------------------------------------------------------------------------- serving_bytes


def encoded(pixels: np.ndarray, fmt: str = "PNG", **options: Any) -> bytes:
    """``pixels`` as a file; the mode follows the array (uint16: I;16, two channels: LA)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def sample_files() -> dict[str, bytes]:
    """One file of every kind serving_bytes decodes as mritumor does, none of them square."""
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    rgb = np.asarray(Image.fromarray(coarse).resize((57, 41), Image.Resampling.BICUBIC))
    alpha = rng.integers(0, 256, (41, 57, 1), dtype=np.uint8)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    return {
        "rgb.png": encoded(rgb),
        "grey.png": encoded(grey),
        "rgba.png": encoded(np.concatenate([rgb, alpha], axis=-1)),
        "grey-alpha.png": encoded(np.stack([grey, alpha[..., 0]], axis=-1)),
        "palette.png": buffer.getvalue(),
        "grey-16-bit.png": encoded(grey.astype(np.uint16) * 40 + 1000),
        "rgb.jpg": encoded(rgb, "JPEG", quality=80),
        "grey.jpg": encoded(grey, "JPEG", quality=90),
    }


@pytest.mark.parametrize(("channels", "resize"), [(3, "pad"), (1, "plain")])
def test_serving_bytes_decodes_pixel_for_pixel_as_mritumor_reads_files(
    tmp_path: Path, channels: int, resize: str
) -> None:
    import tensorflow as tf

    from mritumor.core.preprocessing import Preprocessing
    from mritumor.data.images import read_image
    from mritumor.data.input_pipeline import resize_image
    from mritumor.export.decoding import decode_for_model

    preprocessing = Preprocessing(image_size=24, channels=channels, resize=resize)
    for name, data in sample_files().items():
        path = tmp_path / name
        path.write_bytes(data)
        wanted = resize_image(tf.constant(read_image(path, channels)), 24, resize).numpy()
        found = decode_for_model(tf.constant(data), preprocessing).numpy()
        assert found.shape == (24, 24, channels)
        np.testing.assert_array_equal(found, wanted, err_msg=name)


def test_a_grey_plain_run_without_splits_is_checked_on_generated_images(
    tmp_path: Path,
) -> None:
    """channels 1, resize plain, no split files: parity runs on generated PNGs, through both
    signatures of the SavedModel."""
    import keras

    from mritumor.config.loading import load_settings
    from mritumor.export.exporter import export_run
    from mritumor.models.classifier import build_classifier
    from mritumor.run.bundle import new_bundle, write_bundle

    settings = load_settings(
        None,
        {
            "model": {"backbone": "small_cnn", "weights": "none"},
            "data": {"image_size": 32, "channels": 1, "resize": "plain"},
        },
    ).settings
    run = tmp_path / "grey-run"
    run.mkdir()
    keras.utils.set_random_seed(4)
    build_classifier(settings).save(run / "model.keras")
    write_bundle(run, new_bundle(settings, "train", temperature=0.8))
    result = export_run(run, "savedmodel")
    assert result.parity.passed and result.parity.source == "generated"
    assert result.parity.files is not None and result.parity.files.files == 16
    document = json.loads(result.sidecar.read_text(encoding="utf-8"))
    assert document["input"]["shape"] == [None, 32, 32, 1]
    assert document["input"]["resize"] == "plain"


def test_onnx_has_one_input_when_the_model_holds_constant_tensors(tmp_path: Path) -> None:
    """A Normalization layer with a given mean and variance, as the EfficientNet backbones have:
    tf2onnx's from_function (and Keras's ONNX export) made those two tensors graph inputs."""
    import keras
    import onnxruntime

    from helpers import make_bundle
    from mritumor.export.graph import ServingGraph
    from mritumor.export.writers import write_onnx

    inputs = keras.Input((8, 8, 3))
    normalised = keras.layers.Normalization(mean=100.0, variance=900.0)(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(normalised)
    model = keras.Model(inputs, keras.layers.Dense(4)(pooled))
    graph = ServingGraph(model, make_bundle(image_size=8, channels=3, temperature=1.5))
    write_onnx(graph, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    assert [spec.name for spec in session.get_inputs()] == ["images"]
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    probabilities, scores = session.run(["probabilities", "tumour_score"], {"images": images})
    wanted = graph(images)
    assert np.abs(probabilities - wanted["probabilities"].numpy()).max() <= 1e-6
    assert np.abs(scores - wanted["tumour_score"].numpy()).max() <= 1e-6


def test_a_mixed_bfloat16_run_is_exported_in_float32(tmp_path: Path) -> None:
    """``train.precision: auto`` picks mixed_bfloat16 on CPUs with native bfloat16; neither
    onnxruntime nor TensorFlow Lite runs those layers, so the export is a float32 copy."""
    import keras

    from mritumor.config.loading import load_settings
    from mritumor.export.exporter import export_run
    from mritumor.models.classifier import build_classifier
    from mritumor.run.bundle import new_bundle, write_bundle

    settings = load_settings(
        None, {"model": {"backbone": "small_cnn", "weights": "none"}, "data": {"image_size": 32}}
    ).settings
    run = tmp_path / "bf16-run"
    run.mkdir()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    build_classifier(settings).save(run / "model.keras")
    keras.mixed_precision.set_global_policy("float32")
    write_bundle(run, new_bundle(settings, "train"))
    result = export_run(run, "onnx")
    assert result.parity.passed and result.run_precision == "mixed_bfloat16"
    document = json.loads(result.sidecar.read_text(encoding="utf-8"))
    assert (document["compute_dtype"], document["run_precision"]) == ("float32", "mixed_bfloat16")


# --------------------------------------------------------------------------- refusals


@pytest.fixture
def small_run(cli_data_root: Path, built_run: BuiltRuns, run_copy: Callable[..., Path]) -> Path:
    """A writable copy of the shared untrained run (the refusals never convert it)."""
    return run_copy(built_run(cli_data_root))


def test_an_unknown_format_is_one_line(small_run: Path) -> None:
    result = invoke("export", "--run", str(small_run), "--format", "coreml")
    assert result.exit_code == EXIT_USAGE
    assert "--format must be one of savedmodel, tflite, onnx, got 'coreml'" in one_error_line(
        result
    )


def test_quantize_is_for_tflite_only(small_run: Path) -> None:
    result = invoke("export", "--run", str(small_run), "--format", "onnx", "--quantize")
    assert result.exit_code == EXIT_USAGE
    assert "--quantize applies to --format tflite only" in one_error_line(result)


def test_a_run_without_model_keras_is_one_line(small_run: Path) -> None:
    """Without --run the newest run under paths.runs_dir is exported: this one."""
    (small_run / "model.keras").unlink()
    result = invoke(
        "export", "--format", "onnx", env={"MRITUMOR_PATHS__RUNS_DIR": str(small_run.parent)}
    )
    assert result.exit_code == EXIT_USAGE
    assert f"{small_run} has no model.keras, so there is nothing to export" in one_error_line(
        result
    )
    assert not (small_run / "export").exists()


def test_a_damaged_bundle_is_one_line(small_run: Path) -> None:
    (small_run / "bundle.json").write_text('{"schema_version": 1, "class_na', encoding="utf-8")
    result = invoke("export", "--run", str(small_run), "--format", "tflite")
    assert result.exit_code == EXIT_USAGE
    assert "bundle.json is not valid JSON" in one_error_line(result)


def test_an_output_in_a_missing_folder_is_one_line(small_run: Path, tmp_path: Path) -> None:
    output = tmp_path / "no such folder" / "model.onnx"
    result = invoke("export", "--run", str(small_run), "--format", "onnx", "--output", str(output))
    assert result.exit_code == EXIT_USAGE
    assert f"the folder {output.parent} does not exist" in one_error_line(result)


def test_a_folder_that_is_no_savedmodel_is_never_replaced(small_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "documents"
    (folder / "letter.txt").parent.mkdir()
    (folder / "letter.txt").write_text("keep me", encoding="utf-8")
    result = invoke("export", "--run", str(small_run), "--output", str(folder), "--force")
    assert result.exit_code == EXIT_USAGE
    assert "holds no SavedModel" in one_error_line(result)
    assert (folder / "letter.txt").read_text(encoding="utf-8") == "keep me"


def test_the_missing_export_extra_names_the_pip_command(
    small_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from mritumor.export import writers

    real = importlib.util.find_spec
    monkeypatch.setattr(
        writers.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "tf2onnx" else real(name, *args),
    )
    result = invoke("export", "--run", str(small_run), "--format", "onnx")
    assert result.exit_code == EXIT_USAGE
    line = one_error_line(result)
    assert "needs tf2onnx, not installed: pip install 'mritumor[export]'" in line


def test_an_existing_output_needs_force(small_run: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "model.onnx"
    output.parent.mkdir()
    first = invoke("export", "--run", str(small_run), "--format", "onnx", "-o", str(output), "-q")
    assert first.exit_code == 0, first.stderr
    assert first.stderr == ""  # --quiet: no step lines
    before = json.loads((output.parent / "model.onnx.json").read_text(encoding="utf-8"))["created"]
    again = invoke("export", "--run", str(small_run), "--format", "onnx", "-o", str(output))
    assert again.exit_code == EXIT_USAGE
    assert f"{output} exists; pass --force to replace it" in one_error_line(again)
    forced = invoke(
        "export", "--run", str(small_run), "--format", "onnx", "-o", str(output), "--force"
    )
    assert forced.exit_code == 0, forced.stderr
    assert sorted(path.name for path in output.parent.iterdir()) == [
        "model.onnx",
        "model.onnx.json",
    ]
    after = json.loads((output.parent / "model.onnx.json").read_text(encoding="utf-8"))["created"]
    assert after >= before


def test_a_failing_converter_leaves_nothing_behind(
    small_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mritumor.export import writers

    def half_written(graph: Any, path: Path) -> dict[str, Any]:
        path.write_bytes(b"half an ONNX file")
        raise RuntimeError("Unsupported ops: MadeUpOp")

    monkeypatch.setattr(writers, "write_onnx", half_written)
    result = invoke("export", "--run", str(small_run), "--format", "onnx", "--quiet")
    assert result.exit_code == EXIT_FAILURE
    assert one_error_line(result) == (
        "error: the ONNX conversion failed (RuntimeError: Unsupported ops: MadeUpOp); "
        "nothing was written (--debug shows the traceback)"
    )
    assert not (small_run / "export").exists()


def test_a_failed_parity_check_is_an_error_and_leaves_nothing_behind(
    small_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export that forgot the temperature differs from the Predictor: refused."""
    from mritumor.export.graph import ServingGraph

    original = ServingGraph.__call__
    update_bundle(small_run, temperature=0.05)

    def at_temperature_one(self: ServingGraph, images: Any) -> Any:
        return original(
            ServingGraph(self.model, self.bundle.model_copy(update={"temperature": 1.0})), images
        )

    monkeypatch.setattr(ServingGraph, "__call__", at_temperature_one)
    output = tmp_path / "out" / "model.onnx"
    output.parent.mkdir()
    result = invoke("export", "--run", str(small_run), "--format", "onnx", "-o", str(output), "-q")
    assert result.exit_code == EXIT_FAILURE
    line = one_error_line(result)
    assert line.startswith("error: parity check failed: largest probability difference")
    assert line.endswith("; nothing was written")
    assert list(output.parent.iterdir()) == []
