"""Fit orchestration: stages, the run bundle, resume, Ctrl-C, early stopping, bad images.

Every training here is tiny (32 px, small_cnn, 8 train images per class, batches
of 8, hence 4 optimizer steps per epoch) and they run one at a time.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import CLI_DATA
from mritumor.config.loading import load_settings
from mritumor.config.schema import Settings, TrainSettings
from mritumor.core.environment import ENV_PREFIX
from mritumor.core.errors import BackboneError, ConfigError, UsageError
from mritumor.engine import training
from mritumor.engine.callbacks import stop_on_sigint
from mritumor.engine.stages import Stage, plan_stages
from mritumor.engine.training import TrainResult
from mritumor.models.classifier import backbone_layers
from mritumor.run.bundle import Bundle, read_bundle
from mritumor.run.layout import HISTORY_FILE, RunLayout
from mritumor.run.model_file import load_model

TRAIN_PER_CLASS, VAL_PER_CLASS = CLI_DATA["train"], CLI_DATA["val"]  # of cli_data_root
CLASSES, BATCH = 4, 8
STEPS = TRAIN_PER_CLASS * CLASSES // BATCH  # optimizer steps per epoch
LR, FINETUNE_LR = 1e-3, 1e-4  # the defaults of train.lr and train.finetune_lr
BASE: dict[str, Any] = {
    "data.image_size": 32,
    "model.backbone": "small_cnn",
    "model.weights": "none",
    "train.epochs": 2,
    "train.freeze_backbone_epochs": 1,
    "train.batch_size": BATCH,
    "train.early_stopping_patience": 0,
    "train.precision": "float32",
    "data.cache": "memory",
}


# --------------------------------------------------------------------------- fixtures


def clean_settings(config_file: Path | None, values: Mapping[str, Any]) -> Settings:
    """load_settings without any MRITUMOR_* variable (also from session/module fixtures)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith(ENV_PREFIX):
                patch.delenv(name)
        return load_settings(config_file, values).settings


@dataclass(frozen=True)
class Tiny:
    data_dir: Path
    """The shared cli_data_root (8/4/4 images per class, 48 px), read-only."""

    def with_(self, runs_dir: Path, **overrides: Any) -> Settings:
        """Base settings with ``runs_dir``; ``train__epochs=3`` sets ``train.epochs``."""
        dotted = {key.replace("__", "."): value for key, value in overrides.items()}
        values = {**BASE, "paths.data_dir": self.data_dir, "paths.runs_dir": runs_dir, **dotted}
        return clean_settings(None, values)


@pytest.fixture(scope="session")
def tiny(cli_data_root: Path) -> Tiny:
    return Tiny(data_dir=cli_data_root)


@dataclass
class Recorder:
    """A TrainingObserver that records what it hears; ``hook(epoch, step)`` after each batch."""

    hook: Callable[[int, int], None] | None = None
    fail_on_stage: str | None = None
    events: list[tuple[Any, ...]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    models: list[Any] = field(default_factory=list)
    weights: dict[int, list[np.ndarray]] = field(default_factory=dict)
    epoch: int = -1

    def on_stage_begin(self, stage: Stage, total_epochs: int) -> None:
        self.events.append(("stage", stage.name, stage.start, stage.end, total_epochs))
        if stage.name == self.fail_on_stage:
            raise RuntimeError("the power went out")

    def on_epoch_begin(self, epoch: int, steps: int) -> None:
        self.epoch = epoch
        self.events.append(("epoch", epoch, steps))

    def on_batch_end(self, step: int, images_per_second: float, logs: Mapping[str, float]) -> None:
        assert images_per_second > 0 and "loss" in logs
        self.events.append(("batch", self.epoch, step))
        if self.hook is not None:
            self.hook(self.epoch, step)

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        self.events.append(("end", row["epoch"], row["stage"]))
        if self.models:  # the weights the epoch ended with, to compare with the checkpoints
            self.weights[int(row["epoch"])] = [w.copy() for w in self.models[-1].get_weights()]

    def on_warning(self, message: str) -> None:
        self.warnings.append(message)

    def on_note(self, message: str) -> None:
        self.notes.append(message)


def run(
    settings: Settings, run_dir: Path, *, resume: bool = False, observer: Recorder | None = None
) -> tuple[TrainResult, Any]:
    """training.train, also returning the model it trained in memory."""
    models: list[Any] = observer.models if observer is not None else []

    def capture(function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            model = function(*args, **kwargs)
            models.append(model)
            return model

        return wrapper

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "build_classifier", capture(training.build_classifier))
        patch.setattr(training, "load_model", capture(training.load_model))
        result = training.train(settings, run_dir, resume=resume, observer=observer)
    return result, models[-1] if models else None


def history_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / HISTORY_FILE).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def probe_images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3)).astype(np.float32)


