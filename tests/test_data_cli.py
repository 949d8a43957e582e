"""`mritumor data ...` end to end through the CLI: files written, tables, exit codes, messages."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import kagglehub
import pytest
import requests
from typer.testing import CliRunner

from fixtures_kaggle import build_masoud, build_navoneel, snapshot, write_image
from mritumor.cli.main import app
from mritumor.data.files import iter_image_files

WIDE = {"COLUMNS": "200"}


def invoke(runner: CliRunner, *args: str) -> object:
    return runner.invoke(app, list(args), env=WIDE)


def messages(stderr: str) -> list[str]:
    """The lines of stderr but the progress bar's final state."""
    return [line for line in stderr.splitlines() if not line.startswith("Preparing")]


def test_synth_writes_layout_masks_and_counts(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "synthetic data"
    args = ["data", "synth", "--out", str(out), "--train", "2", "--val", "1", "--test", "1"]
    result = runner.invoke(
        app, [*args, "--image-size", "48", "--external", "1", "--workers", "1"], env=WIDE
    )
    assert result.exit_code == 0, result.output
    for split, count in (("train", 2), ("val", 1), ("test", 1)):
        for class_name in ("glioma", "meningioma", "no_tumor", "pituitary"):
            assert len(list(iter_image_files(out / split / class_name))) == count
    assert len(list(iter_image_files(out / "masks" / "train"))) == 8
    assert len(list(iter_image_files(out / "external" / "synthetic"))) == 2
    assert "external/synthetic" in result.stdout
    assert "18 images and masks" in result.stdout


def test_synth_is_deterministic_by_seed_setting(runner: CliRunner, tmp_path: Path) -> None:
    def make(name: str, seed: str) -> dict[str, str]:
        out = tmp_path / name
        args = [
            "--set",
            f"seed={seed}",
            "--out",
            str(out),
            "--train",
            "1",
            "--val",
            "0",
            "--test",
            "0",
        ]
        result = runner.invoke(app, ["data", "synth", *args, "--image-size", "40"])
        assert result.exit_code == 0, result.output
        return {
            path.relative_to(out).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in iter_image_files(out / "train")
        }

    first = make("a", "5")
    assert make("b", "5") == first
    assert make("c", "6") != first


def test_synth_refuses_a_non_empty_folder_and_bad_values(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--train", "1"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1
    assert (out / "notes.txt").read_text() == "keep me"
    result = runner.invoke(
        app, ["data", "synth", "--out", str(tmp_path / "x"), "--image-size", "8"]
    )
    assert result.exit_code == 2
    assert "image_size" in result.stderr


def test_prepare_from_a_folder_with_spaces(runner: CliRunner, tmp_path: Path) -> None:
    source = build_masoud(tmp_path / "my downloads" / "masoud")
    before = snapshot(source)
    out = tmp_path / "prepared data"
    result = invoke(runner, "data", "prepare", str(source), "--out", str(out), "--val-size", "0.25")
    assert result.exit_code == 0, result.output
    assert snapshot(source) == before
    assert (out / "manifests" / "val.csv").is_file()
    assert "Carved from train: val" in result.stdout
    train = len(list(iter_image_files(out / "train")))
    val = len(list(iter_image_files(out / "val")))
    assert train + val == len(list(iter_image_files(source / "Training")))
    assert "│ train │" in result.stdout


def test_prepare_refuses_to_overwrite_and_keeps_the_data(runner: CliRunner, tmp_path: Path) -> None:
    source = build_masoud(tmp_path / "masoud")
    out = tmp_path / "data"
    assert invoke(runner, "data", "prepare", str(source), "--out", str(out)).exit_code == 0
    before = snapshot(out / "train")
    result = invoke(runner, "data", "prepare", str(source), "--out", str(out))
    assert result.exit_code == 2
    assert "--force" in result.stderr
    assert snapshot(out / "train") == before


def test_prepare_missing_source_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(
        runner, "data", "prepare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error:") and "Traceback" not in result.output


def test_fetch_prepares_the_download_into_external(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "cache"))
    download = build_navoneel(tmp_path / "download")
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle: str(download))
    result = invoke(runner, "data", "fetch", "navoneel", "--out", str(tmp_path / "data"))
    assert result.exit_code == 0, result.output
    yes = list(iter_image_files(tmp_path / "data" / "external" / "navoneel" / "yes"))
    assert yes and "navoneel/brain-mri-images-for-brain-tumor-detection" in result.stderr


def test_fetch_offline_without_cache_explains_what_to_do(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "empty cache"))

    def offline(handle: str) -> str:
        raise requests.ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    result = invoke(runner, "data", "fetch", "masoud", "--out", str(tmp_path / "data"))
    assert result.exit_code == 1
    assert "mritumor data prepare" in result.stderr
    assert "Traceback" not in result.output


