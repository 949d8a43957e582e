"""Training throughput on 1 and N replicas: `train.strategy` one against mirrored.

    python benchmarks/distributed_speed.py                         # CPU: 1 vs 2 logical devices
    python benchmarks/distributed_speed.py --devices GPU:0,GPU:1   # a host with 2 GPUs
    python benchmarks/distributed_speed.py --backbone v2b0 --image-size 224 --batch-size 32

The same synthetic images (written once into a temporary folder) are trained twice,
each in a fresh Python process (a process splits its CPU into logical devices only
before TensorFlow starts):

* ``1 replica``: ``train.strategy: mirrored`` on the first device of ``--devices``,
  with a batch of ``--batch-size``;
* ``N replicas``: ``mirrored`` on all of ``--devices``, ``--batch-size`` per replica,
  so each step takes N times the images.

Both train the whole network from random weights in float32 with
``train.scale_lr=false`` (speed does not depend on the rate). Images/s is that of
the fastest epoch after the first (the first traces the step and fills the cache),
from the start of the epoch to its last training batch. The scaling efficiency is
``images/s(N) / (N x images/s(1))``: 1.0 is perfect scaling. On a CPU the logical
devices share the same cores, so the figure there measures the strategy's overhead,
not a speed-up; on N GPUs it is the real scaling.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _measure import cpu_model, emit_result, run_child, usable_cores
from train_speed import RecordingObserver

from mritumor.core.classes import CLASS_NAMES
from mritumor.data.synth.writer import SynthConfig, write_synthetic_dataset

RESULT_PREFIX = "DISTRIBUTED_SPEED_RESULT "

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
parser.add_argument("--devices", default="CPU:0,CPU:1", help="the N replicas' devices")
parser.add_argument("--backbone", default="small_cnn")
parser.add_argument("--image-size", type=int, default=96)
parser.add_argument("--batch-size", type=int, default=16, help="per replica")
parser.add_argument("--images", type=int, default=256, help="train images (all classes)")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--_child", help=argparse.SUPPRESS)


def measure(args: argparse.Namespace, devices: list[str], data: Path) -> None:
    """Child: train on ``devices`` and print the epochs' timings."""
    from mritumor.config.loading import load_settings
    from mritumor.engine.training import train

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="distributed-speed-"))
    settings = load_settings(
        None,
        {
            "paths.data_dir": data,
            "paths.runs_dir": work,
            "model.backbone": args.backbone,
            "model.weights": "none",
            "data.image_size": args.image_size,
            "train.batch_size": args.batch_size,
            "train.epochs": args.epochs,
            "train.freeze_backbone_epochs": 0,
            "train.early_stopping_patience": 0,
            "train.precision": "float32",
            "train.strategy": "mirrored",
            "train.devices": devices,
            "train.scale_lr": False,
        },
    ).settings
    observer = RecordingObserver()
    train(settings, work / "run", observer=observer)
    global_batch = args.batch_size * len(devices)
    rates = [
        min(epoch["batches"] * global_batch, args.images) / (epoch["last_batch"] - epoch["begin"])
        for epoch in observer.epochs[1:]
    ]
    emit_result(RESULT_PREFIX, {"images_per_second": max(rates)}, started)


def main() -> None:
    args = parser.parse_args()
    data_root = Path(args._child.split("|", 1)[1]) if args._child else None
    if args._child:
        measure(args, args._child.split("|", 1)[0].split(","), data_root)  # type: ignore[arg-type]
        return
    devices = [name.strip() for name in args.devices.split(",") if name.strip()]
    if len(devices) < 2 or args.epochs < 2:
        parser.error("--devices needs at least two devices and --epochs at least 2")
    per_class = max(1, args.images // len(CLASS_NAMES))
    args.images = per_class * len(CLASS_NAMES)
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="distributed-speed-data-") as folder:
        root = Path(folder) / "data"
        config = SynthConfig(train=per_class, val=2, test=0, image_size=args.image_size, seed=0)
        write_synthetic_dataset(root, config)
        for chosen in (devices[:1], devices):
            command = [
                sys.executable,
                __file__,
                *sys.argv[1:],
                "--_child",
                f"{','.join(chosen)}|{root}",
            ]
            results[len(chosen)] = run_child(command, RESULT_PREFIX, f"{len(chosen)} replica(s)")
    report(args, devices, results)


def report(
    args: argparse.Namespace, devices: list[str], results: dict[int, dict[str, Any]]
) -> None:
    one, many = results[1]["images_per_second"], results[len(devices)]["images_per_second"]
    print(
        f"\n{args.backbone}, {args.image_size} px, batch {args.batch_size} per replica, "
        f"{args.images} images; {cpu_model()}, {usable_cores()} usable cores; "
        f"TensorFlow {results[1]['tensorflow']}, Keras {results[1]['keras']}\n"
    )
    print("| replicas | devices | images/s | peak RSS (MiB) |\n|---|---|---:|---:|")
    for count, result in results.items():
        print(
            f"| {count} | {', '.join(devices[:count])} | {result['images_per_second']:.1f} "
            f"| {result['peak_rss_mib']:.0f} |"
        )
    efficiency = many / (len(devices) * one)
    print(f"\nspeed ratio {many / one:.2f}x; scaling efficiency {efficiency:.2f}")
    print(json.dumps({"ratio": many / one, "efficiency": efficiency}))


if __name__ == "__main__":
    main()
