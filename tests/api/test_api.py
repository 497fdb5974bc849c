"""The REST API over real HTTP (a `tuneforge server` subprocess, no workers: jobs stay queued): keys and
tenancy, bad input, uploads, paging, cancel of queued jobs, and the OpenAPI page."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests
from tfservice import Client, Server, create_key, make_home, payload


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model_dir):
    home = make_home(tmp_path_factory.mktemp("api"), tiny_model_dir)
    keys = {
        "alice": create_key(home, "alice"),
        "bob": create_key(home, "bob"),
        "root": create_key(home, "root", admin=True),
    }
    server = Server(home, workers=0).start()
    yield server, {name: Client(server.url, k) for name, k in keys.items()}, keys
    server.stop()


def _jobs_in_db(server) -> int:
    from tuneforge.jobs.store import Store

    store = Store(f"sqlite:///{server.home / 'tuneforge.db'}", create=False)
    try:
        return store.list_jobs(owner=None, limit=1)[1]
    finally:
        store.close()


def test_keys_create_prints_the_key_alone_on_its_last_line_and_stores_only_its_hash(svc):
    server, _, keys = svc
    out = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "keys", "create", "carol", "--home", str(server.home)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    key = out.rstrip("\n").splitlines()[-1]
    assert key.startswith("tf_") and " " not in key
    assert Client(server.url, key).get("/v1/finetune/llm").status_code == 200
    db = (server.home / "tuneforge.db").read_bytes() + b"".join(
        p.read_bytes() for p in server.home.glob("tuneforge.db-*")
    )
    assert key.encode() not in db and keys["alice"].encode() not in db
    listing = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "keys", "list", "--home", str(server.home)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "carol" in listing and key not in listing


def test_missing_wrong_and_revoked_keys_get_401(svc):
    server, _, _ = svc
    for headers in ({}, {"Authorization": "Bearer tf_nope"}, {"Authorization": "Basic abc"}):
        r = requests.get(server.url + "/v1/finetune/llm", headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer" and "key" in r.json()["detail"]
    r = requests.post(server.url + "/v1/finetune/llm", json=payload(server.home))
    assert r.status_code == 401
    out = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "keys", "create", "dave", "--home", str(server.home)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    key_id, key = out.split("created key ")[1].split()[0], out.splitlines()[-1]
    assert Client(server.url, key).get("/v1/datasets").status_code == 200
    subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "keys", "revoke", key_id, "--home", str(server.home)],
        check=True,
        capture_output=True,
    )
    assert Client(server.url, key).get("/v1/datasets").status_code == 401
    assert requests.get(server.url + "/v1/health").json()["status"] == "ok"  # no key needed


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (
            lambda p: p["pretrainedmodel_config"].update(lora_alpah=16),
            "pretrainedmodel_config.lora_alpah",
            "did you mean 'lora_alpha'",
        ),
        (lambda p: p["pretrainedmodel_config"].update(lora_r=0), "pretrainedmodel_config.lora_r", "greater than 0"),
        (lambda p: p["training_config"].update(learning_rate="fast"), "training_config.learning_rate", "'fast'"),
        (
            lambda p: p["training_config"].update(lr_scheduler_type="cosin"),
            "training_config.lr_scheduler_type",
            "cosine",
        ),
        (lambda p: p.pop("data_config"), "data_config", "required field is missing"),
        (
            lambda p: p["data_config"].update(data_split_config={"train": 0.9, "valid": 0.1}),
            "data_config.data_split_config",
            "did you mean 'validation'",
        ),
        (lambda p: p.update(extra_section={}), "extra_section", "unknown field"),
        (lambda p: p["data_config"].update(task="seq2sq"), "data_config.task", "'seq2seq'"),
    ],
)
def test_bad_payloads_get_422_with_the_field_path_and_nothing_is_stored(svc, mutate, field, words):
    server, c, _ = svc
    before = _jobs_in_db(server)
    body = payload(server.home)
    mutate(body)
    r = c["alice"].post("/v1/finetune/llm", json=body)
    assert r.status_code == 422, r.text
    problems = r.json()["problems"]
    assert any(p["field"] == field and words in p["message"] for p in problems), problems
    assert field in r.json()["detail"]
    assert _jobs_in_db(server) == before


def test_a_model_too_large_for_the_server_is_refused_at_submission_with_the_numbers(svc):
    server, c, _ = svc
    before = _jobs_in_db(server)
    body = payload(server.home)
    body["pretrainedmodel_config"]["model_path"] = "meta-llama/Llama-3.1-70B-Instruct"  # a catalog id: no download
    r = c["alice"].post("/v1/finetune/llm", json=body)
    assert r.status_code == 422, r.text
    problem = r.json()["problems"][0]
    assert problem["field"] == "pretrainedmodel_config.model_path"
    assert "too large for this device" in problem["message"] and "GiB" in problem["message"]
    assert _jobs_in_db(server) == before


def test_a_multi_process_job_this_server_cannot_launch_is_refused_at_submission(svc):
    import torch

    from tuneforge.train.distributed import available_cpus

    server, c, _ = svc
    before = _jobs_in_db(server)
    body = payload(server.home)
    # One process per GPU, or per CPU core without one (the server runs on this machine).
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    too_many, unit = (gpus + 1, "GPU") if gpus else (available_cpus() + 1, "CPU core")
    body["training_config"]["distributed"] = {"strategy": "ddp", "nproc_per_node": too_many}
    r = c["alice"].post("/v1/finetune/llm", json=body)
    assert r.status_code == 422, r.text
    problem = r.json()["problems"][0]
    assert problem["field"] == "training_config.distributed.nproc_per_node"
    assert f"{too_many} processes asked for" in problem["message"] and unit in problem["message"]
    assert _jobs_in_db(server) == before


def test_malformed_json_and_wrong_shapes_get_422(svc):
    _server, c, _ = svc
    r = c["alice"].post(
        "/v1/finetune/llm", data=b'{"data_config": {"data_path": "x",}', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "body"
    assert "not valid JSON" in r.json()["detail"]
    r = c["alice"].post("/v1/finetune/llm", json=[1, 2])
    assert r.status_code == 422 and "dictionary" in r.json()["detail"]
    r = c["alice"].post("/v1/finetune/llm")
    assert r.status_code == 422 and "JSON object is required" in r.json()["detail"]
    r = c["alice"].get("/v1/finetune/llm", params={"limit": "many"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "query.limit"
    # ... and the server keeps serving.
    assert c["alice"].get("/v1/finetune/llm").status_code == 200


@pytest.mark.parametrize(
    "section, field, value, words",
    [
        ("data_config", "data_path", "/etc/passwd", "outside the folders"),
        ("data_config", "data_path", "../../etc/passwd", "relative path"),
        ("data_config", "data_path", "file:///etc/passwd", "only http(s) URLs"),
        ("data_config", "data_path", "http://127.0.0.1:1/x.jsonl", "loopback/private"),
        ("data_config", "data_path", "ds_0000000000000000", "no uploaded dataset"),
        ("data_config", "validation_data_path", "/etc/hosts", "outside the folders"),
        ("pretrainedmodel_config", "model_path", "/etc", "outside the folders"),
        ("pretrainedmodel_config", "resume_checkpoint_path", "/root", "outside the folders"),
    ],
)
def test_paths_outside_the_allowed_folders_are_refused(svc, section, field, value, words):
    server, c, _ = svc
    before = _jobs_in_db(server)
    body = payload(server.home)
    body[section][field] = value
    r = c["alice"].post("/v1/finetune/llm", json=body)
    assert r.status_code == 422, r.text
    assert any(p["field"] == f"{section}.{field}" and words in p["message"] for p in r.json()["problems"]), r.json()
    assert _jobs_in_db(server) == before


def test_tenants_see_only_their_own_jobs_and_the_admin_sees_all(svc):
    server, c, _ = svc
    a = c["alice"].post("/v1/finetune/llm", json=payload(server.home)).json()
    b = c["bob"].post("/v1/finetune/llm", json=payload(server.home)).json()
    assert a["status"] == "queued" and a["job_id"] == a["deployment_id"] and a["owner"] == "alice"
    for path in ("", "/events", "/adapter"):
        r = c["bob"].get(f"/v1/finetune/llm/{a['job_id']}{path}")
        assert r.status_code == 404, (path, r.text)
        assert a["job_id"] in r.json()["detail"]
    assert c["bob"].post(f"/v1/finetune/llm/{a['job_id']}/cancel").status_code == 404
    assert c["alice"].get(f"/v1/finetune/llm/{a['job_id']}/adapter").status_code == 409  # not finished yet
    alice_ids = {j["job_id"] for j in c["alice"].get("/v1/finetune/llm").json()["jobs"]}
    bob_ids = {j["job_id"] for j in c["bob"].get("/v1/finetune/llm").json()["jobs"]}
    assert a["job_id"] in alice_ids and b["job_id"] not in alice_ids
    assert b["job_id"] in bob_ids and a["job_id"] not in bob_ids
    everything = c["root"].get("/v1/finetune/llm", params={"limit": 100}).json()
    assert {a["job_id"], b["job_id"]} <= {j["job_id"] for j in everything["jobs"]}
    only_bob = c["root"].get("/v1/finetune/llm", params={"owner": "bob"}).json()["jobs"]
    assert {j["owner"] for j in only_bob} == {"bob"}
    assert c["root"].get(f"/v1/finetune/llm/{a['job_id']}").json()["owner"] == "alice"
    # Cancel of a queued job is immediate; a second cancel is a conflict.
    r = c["alice"].post(f"/v1/finetune/llm/{a['job_id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert c["alice"].post(f"/v1/finetune/llm/{a['job_id']}/cancel").status_code == 409
    assert c["root"].post(f"/v1/finetune/llm/{b['job_id']}/cancel").json()["status"] == "cancelled"


def test_job_list_is_newest_first_and_paged(svc):
    server, _c, _ = svc
    key = create_key(server.home, "erin")
    erin = Client(server.url, key)
    ids = [erin.post("/v1/finetune/llm", json=payload(server.home)).json()["job_id"] for _ in range(5)]
    page1 = erin.get("/v1/finetune/llm", params={"limit": 2}).json()
    page3 = erin.get("/v1/finetune/llm", params={"limit": 2, "offset": 4}).json()
    assert page1["total"] == 5 and [j["job_id"] for j in page1["jobs"]] == ids[::-1][:2]
    assert [j["job_id"] for j in page3["jobs"]] == [ids[0]]
    assert erin.get(f"/v1/finetune/llm/{ids[-1]}").json()["queue_position"] >= 5
    queued = erin.get("/v1/finetune/llm", params={"status": "queued"}).json()
    assert queued["total"] == 5
    assert erin.get("/v1/finetune/llm", params={"status": "done"}).status_code == 422
    for job_id in ids:
        erin.post(f"/v1/finetune/llm/{job_id}/cancel")


def test_events_of_a_queued_job_and_sse_ending_on_cancel(svc):
    server, c, _ = svc
    job = c["alice"].post("/v1/finetune/llm", json=payload(server.home)).json()
    r = c["alice"].get(f"/v1/finetune/llm/{job['job_id']}/events")
    assert [e["status"] for e in r.json()["events"]] == ["queued"] and r.json()["next_after"] == 1
    c["alice"].post(f"/v1/finetune/llm/{job['job_id']}/cancel")
    with requests.get(
        f"{server.url}/v1/finetune/llm/{job['job_id']}/events",
        stream=True,
        timeout=30,
        headers={**c["alice"].headers, "Accept": "text/event-stream"},
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.text
    assert "event: status" in text and '"cancelled"' in text and text.rstrip().endswith('"last_seq": 2}')


def test_dataset_upload_report_tenancy_and_use_as_data_path(svc):
    server, c, _ = svc
    data = (server.home / "datasets" / "qa.jsonl").read_bytes()
    r = c["alice"].post(
        "/v1/datasets",
        files={"file": ("../../my train.jsonl", data)},
        data={"prompt_template": "Question: {question}\nAnswer: {answer}"},
    )
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["id"].startswith("ds_") and ds["ok"] and ds["filename"] == "my_train.jsonl"
    assert ds["size_bytes"] == len(data) and ds["report"]["n_rows"] == 80
    assert ds["report"]["format"] == "template" and set(ds["report"]["columns"]) == {"question", "answer"}
    stored = list((server.home / "uploads" / ds["id"]).iterdir())
    assert [p.name for p in stored] == ["my_train.jsonl"] and stored[0].read_bytes() == data

    assert c["bob"].get(f"/v1/datasets/{ds['id']}").status_code == 404
    assert ds["id"] not in {d["id"] for d in c["bob"].get("/v1/datasets").json()["datasets"]}
    assert ds["id"] in {d["id"] for d in c["root"].get("/v1/datasets").json()["datasets"]}
    # Bob can use neither the id nor the file's path on the server.
    for value in (ds["id"], str(stored[0])):
        r = c["bob"].post("/v1/finetune/llm", json=payload(server.home, data_path=value))
        assert r.status_code == 422 and r.json()["problems"][0]["field"] == "data_config.data_path", r.text
    job = c["alice"].post("/v1/finetune/llm", json=payload(server.home, data_path=ds["id"])).json()
    assert job["data_path"] == ds["id"] and job["spec"]["data_config"]["data_path"] == ds["id"]
    assert c["alice"].delete(f"/v1/datasets/{ds['id']}").status_code == 409  # a queued job reads it
    c["alice"].post(f"/v1/finetune/llm/{job['job_id']}/cancel")

    r = c["alice"].post(f"/v1/datasets/{ds['id']}/validate", json={"prompt_template": "Q: {question} A: {answr}"})
    assert r.status_code == 200 and not r.json()["ok"]
    assert "answr" in json.dumps(r.json()["report"]["errors"])
    assert c["alice"].post(f"/v1/datasets/{ds['id']}/validate", json={"cutoff_len": 0}).status_code == 422
    assert c["bob"].delete(f"/v1/datasets/{ds['id']}").status_code == 404
    assert c["alice"].delete(f"/v1/datasets/{ds['id']}").json()["deleted"]
    assert not (server.home / "uploads" / ds["id"]).exists()
    assert c["alice"].get(f"/v1/datasets/{ds['id']}").status_code == 404


def test_a_broken_dataset_is_stored_with_its_problems_listed(svc):
    _server, c, _ = svc
    bad = b'{"question": "a", "answer": "b"}\n{"question": "c", "answer": \n[1, 2]\n'
    r = c["alice"].post("/v1/datasets", files={"file": ("bad.jsonl", bad)})
    assert r.status_code == 201
    report = r.json()["report"]
    assert not r.json()["ok"] and report["n_errors"] >= 2
    assert {e["line"] for e in report["errors"]} >= {2, 3}


def test_upload_refusals_leave_nothing_behind(svc):
    server, c, _ = svc
    before = sorted(p.name for p in (server.home / "uploads").iterdir())
    big = b'{"question": "q", "answer": "a"}\n' * 4000  # ~128 KiB, over the test server's 64 KiB limit
    r = c["alice"].post("/v1/datasets", files={"file": ("big.jsonl", big)})
    assert r.status_code == 413 and "65,536 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit must hold while streaming
        for _ in range(8):
            yield (
                b'--B\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n\r\n'
                if _ == 0
                else b"x" * 20000
            )
        yield b"\r\n--B--\r\n"

    r = requests.post(
        server.url + "/v1/datasets",
        data=chunks(),
        headers={**c["alice"].headers, "Content-Type": "multipart/form-data; boundary=B"},
    )
    assert r.status_code == 413
    r = c["alice"].post("/v1/datasets", files={"data": ("x.jsonl", b"{}\n")})
    assert r.status_code == 422 and "'file' is missing" in r.json()["detail"]
    r = c["alice"].post("/v1/datasets", files={"file": ("x.jsonl", b"{}\n")}, data={"cutoff_len": "-1"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "cutoff_len"
    r = c["alice"].post("/v1/datasets", files={"file": ("x.jsonl", b"{}\n")}, data={"colour": "red"})
    assert r.status_code == 422 and "unknown field" in r.json()["detail"]
    r = c["alice"].post("/v1/datasets", json={"file": "x"})
    assert r.status_code == 415
    assert sorted(p.name for p in (server.home / "uploads").iterdir()) == before
    assert c["alice"].get("/v1/datasets").status_code == 200  # still serving


def test_openapi_page_documents_the_spec_fields(svc):
    server, _, _ = svc
    spec = requests.get(server.url + "/openapi.json").json()
    assert {
        "/v1/finetune/llm",
        "/v1/finetune/llm/{job_id}",
        "/v1/finetune/llm/{job_id}/events",
        "/v1/finetune/llm/{job_id}/cancel",
        "/v1/finetune/llm/{job_id}/adapter",
        "/v1/datasets",
        "/v1/datasets/{dataset_id}",
    } <= set(spec["paths"])
    lora_r = spec["components"]["schemas"]["PretrainedModelConfig"]["properties"]["lora_r"]
    assert "LoRA rank" in lora_r["description"]
    assert "multipart/form-data" in spec["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]
    assert requests.get(server.url + "/docs").status_code == 200
    assert os.environ.get("TUNEFORGE_HOME") != str(server.home)  # the server got its home from --home


def test_a_task_the_model_cannot_do_is_refused_at_submission(svc):
    from transformers import AutoConfig

    server, c, _ = svc
    before = _jobs_in_db(server)
    folder = server.home / "models" / "tiny-vit"  # an image model: no sequence-classification head
    AutoConfig.for_model("vit", hidden_size=64, num_hidden_layers=2, num_attention_heads=4).save_pretrained(folder)
    body = payload(server.home)
    body["pretrainedmodel_config"]["model_path"] = str(folder)
    body["data_config"].pop("prompt_template")
    body["data_config"].update(task="classification", text_column="question", label_column="answer")
    r = c["alice"].post("/v1/finetune/llm", json=body)
    assert r.status_code == 422, r.text
    (problem,) = r.json()["problems"]
    assert problem["field"] == "pretrainedmodel_config.model_path"
    assert "(vit) is a vision model: it reads images, not text" in problem["message"]
    body["data_config"].update(task="causal_lm", prompt_template="{question} {answer}")
    r = c["alice"].post("/v1/finetune/llm", json=body)
    assert r.status_code == 422 and "data_config.task 'causal_lm' cannot train it" in r.text
    body["pretrainedmodel_config"]["model_path"] = payload(server.home)["pretrainedmodel_config"]["model_path"]
    body["data_config"] = {"data_path": body["data_config"]["data_path"], "task": "image_classification"}
    r = c["alice"].post("/v1/finetune/llm", json=body)
    assert r.status_code == 422, r.text
    (problem,) = r.json()["problems"]
    assert problem["field"] == "pretrainedmodel_config.model_path" and "is not a vision model" in problem["message"]
    body["data_config"].update(image_column="label")
    r = c["alice"].post("/v1/finetune/llm", json=body)
    assert r.status_code == 422 and "data_config.image_column and label_column are both 'label'" in r.text
    assert _jobs_in_db(server) == before


def test_an_uploaded_parquet_of_images_reports_its_labels(svc):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tiny_images import png_bytes

    _server, c, _ = svc
    rows = [{"img": {"bytes": png_bytes(k, i), "path": None}, "label": k} for k in ("red", "blue") for i in range(6)]
    rows.append({"img": {"bytes": b"not an image", "path": "x.png"}, "label": "red"})
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    r = c["alice"].post(
        "/v1/datasets",
        files={"file": ("colours.parquet", buf.getvalue())},
        data={"task": "image_classification", "image_column": "img"},
    )
    assert r.status_code in (200, 201), r.text
    report = r.json()["report"]
    assert report["format"] == "image_classification" and report["labels"] == {"blue": 6, "red": 6}
    assert [e["kind"] for e in report["errors"]] == ["bad_image"] and "row 13" in report["errors"][0]["message"]


def test_an_uploaded_classification_dataset_reports_its_labels(svc):
    _server, c, _ = svc
    rows = "".join(json.dumps({"review": f"text {i}", "stars": i % 2}) + "\n" for i in range(12))
    r = c["alice"].post(
        "/v1/datasets",
        files={"file": ("reviews.jsonl", rows.encode())},
        data={"task": "classification", "text_column": "review", "label_column": "stars"},
    )
    assert r.status_code in (200, 201), r.text
    report = r.json()["report"]
    assert report["ok"] and report["format"] == "classification" and report["labels"] == {"0": 6, "1": 6}
    r = c["alice"].post(f"/v1/datasets/{r.json()['id']}/validate", json={"task": "classification"})
    assert r.status_code == 200 and not r.json()["report"]["ok"]
    assert "no column 'text'" in r.json()["report"]["errors"][0]["message"]


def test_seq2seq_on_a_decoder_and_causal_lm_on_t5_are_refused_at_submission(svc):
    from transformers import AutoConfig

    server, c, _ = svc
    before = _jobs_in_db(server)
    body = payload(server.home)  # the tiny decoder-only model
    body["data_config"].pop("prompt_template")
    body["data_config"].update(task="seq2seq", text_column="question", label_column="answer")
    r = c["alice"].post("/v1/finetune/llm", json=body)
    assert r.status_code == 422, r.text
    (problem,) = r.json()["problems"]
    assert problem["field"] == "pretrainedmodel_config.model_path"
    assert "is not an encoder-decoder model" in problem["message"] and "T5, Flan-T5, BART" in problem["message"]

    folder = server.home / "models" / "tiny-t5"
    AutoConfig.for_model("t5", d_model=64, num_layers=2, num_heads=4).save_pretrained(folder)
    body = payload(server.home)
    body["pretrainedmodel_config"]["model_path"] = str(folder)
    r = c["alice"].post("/v1/finetune/llm", json=body)
    assert r.status_code == 422, r.text
    (problem,) = r.json()["problems"]
    assert "(t5) is an encoder-decoder model" in problem["message"] and "'seq2seq'" in problem["message"]
    assert _jobs_in_db(server) == before


def test_an_uploaded_seq2seq_dataset_is_checked_row_by_row(svc):
    _server, c, _ = svc
    rows = [{"en": f"hello {i}", "de": f"hallo {i}"} for i in range(6)]
    rows[3]["de"] = " "
    r = c["alice"].post(
        "/v1/datasets",
        files={"file": ("pairs.jsonl", "".join(json.dumps(x) + "\n" for x in rows).encode())},
        data={"task": "seq2seq", "text_column": "en", "label_column": "de"},
    )
    assert r.status_code in (200, 201), r.text
    report = r.json()["report"]
    assert report["format"] == "seq2seq" and report["columns_used"] == ["en", "de"] and not report["ok"]
    assert "line 4: 'de' is empty; every row needs a target text" in report["errors"][0]["message"]
