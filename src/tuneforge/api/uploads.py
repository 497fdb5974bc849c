"""Streaming multipart upload: the file part goes to disk chunk by chunk, with the size limit enforced as bytes
arrive (starlette's form parser would first spool the whole body, so an oversized upload would fill the disk
before it could be refused)."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from fastapi import HTTPException, Request
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_FIELD_BYTES = 64 * 1024
MAX_DRAIN_BYTES = 64 * 1024 * 1024  # read (and drop) at most this much of a refused body so the client sees the 413


class TooLarge(Exception):
    pass


def safe_filename(name: str | None) -> str:
    """The upload's base name with only portable characters (the extension tells the data layer the format)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")[:120]
    return base or "data"


@dataclass
class Upload:
    path: Path | None = None
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    fields: dict[str, str] = field(default_factory=dict)


class _Receiver:
    def __init__(self, dest_dir: Path, file_field: str, max_bytes: int) -> None:
        self.dest_dir, self.file_field, self.max_bytes = dest_dir, file_field, max_bytes
        self.result = Upload()
        self._hash = hashlib.sha256()
        self._fh: IO[bytes] | None = None
        self._name: str | None = None
        self._is_file = False
        self._buf = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._hfield = bytearray()
        self._hvalue = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers, self._buf, self._name, self._is_file = {}, bytearray(), None, False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._hfield += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._hfield).lower()] = bytes(self._hvalue)
        self._hfield, self._hvalue = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = opts.get(b"name", b"").decode("utf-8", "replace")
        if self._name == self.file_field:
            if self.result.path is not None:
                raise HTTPException(422, f"send one file per upload (form field '{self.file_field}' came twice)")
            self._is_file = True
            raw = opts.get(b"filename")
            self.result.filename = safe_filename(raw.decode("utf-8", "replace") if raw else None)
            self.dest_dir.mkdir(parents=True, exist_ok=True)
            self.result.path = self.dest_dir / self.result.filename
            # Stays open across the parser's callbacks; closed when the part ends or the upload is aborted.
            self._fh = open(self._part_path(), "wb")  # noqa: SIM115

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            assert self._fh is not None  # opened when the file part's headers ended
            self.result.size += len(chunk)
            if self.result.size > self.max_bytes:
                raise TooLarge
            self._fh.write(chunk)
            self._hash.update(chunk)
        else:
            self._buf += chunk
            if len(self._buf) > MAX_FIELD_BYTES:
                raise HTTPException(422, f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _part_path(self) -> str:
        assert self.result.path is not None
        return str(self.result.path) + ".part"

    def _part_end(self) -> None:
        if self._is_file:
            assert self._fh is not None and self.result.path is not None
            self._fh.close()
            self._fh = None
            os.replace(self._part_path(), self.result.path)
            self.result.sha256 = self._hash.hexdigest()
        elif self._name:
            self.result.fields[self._name] = self._buf.decode("utf-8", "replace")

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()


def _too_large(max_bytes: int) -> HTTPException:
    return HTTPException(
        413, f"upload larger than this server's limit of {max_bytes:,} bytes (TUNEFORGE_MAX_UPLOAD_BYTES)"
    )


async def _drain(request: Request) -> None:
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > MAX_DRAIN_BYTES:
                break
    except Exception:
        pass


async def receive_upload(request: Request, dest_dir: Path, *, max_bytes: int, file_field: str = "file") -> Upload:
    """Stream a multipart/form-data body: the `file_field` part to `dest_dir/<safe name>`, the other fields into
    `Upload.fields`. On any refusal nothing stays on disk (the caller removes `dest_dir`)."""
    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    boundary = opts.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise HTTPException(
            415,
            f"send the dataset as multipart/form-data with the file in the form field "
            f"'{file_field}' (got Content-Type {request.headers.get('content-type')!r})",
        )
    declared = request.headers.get("content-length")
    # A little slack for the multipart framing and the small option fields around the file.
    if declared and declared.isdigit() and int(declared) > max_bytes + 256 * 1024:
        await _drain(request)
        raise _too_large(max_bytes)
    receiver = _Receiver(dest_dir, file_field, max_bytes)
    parser = MultipartParser(boundary, receiver.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except TooLarge:
        receiver.abort()
        await _drain(request)
        raise _too_large(max_bytes) from None
    except HTTPException:
        receiver.abort()
        raise
    except Exception as exc:
        receiver.abort()
        raise HTTPException(422, f"malformed multipart/form-data body: {exc}") from None
    if receiver.result.path is None or not receiver.result.path.exists():
        raise HTTPException(
            422,
            f"form field '{file_field}' is missing: put the dataset file in a multipart form "
            f"field named '{file_field}' (curl -F {file_field}=@train.jsonl)",
        )
    return receiver.result
