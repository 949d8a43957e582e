"""How fast ``mritumor data synth`` writes images: prints a small table.

    python benchmarks/synth_speed.py                      # 1,000 images of 256 px, 2 workers
    python benchmarks/synth_speed.py --workers 1 2 --images 400

Images are split evenly over the four classes of the train split and written
(with their masks) into a temporary folder that is deleted afterwards. The
time includes starting the worker processes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from mritumor.core.classes import CLASS_NAMES
from mritumor.data.synth.writer import SynthConfig, write_synthetic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="total images (default 1000)")
    parser.add_argument("--size", type=int, default=256, help="nominal image side (default 256)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="worker counts")
    arguments = parser.parse_args()
    per_class = max(1, arguments.images // len(CLASS_NAMES))
    config = SynthConfig(train=per_class, val=0, test=0, image_size=arguments.size)
    print(f"cpus: {os.cpu_count()}  nominal size: {arguments.size} px")
    print(f"{'workers':>7}  {'images':>6}  {'seconds':>7}  {'images/s':>8}")
    for workers in arguments.workers:
        with tempfile.TemporaryDirectory() as folder:
            summary = write_synthetic_dataset(Path(folder) / "synth", config, workers=workers)
        rate = summary.total / summary.seconds
        print(f"{workers:>7}  {summary.total:>6}  {summary.seconds:>7.1f}  {rate:>8.1f}")


if __name__ == "__main__":
    main()
