"""Inference throughput: `mritumor infer` on a folder against a bare `model.predict` in memory.

    python benchmarks/infer_speed.py                      # small_cnn and v2b0, 224 px, batch 32
    python benchmarks/infer_speed.py --backbones v2b0 --images 128
    python benchmarks/infer_speed.py --passes 3           # one more pass, against other load
    python benchmarks/infer_speed.py --no-cli             # skip the end-to-end CLI row

For each backbone, a run directory as ``train`` leaves it (``model.keras``,
``bundle.json``, ``config.yaml``, ``splits/``) holding an untrained model
(:func:`build_classifier` with ``model.weights=none``: speed does not depend on
the weight values) is built, then the same folder of synthetic images (written
once into a temporary folder by :func:`write_synthetic_dataset`) is predicted
three ways, each in a fresh Python process:

* ``mritumor``: :class:`mritumor.predict.predictor.Predictor` construction (reading
  ``bundle.json`` and ``keras.saving.load_model`` in safe mode) is timed as the
  model load, after TensorFlow and Keras are imported (timed apart); then
  :func:`gather_scans` on the folder and ``Predictor.predict(inputs,
  batch_size=...)`` (Pillow decode, resize, batching, the model) are timed
  together, ``--passes`` times (default 2). The input pipeline alone (decode,
  resize and batching with no model, as ``Predictor`` builds it) is then timed
  over the same folder for the details;
* ``bare``: the ceiling for the input side: the same ``model.keras`` loaded with
  ``keras.saving.load_model``, the same images decoded and resized by the same
  pipeline into one float32 array before timing starts, then
  ``model.predict(x, batch_size=...)``, ``--passes`` times, and for the
  details a ``predict_on_batch`` loop over the same array (the call
  ``Predictor`` makes per batch), twice;
* ``cli`` (unless ``--no-cli``): ``mritumor infer FOLDER --run RUN --format csv
  -q --output FILE`` end to end, as a user runs it: wall time of the whole
  process, Python start, imports and model load included.

Images/s is images over the wall time of a pass; the reported pass is the
fastest after the first (the first traces the predict function; other load on
the machine only adds time), with the default ``--passes 2`` the second. The
process's CPU time over the same span (all threads: the model and the tf.data
workers) is shown as "cores busy" (CPU seconds over wall seconds; 2 would be
both cores of a 2-core machine), and the 1-minute load average is recorded
before and after each measurement, together with "other work": the whole
machine's CPU time over the span (``/proc/stat``) less this process's, per wall
second, so that a run that shared the machine with other work can be
recognised.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _measure import child_env, cpu_model, emit_result, run_child, usable_cores

from mritumor.core.classes import CLASS_NAMES
from mritumor.data.synth.writer import SynthConfig, write_synthetic_dataset

RESULT_PREFIX = "INFER_SPEED_RESULT "
MODES = ("mritumor", "bare")


# --------------------------------------------------------------------------- one measurement


def load1() -> float:
    return os.getloadavg()[0]


def machine_cpu_seconds() -> float | None:
    """CPU time spent so far by every process on the machine (``/proc/stat``), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    ticks = [int(value) for value in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


class Span:
    """Wall and CPU time of a block: this process's, and the whole machine's, with the load
    average before and after; the machine's CPU time less this process's is other work."""

    def __enter__(self) -> Span:
        self.load_before = load1()
        self.machine = machine_cpu_seconds()
        self.begin, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.begin
        self.cpu_seconds = time.process_time() - self.cpu
        machine = machine_cpu_seconds()
        self.machine_cpu_seconds = (
            machine - self.machine if machine is not None and self.machine is not None else None
        )
        self.load_after = load1()

    def record(self, images: int | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "machine_cpu_seconds": self.machine_cpu_seconds,
            "load_before": self.load_before,
            "load_after": self.load_after,
        }
        if images is not None:
            row["images"] = images
        return row


def build_run(args: argparse.Namespace, backbone: str, run_dir: Path) -> dict[str, Any]:
    """A run directory as ``train`` leaves it, with an untrained model (as tests/helpers.py)."""
    from mritumor.config.loading import load_settings
    from mritumor.core.environment import import_tensorflow
    from mritumor.data.splits import load_split
    from mritumor.models.classifier import build_classifier
    from mritumor.run.bundle import new_bundle, write_bundle, write_config
    from mritumor.run.layout import MODEL_FILE
    from mritumor.run.splits import write_splits

    settings = load_settings(
        None,
        {
            "paths.data_dir": str(args.data),
            "data.image_size": args.image_size,
            "model.backbone": backbone,
            "model.weights": "none",
            "inference.batch_size": args.batch_size,
        },
    ).settings
    import_tensorflow()
    import keras

    keras.utils.set_random_seed(settings.seed)
    run_dir.mkdir(parents=True)
    build_classifier(settings).save(run_dir / MODEL_FILE)
    names = settings.data.class_names
    splits = [load_split(args.data, name, names) for name in ("train", "val", "test")]
    write_config(run_dir, settings)
    write_splits(run_dir, args.data, splits)
    write_bundle(run_dir, new_bundle(settings, "train"))
    return {}


def pipeline_for(bundle: Any, paths: list[Path], batch_size: int) -> Any:
    """The input pipeline exactly as ``Predictor`` builds it for image files."""
    from mritumor.data.input_pipeline import PipelineOptions, build_pipeline
    from mritumor.data.splits import SplitFiles

    split = SplitFiles(
        name="predict",
        paths=tuple(paths),
        labels=(0,) * len(paths),
        class_names=tuple(bundle.class_names),
    )
    options = PipelineOptions(
        preprocessing=bundle.preprocessing,
        batch_size=batch_size,
        seed=0,
        cache="none",
    )
    return build_pipeline(split, options)


def measure_mritumor(args: argparse.Namespace) -> dict[str, Any]:
    with Span() as imports:
        from mritumor.core.environment import import_tensorflow

        import_tensorflow()
        import keras  # noqa: F401

        from mritumor.predict.inputs import gather_scans
        from mritumor.predict.predictor import Predictor
    with Span() as load:
        predictor = Predictor(args.run)
    passes = []
    for _ in range(args.passes):
        with Span() as span:
            scans = gather_scans([str(args.folder)])
            inputs, missing = scans.images, scans.missing
            logits = predictor.predict(inputs, batch_size=args.batch_size)
        if missing or logits.failures or len(logits.kept) != len(inputs):
            raise SystemExit(f"unexpected: missing {missing}, failures {logits.failures}")
        passes.append(span.record(len(logits.kept)))
    with Span() as gather:
        inputs = gather_scans([str(args.folder)]).images
    with Span() as decode:
        pipeline = pipeline_for(predictor.bundle, [item.path for item in inputs], args.batch_size)
        built = time.perf_counter() - decode.begin
        count, first_batch = 0, None
        for batch in pipeline.dataset:
            count += int(batch[0].shape[0])
            first_batch = first_batch or time.perf_counter() - decode.begin
    return {
        "import_seconds": imports.seconds,
        "load": load.record(),
        "passes": passes,
        "gather": gather.record(len(inputs)),
        "pipeline_only": {
            **decode.record(count),
            "build_seconds": built,
            "first_batch_seconds": first_batch,
        },
    }


def measure_bare(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from mritumor.core.environment import import_tensorflow
    from mritumor.predict.inputs import gather_scans
    from mritumor.run.bundle import read_bundle
    from mritumor.run.layout import MODEL_FILE

    import_tensorflow()
    import keras

    bundle = read_bundle(args.run)
    with Span() as load:
        model = keras.saving.load_model(args.run / MODEL_FILE, safe_mode=True, compile=False)
    inputs = gather_scans([str(args.folder)]).images
    pipeline = pipeline_for(bundle, [item.path for item in inputs], args.batch_size)
    x = np.concatenate([batch[0] for batch in pipeline.dataset.as_numpy_iterator()])
    x = np.ascontiguousarray(x, dtype=np.float32)
    passes = []
    for _ in range(args.passes):
        with Span() as span:
            model.predict(x, batch_size=args.batch_size, verbose=0)
        passes.append(span.record(len(x)))
    on_batch = []
    for _ in range(2):
        with Span() as span:
            for start in range(0, len(x), args.batch_size):
                model.predict_on_batch(x[start : start + args.batch_size])
        on_batch.append(span.record(len(x)))
    return {
        "load": load.record(),
        "passes": passes,
        "predict_on_batch": on_batch,
        "array_mib": x.nbytes / 2**20,
    }


def run_one(args: argparse.Namespace) -> None:
    """Child process: one backbone, one mode; prints one JSON line."""
    started = time.perf_counter()
    backbone, mode = args._one
    if mode == "build":
        result = build_run(args, backbone, args.run)
    elif mode == "mritumor":
        result = measure_mritumor(args)
    else:
        result = measure_bare(args)
    emit_result(RESULT_PREFIX, result, started, backbone=backbone, mode=mode)


# --------------------------------------------------------------------------- the driver


def spawn(
    args: argparse.Namespace, backbone: str, mode: str, data: Path, folder: Path, run_dir: Path
) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_one",
        backbone,
        mode,
        "--data",
        str(data),
        "--folder",
        str(folder),
        "--run",
        str(run_dir),
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--passes",
        str(args.passes),
    ]
    return run_child(command, RESULT_PREFIX, f"{backbone} / {mode}")


def mritumor_command() -> list[str]:
    script = Path(sys.executable).with_name("mritumor")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mritumor"]


def time_cli(backbone: str, folder: Path, run_dir: Path, work: Path) -> dict[str, Any]:
    """``mritumor infer`` end to end: wall time and the child's CPU time (user + system)."""
    output = work / f"infer-{backbone}.csv"
    command = [
        *mritumor_command(),
        "infer",
        str(folder),
        "--run",
        str(run_dir),
        "--format",
        "csv",
        "-q",
        "--output",
        str(output),
    ]
    print(f"  {backbone} / cli ...", file=sys.stderr, flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = load1()
    machine_before = machine_cpu_seconds()
    begin = time.perf_counter()
    done = subprocess.run(
        command, env=child_env(), cwd=work, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - begin
    machine_after = machine_cpu_seconds()
    load_after = load1()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"{backbone} / cli failed (exit status {done.returncode})")
    rows = len(output.read_text().splitlines()) - 1
    print(f"    {seconds:.0f} s", file=sys.stderr, flush=True)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "machine_cpu_seconds": (
            machine_after - machine_before
            if machine_after is not None and machine_before is not None
            else None
        ),
        "load_before": load_before,
        "load_after": load_after,
        "images": rows,
        "command": shlex.join(["mritumor", *command[len(mritumor_command()) :]]),
    }


def rate(row: dict[str, Any]) -> float:
    return float(row["images"]) / float(row["seconds"])


def busy(row: dict[str, Any]) -> float:
    return float(row["cpu_seconds"]) / float(row["seconds"])


def others(row: dict[str, Any]) -> str:
    """Cores busy with other work on the machine over the span (machine CPU less ours)."""
    machine = row.get("machine_cpu_seconds")
    if machine is None:
        return "-"
    return f"{max(0.0, machine - row['cpu_seconds']) / row['seconds']:.2f}"


def measured(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest pass after the first (the first traces; other load only adds time)."""
    return max(passes[1:] or passes, key=rate)


def tag(number: int, passes: list[dict[str, Any]]) -> str:
    if number == 1:
        return " (traces)"
    return " (measured)" if passes[number - 1] is measured(passes) else ""


def loads(row: dict[str, Any]) -> str:
    return f"{row['load_before']:.2f} / {row['load_after']:.2f}"


def report(args: argparse.Namespace, results: dict[tuple[str, str], dict[str, Any]]) -> None:
    first = next(iter(results.values()))
    cores = usable_cores()
    print(f"command: python benchmarks/infer_speed.py {shlex.join(sys.argv[1:])}".rstrip())
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs ({cores} usable), no GPU used; "
        f"TensorFlow {first['tensorflow']}, Keras {first['keras']}, "
        f"Python {platform.python_version()}"
    )
    print(
        f"data: one folder of {args.images} synthetic images of ~{args.source_size} px "
        "(JPEG and PNG, grey and RGB), float32, random weights\n"
    )
    print(
        "| backbone | image size | batch | images | model load (s) | mritumor img/s "
        "| bare predict img/s | ratio | CLI end-to-end (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for backbone in args.backbones:
        ours, bare = results[backbone, "mritumor"], results[backbone, "bare"]
        ours_rate, bare_rate = rate(measured(ours["passes"])), rate(measured(bare["passes"]))
        cli = results.get((backbone, "cli"))
        cli_seconds = f"{cli['seconds']:.1f}" if cli else "-"
        print(
            f"| {backbone} | {args.image_size} | {args.batch_size} | {args.images} "
            f"| {ours['load']['seconds']:.2f} | {ours_rate:.1f} | {bare_rate:.1f} "
            f"| {ours_rate / bare_rate:.2f} | {cli_seconds} |"
        )
    print(
        "\nDetails: every timed span. Cores busy: this process's CPU s / wall s; other work: "
        "the machine's CPU s (/proc/stat) less this process's, per wall s."
    )
    print(
        "| backbone | span | images | seconds | img/s | cores busy | other work (cores) "
        "| load 1 min before / after |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for backbone in args.backbones:
        ours, bare = results[backbone, "mritumor"], results[backbone, "bare"]
        pipeline = ours["pipeline_only"]
        spans: list[tuple[str, dict[str, Any]]] = [
            ("mritumor: model load (Predictor)", ours["load"])
        ]
        spans += [
            (f"mritumor: gather_scans + predict, pass {i}{tag(i, ours['passes'])}", row)
            for i, row in enumerate(ours["passes"], 1)
        ]
        spans += [
            ("mritumor: gather_scans alone", ours["gather"]),
            (
                f"mritumor: input pipeline alone, no model (built in {pipeline['build_seconds']:.2f}"
                f" s, first batch at {pipeline['first_batch_seconds']:.2f} s)",
                pipeline,
            ),
            ("bare: load_model", bare["load"]),
        ]
        spans += [
            (f"bare: model.predict, pass {i}{tag(i, bare['passes'])}", row)
            for i, row in enumerate(bare["passes"], 1)
        ]
        spans += [
            (f"bare: predict_on_batch loop, pass {i}", row)
            for i, row in enumerate(bare["predict_on_batch"], 1)
        ]
        if (backbone, "cli") in results:
            spans.append(("cli: `mritumor infer` end to end", results[backbone, "cli"]))
        for name, row in spans:
            images = row.get("images")
            per_second = f"{rate(row):.1f}" if images else "-"
            print(
                f"| {backbone} | {name} | {images if images is not None else '-'} "
                f"| {row['seconds']:.2f} | {per_second} | {busy(row):.2f} | {others(row)} "
                f"| {loads(row)} |"
            )
    print("\n| backbone | run | TF + Keras import (s) | peak RSS (MiB) | process (s) |")
    print("|---|---|---:|---:|---:|")
    for backbone in args.backbones:
        for mode in MODES:
            result = results[backbone, mode]
            imported = result.get("import_seconds")
            print(
                f"| {backbone} | {mode} | {f'{imported:.1f}' if imported is not None else '-'} "
                f"| {result['peak_rss_mib']:.0f} | {result['process_seconds']:.0f} |"
            )
    cli_rows = [results[b, "cli"] for b in args.backbones if (b, "cli") in results]
    if cli_rows:
        print(f"\nCLI command: {cli_rows[0]['command']}")


def predicted_data(args: argparse.Namespace) -> SynthConfig:
    """The synthetic data this benchmark and serve_speed.py predict, ``args.images`` rounded
    down to whole classes (at least one image each) and written back.

    The predicted folder is train/ (masks live apart, under masks/); val and test are
    one image per class, only so that the run's splits look like a real run's.
    """
    per_class = max(1, args.images // len(CLASS_NAMES))
    args.images = per_class * len(CLASS_NAMES)
    return SynthConfig(train=per_class, val=1, test=1, image_size=args.source_size, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backbones", nargs="+", default=["small_cnn", "v2b0"], help="default small_cnn v2b0"
    )
    parser.add_argument("--image-size", type=int, default=224, help="model input (default 224)")
    parser.add_argument("--batch-size", type=int, default=32, help="default 32")
    parser.add_argument(
        "--images", type=int, default=256, help="images in the folder, over four classes (256)"
    )
    parser.add_argument(
        "--source-size", type=int, default=256, help="nominal side of the files (default 256)"
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=2,
        help="predictions per process, at least 2; the fastest after the first is reported (2)",
    )
    parser.add_argument("--no-cli", action="store_true", help="skip the end-to-end CLI row")
    parser.add_argument("--_one", nargs=2, metavar=("BACKBONE", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        run_one(args)
        return
    if args.passes < 2:
        parser.error("--passes must be at least 2: the first pass is not measured")
    started = time.perf_counter()
    config = predicted_data(args)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="infer-speed-") as tmp:
        work = Path(tmp)
        data = work / "data"
        folder = data / "train"
        write_synthetic_dataset(data, config)
        for backbone in args.backbones:
            run_dir = work / "runs" / backbone
            spawn(args, backbone, "build", data, folder, run_dir)
            for mode in MODES:
                results[backbone, mode] = spawn(args, backbone, mode, data, folder, run_dir)
            if not args.no_cli:
                results[backbone, "cli"] = time_cli(backbone, folder, run_dir, work)
    report(args, results)
    load_after = os.getloadavg()
    print(
        f"\nload average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}; "
        f"total {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
