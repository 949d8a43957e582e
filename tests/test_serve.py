"""``mritumor serve`` through FastAPI's TestClient: every route and refusal, the same numbers as
``infer``, micro-batching, and the command line (mritumor.serve, mritumor.cli.serve).

A real uvicorn process and the schemathesis run are in test_serve_http.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from helpers import PREDICT_DATA, BuiltRuns, SyntheticData, blank_png, smooth_image
from mritumor import __version__
from mritumor.cli.main import app as cli_app
from mritumor.predict.ensemble import NO_TUMOUR, REVIEW, TUMOUR
from mritumor.run.bundle import read_bundle, update_bundle
from mritumor.serve.batching import MicroBatcher
from mritumor.serve.uploads import UploadError, UploadLimits, receive_uploads

with warnings.catch_warnings():  # starlette 1.x would rather have httpx2; httpx works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

MAX_UPLOAD = 50_000
MAX_FILES = 16
Files = list[tuple[str, tuple[str, bytes, str]]]


@pytest.fixture(scope="module")
def data_root(synthetic_data: SyntheticData) -> Path:
    return synthetic_data(**PREDICT_DATA)


@pytest.fixture(scope="module")
def run_dir(
    data_root: Path, built_run: BuiltRuns, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The infer tests' run, copied, with a threshold so that answers carry decision and triage."""
    run = Path(shutil.copytree(built_run(data_root), tmp_path_factory.mktemp("served") / "run"))
    update_bundle(run, threshold=0.25, threshold_info={"strategy": "youden", "split": "val"})
    return run


@pytest.fixture(scope="module")
def client(run_dir: Path) -> Iterator[TestClient]:
    from mritumor.serve.app import create_app

    app = create_app(run_dir, max_upload_bytes=MAX_UPLOAD, max_files=MAX_FILES)
    with TestClient(app) as test_client:
        yield test_client


def images(data_root: Path) -> list[Path]:
    return sorted((data_root / "test").rglob("*.jpg"))


def png_bytes(pixels: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def as_files(*named: tuple[str, bytes]) -> Files:
    return [("files", (name, content, "application/octet-stream")) for name, content in named]


def post(client: TestClient, *named: tuple[str, bytes]) -> Any:
    return client.post("/predict", files=as_files(*named))


# --------------------------------------------------------------------------- routes


def test_health_says_the_model_is_loaded(client: TestClient, run_dir: Path) -> None:
    answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "run": str(run_dir), "model_loaded": True}


def test_the_model_card_is_the_bundles(client: TestClient, run_dir: Path) -> None:
    bundle = read_bundle(run_dir)
    card = client.get("/model").json()
    assert card["class_names"] == bundle.class_names
    assert card["negative_class"] == "no_tumor"
    assert card["threshold"] == 0.25
    assert card["threshold_info"] == {"strategy": "youden", "split": "val"}
    assert card["temperature"] == 1.0 and card["temperature_source"] is None
    assert card["dataset_fingerprint"] == bundle.dataset_fingerprint
    assert card["versions"] == bundle.versions
    assert card["backbone"] == "small_cnn"
    assert card["input"] == {"image_size": 32, "channels": 3, "resize": "pad"}
    assert card["mritumor_version"] == __version__
    assert card["serving"]["decision_threshold"] == 0.25
    assert card["serving"]["max_upload_bytes"] == MAX_UPLOAD
    assert card["serving"]["max_files"] == MAX_FILES


def test_served_answers_equal_infer_json(
    client: TestClient, run_dir: Path, data_root: Path
) -> None:
    result = CliRunner().invoke(
        cli_app,
        ["infer", str(data_root / "test"), "--run", str(run_dir), "--format", "json", "-q"],
    )
    assert result.exit_code == 0, result.output
    inferred = json.loads(result.stdout)
    paths = [Path(record["path"]) for record in inferred["predictions"]]
    assert len(paths) == 12
    answer = post(client, *((path.name, path.read_bytes()) for path in paths))
    assert answer.status_code == 200, answer.text
    served = answer.json()
    assert served["threshold"] == inferred["threshold"] == 0.25
    assert served["unreadable"] == inferred["unreadable"] == {}
    for mine, theirs in zip(served["predictions"], inferred["predictions"], strict=True):
        assert mine["path"] == Path(theirs["path"]).name
        assert mine.keys() == theirs.keys()
        for key in ("predicted_class", "decision", "triage", "note"):
            assert mine[key] == theirs[key]
        for name, p in theirs["probabilities"].items():
            assert mine["probabilities"][name] == pytest.approx(p, abs=1e-6)
        assert mine["tumour_score"] == pytest.approx(theirs["tumour_score"], abs=1e-6)
        assert mine["entropy"] == pytest.approx(theirs["entropy"], abs=1e-6)
    assert {record["triage"] for record in served["predictions"]} <= {TUMOUR, REVIEW, NO_TUMOUR}


