"""http(s) sources (what MonsterAPI calls s3_presigned_link), served from a local http.server."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from tuneforge.data import DataOptions, prepare_dataset, validate_source

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("served")
    for name in ("alpaca.jsonl", "alpaca.parquet", "semicolon_bom.csv", "ragged.csv"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    shutil.copy(FIXTURES / "chat.jsonl", tmp_path / "download")  # no extension: recognised by content
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_presigned_style_url_is_downloaded_and_the_query_never_shown(served, tiny_tokenizer):
    url = f"{served}/alpaca.jsonl?X-Amz-Signature=secret123&X-Amz-Expires=3600"
    report = validate_source(
        url, DataOptions(prompt_template="{instruction} {input} => {output}"), tokenizer=tiny_tokenizer
    )
    assert report.ok and report.n_rows == 6 and report.source_format == "jsonl"
    assert report.source == f"{served}/alpaca.jsonl"
    assert "secret123" not in report.to_text() and "secret123" not in str(report.to_dict())


@pytest.mark.parametrize(
    "path, kind, fmt",
    [
        ("alpaca.parquet", "parquet", "template"),
        ("semicolon_bom.csv", "csv", "template"),
        ("download", "jsonl", "chat"),
    ],
)
def test_every_file_kind_by_url(served, path, kind, fmt):
    template = {"alpaca.parquet": "{instruction} {output}", "semicolon_bom.csv": "{question} {answer}"}.get(path)
    report = validate_source(f"{served}/{path}", DataOptions(prompt_template=template))
    assert report.ok, report.errors
    assert (report.source_format, report.format) == (kind, fmt)


def test_errors_in_downloaded_files_name_the_file(served):
    report = validate_source(data_path=f"{served}/ragged.csv?sig=abc")
    assert report.errors[0].message.startswith("ragged.csv line 3: 3 fields, but the header has 2")


def test_http_error_is_reported(served):
    report = validate_source(data_path=f"{served}/missing.jsonl?X-Amz-Signature=secret")
    assert not report.ok
    assert report.errors[0].message == f"{served}/missing.jsonl: download failed: HTTP 404 File not found"


def test_unreachable_host_is_reported():
    report = validate_source(data_path="http://127.0.0.1:9/data.jsonl")
    assert report.errors[0].kind == "source"
    assert report.errors[0].message.startswith("http://127.0.0.1:9/data.jsonl: download failed: ")


def test_prepare_from_url_cleans_up_its_download(served, tiny_tokenizer, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    prepared = prepare_dataset(
        f"{served}/download", DataOptions(cutoff_len=128), tokenizer=tiny_tokenizer, split_fractions={"train": 1.0}
    )
    assert len(prepared.train) == 2
    assert list((tmp_path / "tmp").iterdir()) == []