def test_fetch_rejects_unknown_names_and_version_for_many(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = invoke(runner, "data", "fetch", "masoud", "nosuch", "--out", str(tmp_path))
    assert result.exit_code == 2 and "nosuch" in result.stderr
    result = invoke(runner, "data", "fetch", "masoud", "sartaj", "--version", "2")
    assert result.exit_code == 2 and "one dataset" in result.stderr


@pytest.fixture
def leaky(tmp_path: Path) -> Path:
    root = tmp_path / "leaky data"
    folders = [(split, name) for split in ("train", "test") for name in ("glioma", "no_tumor")]
    for number, (split, class_name) in enumerate(folders):
        for index in range(2):
            write_image(root / split / class_name / f"{index}.png", index=10 * number + index)
    shared = root / "train" / "glioma" / "shared.png"
    write_image(shared, index=77)
    (root / "test" / "glioma" / "copy of shared.png").write_bytes(shared.read_bytes())
    return root


def test_check_reports_leakage_writes_json_and_strict_fails(runner: CliRunner, leaky: Path) -> None:
    result = invoke(runner, "data", "check", str(leaky), "--workers", "1", "--strict")
    assert result.exit_code == 1, result.output
    assert "copy of shared.png" in result.stdout
    report = json.loads((leaky / "check.json").read_text())
    assert len(report["leaks"]) == 1


def test_check_fix_quarantines_the_test_copy(runner: CliRunner, leaky: Path) -> None:
    result = invoke(runner, "data", "check", str(leaky), "--workers", "1", "--fix")
    assert result.exit_code == 0, result.output
    assert not (leaky / "test" / "glioma" / "copy of shared.png").exists()
    assert (leaky / "train" / "glioma" / "shared.png").exists()
    assert (leaky / "quarantine" / "test" / "glioma" / "copy of shared.png").exists()
    again = invoke(runner, "data", "check", str(leaky), "--workers", "1", "--strict")
    assert again.exit_code == 0, again.output


def test_fetch_passes_the_grouping_choice_to_prepare(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "cache"))
    download = build_masoud(tmp_path / "download")
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle: str(download))
    out = tmp_path / "data"
    result = invoke(runner, "data", "fetch", "masoud", "--out", str(out), "--no-group-duplicates")
    assert result.exit_code == 0, result.output
    assert "Duplicates were not grouped" in result.output
    grouped = invoke(runner, "data", "fetch", "masoud", "--out", str(out), "--force")
    assert grouped.exit_code == 0, grouped.output
    assert "hashed" in grouped.output


def test_check_fix_still_fails_strict_on_unreadable_files(runner: CliRunner, leaky: Path) -> None:
    (leaky / "val" / "glioma").mkdir(parents=True)
    (leaky / "val" / "glioma" / "empty.jpg").write_bytes(b"")
    result = invoke(runner, "data", "check", str(leaky), "--workers", "1", "--fix", "--strict")
    assert result.exit_code == 1, result.output
    assert not (leaky / "test" / "glioma" / "copy of shared.png").exists()


def test_check_shows_20_leaks_and_writes_all_of_them_to_a_csv(
    runner: CliRunner, tmp_path: Path
) -> None:
    root = tmp_path / "many leaks"
    for index in range(25):
        kept = write_image(root / "train" / "glioma" / f"Tr-gl_{index:04d} a long name.png", index)
        copy = root / "test" / "glioma" / f"Te-gl_{index:04d} another long name.png"
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(kept.read_bytes())
    result = runner.invoke(
        app, ["data", "check", str(root), "--workers", "1"], env={"COLUMNS": "40"}
    )
    assert result.exit_code == 0, result.output
    assert (
        "Leakage: 25 pair(s) of the same image in two splits (25 exact, 0 near); the first 20"
        in (result.stdout)
    )
    rows = [line.split("\t") for line in result.stdout.splitlines() if line.startswith("exact\t")]
    assert len(rows) == 20
    assert rows[0] == [
        "exact",
        "0",
        "1.000",
        "train/glioma/Tr-gl_0000 a long name.png",
        "test/glioma/Te-gl_0000 another long name.png",
    ]
    assert "…" not in result.stdout  # no path cut short, however narrow the console
    assert f"All 25 leaking pair(s): {root / 'check-leaks.csv'}" in result.stdout
    with (root / "check-leaks.csv").open(newline="", encoding="utf-8") as handle:
        leaks = list(csv.DictReader(handle))
    assert len(leaks) == 25
    assert leaks[24]["leaking_copy"] == "test/glioma/Te-gl_0024 another long name.png"


def test_prepare_refuses_a_class_whose_only_image_is_a_text_file(
    runner: CliRunner, tmp_path: Path
) -> None:
    source = tmp_path.resolve() / "src"
    (source / "glioma").mkdir(parents=True)
    (source / "glioma" / "fake.jpg").write_text("not a scan\n", encoding="utf-8")
    out = tmp_path / "data"
    result = invoke(runner, "data", "prepare", str(source), "--out", str(out))
    assert result.exit_code == 2, result.output
    assert messages(result.stderr) == [
        f"error: no usable images of glioma in {source} (1 file(s) left out, such as "
        "glioma/fake.jpg: not an image file Pillow can identify); add readable images or "
        "remove the class folder"
    ]
    assert not out.exists()


def test_prepare_lists_what_it_left_out_and_warns_about_an_empty_split(
    runner: CliRunner, tmp_path: Path
) -> None:
    source = tmp_path.resolve() / "src"
    for index in range(2):
        write_image(source / "Training" / "glioma" / f"{index}.jpg", index)
    (source / "Training" / "glioma" / "fake.jpg").write_text("not a scan\n", encoding="utf-8")
    out = tmp_path / "data"
    result = invoke(runner, "data", "prepare", str(source), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert messages(result.stderr) == [
        "warning: left out 1 file(s) that are not usable images:",
        f"  {source / 'Training' / 'glioma' / 'fake.jpg'}: not_an_image: not an image file "
        "Pillow can identify",
        "warning: val is empty: a carve at val_size 0.15 needs 4 usable images of a class",
    ]
    assert "fake.jpg" not in (out / "manifests" / "train.csv").read_text(encoding="utf-8")
    assert sorted(path.name for path in (out / "train" / "glioma").iterdir()) == ["0.jpg", "1.jpg"]