def test_a_multi_frame_dicom_file_is_one_record_per_frame(
    client: TestClient, run_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("pydicom")
    import numpy as np

    from helpers import write_dicom

    frames = np.random.default_rng(3).integers(0, 1001, (3, 40, 48), dtype=np.uint16)
    scan = write_dicom(tmp_path / "scan.dcm", frames)
    answer = post(client, ("series 7.DCM", scan.read_bytes()))
    assert answer.status_code == 200, answer.text
    records = answer.json()["predictions"]
    assert [r["path"] for r in records] == [f"series 7.DCM#frame{k}" for k in (1, 2, 3)]
    inferred = CliRunner().invoke(
        cli_app, ["infer", str(scan), "--run", str(run_dir), "--format", "json", "-q"]
    )
    expected = json.loads(inferred.stdout)["predictions"]
    for mine, theirs in zip(records, expected, strict=True):
        assert mine["tumour_score"] == pytest.approx(theirs["tumour_score"], abs=1e-6)


def test_uploads_keep_their_names_and_a_tiny_image_has_a_note(
    client: TestClient, data_root: Path
) -> None:
    image = images(data_root)[0].read_bytes()
    tiny = blank_png(8, 8)
    answer = post(client, ("same.jpg", image), ("same.jpg", image), ("../../up/tiny.png", tiny))
    assert answer.status_code == 200, answer.text
    records = answer.json()["predictions"]
    assert [r["path"] for r in records] == ["same.jpg", "same.jpg", "../../up/tiny.png"]
    assert records[0]["probabilities"] == records[1]["probabilities"]
    assert records[0]["note"] is None
    assert records[2]["note"] == "smaller than 32 px (8x8), upsampled to the model's input"


def test_an_answer_names_each_upload_exactly_as_sent(client: TestClient, data_root: Path) -> None:
    image = images(data_root)[0].read_bytes()
    sent = ["./scan.jpg", "dir//scan.jpg", "scan.jpg/", "a\\b.jpg"]
    answer = post(client, *((name, image) for name in sent))
    assert answer.status_code == 200, answer.text
    assert [r["path"] for r in answer.json()["predictions"]] == sent


# --------------------------------------------------------------------------- refusals


def test_a_file_that_is_not_an_image_is_422_in_its_own_name(
    client: TestClient, data_root: Path
) -> None:
    answer = post(client, ("good.jpg", images(data_root)[0].read_bytes()), ("notes.png", b"hi"))
    assert answer.status_code == 422
    assert answer.json() == {
        "detail": "cannot read image notes.png: not an image file Pillow can identify"
    }


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (png_bytes(smooth_image(1))[:300], "cannot read image scan.png"),
        (blank_png(14_000, 14_000), "over the 89478485-pixel limit (decompression-bomb guard)"),
    ],
    ids=["truncated", "decompression-bomb"],
)
def test_unreadable_images_are_422_with_the_readers_reason(
    client: TestClient, content: bytes, reason: str
) -> None:
    answer = post(client, ("scan.png", content))
    assert answer.status_code == 422
    assert reason in answer.json()["detail"]
    assert "mritumor-serve-" not in answer.json()["detail"]  # no server paths


def test_a_file_over_the_limit_is_413(client: TestClient) -> None:
    answer = post(client, ("huge.png", b"\0" * (MAX_UPLOAD + 1)))
    assert answer.status_code == 413
    assert answer.json() == {"detail": "huge.png is over the 50 kB limit per file"}


def test_too_many_files_is_413(client: TestClient) -> None:
    answer = post(client, *((f"{k}.png", b"x") for k in range(MAX_FILES + 1)))
    assert answer.status_code == 413
    assert answer.json() == {"detail": f"too many files: at most {MAX_FILES} in one request"}


def test_an_empty_file_is_422(client: TestClient) -> None:
    answer = post(client, ("empty.png", b""))
    assert answer.status_code == 422
    assert answer.json() == {"detail": "empty.png is empty (0 bytes)"}


