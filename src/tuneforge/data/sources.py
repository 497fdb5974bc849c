"""Sources: turn a `data_path` into a stream of records, each with the place it came from.

A record is one row as a dict plus its 1-based `row` number and, for text files, the 1-based `line` an editor
shows (for CSV the file line, header included). Reading problems (invalid UTF-8, JSON syntax errors, ragged CSV
rows) come back as records that carry a `DataIssue` instead of data, so the validator can list every problem
instead of stopping at the first exception.

Everything streams: JSON Lines and CSV are read line by line, JSON arrays are decoded one element at a time from
a bounded buffer, Parquet by row batches, datasets folders and hub datasets through Arrow memory maps or
`streaming=True`. Validating a 1 GB file therefore holds one record at a time, never the file.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import did_you_mean
from .report import DataIssue, plural

# Bytes read at a time from JSON arrays. A module constant so tests can shrink it and exercise the refills.
JSON_CHUNK = 1 << 20
SNIFF_BYTES = 64 * 1024
UTF8_BOM = b"\xef\xbb\xbf"

# Extensions we know; anything else is recognised by content.
_EXTENSIONS = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".jsonlines": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(slots=True)
class Record:
    row: int  # 1-based record number (header not counted); 0 for a problem with the file, not with a record
    line: int | None  # 1-based line where the record starts, for text files
    data: dict[str, Any] | None = None
    error: DataIssue | None = None  # why this record could not be read; `data` is None then


class SourceError(Exception):
    """The source cannot be read at all (missing, empty, binary, not loadable). Carries the issue to report."""

    def __init__(self, issue: DataIssue):
        super().__init__(issue.message)
        self.issue = issue


@dataclass
class Source:
    """An opened data source. `records()` may be called more than once (each call reads from the start)."""

    name: str  # short name used in messages: the file's name, a folder's name, a hub id
    kind: str  # json, jsonl, csv, parquet, arrow, hub
    read: Callable[[], Iterator[Record]]
    detail: str = ""  # e.g. "delimiter ';'"
    # Column -> type when the source declares them up front (CSV header, Parquet/Arrow schema); None for JSON,
    # whose columns are learned from the rows.
    schema: dict[str, str] | None = None
    notes: list[str] = field(default_factory=list)
    no_rows_message: str = ""
    folder: Path | None = None  # a local file's folder: where relative paths in the data (image files) are read from

    def records(self) -> Iterator[Record]:
        return self.read()


def where(name: str, line: int | None, row: int | None) -> str:
    """'data.csv line 7' or 'data.parquet row 7': how messages name a place."""
    if line is not None:
        return f"{name} line {line}"
    if row is not None:
        return f"{name} row {row}"
    return name


def redact_url(url: str) -> str:
    """The URL without its query string: presigned links carry credentials there, and reports get shared."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


# --- opening --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def open_source(
    data_path: str,
    *,
    data_subset: str | None = None,
    data_split: str | None = None,
    hf_token: str | None = None,
) -> Iterator[Source]:
    """Open `data_path` (file, datasets folder, hub id or http(s) URL) as a `Source`; raises `SourceError`.

    A context manager because a URL is downloaded to a temporary file that must outlive the reading and then go.
    """
    path = data_path.strip()
    if path.lower().startswith(("http://", "https://")):
        with _download(path) as (local, name):
            source = _open_file(local, name)
            _note_ignored(source, data_subset, data_split)
            yield source
        return

    p = Path(path).expanduser()
    if p.is_file():
        source = _open_file(p, p.name)
        source.folder = p.resolve().parent
        _note_ignored(source, data_subset, data_split)
        yield source
    elif p.is_dir():
        if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            yield _open_saved(p, data_split)
        else:
            # A folder of data files (or a hub-style repo with a README declaring configs): the same
            # `load_dataset` code as for hub ids, so local folders test that path offline.
            yield _open_hub(str(p), p.name or str(p), data_subset, data_split, hf_token)
    elif _looks_like_path(path):
        raise SourceError(DataIssue("source", _not_found_message(p)))
    elif _HUB_ID.match(path):
        yield _open_hub(path, path, data_subset, data_split, hf_token)
    else:
        raise SourceError(
            DataIssue(
                "source",
                f"{path!r} is neither an existing file or folder, a Hugging Face dataset id (owner/name) nor an "
                "http(s) URL",
            )
        )


