"""Serving throughput: `mritumor serve` under concurrent clients on loopback, next to `mritumor infer`.

    python benchmarks/serve_speed.py                          # a synthetic small_cnn run, 224 px
    python benchmarks/serve_speed.py --clients 1 4 16 --requests 8
    python benchmarks/serve_speed.py --run runs/train-3       # your run (the images stay synthetic)

A folder of synthetic images (``--images``, written once into a temporary folder by
:func:`write_synthetic_dataset`) is predicted by the same run two ways:

* ``serve``: ``mritumor serve --run RUN --port P -q`` is started as a subprocess on a
  free 127.0.0.1 port, twice: with its micro-batching (the default 5 ms window, up to
  64 images per model call) and with ``--max-batch 1`` (one request per model call).
  After /health answers and a warm-up (one request per client, which traces the
  model), ``C`` clients (``--clients``, asyncio + httpx, one connection each) send
  ``--requests`` requests each, one after the other, each holding
  ``--images-per-request`` of the images (round robin). Requests/s and images/s are
  over the wall time of the whole loop; p50 and p99 are the per-request latencies
  (client side: the upload, the queue, the model, the answer). Every answer must be
  200 with one record per image, or the benchmark stops.
* ``infer``: in a fresh process, ``Predictor(run)`` and :func:`mritumor.predict.ensemble.infer`
  (the function behind ``mritumor infer``) on the folder, ``--passes`` times; images/s
  of the fastest pass after the first (the first traces), i.e. with the model loaded,
  as the server has it. And ``mritumor infer FOLDER --run RUN --format json -q --output
  FILE`` end to end, as a user runs it (Python start, imports, model load, tracing).

The server, the clients and the infer process share the machine: on a 2-core machine
the clients' own CPU time (encoding the uploads, parsing the answers) is part of
what the served figures pay for. Each timed loop records the CPU time of the server
process and of the clients per wall second ("cores"), and the machine's other work
(its CPU time from ``/proc/stat`` less both), so a contended row shows as such. Without ``--run``, the run is built as
``benchmarks/infer_speed.py`` builds it: an untrained model (speed does not depend on
the weight values), ``train``'s files around it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _measure import child_env, cpu_model, emit_result, run_child, usable_cores
from infer_speed import build_run, machine_cpu_seconds, predicted_data

from mritumor.data.files import iter_image_files
from mritumor.data.synth.writer import write_synthetic_dataset

RESULT_PREFIX = "SERVE_SPEED_RESULT "
#: The two servers: name and the extra flags of `mritumor serve`.
SERVERS = (
    ("micro-batched (5 ms, up to 64)", []),
    ("one request per model call", ["--max-batch", "1"]),
)


def mritumor_command() -> list[str]:
    script = Path(sys.executable).with_name("mritumor")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mritumor"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --------------------------------------------------------------------------- child processes


def build(args: argparse.Namespace) -> None:
    """Child: the run, as infer_speed.py builds it."""
    started = time.perf_counter()
    build_run(args, args.backbone, args.run)
    emit_result(RESULT_PREFIX, {}, started, mode="build")


def measure_infer(args: argparse.Namespace) -> None:
    """Child: ``infer`` on the folder with the model loaded, ``--passes`` times."""
    started = time.perf_counter()
    from mritumor.core.environment import import_tensorflow

    import_tensorflow()
    from mritumor.predict.ensemble import InferOptions, infer
    from mritumor.predict.inputs import gather_scans
    from mritumor.predict.predictor import Predictor

    predictor = Predictor(args.run)
    passes = []
    for _ in range(args.passes):
        begin = time.perf_counter()
        inputs = gather_scans([str(args.folder)]).images
        predictions = infer([predictor], inputs, InferOptions(batch_size=args.batch_size))
        passes.append(time.perf_counter() - begin)
        if predictions.failures or len(predictions.labels) != len(inputs):
            raise SystemExit(f"unexpected failures: {predictions.failures}")
    emit_result(
        RESULT_PREFIX,
        {"images": len(predictions.labels), "passes": passes},
        started,
        mode="infer",
    )


# --------------------------------------------------------------------------- the server


class Server:
    """``mritumor serve`` in a subprocess, stopped with Ctrl-C (SIGINT) at the end."""

    def __init__(self, run_dir: Path, flags: list[str], log: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        self.log = log.open("w")
        command = [*mritumor_command(), "serve", "--run", str(run_dir), "--port", port, "-q"]
        self.process = subprocess.Popen(
            [*command, *flags], env=child_env(), stdout=self.log, stderr=subprocess.STDOUT
        )

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"mritumor serve exited: see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise SystemExit("mritumor serve did not answer /health in 180 s")

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid`` so far, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    server: Server, images: list[tuple[str, bytes]], clients: int, requests: int, per_request: int
) -> dict[str, Any]:
    """``clients`` clients, ``requests`` requests each, one after the other; after a warm-up.

    Besides the times, the CPU seconds of the server, of these clients and of the whole
    machine over the timed loop: what is left of the machine's is other work."""
    latencies: list[float] = []
    next_image = 0

    def files() -> list[tuple[str, tuple[str, bytes]]]:
        nonlocal next_image
        chosen = [images[(next_image + i) % len(images)] for i in range(per_request)]
        next_image += per_request
        return [("files", image) for image in chosen]

    async def one_client(client: httpx.AsyncClient, count: int, timed: bool) -> None:
        for _ in range(count):
            sent = files()
            begin = time.perf_counter()
            answer = await client.post("/predict", files=sent)
            if answer.status_code != 200 or len(answer.json()["predictions"]) != len(sent):
                raise SystemExit(f"unexpected answer {answer.status_code}: {answer.text[:300]}")
            if timed:
                latencies.append(time.perf_counter() - begin)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    pid = server.process.pid
    async with httpx.AsyncClient(base_url=server.url, timeout=300, limits=limits) as client:
        await asyncio.gather(*(one_client(client, 1, False) for _ in range(clients)))
        machine, served, cpu = machine_cpu_seconds(), process_cpu_seconds(pid), time.process_time()
        begin = time.perf_counter()
        await asyncio.gather(*(one_client(client, requests, True) for _ in range(clients)))
        seconds = time.perf_counter() - begin
        client_cpu = time.process_time() - cpu
        server_cpu = process_cpu_seconds(pid) - served
        machine_after = machine_cpu_seconds()
    other = None
    if machine is not None and machine_after is not None:
        other = max(0.0, machine_after - machine - server_cpu - client_cpu) / seconds
    return {
        "clients": clients,
        "requests": clients * requests,
        "images": clients * requests * per_request,
        "seconds": seconds,
        "server_cores": server_cpu / seconds,
        "client_cores": client_cpu / seconds,
        "other_cores": other,
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
    }


