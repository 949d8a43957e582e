"""Reading a ``POST /predict`` body: multipart parts streamed to files, within the limits.

The body is parsed as it arrives (python-multipart's streaming parser) and each
file part is written straight into the request's private temporary folder, so an
upload is never held whole in memory, and one over the size limit is refused at the
chunk that crosses it, without reading the rest. A request that announces a body
larger than ``max_files`` uploads at the limit (``Content-Length``) is refused before
anything is read.

Each upload keeps the file name the client gave it, which names it in the answer; on
disk it gets a tidied copy of that name in a folder of its own (``<k>/<name>``), so
two uploads with the same name never meet, and a ``.dcm`` name still marks a DICOM
file (:func:`mritumor.data.dicom.is_dicom_file` recognises DICOM by its suffix).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

#: The multipart field that carries the images, one part per file.
FIELD = "files"
#: Room for the multipart framing (boundaries, part headers) of a request at the limits.
_FRAMING_BYTES = 64 * 1024


class UploadError(Exception):
    """A request the service refuses: its HTTP status and one sentence for ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class UploadLimits:
    max_upload_bytes: int
    """Largest file, in bytes."""
    max_files: int
    """Most files in one request."""

    @property
    def max_request_bytes(self) -> int:
        return self.max_files * (self.max_upload_bytes + _FRAMING_BYTES)


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the name the client gave it, and where its bytes are."""

    name: str
    path: Path


def readable_size(size: int) -> str:
    """``20 MB``, ``1.5 kB`` or ``300 bytes`` (decimal units, as ``--max-upload-mb``)."""
    if size >= 1_000_000:
        return f"{size / 1_000_000:g} MB"
    if size >= 1_000:
        return f"{size / 1_000:g} kB"
    return f"{size} bytes"


async def receive_uploads(
    content_type: str | None,
    content_length: str | None,
    body: AsyncIterator[bytes],
    folder: Path,
    limits: UploadLimits,
) -> list[Upload]:
    """The files of a multipart body, written under ``folder``; :class:`UploadError` if refused."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise UploadError(
            400, f"send the images as multipart/form-data, one part named {FIELD!r} per file"
        )
    announced = _announced_length(content_length)
    if announced is not None and announced > limits.max_request_bytes:
        raise UploadError(
            413,
            f"the request is {readable_size(announced)}, over the "
            f"{readable_size(limits.max_request_bytes)} of {limits.max_files} files at the "
            f"{readable_size(limits.max_upload_bytes)} limit",
        )
    writer = _PartWriter(folder, limits)
    try:
        parser = MultipartParser(options[b"boundary"], writer.callbacks())
        received = 0
        async for chunk in body:
            received += len(chunk)
            if received > limits.max_request_bytes:
                raise UploadError(
                    413, f"the request is over {readable_size(limits.max_request_bytes)}"
                )
            parser.write(chunk)
    except FormParserError:
        raise UploadError(400, "the multipart body is malformed") from None
    finally:
        writer.close()
    if parser.state != MultipartState.END:
        raise UploadError(400, "the multipart body is incomplete: it lacks its closing boundary")
    if not writer.uploads:
        raise UploadError(422, f"no files: send one or more images in the field {FIELD!r}")
    return writer.uploads


def _announced_length(header: str | None) -> int | None:
    if header is None:
        return None
    try:
        return int(header)
    except ValueError:
        raise UploadError(400, f"Content-Length {header!r} is not a number") from None


class _PartWriter:
    """The parser's callbacks: each file part into its own file, sizes counted as they come.

    The writes happen in the event loop: a chunk of a request body into a local file
    takes microseconds, less than handing it to a thread would.
    """

    def __init__(self, folder: Path, limits: UploadLimits) -> None:
        self.folder = folder
        self.limits = limits
        self.uploads: list[Upload] = []
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._name = ""
        self._path: Path | None = None
        self._file: IO[bytes] | None = None
        self._size = 0

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._open,
            "on_part_data": self._write,
            "on_part_end": self._finish,
        }

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _open(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        field = options.get(b"name", b"").decode("utf-8", errors="replace")
        if field != FIELD:
            raise UploadError(
                422, f"unexpected form field {field!r}: send each image as a part named {FIELD!r}"
            )
        index = len(self.uploads)
        if index >= self.limits.max_files:
            raise UploadError(
                413, f"too many files: at most {self.limits.max_files} in one request"
            )
        given = options.get(b"filename", b"").decode("utf-8", errors="replace")
        self._name = given or f"upload-{index + 1}"
        self._path = self.folder / str(index) / _disk_name(self._name, index)
        self._path.parent.mkdir()
        self._file = self._path.open("wb")
        self._size = 0

    def _write(self, data: bytes, start: int, end: int) -> None:
        assert self._file is not None
        self._size += end - start
        if self._size > self.limits.max_upload_bytes:
            raise UploadError(
                413,
                f"{self._name} is over the {readable_size(self.limits.max_upload_bytes)} "
                "limit per file",
            )
        self._file.write(data[start:end])

    def _finish(self) -> None:
        self.close()
        if self._size == 0:
            raise UploadError(422, f"{self._name} is empty (0 bytes)")
        assert self._path is not None
        self.uploads.append(Upload(self._name, self._path))


def _disk_name(name: str, index: int) -> str:
    """A safe file name for an upload: its last path component, plain characters, no dot first."""
    base = re.split(r"[/\\]", name)[-1]
    tidy = re.sub(r"[^A-Za-z0-9._-]", "_", base)[-120:].lstrip(".")
    return tidy or f"upload-{index + 1}"