def iterations(path: Path) -> int:
    return int(load_model(path, compile=True).optimizer.iterations.numpy())


@dataclass
class Finished:
    settings: Settings
    result: TrainResult
    recorder: Recorder
    model: Any
    predictions: np.ndarray


@pytest.fixture(scope="module")
def finished(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """One short run (1 frozen + 1 full epoch) that several tests read."""
    runs = tmp_path_factory.mktemp("runs")
    settings = tiny.with_(runs)
    recorder = Recorder()
    result, model = run(settings, RunLayout.create(runs, "train").root, observer=recorder)
    predictions = model.predict(probe_images(), verbose=0)
    return Finished(settings, result, recorder, model, predictions)


# --------------------------------------------------------------------------- stage plan


def test_plan_stages_frozen_then_full() -> None:
    train = TrainSettings(epochs=5, freeze_backbone_epochs=2, lr=1e-3, finetune_lr=1e-5)
    assert plan_stages(train) == [Stage("frozen", 0, 2, 1e-3), Stage("full", 2, 5, 1e-5)]
    assert [stage.backbone_trainable for stage in plan_stages(train)] == [False, True]


def test_plan_stages_without_a_frozen_stage_uses_lr() -> None:
    train = TrainSettings(epochs=5, freeze_backbone_epochs=0, lr=1e-3, finetune_lr=1e-5)
    assert plan_stages(train) == [Stage("full", 0, 5, 1e-3)]


def test_plan_stages_linear_probe_when_freezing_covers_all_epochs() -> None:
    train = TrainSettings(epochs=3, freeze_backbone_epochs=5)
    assert plan_stages(train) == [Stage("frozen", 0, 3, train.lr)]
    train = TrainSettings(epochs=3, freeze_backbone_epochs=3)
    assert plan_stages(train) == [Stage("frozen", 0, 3, train.lr)]


# --------------------------------------------------------------------------- a short run


def test_short_run_writes_the_whole_bundle(finished: Finished) -> None:
    result, run_dir = finished.result, finished.result.run_dir
    assert result.epochs_completed == 2 and not result.interrupted
    assert result.decode_failures == {}
    for name in ("model.keras", "last.keras", "bundle.json", "config.yaml"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob(".*partial*")), "temporary checkpoint files left behind"

    bundle = read_bundle(run_dir)
    assert bundle.command == "train" and bundle.backbone == "small_cnn"
    assert bundle.image_size == 32 and bundle.channels == 3
    assert bundle.class_names == ["glioma", "meningioma", "no_tumor", "pituitary"]
    assert bundle.epochs_completed == 2
    assert bundle.extra["unfreeze_epoch"] == 1
    assert bundle.extra["recipe"] is None
    assert bundle.extra["precision"] == {
        "policy": "float32",
        "requested": "float32",
        "reason": bundle.extra["precision"]["reason"],
    }
    assert result.precision == f"float32 (requested: {bundle.extra['precision']['reason']})"
    assert bundle.monitor == "val_loss"
    assert bundle.dataset_fingerprint.startswith("sha256:")

    config = clean_settings(run_dir / "config.yaml", {})
    assert config == finished.settings

    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        with (run_dir / "splits" / f"{split}.csv").open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == per_class * CLASSES
        assert {row["label"] for row in rows} == set(bundle.class_names)
        assert all(Path(row["path"]).is_file() for row in rows)
    assert sorted(p.name for p in (run_dir / "splits").iterdir()) == [
        "test.csv",
        "train.csv",
        "val.csv",
    ]

    for figure in ("acc_curve.png", "loss_curve.png"):
        assert (run_dir / "reports" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_rows_stages_and_learning_rates(finished: Finished) -> None:
    run_dir = finished.result.run_dir
    rows = history_rows(run_dir)
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert [row["stage"] for row in rows] == ["frozen", "full"]
    assert list(rows[0])[:7] == [
        "epoch",
        "stage",
        "lr",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
    ]
    # Each stage's one epoch is warm-up then cosine; lr is read after the epoch's last step,
    # where the schedule has come down to 1% of the stage's peak.
    assert float(rows[0]["lr"]) == pytest.approx(0.01 * LR, rel=1e-5)
    assert float(rows[1]["lr"]) == pytest.approx(0.01 * FINETUNE_LR, rel=1e-5)

    data = json.loads((run_dir / "training_history.json").read_text(encoding="utf-8"))
    assert set(data) == {"epoch", "stage", "lr", "loss", "accuracy", "val_loss", "val_accuracy"}
    assert data["epoch"] == [1, 2] and data["stage"] == ["frozen", "full"]
    assert data["val_loss"] == pytest.approx([float(row["val_loss"]) for row in rows])


def test_observer_hears_stages_epochs_and_every_batch(finished: Finished) -> None:
    batches = [("batch", epoch, step) for epoch in (0, 1) for step in range(STEPS)]
    assert finished.recorder.events == [
        ("stage", "frozen", 0, 1, 2),
        ("epoch", 0, STEPS),
        *batches[:STEPS],
        ("end", 1, "frozen"),
        ("stage", "full", 1, 2, 2),
        ("epoch", 1, STEPS),
        *batches[STEPS:],
        ("end", 2, "full"),
    ]
    assert finished.recorder.warnings == []
    assert finished.recorder.notes == [
        f"precision {finished.result.precision}",
        "training on 1 replica (one device)",
    ]


def test_model_keras_holds_the_best_epoch(finished: Finished) -> None:
    run_dir = finished.result.run_dir
    losses = [float(row["val_loss"]) for row in history_rows(run_dir)]
    best = int(np.argmin(losses)) + 1  # the first on a tie: only strict improvements count
    bundle = read_bundle(run_dir)
    assert bundle.best_epoch == finished.result.best_epoch == best
    assert bundle.extra["best_value"] == pytest.approx(min(losses))
    assert finished.result.best_value == pytest.approx(min(losses))
    saved = load_model(run_dir / "model.keras").get_weights()
    for stored, expected in zip(saved, finished.recorder.weights[best], strict=True):
        np.testing.assert_array_equal(stored, expected)


def test_last_keras_is_the_final_state_with_its_optimizer(finished: Finished) -> None:
    run_dir = finished.result.run_dir
    last = load_model(run_dir / "last.keras", compile=True)
    np.testing.assert_allclose(
        last.predict(probe_images(), verbose=0), finished.predictions, rtol=1e-6, atol=1e-6
    )
    # The full stage's own optimizer: one epoch of steps, the backbone trainable.
    assert int(last.optimizer.iterations.numpy()) == STEPS
    assert all(layer.trainable for layer in backbone_layers(last))
    assert float(last.optimizer.learning_rate) == pytest.approx(0.01 * FINETUNE_LR, rel=1e-5)


# --------------------------------------------------------------------------- resume


@dataclass
class Phase:
    """What one call of train left behind."""

    result: TrainResult | None
    recorder: Recorder | None
    bundle: Bundle
    rows: list[dict[str, str]]
    backbone_trainable: list[bool]
    iterations: int
    lr: float
    conv: np.ndarray


def snapshot(run_dir: Path, result: TrainResult | None, recorder: Recorder | None) -> Phase:
    last = load_model(run_dir / "last.keras", compile=True)
    return Phase(
        result=result,
        recorder=recorder,
        bundle=read_bundle(run_dir),
        rows=history_rows(run_dir),
        backbone_trainable=[layer.trainable for layer in backbone_layers(last)],
        iterations=int(last.optimizer.iterations.numpy()),
        lr=float(last.optimizer.learning_rate),
        conv=last.get_layer("last_conv").get_weights()[0],
    )


@dataclass
class Resumed:
    handler_before: Any
    handler_after: Any
    crashed: Phase
    interrupted: Phase
    finished: Phase


@pytest.fixture(scope="module")
def resumed(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Resumed:
    """Three calls on one 3-epoch run (1 frozen + 2 full epochs), one training at a time.

    1. A crash (not Ctrl-C) right after the full stage began: the bundle already records
       the unfreeze, but last.keras is still the frozen model of epoch 1.
    2. --resume, and a real SIGINT after the first batch of epoch 2.
    3. --resume again, to the end.
    """
    runs = tmp_path_factory.mktemp("resume")
    settings = tiny.with_(runs, train__epochs=3)
    run_dir = RunLayout.create(runs, "train").root
    with pytest.raises(RuntimeError, match="power went out"):
        run(settings, run_dir, observer=Recorder(fail_on_stage="full"))
    crashed = snapshot(run_dir, None, None)

    def press_ctrl_c(epoch: int, step: int) -> None:
        if (epoch, step) == (1, 0):
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            signal.raise_signal(signal.SIGINT)

    handler_before = signal.getsignal(signal.SIGINT)
    recorder = Recorder(hook=press_ctrl_c)
    result, _ = run(settings, run_dir, resume=True, observer=recorder)
    handler_after = signal.getsignal(signal.SIGINT)
    interrupted = snapshot(run_dir, result, recorder)

    result, _ = run(settings, run_dir, resume=True)
    return Resumed(
        handler_before, handler_after, crashed, interrupted, snapshot(run_dir, result, None)
    )


def test_a_crash_as_the_full_stage_begins_leaves_the_frozen_state(resumed: Resumed) -> None:
    crashed = resumed.crashed
    assert crashed.bundle.extra["unfreeze_epoch"] == 1
    assert crashed.bundle.epochs_completed == 1
    assert [row["stage"] for row in crashed.rows] == ["frozen"]
    assert not any(crashed.backbone_trainable)
    assert crashed.iterations == STEPS


def test_resume_after_the_crash_trains_the_full_stage_unfrozen(resumed: Resumed) -> None:
    # The resumed run must compile the full stage (backbone trainable, a fresh optimizer at
    # finetune_lr) although the bundle said the backbone was already unfrozen.
    interrupted = resumed.interrupted
    assert all(interrupted.backbone_trainable)
    assert interrupted.iterations == 2
    # Two steps into a warm-up of one epoch (4 steps) from 1% of finetune_lr to finetune_lr.
    expected = 0.01 * FINETUNE_LR + (FINETUNE_LR - 0.01 * FINETUNE_LR) * 2 / STEPS
    assert interrupted.lr == pytest.approx(expected, rel=1e-5)
    assert not np.array_equal(interrupted.conv, resumed.crashed.conv)


def test_ctrl_c_stops_after_the_batch_and_keeps_complete_epochs(resumed: Resumed) -> None:
    interrupted = resumed.interrupted
    assert interrupted.result is not None and interrupted.recorder is not None
    assert interrupted.result.interrupted
    assert interrupted.result.epochs_completed == 1
    assert interrupted.bundle.epochs_completed == 1
    assert len(interrupted.rows) == 1
    assert interrupted.bundle.extra["unfreeze_epoch"] == 1
    # The flag is checked at the end of the next batch (the second of epoch 2), before the
    # observer hears of that batch; last.keras holds those two steps.
    assert interrupted.recorder.events[-1] == ("batch", 1, 0)
    assert interrupted.iterations == 2
    assert resumed.handler_after is resumed.handler_before


def test_resume_after_ctrl_c_finishes_without_repeating_epochs(resumed: Resumed) -> None:
    done = resumed.finished
    assert done.result is not None
    assert not done.result.interrupted and done.result.epochs_completed == 3
    assert [row["epoch"] for row in done.rows] == ["1", "2", "3"]
    assert [row["stage"] for row in done.rows] == ["frozen", "full", "full"]
    assert done.rows[0] == resumed.crashed.rows[0]
    assert done.bundle.epochs_completed == 3
    assert done.bundle.extra["unfreeze_epoch"] == 1
    # The saved optimizer went on counting: the interrupted epoch's two steps, then two
    # full epochs (the interrupted one is repeated in full).
    assert done.iterations == 2 + 2 * STEPS
    assert float(done.rows[-1]["lr"]) < float(done.rows[1]["lr"])


def test_second_ctrl_c_quits_at_once_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGINT)
    with stop_on_sigint() as stop_requested:
        assert not stop_requested()
        signal.raise_signal(signal.SIGINT)
        assert stop_requested()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_stop_on_sigint_outside_the_main_thread_installs_nothing() -> None:
    # signal.signal raises ValueError outside the main thread; training from a worker
    # thread (a GUI, a web app) must still work, leaving Ctrl-C to the process.
    outcome: list[object] = []

    def worker() -> None:
        try:
            with stop_on_sigint() as stop_requested:
                outcome.append(stop_requested())
        except Exception as error:  # reported below
            outcome.append(error)

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=30)
    assert outcome == [False]
    assert signal.getsignal(signal.SIGINT) is before


# --------------------------------------------------------------------------- early stopping


@pytest.fixture(scope="module")
def stopped_early(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> tuple[Recorder, Any]:
    """6 epochs, 3 frozen, patience 1; one unreadable train image and one unreadable val image.

    Keras's improvement test is replaced by "only the first epoch of a fit improves", so
    each stage stops after its second epoch whatever the tiny model learns.
    """
    import keras

    root = tmp_path_factory.mktemp("broken")
    data = root / "data"
    shutil.copytree(tiny.data_dir, data)
    bad_train = sorted((data / "train" / "glioma").iterdir())[0]
    bad_val = sorted((data / "val" / "pituitary").iterdir())[0]
    bad_train.write_bytes(b"not an image")
    bad_val.write_bytes(b"")
    settings = clean_settings(
        None,
        {
            **BASE,
            "paths.data_dir": data,
            "paths.runs_dir": root / "runs",
            "train.epochs": 6,
            "train.freeze_backbone_epochs": 3,
            "train.early_stopping_patience": 1,
        },
    )
    recorder = Recorder()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            keras.callbacks.EarlyStopping,
            "_is_improvement",
            lambda self, current, reference: reference is None,
        )
        result, _ = run(settings, RunLayout.create(root / "runs", "train").root, observer=recorder)
    return recorder, (result, bad_train, bad_val)


def test_early_stopping_ends_the_frozen_stage_and_the_full_stage_takes_over(
    stopped_early: tuple[Recorder, Any],
) -> None:
    recorder, (result, _, _) = stopped_early
    stages = [event for event in recorder.events if event[0] == "stage"]
    assert stages == [("stage", "frozen", 0, 3, 6), ("stage", "full", 2, 6, 6)]
    rows = history_rows(result.run_dir)
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4"]
    assert [row["stage"] for row in rows] == ["frozen", "frozen", "full", "full"]
    assert result.epochs_completed == 4 and not result.interrupted
    bundle = read_bundle(result.run_dir)
    assert bundle.epochs_completed == 4
    assert bundle.extra["unfreeze_epoch"] == 2
    assert iterations(result.run_dir / "last.keras") == 2 * STEPS


def test_unreadable_images_are_skipped_and_reported_once(
    stopped_early: tuple[Recorder, Any],
) -> None:
    recorder, (result, bad_train, bad_val) = stopped_early
    assert set(result.decode_failures) == {str(bad_train), str(bad_val)}
    assert all("cannot read image" in reason for reason in result.decode_failures.values())
    # Once per file over both stages, the val image included.
    assert len(recorder.warnings) == 2
    assert sum(str(bad_train) in message for message in recorder.warnings) == 1
    assert sum(str(bad_val) in message for message in recorder.warnings) == 1
    # The split files still list every file the run was given.
    with (result.run_dir / "splits" / "train.csv").open(encoding="utf-8") as handle:
        assert sum(1 for _ in handle) == 1 + TRAIN_PER_CLASS * CLASSES


# --------------------------------------------------------------------------- refusals


def test_a_data_root_without_val_is_refused_before_anything_is_written(
    tiny: Tiny, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny.data_dir / "train", data / "train")
    run_dir = tmp_path / "runs" / "train-1"
    run_dir.mkdir(parents=True)
    settings = clean_settings(None, {**BASE, "paths.data_dir": data})
    with pytest.raises(UsageError, match="no val split") as caught:
        training.train(settings, run_dir)
    assert "mritumor data prepare" in str(caught.value)
    assert list(run_dir.iterdir()) == []


def test_a_backbone_that_cannot_be_built_writes_nothing(tiny: Tiny, tmp_path: Path) -> None:
    run_dir = tmp_path / "train-1"
    run_dir.mkdir()
    settings = tiny.with_(tmp_path, model__weights="imagenet")  # small_cnn has none
    with pytest.raises(BackboneError, match="no ImageNet weights"):
        training.train(settings, run_dir)
    assert list(run_dir.iterdir()) == []


def test_reduce_lr_on_plateau_needs_a_constant_rate(tiny: Tiny, tmp_path: Path) -> None:
    settings = tiny.with_(tmp_path, train__reduce_lr_on_plateau=True)
    with pytest.raises(ConfigError, match="cosine_decay"):
        training.train(settings, tmp_path)