def time_cli(folder: Path, run_dir: Path, work: Path) -> dict[str, Any]:
    output = work / "infer.json"
    command = [*mritumor_command(), "infer", str(folder), "--run", str(run_dir)]
    command += ["--format", "json", "-q", "--output", str(output)]
    print("  infer / cli ...", file=sys.stderr, flush=True)
    begin = time.perf_counter()
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - begin
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"mritumor infer failed (exit status {done.returncode})")
    return {
        "seconds": seconds,
        "command": shlex.join(["mritumor", *command[len(mritumor_command()) :]]),
    }


# --------------------------------------------------------------------------- the driver


def spawn(args: argparse.Namespace, mode: str, run_dir: Path, data: Path, folder: Path) -> Any:
    command = [sys.executable, str(Path(__file__).resolve()), "--_one", mode]
    command += ["--run", str(run_dir), "--data", str(data), "--folder", str(folder)]
    command += ["--backbone", args.backbone, "--image-size", str(args.image_size)]
    command += ["--batch-size", str(args.batch_size), "--passes", str(args.passes)]
    return run_child(command, RESULT_PREFIX, mode)


def report(args: argparse.Namespace, rows: list[tuple[str, dict[str, Any]]], infer: Any) -> None:
    cli, in_process = infer["cli"], infer["process"]
    measured = min(in_process["passes"][1:] or in_process["passes"])
    print(f"command: python benchmarks/serve_speed.py {shlex.join(sys.argv[1:])}".rstrip())
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs ({usable_cores()} usable), no GPU used; "
        f"TensorFlow {in_process['tensorflow']}, Keras {in_process['keras']}, "
        f"Python {platform.python_version()}"
    )
    run = args.run or f"synthetic {args.backbone}, {args.image_size} px, untrained"
    print(
        f"run: {run}; images: {args.images} synthetic images of ~{args.source_size} px, "
        f"{args.images_per_request} per request\n"
    )
    print(
        "| server | clients | requests | requests/s | images/s | p50 (ms) | p99 (ms) "
        "| server cores | client cores | other work (cores) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in rows:
        other = "-" if row["other_cores"] is None else f"{row['other_cores']:.2f}"
        print(
            f"| {name} | {row['clients']} | {row['requests']} "
            f"| {row['requests'] / row['seconds']:.1f} | {row['images'] / row['seconds']:.1f} "
            f"| {1000 * row['p50']:.0f} | {1000 * row['p99']:.0f} "
            f"| {row['server_cores']:.2f} | {row['client_cores']:.2f} | {other} |"
        )
    images = in_process["images"]
    print("\n| mritumor infer | images | seconds | images/s |")
    print("|---|---:|---:|---:|")
    print(
        f"| in process, model loaded (fastest pass after the first) | {images} "
        f"| {measured:.2f} | {images / measured:.1f} |"
    )
    print(
        f"| command end to end (start, imports, load, tracing) | {images} "
        f"| {cli['seconds']:.2f} | {images / cli['seconds']:.1f} |"
    )
    print(f"\nCLI command: {cli['command']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run folder [default: build a synthetic one]")
    parser.add_argument("--backbone", default="small_cnn", help="of the built run (small_cnn)")
    parser.add_argument("--image-size", type=int, default=224, help="of the built run (224)")
    parser.add_argument("--images", type=int, default=64, help="synthetic images (64)")
    parser.add_argument("--source-size", type=int, default=256, help="their side (256)")
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 8], help="concurrent clients (1 8)"
    )
    parser.add_argument("--requests", type=int, default=16, help="requests per client (16)")
    parser.add_argument("--images-per-request", type=int, default=1, help="(1)")
    parser.add_argument("--batch-size", type=int, default=32, help="infer's batch (32)")
    parser.add_argument("--passes", type=int, default=2, help="infer passes, at least 2 (2)")
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one == "build":
        build(args)
        return
    if args._one == "infer":
        measure_infer(args)
        return
    if args.passes < 2:
        parser.error("--passes must be at least 2: the first pass is not measured")
    started = time.perf_counter()
    config = predicted_data(args)
    rows: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="serve-speed-") as tmp:
        work = Path(tmp)
        data, run_dir = work / "data", args.run or work / "runs" / args.backbone
        folder = data / "train"
        write_synthetic_dataset(data, config)
        if args.run is None:
            spawn(args, "build", run_dir, data, folder)
        images = [(path.name, path.read_bytes()) for path in iter_image_files(folder)]
        for name, flags in SERVERS:
            print(f"  serve / {name} ...", file=sys.stderr, flush=True)
            with Server(run_dir, flags, work / "serve.log") as server:
                for clients in args.clients:
                    rows.append(
                        (
                            name,
                            asyncio.run(
                                load(
                                    server,
                                    images,
                                    clients,
                                    args.requests,
                                    args.images_per_request,
                                )
                            ),
                        )
                    )
        infer = {
            "process": spawn(args, "infer", run_dir, data, folder),
            "cli": time_cli(folder, run_dir, work),
        }
    report(args, rows, infer)
    load_average = os.getloadavg()[0]
    print(
        f"\nload average (1 min) at the end: {load_average:.2f}; total {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