def _note_ignored(source: Source, data_subset: str | None, data_split: str | None) -> None:
    if data_subset:
        source.notes.append(f"data_subset {data_subset!r} ignored: it selects a configuration of a hub dataset")
    if data_split:
        source.notes.append(
            f"data_split {data_split!r} ignored: it selects a split of a hub dataset or datasets folder"
        )


def _looks_like_path(path: str) -> bool:
    """A missing local path rather than a hub id: relative/absolute/home prefixes, a drive letter, or a data
    file extension (hub ids have none)."""
    return (
        path.startswith((".", "/", "~", "\\"))
        or Path(path).suffix.lower() in _EXTENSIONS
        or (len(path) > 1 and path[1] == ":")
    )


def _not_found_message(p: Path) -> str:
    parent = p.parent if str(p.parent) else Path(".")
    hint = ""
    if parent.is_dir():
        try:
            names = [c.name for c in parent.iterdir()]
        except OSError:
            names = []
        hint = did_you_mean(p.name, names)
    return f"{p}: no such file or folder{hint}"


def _sniff(path: Path, name: str) -> tuple[bytes, str | None]:
    """Read the file's start; reject what cannot be a dataset with a specific reason; guess the kind by content."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if not head.strip():
        what = "empty (0 bytes)" if not head else "empty (only whitespace)"
        raise SourceError(DataIssue("empty_file", f"{name}: the file is {what}; it holds no records"))
    if head.startswith(b"PAR1"):
        return head, "parquet"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SourceError(
            DataIssue("encoding", f"{name}: the file is UTF-16 encoded; save it as UTF-8 (tuneforge reads UTF-8 only)")
        )
    if head.startswith(b"\x1f\x8b"):
        raise SourceError(DataIssue("binary_file", f"{name}: the file is gzip-compressed; decompress it first"))
    if head.startswith(b"PK\x03\x04"):
        raise SourceError(DataIssue("binary_file", f"{name}: the file is a zip archive; extract the data file first"))
    nul = head.find(b"\x00")
    if nul >= 0:
        line = head.count(b"\n", 0, nul) + 1
        raise SourceError(
            DataIssue(
                "binary_file",
                f"{name}: not a text file (a NUL byte at byte {nul + 1}, line {line}); expected UTF-8 JSON, JSON "
                "Lines or CSV, or a Parquet file",
                line=line,
            )
        )
    stripped = head.lstrip(UTF8_BOM).lstrip()
    if stripped[:1] in (b"[", b"{"):
        return head, "json"
    return head, None


def _open_file(path: Path, name: str) -> Source:
    head, by_content = _sniff(path, name)
    by_ext = _EXTENSIONS.get(path.suffix.lower())
    notes: list[str] = []
    if by_content == "parquet":
        if by_ext not in (None, "parquet"):
            notes.append(f"{name} has a {path.suffix} extension but holds Parquet data; read as Parquet")
        kind = "parquet"
    elif by_ext == "parquet":
        raise SourceError(
            DataIssue("read_error", f"{name}: not a Parquet file (it does not start with the 'PAR1' magic bytes)")
        )
    else:
        kind = by_ext or by_content or "csv"
    if kind == "parquet":
        source = _open_parquet(path, name)
    elif kind in ("json", "jsonl"):
        source = _open_json(path, name, head)
    else:
        source = _open_csv(path, name, head, tab=path.suffix.lower() == ".tsv")
    source.notes[:0] = notes
    return source


# --- JSON and JSON Lines ------------------------------------------------------------------------------------------


def _open_json(path: Path, name: str, head: bytes) -> Source:
    """Either extension, decided by content: '[' starts an array of records; a first line that opens a
    pretty-printed document ('{' alone, or ending in '{' or '[' as in '{"data": [') means one JSON document;
    anything else is JSON Lines (also when saved as .json), so a broken first line is one row's error."""
    text = head.lstrip(UTF8_BOM).lstrip()
    if text.startswith(b"["):
        return Source(name, "json", lambda: _json_array(path, name), no_rows_message=f"{name}: the JSON array is empty")
    first_line = text.split(b"\n", 1)[0].strip()
    if first_line.endswith((b"{", b"[")):
        return _json_document(path, name)
    return Source(name, "jsonl", lambda: _json_lines(path, name))


