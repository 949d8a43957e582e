"""``mritumor serve`` as users run it: a real uvicorn process on a free loopback port, and
schemathesis against the app's own ``/openapi.json``."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import PREDICT_DATA, BuiltRuns, SyntheticData

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402


@pytest.fixture(scope="module")
def data_root(synthetic_data: SyntheticData) -> Path:
    return synthetic_data(**PREDICT_DATA)


@pytest.fixture(scope="module")
def run_dir(data_root: Path, built_run: BuiltRuns) -> Path:
    return built_run(data_root)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server(run_dir: Path, tmp_path: Path) -> Iterator[str]:
    """``python -m mritumor serve`` on a free port; its URL once /health answers."""
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mritumor", "serve", "--run", str(run_dir), "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "the server did not answer /health in 90 s"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then lets SIGTERM end the process as it would have.
        assert process.wait(timeout=30) == -signal.SIGTERM
        output = (tmp_path / "serve.log").read_text()
        assert "Traceback" not in output and "Finished server process" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_a_real_server_answers_concurrent_clients(server: str, data_root: Path) -> None:
    paths = sorted((data_root / "test").rglob("*.jpg"))[:6]

    async def clients() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post("/predict", files=[("files", (p.name, p.read_bytes()))])
                    for p in paths
                ),
                client.post("/predict", files=[("files", ("x.png", b"not an image"))]),
            )

    *answers, refused = asyncio.run(clients())
    for path, answer in zip(paths, answers, strict=True):
        assert answer.status_code == 200, answer.text
        [record] = answer.json()["predictions"]
        assert record["path"] == path.name
        assert sum(record["probabilities"].values()) == pytest.approx(1.0)
    assert refused.status_code == 422
    assert refused.json()["detail"].startswith("cannot read image x.png")
    card = httpx.get(f"{server}/model", timeout=10).json()
    assert card["backbone"] == "small_cnn"
    assert httpx.get(f"{server}/openapi.json", timeout=10).json()["info"]["title"] == "mritumor"


# --------------------------------------------------------------------------- schemathesis


@pytest.fixture(scope="module")
def served_app(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mritumor.serve.app import create_app

    run = Path(shutil.copytree(run_dir, tmp_path_factory.mktemp("fuzzed") / "run"))
    return create_app(run, max_upload_bytes=20_000, max_files=4)


@pytest.fixture(scope="module")
def api_schema(served_app: Any) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", served_app)


OPERATIONS = [("/health", "GET", "positive"), ("/model", "GET", "positive")] + [
    ("/predict", "POST", mode) for mode in ("positive", "negative")
]


def test_the_fuzzed_operations_are_all_there_are(api_schema: Any) -> None:
    listed = {(op.ok().path, op.ok().method.upper()) for op in api_schema.get_all_operations()}
    assert listed == {(path, method) for path, method, _ in OPERATIONS}


@pytest.mark.parametrize(("path", "method", "mode"), OPERATIONS)
def test_no_generated_request_is_a_server_error(
    api_schema: Any, path: str, method: str, mode: str
) -> None:
    """Requests schemathesis generates from /openapi.json, within the schema and (negative)
    outside it: never a 5xx, always a documented status with a body of its documented shape.

    Hypothesis drives the strategy directly: schemathesis's pytest loader for fixtures does
    not run under pytest 9.
    """
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        response_schema_conformance,
        status_code_conformance,
    )

    strategy = api_schema[path][method].as_strategy(
        generation_mode=schemathesis.GenerationMode(mode)
    )

    @given(case=strategy)
    @settings(
        max_examples=20,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def answers_without_a_server_error(case: Any) -> None:
        case.call_and_validate(
            checks=[not_a_server_error, status_code_conformance, response_schema_conformance]
        )

    answers_without_a_server_error()
