"""bundle.json as a pydantic model (mritumor.run.bundle): reading, writing, updating, schema."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import make_bundle
from mritumor import __version__
from mritumor.config.loading import load_settings
from mritumor.config.schema import Settings
from mritumor.core.errors import EXIT_USAGE, UsageError
from mritumor.core.preprocessing import Preprocessing
from mritumor.run import bundle as bundle_module
from mritumor.run.bundle import (
    SCHEMA_VERSION,
    Bundle,
    Expected,
    check_class_names,
    new_bundle,
    read_bundle,
    update_bundle,
    write_bundle,
    write_config,
)
from mritumor.run.layout import BUNDLE_FILE, BundleError
from mritumor.run.provenance import environment_versions

CLASSES = ("glioma", "meningioma", "no_tumor", "pituitary")
DOCS = Path(__file__).resolve().parents[1] / "docs"

#: bundle.json exactly as mritumor 0.1 (the dataclass bundle) wrote it.
WRITTEN_BY_0_1 = """{
  "schema_version": 1,
  "command": "train",
  "created": "2025-01-02T03:04:05+00:00",
  "class_names": [
    "glioma",
    "meningioma",
    "no_tumor",
    "pituitary"
  ],
  "negative_class": "no_tumor",
  "image_size": 224,
  "channels": 3,
  "resize": "pad",
  "backbone": "v2b0",
  "temperature": 1.5,
  "temperature_source": {
    "split": "cal",
    "n": 3
  },
  "threshold": 0.25,
  "threshold_info": null,
  "dataset_fingerprint": "",
  "versions": {
    "mritumor": "0.1.0"
  },
  "git_commit": null,
  "parent": null,
  "monitor": "val_loss",
  "best_epoch": 2,
  "epochs_completed": 3,
  "extra": {
    "recipe": null
  }
}
"""


def write_raw_bundle(run_dir: Path, data: object) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / BUNDLE_FILE
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def valid_dict(**changes: object) -> dict[str, object]:
    data = make_bundle().model_dump()
    data.update(changes)
    return data


def temporary_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


# --------------------------------------------------------------------------- the model


def test_bundle_round_trip(tmp_path: Path) -> None:
    bundle = make_bundle(
        temperature=1.7,
        temperature_source={"split": "cal", "n": 123, "nll_before": 0.6, "nll_after": 0.5},
        threshold=0.42,
        threshold_info={"strategy": "min_fpr_at_recall", "target_recall": 0.95, "split": "val"},
        dataset_fingerprint="sha256:abc",
        parent="runs/train-1",
        best_epoch=7,
        epochs_completed=9,
        extra={"unfreeze_epoch": 5},
    )
    assert Bundle.from_json(bundle.to_json()) == bundle
    path = write_bundle(tmp_path / "run", bundle)
    assert path == tmp_path / "run" / BUNDLE_FILE
    assert read_bundle(tmp_path / "run") == bundle
    data = json.loads(path.read_text())
    assert list(data)[:3] == ["schema_version", "command", "created"]
    assert data["schema_version"] == SCHEMA_VERSION
    assert set(data) == set(Bundle.model_fields)
    assert temporary_files(tmp_path / "run") == []


def test_a_bundle_written_by_0_1_reads_and_writes_back_byte_for_byte(tmp_path: Path) -> None:
    (tmp_path / BUNDLE_FILE).write_text(WRITTEN_BY_0_1, encoding="utf-8")
    bundle = read_bundle(tmp_path)
    assert (bundle.temperature, bundle.threshold, bundle.best_epoch) == (1.5, 0.25, 2)
    assert bundle.to_json() == WRITTEN_BY_0_1


def test_every_bundle_field_says_what_it_expects() -> None:
    for name, field in Bundle.model_fields.items():
        assert any(isinstance(item, Expected) for item in field.metadata), name


def test_a_new_bundle_records_time_versions_and_commit() -> None:
    bundle = Bundle(
        command="train",
        class_names=["a", "b"],
        negative_class="b",
        image_size=32,
        channels=1,
        resize="plain",
        backbone="small_cnn",
    )
    assert bundle.versions == environment_versions()
    assert bundle.created.endswith("+00:00")
    assert bundle.negative_index == 1
    assert bundle.preprocessing == Preprocessing(image_size=32, channels=1, resize="plain")
    assert bundle.preprocessing.input_shape == (32, 32, 1)
    # Reading never invents provenance: a file without it stays without it.
    data = bundle.model_dump()
    del data["versions"], data["git_commit"]
    loaded = Bundle.from_dict(data)
    assert loaded.versions == {}
    assert loaded.git_commit is None


def test_new_bundle_from_settings() -> None:
    settings = Settings.model_validate(
        {
            "data": {"image_size": 64, "channels": 1, "resize": "plain"},
            "model": {"backbone": "EfficientNetV2-B0"},
        }
    )
    bundle = new_bundle(settings, "train", dataset_fingerprint="sha256:1")
    assert bundle.backbone == "v2b0"
    assert (bundle.image_size, bundle.channels, bundle.resize) == (64, 1, "plain")
    assert bundle.class_names == list(CLASSES)
    assert bundle.monitor == "val_loss"
    assert bundle.dataset_fingerprint == "sha256:1"
    with pytest.raises(BundleError, match="unknown bundle field 'tempreature'"):
        new_bundle(settings, "train", tempreature=2.0)


def test_preprocessing_is_one_value_from_settings_to_bundle_to_input_pipeline(
    tmp_path: Path,
) -> None:
    from mritumor.data.input_pipeline import PipelineOptions

    settings = Settings.model_validate(
        {"data": {"image_size": 48, "channels": 1, "resize": "plain"}}
    )
    expected = Preprocessing(image_size=48, channels=1, resize="plain")
    assert settings.data.preprocessing == expected
    write_bundle(tmp_path, new_bundle(settings, "train"))
    assert read_bundle(tmp_path).preprocessing == expected
    for training in (True, False):
        assert PipelineOptions.from_settings(settings, training=training).preprocessing == expected


def test_unknown_keys_survive_an_update(tmp_path: Path) -> None:
    write_raw_bundle(tmp_path, valid_dict(added_later={"x": 1}))
    updated = update_bundle(tmp_path, temperature=2.0)
    data = json.loads((tmp_path / BUNDLE_FILE).read_text())
    assert data["added_later"] == {"x": 1}
    assert list(data)[-1] == "added_later"
    assert data["temperature"] == 2.0
    assert updated.temperature == 2.0


def test_non_finite_numbers_are_written_as_null() -> None:
    bundle = make_bundle(temperature_source={"nll_before": float("nan"), "n": 3})
    assert json.loads(bundle.to_json())["temperature_source"] == {"nll_before": None, "n": 3}


def test_integer_temperature_reads_as_float(tmp_path: Path) -> None:
    write_raw_bundle(tmp_path, valid_dict(temperature=2))
    temperature = read_bundle(tmp_path).temperature
    assert isinstance(temperature, float)
    assert temperature == 2.0


# --------------------------------------------------------------------------- bad files


def bad_bundle(case: str) -> object:
    """The content of a damaged bundle.json: text (written as is) or a JSON value."""
    cases: dict[str, object] = {
        "not-json": "{not json",
        "array": [1, 2],
        "schema-too-new": valid_dict(schema_version=SCHEMA_VERSION + 1),
        "schema-too-old": valid_dict(schema_version=0),
        "schema-not-int": valid_dict(schema_version="1"),
        "no-schema": {k: v for k, v in valid_dict().items() if k != "schema_version"},
        "missing-keys": {
            k: v for k, v in valid_dict().items() if k not in ("class_names", "image_size")
        },
        "bad-channels": valid_dict(channels=4),
        "bad-resize": valid_dict(resize="crop"),
        "bad-temperature": valid_dict(temperature=0),
        "bad-threshold": valid_dict(threshold=1.5),
        "bad-negative": valid_dict(negative_class="healthy"),
        "bad-classes": valid_dict(class_names=["a", "a"], negative_class="a"),
        "bad-created": valid_dict(created="yesterday"),
        "bad-command": valid_dict(command="  "),
        "bool-epochs": valid_dict(epochs_completed=True),
        "two-bad-keys": valid_dict(channels=2, threshold="high"),
    }
    return cases[case]


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("not-json", "bundle.json is not valid JSON (line 1, column 2: "),
        ("array", "bundle.json: expected a JSON object, found an array"),
        ("schema-too-new", "was made by a newer mritumor (bundle schema 2; this mritumor"),
        ("schema-too-old", "has bundle schema 0, which this mritumor"),
        ("schema-not-int", "'schema_version' must be an integer, got '1'"),
        ("no-schema", "lacks required key(s) schema_version"),
        ("missing-keys", "lacks required key(s) class_names, image_size; the file is damaged"),
        ("bad-channels", "'channels' must be 1 or 3, got 4"),
        ("bad-resize", "'resize' must be one of plain, pad, got 'crop'"),
        ("bad-temperature", "'temperature' must be a positive number, got 0"),
        ("bad-threshold", "'threshold' must be a number in [0, 1] or null, got 1.5"),
        ("bad-negative", "'negative_class' 'healthy' is not one of class_names"),
        ("bad-classes", "'class_names' must be a list of at least 2 distinct, non-empty class"),
        ("bad-created", "'created' must be an ISO 8601 time, got 'yesterday'"),
        ("bad-command", "'command' must be a non-empty string, got '  '"),
        ("bool-epochs", "'epochs_completed' must be a non-negative integer, got True"),
        ("two-bad-keys", "'channels' must be 1 or 3, got 2 (and 1 more)"),
    ],
)
def test_read_bundle_errors(tmp_path: Path, case: str, fragment: str) -> None:
    content = bad_bundle(case)
    if isinstance(content, str):
        (tmp_path / BUNDLE_FILE).write_text(content)
    else:
        write_raw_bundle(tmp_path, content)
    with pytest.raises(BundleError) as caught:
        read_bundle(tmp_path)
    message = str(caught.value)
    assert fragment in message
    assert str(tmp_path / BUNDLE_FILE) in message
    assert "\n" not in message


def test_newer_schema_says_upgrade(tmp_path: Path) -> None:
    write_raw_bundle(tmp_path, valid_dict(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(BundleError, match=r"made by a newer mritumor .*upgrade: pip install -U"):
        read_bundle(tmp_path)


def test_an_older_schema_is_migrated_on_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if this mritumor wrote schema 2, in which ``resize`` was renamed ``resize_mode``."""

    def rename_resize(data: dict[str, Any]) -> dict[str, Any]:
        data["resize_mode"] = data.pop("resize")
        return data

    def to_resize(data: dict[str, Any]) -> dict[str, Any]:
        data["resize"] = data.pop("resize_mode")
        return data

    monkeypatch.setattr(bundle_module, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(bundle_module, "_MIGRATIONS", {1: rename_resize, 2: to_resize})
    write_raw_bundle(tmp_path, valid_dict(resize="plain"))
    bundle = read_bundle(tmp_path)
    assert (bundle.schema_version, bundle.resize) == (3, "plain")
    assert "resize_mode" not in bundle.model_dump()
    # The file itself is not rewritten by reading.
    assert json.loads((tmp_path / BUNDLE_FILE).read_text())["schema_version"] == 1


def test_a_schema_too_old_to_migrate_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundle_module, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(bundle_module, "MIN_SCHEMA_VERSION", 2)
    write_raw_bundle(tmp_path, valid_dict())
    with pytest.raises(BundleError, match=r"bundle schema 1, .* no longer supports \(oldest 2\)"):
        read_bundle(tmp_path)


def test_read_bundle_of_a_missing_or_foreign_folder(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist; train a model first: mritumor train"):
        read_bundle(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="is not a directory"):
        read_bundle(tmp_path / "file")
    with pytest.raises(
        BundleError, match=r"is not a mritumor run directory: it has no bundle.json;"
    ):
        read_bundle(tmp_path)
    (tmp_path / "last.keras").write_bytes(b"")
    with pytest.raises(BundleError, match="was the run interrupted"):
        read_bundle(tmp_path)


def test_bundle_errors_are_usage_errors() -> None:
    assert issubclass(BundleError, UsageError)
    assert BundleError("x").exit_code == EXIT_USAGE


def test_an_invalid_bundle_cannot_be_made(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"^bundle: 'image_size' must be a positive integer"):
        write_bundle(tmp_path, make_bundle(image_size=0))
    assert not (tmp_path / BUNDLE_FILE).exists()


def test_an_invalid_assignment_is_refused_in_one_line() -> None:
    bundle = make_bundle()
    with pytest.raises(BundleError) as caught:
        bundle.temperature = float("inf")
    assert str(caught.value) == "bundle: 'temperature' must be a positive number, got inf"
    assert bundle.temperature == 1.0
    with pytest.raises(BundleError, match=r"^bundle: 'threshold' must be a number in \[0, 1\]"):
        bundle.threshold = -0.1
    bundle.threshold = 0.3
    assert bundle.threshold == 0.3


# --------------------------------------------------------------------------- update_bundle


def test_update_bundle_replaces_fields(tmp_path: Path) -> None:
    write_bundle(tmp_path, make_bundle())
    source = {"split": "cal", "n": 10, "nll_before": 0.9, "nll_after": 0.7}
    updated = update_bundle(tmp_path, temperature=1.5, temperature_source=source)
    assert updated.temperature == 1.5
    assert read_bundle(tmp_path) == updated
    assert read_bundle(tmp_path).temperature_source == source
    assert read_bundle(tmp_path).created == make_bundle().created


def test_update_bundle_rejects_unknown_fields_and_bad_values(tmp_path: Path) -> None:
    write_bundle(tmp_path, make_bundle())
    before = (tmp_path / BUNDLE_FILE).read_bytes()
    with pytest.raises(
        BundleError, match=r"unknown bundle field 'temprature' \(did you mean 'temperature'"
    ):
        update_bundle(tmp_path, temprature=2.0)
    with pytest.raises(BundleError, match="'temperature' must be a positive number"):
        update_bundle(tmp_path, temperature=-1.0)
    with pytest.raises(BundleError, match="'best_epoch' must be a positive integer or null"):
        update_bundle(tmp_path, epochs_completed=3, best_epoch=0)
    with pytest.raises(BundleError, match="schema_version is set by mritumor"):
        update_bundle(tmp_path, schema_version=2)
    with pytest.raises(BundleError, match="unknown bundle field '_unknown'"):
        update_bundle(tmp_path, _unknown={})
    assert (tmp_path / BUNDLE_FILE).read_bytes() == before


def test_update_bundle_failure_while_serialising_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_bundle(tmp_path, make_bundle())
    before = (tmp_path / BUNDLE_FILE).read_bytes()

    def broken_dumps(*args: object, **kwargs: object) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundle_module.json, "dumps", broken_dumps)
    with pytest.raises(RuntimeError, match="disk full"):
        update_bundle(tmp_path, temperature=3.0)
    monkeypatch.undo()
    assert (tmp_path / BUNDLE_FILE).read_bytes() == before
    assert temporary_files(tmp_path) == []


def test_update_bundle_failure_while_renaming_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_bundle(tmp_path, make_bundle())
    before = (tmp_path / BUNDLE_FILE).read_bytes()

    def broken_replace(self: Path, target: object) -> Path:
        raise OSError("rename failed")

    monkeypatch.setattr(Path, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        update_bundle(tmp_path, temperature=3.0)
    monkeypatch.undo()
    assert (tmp_path / BUNDLE_FILE).read_bytes() == before
    assert read_bundle(tmp_path).temperature == 1.0
    assert [p.name for p in tmp_path.iterdir()] == [BUNDLE_FILE]


# --------------------------------------------------------------------------- check_class_names


def test_check_class_names() -> None:
    bundle = make_bundle()
    check_class_names(bundle, CLASSES)
    with pytest.raises(
        BundleError, match=r"in the order \['meningioma', 'glioma'.*set data.class_names to"
    ):
        check_class_names(bundle, ["meningioma", "glioma", "no_tumor", "pituitary"])
    with pytest.raises(
        BundleError, match=r"missing pituitary; unknown to the model: healthy\); use data with"
    ):
        check_class_names(bundle, ["glioma", "meningioma", "no_tumor", "healthy"])
    with pytest.raises(BundleError, match=r"^the external set has classes \['yes', 'no'\]"):
        check_class_names(bundle, ["yes", "no"], what="the external set")


# --------------------------------------------------------------------------- config.yaml


def test_config_yaml_holds_the_resolved_settings(tmp_path: Path) -> None:
    user_config = tmp_path / "mine.yaml"
    user_config.write_text("train:\n  epochs: 3\n  lr: 0.01\n")
    settings = load_settings(user_config, {"data.image_size": 64}).settings
    path = write_config(tmp_path / "run", settings)
    assert path == tmp_path / "run" / "config.yaml"
    text = path.read_text()
    assert text.startswith(
        f"# The resolved settings of this run, written by mritumor {__version__}"
    )
    assert "  epochs: 3\n" in text
    assert "  image_size: 64\n" in text
    assert load_settings(path).settings == settings
    assert user_config.read_text() == "train:\n  epochs: 3\n  lr: 0.01\n"


# --------------------------------------------------------------------------- the published schema


def published_schema() -> dict[str, Any]:
    """The JSON Schema that the docs hook puts into docs/bundle.md."""
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = hooks.on_page_markdown((DOCS / "bundle.md").read_text(encoding="utf-8"))
    block = re.search(r"```json\n(.*?)\n```", page, re.DOTALL)
    assert block is not None, "docs/bundle.md has no <!-- mritumor:bundle-schema --> marker"
    schema: dict[str, Any] = json.loads(block.group(1))
    return schema


def test_the_docs_publish_the_bundle_schema() -> None:
    schema = published_schema()
    assert schema == Bundle.model_json_schema()
    assert schema["required"] == [
        "schema_version",
        "command",
        "created",
        "class_names",
        "negative_class",
        "image_size",
        "channels",
        "resize",
        "backbone",
    ]
    assert list(schema["properties"]) == list(json.loads(make_bundle().to_json()))
    assert schema["additionalProperties"] is True


def test_bundle_and_plots_import_no_heavy_library(tmp_path: Path) -> None:
    code = (
        "import sys, mritumor.run.bundle, mritumor.run.layout, mritumor.plots; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