def _utf8_problem(name: str, raw: bytes, err: UnicodeDecodeError, lineno: int, row: int | None) -> DataIssue:
    col = len(raw[: err.start].decode("utf-8", "replace")) + 1
    return DataIssue(
        "encoding",
        f"{name} line {lineno} column {col}: not valid UTF-8 (byte 0x{raw[err.start]:02x}); save the file as "
        "UTF-8 (it may be Latin-1 or Windows-1252)",
        line=lineno,
        row=row,
        column=col,
    )


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null"


def _json_lines(path: Path, name: str) -> Iterator[Record]:
    row = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM) :]
            if not raw.strip():
                continue  # blank lines (often a trailing one) are not records
            row += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield Record(row, lineno, error=_utf8_problem(name, raw, err, lineno, row))
                continue
            text = text.rstrip("\r\n")
            try:
                obj = _loads(text)
            except json.JSONDecodeError as err:
                hint = ""
                if text.strip() in ("{", "[", "}", "]", "},"):
                    hint = "; each line must hold one whole record (JSON Lines), not pretty-printed JSON"
                elif err.pos >= len(text.rstrip()) or "Unterminated string" in err.msg:
                    if not raw.endswith(b"\n"):
                        hint = "; the last line is cut off (truncated file?)"
                    else:
                        hint = "; the line ends in the middle of a record"
                yield Record(
                    row,
                    lineno,
                    error=DataIssue(
                        "json_syntax",
                        f"{name} line {lineno} column {err.colno}: invalid JSON: {_json_msg(err.msg)}{hint}",
                        line=lineno,
                        row=row,
                        column=err.colno,
                    ),
                )
                continue
            if not isinstance(obj, dict):
                yield Record(row, lineno, error=_not_object(name, obj, lineno, row, "each line must hold one record"))
                continue
            yield Record(row, lineno, data=obj)


def _too_deep(doc: str, pos: int) -> json.JSONDecodeError:
    # Python's JSON parser recurses once per level of nesting; no record is legitimately nested this deep.
    return json.JSONDecodeError("objects and arrays nested too deeply to read (more than about 900 levels)", doc, pos)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise _too_deep(text, 0) from None


def _not_object(name: str, obj: Any, line: int | None, row: int, what: str) -> DataIssue:
    return DataIssue(
        "not_an_object",
        f"{where(name, line, row)}: {_json_kind(obj)}, not a JSON object; {what}, such as "
        '{"prompt": "...", "completion": "..."}',
        line=line,
        row=row,
    )


