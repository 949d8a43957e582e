"""The FastAPI app of ``mritumor serve``: three routes, refusals as JSON, the model loaded once.

FastAPI is imported at the top: only ``mritumor serve`` imports this module, after
checking the ``serve`` extra, and FastAPI reads the routes' annotations from here.

``create_app`` loads the run's model (in safe mode, through the
:class:`~mritumor.predict.predictor.Predictor`) before the app exists, so a run that
cannot be served fails before a port is served, and every request finds it ready.

``POST /predict`` writes the request's uploads into a private temporary folder
(:mod:`mritumor.serve.uploads`), gathers them as ``infer`` gathers files (a
multi-frame DICOM file is one input per frame), and predicts them with
:func:`mritumor.predict.ensemble.infer` through the micro-batcher
(:mod:`mritumor.serve.batching`). Files are read by the same reader and input
pipeline as ``mritumor infer``'s, so an image gets the same probabilities either
way, and the answer is ``infer --format json``'s document
(:meth:`~mritumor.predict.ensemble.Predictions.document`), each image named by the
file name it was sent under. The folder is removed when the answer is ready.

Status codes: 400 for a body that is not a complete multipart/form-data message;
413 for a file over the size limit or more files than allowed; 415 for DICOM on a
server without pydicom; 422 for a request without files, an empty file, a part
under another field name, or a file that cannot be read as an image (the reader's
reason, e.g. not an image, truncated, over the pixel limit). A request with one
unreadable file is refused whole, so that a partial answer is never taken for a full one.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from mritumor import __version__
from mritumor.core.errors import UsageError
from mritumor.data.dicom import is_dicom_file, pydicom_available
from mritumor.predict.ensemble import InferOptions, Predictions, decision_threshold, infer
from mritumor.predict.inputs import ImageInput, gather_scans
from mritumor.predict.predictor import TTA_VIEWS, Predictor
from mritumor.serve import (
    DEFAULT_BATCH_WINDOW_MS,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_UPLOAD_BYTES,
)
from mritumor.serve.batching import MicroBatcher
from mritumor.serve.schemas import ErrorResponse, Health, ModelCard, PredictResponse, ServingLimits
from mritumor.serve.uploads import FIELD, Upload, UploadError, UploadLimits, receive_uploads
from mritumor.volumes.reading import NIFTI_SUFFIXES

_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Not a complete multipart/form-data body."},
    413: {"model": ErrorResponse, "description": "A file over the size limit, or too many files."},
    415: {
        "model": ErrorResponse,
        "description": "A 3-D volume (NIfTI), or DICOM sent to a server without pydicom.",
    },
    422: {
        "model": ErrorResponse,
        "description": "No files, an empty file, another field name, or a file that is not a "
        "readable image.",
    },
}


def create_app(
    run_dir: Path,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS,
    max_batch: int = DEFAULT_MAX_BATCH,
    options: InferOptions | None = None,
) -> FastAPI:
    """The app serving ``run_dir``; ``options`` are how ``infer`` would predict (its defaults).

    Raises what loading the run raises (:class:`~mritumor.run.layout.BundleError`, ...).
    """
    if max_upload_bytes < 1 or max_files < 1:
        raise ValueError("max_upload_bytes and max_files must be at least 1")
    options = options if options is not None else InferOptions()
    if not 1 <= options.tta <= len(TTA_VIEWS):  # refused now, not by every request
        raise UsageError(
            f"inference.tta_samples takes 1 to {len(TTA_VIEWS)} views, got {options.tta}"
        )
    predictor = Predictor(run_dir)
    limits = UploadLimits(max_upload_bytes=max_upload_bytes, max_files=max_files)
    batcher: MicroBatcher[ImageInput, Predictions] = MicroBatcher(
        partial(_predict, predictor, options),
        window_s=batch_window_ms / 1000,
        max_batch=max_batch,
    )
    card = ModelCard.of(
        run_dir,
        predictor.bundle,
        ServingLimits(
            decision_threshold=decision_threshold([predictor], options.threshold),
            triage_band=options.band,
            tta_samples=options.tta,
            mc_dropout_samples=options.mc_samples,
            max_upload_bytes=max_upload_bytes,
            max_files=max_files,
            batch_window_ms=batch_window_ms,
            max_batch=max_batch,
        ),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="mritumor",
        version=__version__,
        summary=f"Brain-tumour MRI classification with the run {run_dir.name}.",
        description="Research software, not a medical device. No authentication: put it "
        "behind a reverse proxy with TLS and access control before exposing it.",
        lifespan=lifespan,
    )
    app.state.predictor = predictor
    app.state.batcher = batcher

    @app.exception_handler(UploadError)
    async def refuse(_: Request, error: UploadError) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, status_code=error.status)

    @app.exception_handler(ClientDisconnect)
    async def gone(_: Request, __: ClientDisconnect) -> JSONResponse:
        """A client that hung up mid-upload: nobody reads this, but no traceback is logged."""
        return JSONResponse({"detail": "the client disconnected"}, status_code=400)

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """The service is up and its model loaded."""
        return Health(run=str(run_dir), model_loaded=True)

    @app.get("/model", response_model=ModelCard)
    async def model() -> ModelCard:
        """The served run's card: classes, threshold, temperature, data and versions."""
        return card

    @app.post(
        "/predict",
        response_model=PredictResponse,
        response_model_exclude_unset=True,
        responses=_REFUSALS,
        openapi_extra={"requestBody": _request_body(limits)},
    )
    async def predict(request: Request) -> dict[str, Any]:
        """Predict the uploaded images: the JSON of `mritumor infer --format json`."""
        with tempfile.TemporaryDirectory(prefix="mritumor-serve-") as folder:
            uploads = await receive_uploads(
                request.headers.get("content-type"),
                request.headers.get("content-length"),
                request.stream(),
                Path(folder),
                limits,
            )
            _refuse_volumes(uploads)
            _refuse_dicom_without_reader(uploads)
            inputs, names = _gathered(uploads)
            predictions = (await batcher.submit(inputs)).subset(names)
        if predictions.failures:
            raise UploadError(422, _unreadable(predictions.failures, uploads))
        return predictions.document()

    return app


