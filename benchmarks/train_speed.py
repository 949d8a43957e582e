"""Training throughput: `mritumor train` against a bare `model.fit` on tensors in memory.

    python benchmarks/train_speed.py                      # small_cnn and v2b0, 224 px, batch 16
    python benchmarks/train_speed.py --backbones small_cnn --image-size 96 --images 64
    python benchmarks/train_speed.py --set augment.enabled=false   # settings for both runs

For each backbone, two runs on the same synthetic images (written once into a
temporary folder by :func:`write_synthetic_dataset`), each in a fresh Python
process so that each peak RSS is its own:

* ``mritumor``: :func:`mritumor.engine.training.train` with its default input pipeline
  (Pillow decode, resize, memory cache, shuffle, augmentation, class weights,
  prefetch), its callbacks (checkpoints, history, early stopping) and a
  recording observer in place of the CLI's progress display;
* ``bare``: the ceiling for the input pipeline: the same model
  (:func:`build_classifier` with the same settings), compiled as training
  compiles it (``make_optimizer``, ``make_loss``, accuracy metric), fitted with
  ``model.fit(x, y, sample_weight=w, batch_size=...)`` on the same images,
  decoded and resized once into float32 NumPy arrays before timing starts; no
  augmentation, no validation, no callbacks but a timer.

Both train the whole network (``train.freeze_backbone_epochs=0``) from random
weights (``model.weights=none``: speed does not depend on the weight values) in
float32. Images/s is that of the fastest epoch after the first (the first
traces the training step and, for ``mritumor``, fills the cache); with the
default ``--epochs 2`` that is the last epoch, and more epochs discard time
lost to other load on the machine. Time runs from the start of the epoch to
the end of its last training batch, so ``mritumor``'s validation pass and
checkpoint writes are not counted (they are shown apart). The process's CPU
time over the same span (all threads: training step and tf.data workers) is
shown as CPU seconds per image: work done, less sensitive than wall time to
other load on the machine. Peak RSS is the process's ``ru_maxrss``: Python,
TensorFlow, the model, the data and the run.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from _measure import cpu_model, emit_result, run_child, usable_cores

from mritumor.core.classes import CLASS_NAMES
from mritumor.data.synth.writer import SynthConfig, write_synthetic_dataset

RESULT_PREFIX = "TRAIN_SPEED_RESULT "
MODES = ("mritumor", "bare")


# --------------------------------------------------------------------------- one measurement


def settings_for(args: argparse.Namespace, backbone: str, root: Path, work: Path) -> Any:
    from mritumor.config.loading import load_settings, parse_assignment

    overrides = {
        "paths.data_dir": str(root),
        "paths.runs_dir": str(work / "runs"),
        "paths.cache_dir": str(work / "cache"),
        "data.image_size": args.image_size,
        "model.backbone": backbone,
        "model.weights": "none",
        "train.batch_size": args.batch_size,
        "train.epochs": args.epochs,
        "train.freeze_backbone_epochs": 0,
        "train.precision": "float32",
    }
    overrides.update(parse_assignment(text) for text in args.set)
    return load_settings(None, overrides).settings


class RecordingObserver:
    """A :class:`~mritumor.engine.callbacks.TrainingObserver` that keeps timestamps instead of drawing."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []

    def on_stage_begin(self, stage: Any, total_epochs: int) -> None:
        pass

    def on_epoch_begin(self, epoch: int, steps: int) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.epochs.append(
            {"begin": now, "last_batch": now, "cpu_begin": cpu, "cpu_last_batch": cpu}
        )
        self.epochs[-1].update(batches=0, rates=[])

    def on_batch_end(self, step: int, images_per_second: float, logs: Mapping[str, float]) -> None:
        epoch = self.epochs[-1]
        epoch["last_batch"] = time.perf_counter()
        epoch["cpu_last_batch"] = time.process_time()
        epoch["batches"] = step + 1
        epoch["rates"].append(images_per_second)

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        self.epochs[-1]["end"] = time.perf_counter()

    def on_warning(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    def on_note(self, message: str) -> None:
        print(message, file=sys.stderr)


def measure_mritumor(settings: Any, work: Path) -> dict[str, Any]:
    from mritumor.data.splits import load_split
    from mritumor.engine.training import train

    images = len(load_split(settings.paths.data_dir, "train", settings.data.class_names))
    observer = RecordingObserver()
    run_dir = work / "runs" / "train-speed"
    run_dir.mkdir(parents=True)
    train(settings, run_dir, observer=observer)
    epochs = [
        {
            "images": min(epoch["batches"] * settings.train.batch_size, images),
            "train_seconds": epoch["last_batch"] - epoch["begin"],
            "cpu_seconds": epoch["cpu_last_batch"] - epoch["cpu_begin"],
            "epoch_seconds": epoch["end"] - epoch["begin"],
            "observer_rate": epoch["rates"][-1],
        }
        for epoch in observer.epochs
    ]
    return {"epochs": epochs}


def preload(settings: Any) -> tuple[Any, Any, Any]:
    """The train split decoded and resized exactly as the pipeline does, as float32 arrays."""
    import numpy as np

    from mritumor.data.balance import class_weights
    from mritumor.data.input_pipeline import PipelineOptions, build_pipeline
    from mritumor.data.splits import load_split

    split = load_split(settings.paths.data_dir, "train", settings.data.class_names)
    options = PipelineOptions.from_settings(settings, training=False)
    batches = list(build_pipeline(split, options).dataset.as_numpy_iterator())
    x = np.concatenate([batch[0] for batch in batches])
    y = np.concatenate([batch[1] for batch in batches])
    labels = y.argmax(axis=1)
    if settings.train.use_class_weights:
        weights = class_weights(labels, len(settings.data.class_names))[labels]
    else:
        weights = np.ones(len(labels))
    return x, y, weights.astype(np.float32)


def measure_bare(settings: Any) -> dict[str, Any]:
    from mritumor.core.environment import import_tensorflow

    import_tensorflow()
    import keras

    from mritumor.engine.losses import make_loss, make_optimizer
    from mritumor.models.classifier import build_classifier, set_backbone_trainable

    keras.utils.set_random_seed(settings.seed)
    keras.mixed_precision.set_global_policy("float32")
    x, y, weights = preload(settings)
    train_settings = settings.train
    steps = math.ceil(len(x) / train_settings.batch_size)
    model = build_classifier(settings)
    set_backbone_trainable(model, True)
    model.compile(
        optimizer=make_optimizer(train_settings, train_settings.lr, steps, train_settings.epochs),
        loss=make_loss(train_settings, len(settings.data.class_names)),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=train_settings.xla,
    )

    class Timer(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[dict[str, Any]] = []

        def on_epoch_begin(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
            self.begin, self.cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
            seconds, cpu = time.perf_counter() - self.begin, time.process_time() - self.cpu
            self.epochs.append(
                {
                    "images": len(x),
                    "train_seconds": seconds,
                    "epoch_seconds": seconds,
                    "cpu_seconds": cpu,
                }
            )

    timer = Timer()
    model.fit(
        x,
        y,
        sample_weight=weights,
        batch_size=train_settings.batch_size,
        epochs=train_settings.epochs,
        shuffle=True,
        callbacks=[timer],
        verbose=0,
    )
    return {"epochs": timer.epochs}


def run_one(args: argparse.Namespace) -> None:
    """Child process: one backbone, one mode; prints one JSON line."""
    started = time.perf_counter()
    backbone, mode = args._one
    with tempfile.TemporaryDirectory(prefix="train-speed-") as folder:
        work = Path(folder)
        settings = settings_for(args, backbone, args.data, work)
        result = measure_mritumor(settings, work) if mode == "mritumor" else measure_bare(settings)
    emit_result(RESULT_PREFIX, result, started, backbone=backbone, mode=mode)


# --------------------------------------------------------------------------- the driver


def spawn(args: argparse.Namespace, backbone: str, mode: str, root: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_one",
        backbone,
        mode,
        "--data",
        str(root),
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        *(f"--set={text}" for text in args.set),
    ]
    return run_child(command, RESULT_PREFIX, f"{backbone} / {mode}")


def measured(result: dict[str, Any]) -> dict[str, Any]:
    """The fastest epoch after the first (other load on the machine only adds time)."""
    later = result["epochs"][1:] or result["epochs"]
    epoch = max(later, key=lambda epoch: epoch["images"] / epoch["train_seconds"])
    return {**epoch, "rate": epoch["images"] / epoch["train_seconds"]}


def report(args: argparse.Namespace, results: dict[tuple[str, str], dict[str, Any]]) -> None:
    first = next(iter(results.values()))
    cores = usable_cores()
    print(f"command: python benchmarks/train_speed.py {shlex.join(sys.argv[1:])}".rstrip())
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs ({cores} usable), no GPU used; "
        f"TensorFlow {first['tensorflow']}, Python {platform.python_version()}"
    )
    print(
        f"data: {args.images} synthetic train images of ~{args.source_size} px, "
        f"{args.epochs} epochs, float32, whole network trained, random weights"
        + (f"; --set {' '.join(args.set)}" if args.set else "")
    )
    print(
        "bare fit compiled with mritumor.engine.losses.make_optimizer / make_loss "
        "(AdamW, warm-up + cosine; categorical cross-entropy on logits) and sample weights\n"
    )
    print(
        "| backbone | image size | batch | mritumor img/s | bare fit img/s | ratio "
        "| peak RSS mritumor (MiB) | peak RSS bare (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for backbone in args.backbones:
        ours, bare = results[backbone, "mritumor"], results[backbone, "bare"]
        rate, ceiling = measured(ours)["rate"], measured(bare)["rate"]
        print(
            f"| {backbone} | {args.image_size} | {args.batch_size} | {rate:.1f} | {ceiling:.1f} "
            f"| {rate / ceiling:.2f} | {ours['peak_rss_mib']:.0f} | {bare['peak_rss_mib']:.0f} |"
        )
    print("\nDetails (seconds):")
    print(
        "| backbone | run | epoch 1 img/s | every later epoch, img/s | measured s "
        "| CPU s per image | cores busy | observer's img/s "
        "| measured epoch incl. validation + checkpoints | process |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (backbone, mode), result in results.items():
        epoch1, later = result["epochs"][0], result["epochs"][1:]
        best = measured(result)
        rates = " / ".join(f"{epoch['images'] / epoch['train_seconds']:.1f}" for epoch in later)
        observed = f"{best['observer_rate']:.1f}" if "observer_rate" in best else "-"
        print(
            f"| {backbone} | {mode} | {epoch1['images'] / epoch1['train_seconds']:.1f} "
            f"| {rates} | {best['train_seconds']:.1f} "
            f"| {best['cpu_seconds'] / best['images']:.3f} "
            f"| {best['cpu_seconds'] / best['train_seconds']:.2f} | {observed} "
            f"| {best['epoch_seconds']:.1f} | {result['process_seconds']:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backbones", nargs="+", default=["small_cnn", "v2b0"], help="default small_cnn v2b0"
    )
    parser.add_argument("--image-size", type=int, default=224, help="model input (default 224)")
    parser.add_argument("--batch-size", type=int, default=16, help="default 16")
    parser.add_argument(
        "--images", type=int, default=192, help="train images, over four classes (default 192)"
    )
    parser.add_argument(
        "--val-images", type=int, default=16, help="val images, over four classes (default 16)"
    )
    parser.add_argument(
        "--source-size", type=int, default=256, help="nominal side of the files (default 256)"
    )
    parser.add_argument("--epochs", type=int, default=2, help="at least 2 (default 2)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra setting for both runs, e.g. augment.enabled=false (repeatable)",
    )
    parser.add_argument("--_one", nargs=2, metavar=("BACKBONE", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        run_one(args)
        return
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not measured")
    started = time.perf_counter()
    per_class = max(1, args.images // len(CLASS_NAMES))
    args.images = per_class * len(CLASS_NAMES)
    val_per_class = max(1, args.val_images // len(CLASS_NAMES))
    config = SynthConfig(
        train=per_class, val=val_per_class, test=0, image_size=args.source_size, seed=0
    )
    results: dict[tuple[str, str], dict[str, Any]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="train-speed-data-") as folder:
        root = Path(folder) / "data"
        write_synthetic_dataset(root, config)
        for backbone in args.backbones:
            for mode in MODES:
                results[backbone, mode] = spawn(args, backbone, mode, root)
    report(args, results)
    load_after = os.getloadavg()
    print(
        f"\nload average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}; "
        f"total {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