def _json_document(path: Path, name: str) -> Source:
    """A single JSON document that is not an array, e.g. {"data": [...]}. Read whole: such files are small in
    practice, and they have no record-per-line structure to stream by."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        line_start = raw.rfind(b"\n", 0, err.start) + 1
        raise SourceError(_utf8_problem(name, raw[line_start:], _shift(err, line_start), line, None)) from None
    try:
        doc = _loads(text)
    except json.JSONDecodeError as err:
        raise SourceError(
            _syntax_issue(name, err.msg, err.lineno, err.colno, truncated=err.pos >= len(text.rstrip()))
        ) from None
    lists: list[str] = []
    if isinstance(doc, dict):  # anything else gets the error below
        lists = [k for k, v in doc.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v[:100])]
    if len(lists) == 1:
        key = lists[0]
        records = doc[key]

        def read() -> Iterator[Record]:
            for i, obj in enumerate(records, 1):
                if isinstance(obj, dict):
                    yield Record(i, None, data=obj)
                else:
                    yield Record(i, None, error=_not_object(name, obj, None, i, f"'{key}' must hold records"))

        return Source(name, "json", read, detail=f"records under key '{key}'")
    raise SourceError(
        DataIssue(
            "not_an_object",
            f"{name}: one JSON object, not a list of records; expected an array of records "
            '([{"prompt": "...", "completion": "..."}, ...]) or one record per line (JSON Lines)',
        )
    )


def _shift(err: UnicodeDecodeError, offset: int) -> UnicodeDecodeError:
    return UnicodeDecodeError(err.encoding, err.object, err.start - offset, err.end - offset, err.reason)


def _json_msg(msg: str) -> str:
    # json's messages end in " at" / " starting at" when printed with their position; we print the position first.
    return msg.removesuffix(" starting at").removesuffix(" at")


def _syntax_issue(name: str, msg: str, line: int, col: int, *, truncated: bool, row: int | None = None) -> DataIssue:
    msg = _json_msg(msg)
    hint = "; the file ends in the middle of a record (truncated file?)" if truncated else ""
    return DataIssue(
        "json_syntax", f"{name} line {line} column {col}: invalid JSON: {msg}{hint}", line=line, row=row, column=col
    )


class _TextWindow:
    """A sliding window over a UTF-8 file: decoded text from `base` on, with the line/column of any position.

    Keeps memory bounded by dropping what has been parsed; line numbers are tracked across the drops.
    """

    def __init__(self, f: BinaryIO, name: str):
        self.f = f
        self.name = name
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf = ""
        self.lines_before = 0  # newlines dropped from the front
        self.col_before = 0  # characters after the last dropped newline
        self.eof = False
        self.first = True

    def fill(self) -> None:
        """Read more; raises SourceError on invalid UTF-8 (a JSON array cannot be resynchronised after it)."""
        chunk = self.f.read(JSON_CHUNK)
        final = not chunk
        try:
            text = self.decoder.decode(chunk, final=final)
        except UnicodeDecodeError as err:
            line = self.lines_before + self.buf.count("\n") + chunk.count(b"\n", 0, max(err.start, 0)) + 1
            bad = chunk[err.start] if 0 <= err.start < len(chunk) else 0
            raise SourceError(
                DataIssue(
                    "encoding",
                    f"{self.name} line {line}: not valid UTF-8 (byte 0x{bad:02x}); save the file as UTF-8 (it may "
                    "be Latin-1 or Windows-1252)",
                    line=line,
                )
            ) from None
        if self.first:
            text = text.removeprefix("\ufeff")
            self.first = False
        self.buf += text
        self.eof = final

    def drop(self, upto: int) -> int:
        """Forget text before `upto`; returns the new index of what was at `upto` (0)."""
        dropped = self.buf[:upto]
        n = dropped.count("\n")
        if n:
            self.lines_before += n
            self.col_before = len(dropped) - dropped.rfind("\n") - 1
        else:
            self.col_before += len(dropped)
        self.buf = self.buf[upto:]
        return 0

    def position(self, i: int) -> tuple[int, int]:
        """1-based (line, column) of buffer index i."""
        line = self.lines_before + self.buf.count("\n", 0, i) + 1
        nl = self.buf.rfind("\n", 0, i)
        col = i - nl if nl >= 0 else self.col_before + i + 1
        return line, col

    def skip_ws(self, i: int) -> int:
        """Index of the next non-whitespace character (reading more as needed); len(buf) at the end of file."""
        while True:
            n = len(self.buf)
            while i < n and self.buf[i] in " \t\r\n":
                i += 1
            if i < n or self.eof:
                return i
            self.fill()


def _json_array(path: Path, name: str) -> Iterator[Record]:
    """Decode `[record, record, ...]` one element at a time (json.JSONDecoder.raw_decode on a sliding window)."""
    decoder = json.JSONDecoder()
    with open(path, "rb") as f:
        w = _TextWindow(f, name)
        try:
            i = w.skip_ws(0)
            # _open_json saw '[' first.
            i += 1
            row = 0
            while True:
                if i > 65536:
                    i = w.drop(i)
                i = w.skip_ws(i)
                if i >= len(w.buf):
                    line, col = w.position(i)
                    yield Record(
                        0,
                        line,
                        error=DataIssue(
                            "json_syntax",
                            f"{name} line {line}: the file ends before the array is closed with ']' "
                            f"(truncated file?) after {plural(row, 'record')}",
                            line=line,
                        ),
                    )
                    return
                c = w.buf[i]
                if c == "]":
                    j = w.skip_ws(i + 1)
                    if j < len(w.buf):
                        line, col = w.position(j)
                        yield Record(
                            0,
                            line,
                            error=DataIssue(
                                "json_syntax",
                                f"{name} line {line} column {col}: invalid JSON: extra data after the array's "
                                "closing ']'",
                                line=line,
                                column=col,
                            ),
                        )
                    return
                if row:
                    if c != ",":
                        line, col = w.position(i)
                        yield Record(
                            0,
                            line,
                            error=_syntax_issue(
                                name, f"expected ',' or ']' after record {row}", line, col, truncated=False
                            ),
                        )
                        return
                    i = w.skip_ws(i + 1)
                    if i < len(w.buf) and w.buf[i] == "]":
                        line, col = w.position(i)
                        yield Record(
                            0,
                            line,
                            error=_syntax_issue(name, "a trailing comma before ']'", line, col, truncated=False),
                        )
                        return
                    if i >= len(w.buf):
                        continue  # reported as the unclosed array above
                while True:
                    try:
                        try:
                            obj, end = decoder.raw_decode(w.buf, i)
                        except RecursionError:
                            raise _too_deep(w.buf, i) from None
                    except json.JSONDecodeError as err:
                        # Incomplete rather than invalid when the decoder ran into the end of the window: an open
                        # string, or a failure within a few characters of the end (a cut `true` or `\\u00`).
                        incomplete = "Unterminated string" in err.msg or err.pos >= len(w.buf) - 8
                        if incomplete and not w.eof:
                            w.fill()
                            continue
                        line, col = w.position(err.pos)
                        yield Record(
                            row + 1,
                            line,
                            error=_syntax_issue(name, err.msg, line, col, truncated=incomplete and w.eof, row=row + 1),
                        )
                        return
                    if end >= len(w.buf) and not w.eof:
                        w.fill()  # a number at the window's end may go on
                        continue
                    break
                row += 1
                line, _ = w.position(i)
                if isinstance(obj, dict):
                    yield Record(row, line, data=obj)
                else:
                    yield Record(row, line, error=_not_object(name, obj, line, row, "the array must hold records"))
                i = end
        except SourceError as err:
            yield Record(0, err.issue.line, error=err.issue)


# --- CSV --------------------------------------------------------------------------------------------------------


def _sniff_delimiter(sample: str) -> str:
    """The delimiter that gives the header more than one column and the most rows of the header's width.

    Our own rather than csv.Sniffer, which guesses wrong on one-column files whose text contains commas. Ties go
    to the earlier candidate, so a file that splits the same way under all of them is read as comma-separated.
    """
    lines = sample.split("\n")
    if len(sample.encode()) >= SNIFF_BYTES and len(lines) > 1:
        sample = "\n".join(lines[:-1])  # drop a record cut by the sample's end
    best, best_score = ",", (False, -1, -1)
    for d in (",", "\t", ";", "|"):
        rows = [r for r in csv.reader(sample.splitlines(), delimiter=d) if r][:200]
        if not rows:
            continue
        width = len(rows[0])
        matching = sum(1 for r in rows if len(r) == width)
        score = (width > 1, matching, width)
        if score > best_score:
            best, best_score = d, score
    return best


def _open_csv(path: Path, name: str, head: bytes, *, tab: bool) -> Source:
    delimiter = "\t" if tab else _sniff_delimiter(head.removeprefix(UTF8_BOM).decode("utf-8", "replace"))
    shown = {"\t": "tab", ",": "','", ";": "';'", "|": "'|'"}[delimiter]

    header: list[str] = []
    problems: list[DataIssue] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            raw = raw.removeprefix(UTF8_BOM) if lineno == 1 else raw
            if not raw.strip():
                continue
            try:
                header = next(csv.reader([raw.decode("utf-8")], delimiter=delimiter))
            except (UnicodeDecodeError, csv.Error, StopIteration) as err:
                raise SourceError(
                    DataIssue("csv_header", f"{name} line {lineno}: cannot read the header line: {err}", line=lineno)
                ) from None
            header = [h.strip() for h in header]
            for k, h in enumerate(header, 1):
                if not h:
                    problems.append(
                        DataIssue(
                            "csv_header",
                            f"{name} line {lineno}: header column {k} has no name; every column needs one",
                            line=lineno,
                        )
                    )
            seen: set[str] = set()
            for h in header:
                if h and h in seen:
                    problems.append(
                        DataIssue(
                            "csv_header", f"{name} line {lineno}: column '{h}' appears twice in the header", line=lineno
                        )
                    )
                seen.add(h)
            break
    schema = dict.fromkeys(header, "string")

    def read() -> Iterator[Record]:
        for p in problems:
            yield Record(0, p.line, error=p)
        yield from _csv_records(path, name, delimiter, header, shown)

    cols = ", ".join(header)
    return Source(
        name,
        "csv",
        read,
        detail=f"delimiter {shown}",
        schema=schema,
        no_rows_message=f"{name}: only a header line ({cols}), no data rows",
    )


def _csv_records(path: Path, name: str, delimiter: str, header: list[str], shown: str) -> Iterator[Record]:
    bad_utf8: dict[int, DataIssue] = {}

    def lines(f: BinaryIO) -> Iterator[str]:
        # Decode line by line (a UTF-8 multi-byte sequence never contains '\n'), so invalid bytes are reported
        # at their line and the rest of the file is still checked.
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                raw = raw.removeprefix(UTF8_BOM)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad_utf8[lineno] = _utf8_problem(name, raw, err, lineno, None)
                yield raw.decode("utf-8", "replace")

    width = len(header)
    with open(path, "rb") as f:
        # strict=True: a stray quote or a quote left open is an error at its record instead of silently
        # swallowing the rest of the file into one field.
        reader = csv.reader(lines(f), delimiter=delimiter, quotechar='"', doublequote=True, strict=True)
        prev = 0
        row = 0
        seen_header = False
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                start = prev + 1
                prev = reader.line_num
                if "unexpected end of data" in str(err):
                    msg = (
                        f"{name} line {start}: a quoted field starts in this record and is never closed (a missing "
                        "closing '\"'); the rest of the file was read as part of it"
                    )
                else:
                    msg = (
                        f"{name} line {start}: badly quoted field ({err}); quote the whole field and double the quotes "
                        'inside it: "say ""hi"""'
                    )
                if seen_header:
                    row += 1
                    yield Record(row, start, error=DataIssue("csv_syntax", msg, line=start, row=row))
                continue
            start, prev = prev + 1, reader.line_num
            if not fields:
                continue  # a blank line
            if not seen_header:
                seen_header = True
                continue
            row += 1
            bad = [bad_utf8.pop(n) for n in range(start, prev + 1) if n in bad_utf8]
            if bad:
                issue = bad[0]
                yield Record(row, start, error=DataIssue(issue.kind, issue.message, start, row, None, issue.column))
                continue
            if len(fields) != width:
                if len(fields) > width:
                    why = f"a value containing {shown} needs double quotes"
                else:
                    why = "values are missing, or a line break inside a value is not quoted"
                cols = ", ".join(header)
                yield Record(
                    row,
                    start,
                    error=DataIssue(
                        "csv_ragged",
                        f"{name} line {start}: {plural(len(fields), 'field')}, but the header has {width} ({cols}); {why}",
                        line=start,
                        row=row,
                    ),
                )
                continue
            yield Record(row, start, data=dict(zip(header, fields, strict=True)))


