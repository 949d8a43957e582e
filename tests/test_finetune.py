"""``mritumor finetune``: the hybrid loss, the external split, partial unfreezing, a tiny run."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import BuiltRuns, SyntheticData, save, smooth_image
from mritumor.cli.main import app
from mritumor.config.loading import load_settings
from mritumor.core.environment import import_tensorflow
from mritumor.core.errors import UsageError
from mritumor.data.splits import BINARY_CLASSES, EXTERNAL_SPLITS
from mritumor.run.bundle import read_bundle, update_bundle, write_bundle
from mritumor.run.history import read_history
from mritumor.run.layout import LAST_FILE, MODEL_FILE
from mritumor.run.splits import list_splits, read_split
from mritumor.stats.calibration import softmax, tumour_score

tf = import_tensorflow()

# TensorFlow must be imported quietly first
from mritumor.engine.finetune_data import split_external, training_duplicates  # noqa: E402
from mritumor.engine.finetune_loss import HybridLoss, hybrid_targets  # noqa: E402
from mritumor.evaluation.reports import FINETUNE_REPORT_FILE as REPORT_FILE  # noqa: E402

NEGATIVE = 2  # no_tumor
WIDE = {"COLUMNS": "200"}


def numpy_hybrid(logits: np.ndarray, targets: np.ndarray, pos_weight: float) -> np.ndarray:
    """The loss written out: CE for replayed rows, weighted BCE on 1 - p_neg for external rows."""
    p = softmax(logits)
    classes = logits.shape[1]
    losses = []
    for row, target in zip(p, targets, strict=True):
        one_hot, external, tumour = target[:classes], target[classes], target[classes + 1]
        if external:
            p_t = 1.0 - row[NEGATIVE]
            losses.append(-(pos_weight * tumour * np.log(p_t) + (1 - tumour) * np.log(1 - p_t)))
        else:
            losses.append(-np.sum(one_hot * np.log(row)))
    return np.array(losses)


def test_hybrid_loss_is_crossentropy_for_replay_and_weighted_bce_for_external() -> None:
    logits = np.array(
        [[2.0, 0.5, -1.0, 0.3], [0.1, 0.2, 1.5, -0.4], [-0.5, 1.0, 0.2, 2.0], [0.0, 0.0, 3.0, 0.0]]
    )
    targets = np.concatenate(
        [
            hybrid_targets(tf.constant([1, 0]), 4, external=True).numpy(),  # tumour, no tumour
            hybrid_targets(tf.constant([3, 2]), 4, external=False).numpy(),  # pituitary, no_tumor
        ]
    )
    np.testing.assert_array_equal(targets[0], [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(targets[3], [0, 0, 1, 0, 0, 0])
    loss = HybridLoss(NEGATIVE, pos_weight=2.0)
    per_sample = loss.call(tf.constant(targets), tf.constant(logits)).numpy()
    np.testing.assert_allclose(per_sample, numpy_hybrid(logits, targets, 2.0), rtol=1e-5)
    assert float(loss(targets, logits)) == pytest.approx(per_sample.mean(), rel=1e-5)


def test_the_binary_gradient_moves_mass_from_no_tumour_to_the_tumour_classes_in_proportion() -> (
    None
):
    """For a tumour image: dL/dz_neg = w p_neg, dL/dz_j = -w p_neg p_j / (1 - p_neg)."""
    logits = tf.Variable([[1.0, 0.2, 0.8, -0.5]])
    target = hybrid_targets(tf.constant([1]), 4, external=True)
    with tf.GradientTape() as tape:
        value = HybridLoss(NEGATIVE, pos_weight=3.0).call(target, logits)[0]
    gradient = tape.gradient(value, logits).numpy()[0]
    p = softmax(logits.numpy())[0]
    expected = -3.0 * p[NEGATIVE] * p / (1.0 - p[NEGATIVE])
    expected[NEGATIVE] = 3.0 * p[NEGATIVE]
    np.testing.assert_allclose(gradient, expected, rtol=1e-5)


def test_the_loss_stays_finite_for_confident_logits() -> None:
    logits = tf.constant([[200.0, -200.0, -200.0, -200.0], [-200.0, -200.0, 200.0, -200.0]])
    targets = hybrid_targets(tf.constant([0, 1]), 4, external=True)
    values = HybridLoss(NEGATIVE).call(targets, logits).numpy()
    assert np.all(np.isfinite(values))
    assert values[0] == pytest.approx(400.0, rel=1e-4)  # a no-tumour image called glioma
    # A tumour image called no_tumor: -log(3 e^-200 / e^200), three tumour classes at -200.
    assert values[1] == pytest.approx(400.0 - np.log(3.0), rel=1e-5)


def test_the_loss_survives_get_config() -> None:
    loss = HybridLoss(1, pos_weight=4.0)
    again = HybridLoss.from_config(loss.get_config())
    assert (again.negative_index, again.pos_weight) == (1, 4.0)


# --------------------------------------------------------------------------- external split


@pytest.fixture
def external(tmp_path: Path) -> Path:
    root = tmp_path / "site b"
    for label, offset in (("yes", 0), ("No", 100)):
        for index in range(20):
            save(root / label / f"{index}.png", smooth_image(offset + index, 32))
    shutil.copy(root / "yes/0.png", root / "yes/copy of 0.png")
    return root


def settings_for(**finetune: object) -> object:
    return load_settings(None, {"finetune": finetune, "seed": 3}).settings


def test_the_external_split_is_stratified_disjoint_and_keeps_copies_together(
    external: Path,
) -> None:
    carved = split_external(external, settings_for(val_size=0.2, holdout_size=0.3))  # type: ignore[arg-type]
    assert carved.training_duplicates == ()
    splits = carved.splits
    assert list(splits) == list(EXTERNAL_SPLITS)
    sets = [set(split.paths) for split in splits.values()]
    assert sum(len(s) for s in sets) == 41 and len(set.union(*sets)) == 41
    assert all(split.class_names == BINARY_CLASSES for split in splits.values())
    assert splits["ext_holdout"].counts() == {"no": 6, "yes": 6}
    assert splits["ext_val"].counts()["no"] == 4
    copies = {external / "yes/0.png", external / "yes/copy of 0.png"}
    assert any(copies <= s for s in sets)
    again = split_external(external, settings_for(val_size=0.2, holdout_size=0.3))  # type: ignore[arg-type]
    assert again == carved


def test_external_copies_of_training_images_are_left_out_and_named(
    external: Path, tmp_path: Path
) -> None:
    training = tmp_path / "train"
    # Two exact copies (one of which has a copy of its own in yes/) and one re-encoded JPEG.
    training.mkdir()
    shutil.copy(external / "yes/0.png", training / "a.png")
    shutil.copy(external / "No/5.png", training / "b.png")
    save(training / "c.jpg", smooth_image(107, 32), "JPEG", quality=90)  # No/7.png, re-encoded
    save(training / "unrelated.png", smooth_image(999, 32))
    seen = sorted(training.iterdir())
    carved = split_external(external, settings_for(val_size=0.2, holdout_size=0.3), seen)  # type: ignore[arg-type]
    dropped = {path.relative_to(external).as_posix() for path in carved.training_duplicates}
    assert dropped == {"yes/0.png", "yes/copy of 0.png", "No/5.png", "No/7.png"}
    kept = set().union(*(set(split.paths) for split in carved.splits.values()))
    assert len(kept) == 41 - 4
    assert not kept & set(carved.training_duplicates)


def test_an_external_set_that_only_copies_training_images_says_so(tmp_path: Path) -> None:
    for index in range(3):
        save(tmp_path / "ext" / "yes" / f"{index}.png", smooth_image(index, 32))
        save(tmp_path / "ext" / "no" / f"{index}.png", smooth_image(50 + index, 32))
    training = [
        shutil.copy(path, tmp_path / f"t{i}.png")
        for i, path in enumerate(sorted((tmp_path / "ext/no").iterdir()))
    ]
    with pytest.raises(UsageError, match=r"no images in no/ once 3 copies of training images"):
        split_external(tmp_path / "ext", settings_for(), [Path(p) for p in training])  # type: ignore[arg-type]


def test_an_external_set_without_no_images_is_refused(tmp_path: Path) -> None:
    for index in range(4):
        save(tmp_path / "ext" / "yes" / f"{index}.png", smooth_image(index, 32))
    with pytest.raises(UsageError, match=r"no images in no/"):
        split_external(tmp_path / "ext", settings_for())  # type: ignore[arg-type]


def test_a_set_too_small_to_split_is_refused(tmp_path: Path) -> None:
    for label in ("yes", "no"):
        save(tmp_path / "ext" / label / "0.png", smooth_image(len(label), 32))
    with pytest.raises(UsageError, match="too small to split"):
        split_external(tmp_path / "ext", settings_for())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- a tiny run


@pytest.fixture(scope="module")
def data_root(synthetic_data: SyntheticData) -> Path:
    return synthetic_data(train=4, val=2, test=2, image_size=40, seed=6, external=10)


@pytest.fixture(scope="module")
def finetuned(
    data_root: Path, built_run: BuiltRuns, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, str]:
    runs = tmp_path_factory.mktemp("runs")
    parent = built_run(data_root, dropout=0.2)  # shared: finetune only reads its parent
    # The external set also holds two copies of the parent's training images, which must go.
    external = Path(shutil.copytree(data_root / "external" / "synthetic", runs / "site b"))
    for index, source in enumerate(sorted((data_root / "train" / "no_tumor").iterdir())[:2]):
        shutil.copy(source, external / "no" / f"also in training {index}.png")
    result = CliRunner().invoke(
        app,
        [
            "finetune", "--run", str(parent), "--external", str(external),
            "--epochs", "2", "--unfreeze-blocks", "2", "--lr", "0.001",
            "--set", f"paths.runs_dir={runs}", "--set", "train.batch_size=8",
            "--set", "threshold.strategy=youden", "--set", "threshold.bootstrap_samples=20",
            "--set", "train.precision=float32",
        ],
        env=WIDE,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return parent, runs / "finetune-1", result.stdout


def test_a_finetune_run_is_a_bundle_that_names_its_parent(
    finetuned: tuple[Path, Path, str],
) -> None:
    parent, run_dir, stdout = finetuned
    bundle = read_bundle(run_dir)
    assert bundle.command == "finetune" and bundle.parent == str(parent)
    assert bundle.image_size == 32 and bundle.temperature == 1.0 and bundle.threshold is None
    assert bundle.epochs_completed == 2
    for name in (MODEL_FILE, LAST_FILE, "reports/finetune_comparison.png"):
        assert (run_dir / name).is_file(), name
    assert set(list_splits(run_dir)) == {"train", "val", "test", *EXTERNAL_SPLITS}
    assert "sensitivity (ext_holdout)" in stdout


def test_copies_of_the_parents_training_images_are_left_out_and_reported(
    finetuned: tuple[Path, Path, str],
) -> None:
    _, run_dir, stdout = finetuned
    assert training_duplicates(run_dir) == [
        "no/also in training 0.png",
        "no/also in training 1.png",
    ]
    report = json.loads((run_dir / "reports" / REPORT_FILE).read_text())
    assert report["external_training_duplicates_dropped"] == 2
    assert "Left out 2 external image(s) that copy the parent's training images" in stdout
    for name in EXTERNAL_SPLITS:
        paths = read_split(run_dir, name, BINARY_CLASSES).paths
        assert not any(path.name.startswith("also in training") for path in paths)


def test_the_external_splits_never_overlap(finetuned: tuple[Path, Path, str]) -> None:
    _, run_dir, _ = finetuned
    sets = [set(read_split(run_dir, n, BINARY_CLASSES).paths) for n in EXTERNAL_SPLITS]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(len(s) for s in sets) == 20


def test_thresholds_are_chosen_on_ext_val_never_on_holdout(
    finetuned: tuple[Path, Path, str],
) -> None:
    from mritumor.predict.predictor import Predictor
    from mritumor.stats.threshold import choose_threshold

    parent, run_dir, _ = finetuned
    report = json.loads((run_dir / "reports" / REPORT_FILE).read_text())
    assert report["threshold_chosen_on"] == "ext_val"
    val = read_split(run_dir, "ext_val", BINARY_CLASSES)
    for when, model_dir in (("before", parent), ("after", run_dir)):
        predictor = Predictor(model_dir)
        scores = tumour_score(
            softmax(predictor.logits(val.paths).logits, predictor.temperature), NEGATIVE
        )
        chosen = choose_threshold(np.array(val.labels), scores, "youden")
        assert report[when]["threshold"] == pytest.approx(chosen.threshold)
        holdout = report[when]["ext_holdout"]
        assert holdout["tp"] + holdout["fn"] == report["n"]["ext_holdout"] // 2


def test_the_checkpoint_is_the_epoch_with_the_lowest_ext_val_loss(
    finetuned: tuple[Path, Path, str],
) -> None:
    _, run_dir, _ = finetuned
    rows = read_history(run_dir)
    best = min(range(len(rows)), key=lambda i: float(rows[i]["val_loss"]))  # type: ignore[arg-type]
    assert read_bundle(run_dir).best_epoch == best + 1


def test_calibrate_and_threshold_default_to_ext_val_in_a_finetune_run(
    finetuned: tuple[Path, Path, str], run_copy: Callable[..., Path]
) -> None:
    _, run_dir, _ = finetuned
    copy = run_copy(run_dir, "ft")
    runner = CliRunner()
    assert runner.invoke(app, ["calibrate", "--run", str(copy), "-q"], env=WIDE).exit_code == 0
    source = read_bundle(copy).temperature_source
    assert source is not None and source["split"] == "ext_val"
    assert source["target"] == "the tumour score (binary NLL)"
    spent = runner.invoke(
        app, ["threshold", "--run", str(copy), "--split", "ext_holdout"], env=WIDE
    )
    assert spent.exit_code == 2 and "kept for reported numbers only" in spent.stderr
    holdout = runner.invoke(
        app, ["eval", "--run", str(copy), "--split", "ext_holdout", "-q"], env=WIDE
    )
    assert holdout.exit_code == 0, holdout.output
    summary = json.loads((copy / "reports" / "eval-ext_holdout" / "summary.json").read_text())
    assert (
        summary["binary"]
        and summary["n_images"]
        == json.loads((copy / "reports" / REPORT_FILE).read_text())["n"]["ext_holdout"]
    )


def test_partial_unfreezing_trains_the_last_blocks_and_never_batchnorm(
    data_root: Path, built_run: BuiltRuns
) -> None:
    import keras

    from mritumor.engine.finetune import _set_trainable
    from mritumor.run.model_file import load_model

    model = load_model(built_run(data_root) / MODEL_FILE)
    _set_trainable(model, 1)
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {"last_conv", "logits"}
    _set_trainable(model, 2)
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {"block3_conv", "last_conv", "logits"}
    _set_trainable(model, None)
    assert not any(
        layer.trainable
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    assert "block1_conv" in {w.path.split("/")[0] for w in model.trainable_weights}


def test_eval_on_an_external_folder_reports_the_binary_view(
    finetuned: tuple[Path, Path, str], data_root: Path, run_copy: Callable[..., Path]
) -> None:
    parent, _, _ = finetuned
    copy = run_copy(parent, "parent")
    update_bundle(copy, threshold=0.5)
    external = data_root / "external" / "synthetic"
    result = CliRunner().invoke(
        app, ["eval", "--run", str(copy), "--external", str(external)], env=WIDE
    )
    assert result.exit_code == 0, result.output
    (report_dir,) = (copy / "reports").glob("eval-synthetic-*")
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["n_images"] == 20 and summary["n_tumour"] == 10
    at = summary["at_threshold"]
    assert at["tp"] + at["fn"] == 10 and at["tn"] + at["fp"] == 10
    assert (report_dir / "threshold_roc.png").is_file()
    assert "tumour vs no tumour" in result.stdout


def test_resume_continues_with_the_hybrid_loss_and_optimizer_state(
    finetuned: tuple[Path, Path, str], run_copy: Callable[..., Path]
) -> None:
    _, run_dir, _ = finetuned
    copy = run_copy(run_dir, "ft")
    result = CliRunner().invoke(
        app, ["finetune", "--resume", str(copy), "--epochs", "3", "-q"], env=WIDE
    )
    assert result.exit_code == 0, result.output
    rows = read_history(copy)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert read_bundle(copy).epochs_completed == 3
    refused = CliRunner().invoke(app, ["finetune", "--resume", str(copy), "--lr", "0.1"], env=WIDE)
    assert refused.exit_code == 2 and "--resume continues a run" in refused.stderr


def test_finetune_under_a_strategy_records_it_and_resumes_only_on_as_many_replicas(
    finetuned: tuple[Path, Path, str], tmp_path: Path
) -> None:
    parent, run_dir, _ = finetuned
    external = run_dir.parent / "site b"
    args = [
        "finetune", "--run", str(parent), "--external", str(external), "--epochs", "1",
        "--strategy", "mirrored", "--devices", "CPU:0", "--name", "mirrored",
        "--set", f"paths.runs_dir={tmp_path}", "--set", "train.batch_size=8",
        "--set", "threshold.bootstrap_samples=0", "--set", "train.precision=float32",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output
    assert "1 replica (mirrored: /device:CPU:0)" in result.stdout
    mirrored = tmp_path / "mirrored"
    record = read_bundle(mirrored).extra["distribution"]
    assert record == {
        "strategy": "mirrored",
        "replicas": 1,
        "workers": 1,
        "per_replica_batch": 8,
        "global_batch": 8,
        "lr_scale": 1.0,
    }
    bundle = read_bundle(mirrored)
    bundle.extra = {**bundle.extra, "distribution": {**record, "replicas": 2, "global_batch": 16}}
    write_bundle(mirrored, bundle)
    refused = CliRunner().invoke(
        app, ["finetune", "--resume", str(mirrored), "--epochs", "2", "-q"], env=WIDE
    )
    assert refused.exit_code == 2, refused.output
    assert "trained on 2 replica(s) with a global batch of 16" in refused.stderr
    assert read_bundle(mirrored).epochs_completed == 1
