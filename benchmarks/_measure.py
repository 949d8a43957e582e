"""What the benchmark scripts share: each measurement runs in a fresh child process.

A child prints one ``<prefix><json>`` line; the driver runs it, reads that line
back, and describes the machine in the report.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def emit_result(prefix: str, result: dict[str, Any], started: float, **labels: str) -> None:
    """Child side: add peak memory, process time and versions, print the result line."""
    import keras
    import tensorflow as tf

    result.update(
        labels,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        process_seconds=time.perf_counter() - started,
        tensorflow=tf.__version__,
        keras=keras.__version__,
    )
    print(prefix + json.dumps(result), flush=True)


def child_env() -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    env.pop("MRITUMOR_CONFIG", None)  # the settings here are the benchmark's own
    return env


def run_child(command: list[str], prefix: str, label: str) -> dict[str, Any]:
    """Driver side: run one measurement and return its result; exit with its output on failure."""
    print(f"  {label} ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(prefix):
            result: dict[str, Any] = json.loads(line.removeprefix(prefix))
            print(f"    {result['process_seconds']:.0f} s", file=sys.stderr, flush=True)
            return result
    sys.stderr.write(done.stdout + done.stderr)
    raise SystemExit(f"{label} failed (exit status {done.returncode})")