# --- Parquet, datasets folders, hub datasets ----------------------------------------------------------------------


def _arrow_schema(schema: Any) -> dict[str, str]:
    return {f.name: str(f.type) for f in schema}


def _open_parquet(path: Path, name: str) -> Source:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        schema = _arrow_schema(pf.schema_arrow)
    except Exception as err:  # pyarrow raises several types (ArrowInvalid, OSError) for a damaged file
        raise SourceError(DataIssue("read_error", f"{name}: not a readable Parquet file: {err}")) from None

    def read() -> Iterator[Record]:
        row = 0
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=2048):
                for data in batch.to_pylist():
                    row += 1
                    yield Record(row, None, data=data)
        except Exception as err:
            yield Record(row + 1, None, error=DataIssue("read_error", f"{name} after row {row}: cannot read: {err}"))

    return Source(name, "parquet", read, schema=schema, no_rows_message=f"{name}: the Parquet file has no rows")


def _open_saved(folder: Path, data_split: str | None) -> Source:
    """A folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (Arrow files, memory-mapped)."""
    import datasets

    name = folder.name
    notes: list[str] = []
    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as err:
        raise SourceError(DataIssue("read_error", f"{name}: cannot load the datasets folder: {err}")) from None
    detail = ""
    if isinstance(ds, datasets.DatasetDict):
        split = data_split or "train"
        if split not in ds:
            raise SourceError(
                DataIssue(
                    "source",
                    f"{name}: no split {split!r}{did_you_mean(split, list(ds))}; splits: {', '.join(ds)} "
                    "(choose one with data_split)",
                )
            )
        ds = ds[split]
        detail = f"split '{split}'"
    elif data_split:
        notes.append(f"data_split {data_split!r} ignored: the folder holds a single dataset, not splits")
    table_ds = ds

    def read() -> Iterator[Record]:
        row = 0
        try:
            for table in table_ds.with_format("arrow").iter(batch_size=2048):
                for data in table.to_pylist():
                    row += 1
                    yield Record(row, None, data=data)
        except Exception as err:  # a damaged Arrow file
            yield Record(row + 1, None, error=DataIssue("read_error", f"{name} after row {row}: cannot read: {err}"))

    return Source(
        name,
        "arrow",
        read,
        detail=detail,
        schema=_arrow_schema(ds.features.arrow_schema),
        notes=notes,
        no_rows_message=f"{name}: the dataset has no rows",
    )