def _predict(predictor: Predictor, options: InferOptions, inputs: list[ImageInput]) -> Predictions:
    """One model call for the inputs of a micro-batch, exactly as ``infer`` predicts."""
    return infer([predictor], inputs, options)


def _gathered(uploads: Sequence[Upload]) -> tuple[list[ImageInput], dict[str, str]]:
    """The inputs of the uploads (one per DICOM frame), and each input's label in the answer."""
    inputs = gather_scans([str(upload.path) for upload in uploads], volumes=False).images
    sent_as = {upload.path: upload.name for upload in uploads}
    # The name exactly as sent (not normalised as a Path would be), then any "#frame<k>".
    names = {item.label: sent_as[item.path] + item.label[len(str(item.path)) :] for item in inputs}
    return inputs, names


def _refuse_volumes(uploads: Sequence[Upload]) -> None:
    """A NIfTI upload is a 3-D volume: ``infer`` predicts those, slice by slice, not the server."""
    volumes = [upload.name for upload in uploads if upload.name.lower().endswith(NIFTI_SUFFIXES)]
    if volumes:
        raise UploadError(
            415,
            f"{volumes[0]}: a 3-D volume; this server predicts 2-D images (PNG, JPEG, DICOM "
            "slices): predict volumes with `mritumor infer`",
        )


def _refuse_dicom_without_reader(uploads: Sequence[Upload]) -> None:
    dicom = [upload.name for upload in uploads if is_dicom_file(upload.path)]
    if dicom and not pydicom_available():
        raise UploadError(
            415,
            f"{dicom[0]}: this server cannot read DICOM files (it needs "
            "pip install 'mritumor[dicom]'); send PNG or JPEG",
        )


def _unreadable(failures: dict[str, str], uploads: Sequence[Upload]) -> str:
    """The reader's reasons, with the uploads named as the client named them."""
    reasons = []
    for reason in failures.values():
        told = reason
        for upload in uploads:
            told = told.replace(str(upload.path), upload.name)
        reasons.append(told)
    return "; ".join(reasons)


def _request_body(limits: UploadLimits) -> dict[str, Any]:
    """The multipart body in OpenAPI terms (the route reads the stream itself, within limits)."""
    files = {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "minItems": 1,
        "maxItems": limits.max_files,
        "description": f"PNG, JPEG, ... or DICOM (.dcm) files, at most {limits.max_files}, "
        f"each at most {limits.max_upload_bytes} bytes.",
    }
    schema = {
        "type": "object",
        "properties": {FIELD: files},
        "required": [FIELD],
        "additionalProperties": False,
    }
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
