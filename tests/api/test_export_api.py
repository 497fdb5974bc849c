"""Exports of a job through `tuneforge server` over HTTP (tiny model): the merged model as a zip and GGUF, made in the
background (`POST /v1/finetune/llm/{id}/exports`), their state, the download, the errors (409 before the job has
succeeded, 404 for another owner or an unknown export, a failed conversion's reason), and an export that a killed
server cut short reading as interrupted after the restart and succeeding when started again."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from tfservice import Client, Server, create_key, make_home, payload, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model_dir):
    home = make_home(tmp_path_factory.mktemp("export-svc"), tiny_model_dir)
    keys = {"alice": create_key(home, "alice"), "bob": create_key(home, "bob")}
    server = Server(home, workers=1).start()
    clients = {name: Client(server.url, k) for name, k in keys.items()}
    yield server, clients
    server.stop()


@pytest.fixture(scope="module")
def job(svc):
    server, c = svc
    r = c["alice"].post("/v1/finetune/llm", json=payload(server.home, max_steps=2))
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    early = c["alice"].post(f"/v1/finetune/llm/{job_id}/exports", json={"format": "merged"})
    assert early.status_code == 409 and "can be exported once it has succeeded" in early.json()["detail"], early.text
    done = c["alice"].wait_status(job_id, ("succeeded", "failed"), 240, server)
    assert done["status"] == "succeeded", done
    return done


def wait_export(client: Client, url: str, timeout: float = 240) -> dict:
    def finished():
        view = client.get(url).json()
        return view if view["status"] != "running" else None

    return wait_for(finished, timeout, interval=0.5, what=f"{url} to finish")


def test_the_merged_model_is_exported_in_the_background_and_downloaded(svc, job):
    server, c = svc
    job_id = job["job_id"]
    r = c["alice"].post(f"/v1/finetune/llm/{job_id}/exports", json={"format": "merged"})
    assert r.status_code == 202, r.text
    view = r.json()
    assert view["id"] == "merged" and view["status"] == "running" and view["stage"] == "merging", view
    assert view["url"] == f"/v1/finetune/llm/{job_id}/exports/merged" and view["download_url"] is None
    # Started again while it runs: the same export, not a second one.
    again = c["alice"].post(f"/v1/finetune/llm/{job_id}/exports", json={"format": "merged"})
    assert again.status_code == 200 and again.json()["started_at"] == view["started_at"], again.text

    done = wait_export(c["alice"], view["url"])
    assert done["status"] == "succeeded" and done["error"] is None, done
    assert done["file_name"] == f"{job_id}-merged.zip" and done["download_url"] == view["url"] + "/file"
    listed = c["alice"].get(f"/v1/finetune/llm/{job_id}/exports").json()
    assert [e["id"] for e in listed["exports"]] == ["merged"] and listed["exports"][0] == done

    got = c["alice"].get(done["download_url"])
    assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
    assert len(got.content) == done["size_bytes"]
    names = zipfile.ZipFile(io.BytesIO(got.content)).namelist()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(names), names
    assert not [n for n in names if n.startswith("adapter_")]  # a plain model, not the adapter
    config = json.loads(zipfile.ZipFile(io.BytesIO(got.content)).read("config.json"))
    assert config["num_hidden_layers"] == 2

    # Under the job's run folder, with nothing half-written left beside it.
    exports = server.home / "runs"
    files = sorted(p.name for p in exports.rglob("exports/*"))
    assert files == sorted(["merged.json", "merged.log", f"{job_id}-merged.zip"]), files

    # Made once: asking again answers the finished export.
    assert c["alice"].post(f"/v1/finetune/llm/{job_id}/exports", json={"format": "merged"}).status_code == 200


def test_a_failed_gguf_conversion_says_why(svc, job):
    _, c = svc
    job_id = job["job_id"]
    r = c["alice"].post(f"/v1/finetune/llm/{job_id}/exports", json={"format": "gguf", "gguf_type": "f16"})
    assert r.status_code == 202 and r.json()["id"] == "gguf-f16", r.text
    done = wait_export(c["alice"], r.json()["url"])
    # llama.cpp's converter knows real tokenizers only, not the tiny test model's.
    assert done["status"] == "failed" and done["error"].startswith("GGUF conversion of"), done
    file = c["alice"].get(f"/v1/finetune/llm/{job_id}/exports/gguf-f16/file")
    assert file.status_code == 409 and "GGUF conversion of" in file.json()["detail"], file.text


def test_export_errors(svc, job):
    _, c = svc
    job_id = job["job_id"]
    bad = c["alice"].post(f"/v1/finetune/llm/{job_id}/exports", json={"format": "gguf", "gguf_type": "q4_k"})
    assert bad.status_code == 422 and "gguf_type" in bad.text, bad.text
    bad = c["alice"].post(f"/v1/finetune/llm/{job_id}/exports", json={"format": "onnx"})
    assert bad.status_code == 422 and "format" in bad.text, bad.text
    assert c["bob"].post(f"/v1/finetune/llm/{job_id}/exports", json={"format": "merged"}).status_code == 404
    assert c["bob"].get(f"/v1/finetune/llm/{job_id}/exports").status_code == 404
    unknown = c["alice"].get(f"/v1/finetune/llm/{job_id}/exports/onnx")
    assert unknown.status_code == 404 and "merged, gguf-f16, gguf-q8_0" in unknown.json()["detail"], unknown.text
    missing = c["alice"].get(f"/v1/finetune/llm/{job_id}/exports/gguf-q8_0")
    assert missing.status_code == 404 and "no gguf-q8_0 export yet" in missing.json()["detail"], missing.text


def test_an_export_cut_short_by_a_restart_reads_interrupted_and_starts_again(tmp_path_factory, tiny_model_dir):
    home = make_home(tmp_path_factory.mktemp("export-restart"), tiny_model_dir)
    key = create_key(home, "alice")
    server = Server(home, workers=1).start()
    try:
        c = Client(server.url, key)
        job_id = c.post("/v1/finetune/llm", json=payload(home, max_steps=2)).json()["job_id"]
        assert c.wait_status(job_id, ("succeeded", "failed"), 240, server)["status"] == "succeeded"
        r = c.post(f"/v1/finetune/llm/{job_id}/exports", json={"format": "merged"})
        assert r.status_code == 202, r.text
        server.kill_server_only()  # mid-merge: its export process dies with it
        server.stop()
        server.start()
        c = Client(server.url, key)
        view = c.get(f"/v1/finetune/llm/{job_id}/exports/merged").json()
        assert view["status"] == "failed" and view["error"].startswith("interrupted"), view
        assert not list(home.rglob(f"{job_id}-merged.zip"))  # no half-written file under the final name
        r = c.post(f"/v1/finetune/llm/{job_id}/exports", json={"format": "merged"})
        assert r.status_code == 202, r.text
        assert wait_export(c, r.json()["url"])["status"] == "succeeded"
        assert not list(home.rglob(".merged.work"))  # the first attempt's scratch folder is gone too
    finally:
        server.stop()


@pytest.mark.parametrize("task", ["classification", "image_classification", "seq2seq"])
def test_gguf_is_refused_for_every_task_but_causal_lm(tmp_path, task):
    """llama.cpp's converter is for decoder-only language models here: a classifier's head (text or image) and an
    encoder-decoder are refused before anything is written, naming the task and the format that works."""
    from tuneforge.adapter_card import AdapterCard
    from tuneforge.errors import TuneforgeError
    from tuneforge.jobs.exports import start_export

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    AdapterCard(data_format=task, task=task).write(adapter)
    with pytest.raises(TuneforgeError, match=rf"GGUF is for decoder-only .*data_config.task '{task}'.*format 'merged'"):
        start_export({"id": "job-1"}, tmp_path, "gguf", "f16")
    assert not (tmp_path / "exports").exists()