def _open_hub(path: str, name: str, data_subset: str | None, data_split: str | None, hf_token: str | None) -> Source:
    """A Hugging Face dataset (hub id or a local folder of data files) through `datasets.load_dataset`.

    `streaming=True` so validation reads rows as they arrive instead of downloading and converting everything
    first, and nothing is written to the datasets cache.
    """
    import datasets

    split = data_split or "train"
    try:
        ds = datasets.load_dataset(path, name=data_subset, split=split, token=hf_token, streaming=True)
    except Exception as err:
        text = str(err).strip()
        hint = ""
        if isinstance(err, ConnectionError) or "Couldn't reach" in text:
            hint = "; the Hugging Face hub cannot be reached from here: download the data and give its local path"
        raise SourceError(DataIssue("source", f"{name}: cannot load the dataset: {text}{hint}")) from None
    schema = _arrow_schema(ds.features.arrow_schema) if ds.features is not None else None

    def read() -> Iterator[Record]:
        row = 0
        try:
            for data in ds:
                row += 1
                yield Record(row, None, data=dict(data))
        except Exception as err:
            yield Record(row + 1, None, error=DataIssue("read_error", f"{name} after row {row}: cannot read: {err}"))

    detail = ", ".join(x for x in (f"subset '{data_subset}'" if data_subset else "", f"split '{split}'") if x)
    return Source(name, "hub", read, detail=detail, schema=schema, no_rows_message=f"{name}: the split has no rows")