def test_no_files_and_another_field_are_422(client: TestClient) -> None:
    nothing = client.post(
        "/predict",
        content=b"--B--\r\n",
        headers={"content-type": "multipart/form-data; boundary=B"},
    )
    assert nothing.status_code == 422
    assert nothing.json() == {"detail": "no files: send one or more images in the field 'files'"}
    other = client.post("/predict", files=[("image", ("a.png", b"x", "image/png"))])
    assert other.status_code == 422
    assert "unexpected form field 'image'" in other.json()["detail"]


def test_a_body_that_is_not_complete_multipart_is_400(client: TestClient) -> None:
    as_json = client.post("/predict", json={"files": ["a.png"]})
    assert as_json.status_code == 400
    assert "multipart/form-data" in as_json.json()["detail"]
    cut = client.post(
        "/predict",
        content=b'--B\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\nab',
        headers={"content-type": "multipart/form-data; boundary=B"},
    )
    assert cut.status_code == 400
    assert "incomplete" in cut.json()["detail"]


def test_dicom_on_a_server_without_pydicom_is_415(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mritumor.serve.app.pydicom_available", lambda: False)
    answer = post(client, ("scan.dcm", b"DICM"))
    assert answer.status_code == 415
    assert "pip install 'mritumor[dicom]'" in answer.json()["detail"]


@pytest.mark.parametrize("name", ["scan.nii.gz", "SCAN.NII"])
def test_a_volume_is_refused_with_the_command_that_predicts_it(
    client: TestClient, name: str
) -> None:
    answer = post(client, (name, b"\x1f\x8b volume"), ("a.png", b"png"))
    assert answer.status_code == 415
    assert answer.json()["detail"] == (
        f"{name}: a 3-D volume; this server predicts 2-D images (PNG, JPEG, DICOM slices): "
        "predict volumes with `mritumor infer`"
    )


def test_a_client_that_hangs_up_mid_upload_costs_no_traceback(client: TestClient) -> None:
    """Raw ASGI: half a body, then the disconnect a server reports when the client is gone."""
    messages = [
        {"type": "http.request", "body": b'--B\r\nContent-Disposition: form-data; name="files"',
         "more_body": True},
        {"type": "http.disconnect"},
    ]  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/predict", "raw_path": b"/predict", "root_path": "",
        "query_string": b"", "server": ("testserver", 80), "client": ("testclient", 1),
        "headers": [(b"content-type", b"multipart/form-data; boundary=B")],
    }  # fmt: skip
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 400


def test_unknown_routes_and_methods_answer_json(client: TestClient) -> None:
    assert client.get("/nothing").json() == {"detail": "Not Found"}
    wrong = client.get("/predict")
    assert wrong.status_code == 405 and wrong.json() == {"detail": "Method Not Allowed"}


