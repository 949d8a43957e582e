"""Training step speed in float32 and in mixed bfloat16, per backbone, on this machine.

    python benchmarks/precision_speed.py                                # resnet10s resnet18s v2b0, 128 px gray
    python benchmarks/precision_speed.py --backbones resnet18s --image-size 160

Each measurement runs in a fresh process: the classifier that `train` would
build (:func:`build_classifier`, random weights, the given channels), compiled
as training compiles it (``make_optimizer``, ``make_loss``), fitted for a
warm-up pass and then timed over ``--batches`` batches of random in-memory
tensors. No input pipeline: this isolates what the precision does to the
training step. The table gives images/s for each policy and their ratio from
the same run, with the CPU's bfloat16 flags and what ``train.precision: auto``
picks here. On a CPU without ``avx512_bf16`` or ``amx_bf16``, bfloat16 is
emulated and the ratio falls far below 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from _measure import cpu_model, emit_result, run_child, usable_cores

RESULT_PREFIX = "PRECISION_SPEED_RESULT "
POLICIES = ("float32", "mixed_bfloat16")


def measure(backbone: str, policy: str, size: int, channels: int, batch: int, batches: int) -> None:
    started = time.perf_counter()
    import keras
    import numpy as np

    from mritumor.config.loading import load_settings
    from mritumor.engine.losses import make_loss, make_optimizer
    from mritumor.models.classifier import build_classifier

    settings = load_settings(
        None,
        {
            "model.backbone": backbone,
            "model.weights": "none",
            "data.image_size": size,
            "data.channels": channels,
            "train.batch_size": batch,
        },
    ).settings
    keras.mixed_precision.set_global_policy(policy)
    model = build_classifier(settings)
    model.compile(
        optimizer=make_optimizer(settings.train, 1e-3, batches, 1),
        loss=make_loss(settings.train, 4),
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch * batches, size, size, channels)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 4, batch * batches), 4)
    model.fit(x[: 2 * batch], y[: 2 * batch], batch_size=batch, epochs=1, verbose=0)
    begin = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    seconds = time.perf_counter() - begin
    emit_result(
        RESULT_PREFIX,
        {"images_per_second": len(x) / seconds, "params": model.count_params()},
        started,
        backbone=backbone,
        policy=policy,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet10s", "resnet18s", "v2b0"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--child", nargs=2, metavar=("BACKBONE", "POLICY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.image_size, args.channels, args.batch_size, args.batches)
    if args.child:
        measure(*args.child, *shape)
        return

    from mritumor.engine.precision import cpu_bf16_flags, resolve_precision

    rows: list[dict[str, Any]] = []
    for backbone in args.backbones:
        rates = {}
        for policy in POLICIES:
            command = [sys.executable, __file__, "--child", backbone, policy]
            command += ["--image-size", str(args.image_size), "--channels", str(args.channels)]
            command += ["--batch-size", str(args.batch_size), "--batches", str(args.batches)]
            result = run_child(command, RESULT_PREFIX, f"{backbone} {policy}")
            rates[policy] = result["images_per_second"]
        rows.append({"backbone": backbone, **rates})

    flags = ", ".join(cpu_bf16_flags()) or "none"
    print(
        f"\nMachine: {cpu_model()}, {usable_cores()} cores; CPU bfloat16 flags: {flags}; "
        f"auto picks {resolve_precision('auto').describe()}"
    )
    print(
        f"{args.image_size} px, {args.channels} channel(s), batch {args.batch_size}, "
        f"{args.batches} timed batches\n"
    )
    print("| backbone | float32 img/s | mixed_bfloat16 img/s | bf16 / fp32 |")
    print("|---|---|---|---|")
    for row in rows:
        ratio = row["mixed_bfloat16"] / row["float32"]
        print(
            f"| {row['backbone']} | {row['float32']:.1f} | {row['mixed_bfloat16']:.1f} | {ratio:.2f} |"
        )


if __name__ == "__main__":
    main()