# --- URLs -------------------------------------------------------------------------------------------------------

_CONTENT_TYPES = {
    "application/json": ".json",
    "application/x-ndjson": ".jsonl",
    "application/jsonl": ".jsonl",
    "application/jsonlines": ".jsonl",
    "text/csv": ".csv",
    "text/tab-separated-values": ".tsv",
    "application/vnd.apache.parquet": ".parquet",
    "application/x-parquet": ".parquet",
}


# Called with every URL a download is about to fetch, the first and each redirect target; raises to refuse it.
# The fine-tuning service installs its private-address rule here in each job's process (jobs/run_job.py): a URL
# checked at submission could otherwise redirect the download to an internal service.
_url_guard: Callable[[str], None] | None = None


def set_url_guard(guard: Callable[[str], None] | None) -> None:
    global _url_guard
    _url_guard = guard


class _GuardedRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not newurl.lower().startswith(("http://", "https://")):
            raise urllib.error.URLError(f"redirected to {redact_url(newurl)!r}, which is not an http(s) URL")
        if _url_guard is not None:
            try:
                _url_guard(newurl)
            except Exception as exc:  # the guard's own words say what is refused
                raise urllib.error.URLError(f"redirected to a refused address: {exc}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@contextlib.contextmanager
def _download(url: str) -> Iterator[tuple[Path, str]]:
    """Stream the URL to a temporary file (deleted afterwards); yields (path, name for messages)."""
    shown = redact_url(url)
    url_name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if _url_guard is not None:
        try:
            _url_guard(url)
        except Exception as exc:
            raise SourceError(DataIssue("source", f"{shown}: download refused: {exc}")) from None
    tmp = Path(tempfile.mkdtemp(prefix="tuneforge-data-"))
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "tuneforge"})
        opener = urllib.request.build_opener(_GuardedRedirects)
        try:
            with opener.open(request, timeout=60) as resp:
                ext = Path(url_name).suffix.lower()
                if ext not in _EXTENSIONS:
                    ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                    ext = _CONTENT_TYPES.get(ctype, "")
                target = tmp / ((Path(url_name).stem or "data") + ext if ext else (url_name or "data"))
                with open(target, "wb") as out:
                    shutil.copyfileobj(resp, out, 1 << 20)
        except urllib.error.HTTPError as err:
            hint = " (a presigned link may have expired)" if err.code in (401, 403) else ""
            raise SourceError(
                DataIssue("source", f"{shown}: download failed: HTTP {err.code} {err.reason}{hint}")
            ) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise SourceError(DataIssue("source", f"{shown}: download failed: {reason}")) from None
        yield target, url_name or shown
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