def test_the_openapi_schema_describes_routes_answers_and_refusals(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    predict = schema["paths"]["/predict"]["post"]
    body = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["files"]["maxItems"] == MAX_FILES
    assert set(predict["responses"]) == {"200", "400", "413", "415", "422"}
    assert {"PredictResponse", "PredictionRecord", "ModelCard", "Health", "ErrorResponse"} <= set(
        schema["components"]["schemas"]
    )
    assert set(schema["paths"]) == {"/health", "/model", "/predict"}


# --------------------------------------------------------------------------- reading uploads


async def chunks(parts: list[bytes], taken: list[int]) -> AsyncIterator[bytes]:
    for part in parts:
        taken.append(len(part))
        yield part


def test_an_upload_over_the_limit_is_refused_without_reading_the_rest(tmp_path: Path) -> None:
    head = b'--B\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n'
    body = [head, *([b"\0" * 1000] * 100), b"\r\n--B--\r\n"]
    taken: list[int] = []
    limits = UploadLimits(max_upload_bytes=5000, max_files=100)
    with pytest.raises(UploadError) as refused:
        asyncio.run(
            receive_uploads(
                "multipart/form-data; boundary=B", None, chunks(body, taken), tmp_path, limits
            )
        )
    assert refused.value.status == 413
    assert len(taken) == 7  # the head and the chunk that crossed 5000 bytes


def test_an_announced_length_over_the_limits_is_refused_before_reading(tmp_path: Path) -> None:
    taken: list[int] = []
    limits = UploadLimits(max_upload_bytes=1000, max_files=2)
    with pytest.raises(UploadError) as refused:
        asyncio.run(
            receive_uploads(
                "multipart/form-data; boundary=B",
                str(10**9),
                chunks([b"never"], taken),
                tmp_path,
                limits,
            )
        )
    assert refused.value.status == 413 and "1000 MB" in refused.value.detail
    assert taken == []


# --------------------------------------------------------------------------- micro-batching


def test_two_concurrent_requests_share_one_model_call(
    client: TestClient, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app: Any = client.app
    predictor = app.state.predictor
    calls: list[int] = []
    predict = predictor.predict

    def spy(inputs: Any, **options: Any) -> Any:
        calls.append(len(inputs))
        return predict(inputs, **options)

    monkeypatch.setattr(predictor, "predict", spy)
    monkeypatch.setattr(app.state.batcher, "window_s", 1.0)  # wide enough for a slow machine
    first, second = images(data_root)[:2]
    answers: dict[str, Any] = {}

    def send(path: Path) -> None:
        answers[path.name] = post(client, (path.name, path.read_bytes()))

    threads = [threading.Thread(target=send, args=(path,)) for path in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert calls == [2]
    for name, answer in answers.items():
        assert answer.status_code == 200
        assert [r["path"] for r in answer.json()["predictions"]] == [name]


def test_the_batcher_respects_max_batch_and_never_splits_a_request() -> None:
    calls: list[list[str]] = []

    def predict(inputs: list[str]) -> list[str]:
        calls.append(inputs)
        return inputs

    async def scenario() -> list[list[str]]:
        batcher: MicroBatcher[str, list[str]] = MicroBatcher(predict, window_s=0.2, max_batch=4)
        batcher.start()
        try:
            return await asyncio.gather(
                batcher.submit(["a1", "a2"]), batcher.submit(["b1", "b2"]), batcher.submit(["c"])
            )
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert calls == [["a1", "a2", "b1", "b2"], ["c"]]
    assert results == [calls[0], calls[0], calls[1]]


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    def predict(inputs: list[str]) -> list[str]:
        if "bad" in inputs:
            raise RuntimeError("model failed")
        return inputs

    async def scenario() -> tuple[BaseException | None, list[str]]:
        batcher: MicroBatcher[str, list[str]] = MicroBatcher(predict, window_s=0.0, max_batch=8)
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit(["early"])
        batcher.start()
        try:
            failed = None
            try:
                await batcher.submit(["bad"])
            except RuntimeError as error:
                failed = error
            return failed, await batcher.submit(["good"])
        finally:
            await batcher.stop()

    failed, later = asyncio.run(scenario())
    assert str(failed) == "model failed" and later == ["good"]


# --------------------------------------------------------------------------- the command


def test_serve_command_binds_loads_and_hands_over_to_uvicorn(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: dict[str, Any] = {}

    def fake_run(app: Any, sock: socket.socket, *, access_log: bool) -> None:
        served.update(app=app, port=sock.getsockname()[1], access_log=access_log)
        sock.close()

    monkeypatch.setattr("mritumor.serve.server.run", fake_run)
    command = ["serve", "--run", str(run_dir), "--port", "0", "--max-files", "3", "-q"]
    result = CliRunner().invoke(cli_app, [*command, "--set", "inference.tta_samples=2"])
    assert result.exit_code == 0, result.output
    assert f"Serving {run_dir} at http://127.0.0.1:{served['port']}" in result.stderr
    assert served["access_log"] is False
    with TestClient(served["app"]) as test_client:
        limits = test_client.get("/model").json()["serving"]
    assert limits["max_files"] == 3 and limits["tta_samples"] == 2


def test_tta_beyond_the_views_is_refused_before_serving(run_dir: Path) -> None:
    result = CliRunner().invoke(
        cli_app, ["serve", "--run", str(run_dir), "--port", "0", "--set", "inference.tta_samples=9"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: inference.tta_samples takes 1 to 8 views, got 9"


def test_a_port_in_use_is_one_line_and_exit_1(run_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["serve", "--run", str(run_dir), "--port", str(port)])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: port {port} on 127.0.0.1 is already in use; stop what holds it or pick "
        "another with --port"
    )


def test_without_the_serve_extra_the_error_names_it(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    result = CliRunner().invoke(cli_app, ["serve", "--run", str(run_dir)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: serving needs FastAPI and uvicorn: pip install 'mritumor[serve]' "
        "(fastapi is not installed)"
    )


def test_a_run_that_cannot_be_served_is_one_line_and_frees_the_port(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--run", str(tmp_path / "gone"), "--port", "0"])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.output


def test_serve_help_imports_no_web_or_model_library(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from mritumor.cli.main import app\n"
        "assert CliRunner().invoke(app, ['serve', '--help']).exit_code == 0\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'fastapi', 'uvicorn', 'starlette', 'tensorflow', 'keras'}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
