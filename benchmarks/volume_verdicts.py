"""How well a run's volume verdicts separate phantom volumes with and without a lesion.

    python benchmarks/volume_verdicts.py --run runs/train-1
    python benchmarks/volume_verdicts.py --run runs/train-1 --volumes 10 --image-size 64 --depth 32

Phantom volumes (:mod:`mritumor.volumes.synth`) are rendered in matched sets: for each
seed, one head with a lesion of each tumour type and the same head without one, so
only the lesion differs. Each volume is sliced and scored exactly as ``mritumor infer``
does (:mod:`mritumor.predict.volumes`, default slicing), then every aggregation is
applied for k = 1, 3, 5 to the same slice scores, and reported as:

* ``auc``: tumour vs no-tumour volumes, over all volumes (scikit-learn's ROC AUC);
* ``above_twin``: the share of lesion volumes scored above their own clean twin
  (ties count half).

Also the time per volume (write, read, slice and score). The model should have been trained on
phantoms of the same size and lesion scale (the ``test_learning`` recipe:
``--backbone small_cnn --image-size 64`` on ``data synth --image-size 64
--lesion-scale 2.5``); the numbers say how the aggregations behave, not how a model
does on real scans.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

TUMOURS = ("glioma", "meningioma", "pituitary")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--volumes", type=int, default=8, help="Seeds: one matched set each.")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--lesion-scale", type=float, default=2.5)
    arguments = parser.parse_args()

    from sklearn.metrics import roc_auc_score

    from mritumor.predict.ensemble import InferOptions, infer
    from mritumor.predict.predictor import Predictor
    from mritumor.predict.volumes import VolumeOptions, slice_inputs
    from mritumor.volumes.reading import read_volume
    from mritumor.volumes.slicing import slice_volume
    from mritumor.volumes.synth import nifti_bytes, render_volume
    from mritumor.volumes.verdict import AGGREGATIONS, aggregate

    predictor = Predictor(arguments.run)
    options = VolumeOptions()
    scores: dict[tuple[int, str], list[float]] = {}
    spacing = (1.0, 1.0, arguments.image_size / arguments.depth)  # as `data synth --volumes`
    folder = Path(tempfile.mkdtemp(prefix="volume-verdicts-"))
    started = time.perf_counter()
    for seed in range(arguments.volumes):
        for name in (*TUMOURS, "no_tumor"):
            phantom = render_volume(
                np.random.SeedSequence(seed),
                name,
                arguments.image_size,
                arguments.depth,
                arguments.lesion_scale,
            )
            path = folder / f"{seed}-{name}.nii.gz"
            path.write_bytes(nifti_bytes(np.rint(phantom.image * 1000).astype(np.int16), spacing))
            inputs = slice_inputs(slice_volume(read_volume(path), options.slicing))
            predictions = infer([predictor], inputs, InferOptions())
            scores[seed, name] = predictions.tumour_score.tolist()
    seconds = (time.perf_counter() - started) / len(scores)
    rows = []
    for method in AGGREGATIONS:
        for k in (1, 3, 5):
            verdict = {key: aggregate(values, method, k) for key, values in scores.items()}
            labels = [int(name != "no_tumor") for _, name in verdict]
            twins = [
                float(np.sign(verdict[seed, name] - verdict[seed, "no_tumor"]) + 1) / 2
                for seed in range(arguments.volumes)
                for name in TUMOURS
            ]
            rows.append(
                {
                    "aggregation": method,
                    "k": k,
                    "auc": float(roc_auc_score(labels, list(verdict.values()))),
                    "above_twin": float(np.mean(twins)),
                }
            )
    shutil.rmtree(folder)
    print(f"{len(scores)} volumes, {seconds:.3f} s each (write, read, slice, score)")
    print("| aggregation | k | AUC | above its clean twin |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['aggregation']} | {row['k']} | {row['auc']:.3f} | {row['above_twin']:.3f} |")


if __name__ == "__main__":
    main()
