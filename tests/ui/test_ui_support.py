"""The web UI's page and assets, and the read-only routes it uses (api/ui_support.py), over real HTTP without a
browser: who am I, the spec schema with its defaults, the catalog, local files, memory estimates, and the dataset
inspection with its token-length histogram (and the paths it refuses)."""

from __future__ import annotations

import pytest
import requests
from tfservice import Client, Server, create_key, make_home

from tuneforge.models.catalog import CATALOG
from tuneforge.spec import JobSpec

TEMPLATE = "Question: {question}\nAnswer: {answer}"


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model_dir):
    home = make_home(tmp_path_factory.mktemp("ui-api"), tiny_model_dir)
    keys = {"alice": create_key(home, "alice"), "bob": create_key(home, "bob")}
    server = Server(home, workers=0).start()
    yield server, Client(server.url, keys["alice"]), Client(server.url, keys["bob"])
    server.stop()


def test_the_page_and_its_assets_are_served_without_a_key(svc):
    server, _, _ = svc
    r = requests.get(server.url + "/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<script src="/ui/app.js">' in r.text and 'href="/ui/app.css"' in r.text
    for asset, kind in (("/ui/app.js", "javascript"), ("/ui/app.css", "text/css")):
        r = requests.get(server.url + asset, timeout=10)
        assert r.status_code == 200 and kind in r.headers["content-type"], asset
    assert requests.get(server.url + "/ui/nope.js", timeout=10).status_code == 404


def test_support_routes_need_a_key(svc):
    server, _, _ = svc
    for path in (
        "/v1/me",
        "/v1/spec/schema",
        "/v1/catalog/models",
        "/v1/catalog/local",
        "/v1/catalog/estimate?model_path=x",
    ):
        assert requests.get(server.url + path, timeout=10).status_code == 401, path
    assert requests.post(server.url + "/v1/data/inspect", json={"data_path": "x"}, timeout=10).status_code == 401


def test_me_and_the_spec_schema_with_defaults(svc):
    _, alice, _ = svc
    assert alice.get("/v1/me").json() == {"owner": "alice", "is_admin": False}
    body = alice.get("/v1/spec/schema").json()
    assert body["schema"] == JobSpec.model_json_schema()
    d = body["defaults"]
    assert d["data_config"]["data_split_config"] == {"train": 0.9, "validation": 0.1}  # a default_factory
    assert "data_path" not in d["data_config"]
    assert (
        d["training_config"]["learning_rate"] == JobSpec.model_fields["training_config"].default_factory().learning_rate
    )


def test_catalog_local_files_and_memory_estimates(svc):
    server, alice, _ = svc
    cat = alice.get("/v1/catalog/models", timeout=120).json()
    assert len(cat["models"]) == len(CATALOG)
    assert all(
        m["memory"]["qlora"]["total_bytes"] < m["memory"]["lora"]["total_bytes"]
        for m in cat["models"]
        if m["qlora_4bit"] and m["params_b"] >= 1
    )
    assert cat["reference_setup"]["seq_len"] == 1024

    local = alice.get("/v1/catalog/local").json()
    tiny = str(server.home / "models" / "tiny")
    assert [m["path"] for m in local["models"]] == [tiny] and local["models"][0]["architecture"] == "llama"
    assert [d["name"] for d in local["datasets"]] == ["qa.jsonl"]

    e = alice.get(
        "/v1/catalog/estimate",
        params={"model_path": tiny, "batch_size": 8, "cutoff_len": 64, "device": "cpu", "precision": "fp32"},
    ).json()
    assert e["architecture"] == "llama" and 50_000 < e["params"] < 200_000
    assert e["lora"]["setup"]["seq_len"] == 64 and e["qlora"]["setup"]["method"] == "qlora"
    assert e["device"]["type"] == "cpu" and e["device"]["available_bytes"] > 0
    e = alice.get("/v1/catalog/estimate", params={"model_path": "smollm2-135m-instruct", "device": "cuda"}).json()
    assert 130e6 < e["params"] < 140e6 and e["qlora"]["setup"]["optimizer"] == "paged_adamw_8bit"
    r = alice.get("/v1/catalog/estimate", params={"model_path": "/etc"})
    assert r.status_code == 422 and "model_path" in r.json()["detail"]


def test_inspect_gives_the_report_and_a_token_length_histogram(svc):
    server, alice, bob = svc
    data = str(server.home / "datasets" / "qa.jsonl")
    tiny = str(server.home / "models" / "tiny")
    r = alice.post(
        "/v1/data/inspect",
        json={"data_path": data, "prompt_template": TEMPLATE, "model_path": tiny, "cutoff_len": 64, "bins": 10},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    rep, hist = body["report"], body["token_histogram"]
    assert rep["ok"] and rep["n_trainable"] == 80 and rep["source"] == data
    assert sum(hist["counts"]) == hist["count"] == 80 and len(hist["edges"]) == len(hist["counts"]) + 1
    assert hist["edges"][0] <= rep["token_stats"]["min"] and hist["edges"][-1] > rep["token_stats"]["max"]
    assert rep["first_example"]["segments"][0]["trained"] is False

    # Without a tokenizer: the report, no histogram. Without a template: the format error, with the columns.
    body = alice.post("/v1/data/inspect", json={"data_path": data}).json()
    assert body["token_histogram"] is None and body["report"]["columns"] == {"question": "string", "answer": "string"}
    assert not body["report"]["ok"]

    # An upload is named by its file name and id, never by its path on the server; others' uploads are not found.
    with open(data, "rb") as fh:
        up = alice.post("/v1/datasets", files={"file": ("mine.jsonl", fh)}).json()
    body = alice.post("/v1/data/inspect", json={"data_path": up["id"], "prompt_template": TEMPLATE}).json()
    assert body["report"]["source"] == f"mine.jsonl ({up['id']})" and body["report"]["ok"]
    assert bob.post("/v1/data/inspect", json={"data_path": up["id"]}).status_code == 404
    for bad in ("/etc/passwd", "https://example.com/x.jsonl", "someone/some-dataset"):
        r = alice.post("/v1/data/inspect", json={"data_path": bad})
        assert r.status_code == 422 and "data_path" in r.json()["detail"], (bad, r.text)


def test_inspect_gives_the_split_and_warns_of_a_small_validation_set_before_launch(svc):
    server, alice, _ = svc
    data = str(server.home / "datasets" / "qa.jsonl")  # 80 rows
    body = {"data_path": data, "prompt_template": TEMPLATE}
    rep = alice.post("/v1/data/inspect", json={**body, "data_split_config": {"train": 0.9, "validation": 0.1}}).json()
    assert rep["report"]["splits"] == {"train": 72, "validation": 8, "test": 0}
    (warning,) = [w for w in rep["report"]["warnings"] if w["kind"] == "small_validation"]
    assert warning["message"].startswith("the 'validation' fraction 0.1 of 80 rows gives 8 validation rows")
    rep = alice.post("/v1/data/inspect", json={**body, "data_split_config": {"train": 0.7, "validation": 0.3}}).json()
    assert rep["report"]["splits"]["validation"] == 24
    assert "small_validation" not in [w["kind"] for w in rep["report"]["warnings"]]
    r = alice.post("/v1/data/inspect", json={**body, "data_split_config": {"train": -0.5, "validation": 1.5}})
    assert r.status_code == 422 and "between 0 and 1" in r.json()["detail"], r.text


def test_model_check_says_where_a_model_comes_from_and_catches_a_misspelt_one(svc):
    server, alice, _ = svc
    local = alice.get("/v1/catalog/local").json()["models"][0]["path"]
    assert alice.get("/v1/catalog/check", params={"model_path": local}).json() | {"suggestions": []} == {
        "model_path": local,
        "ok": True,
        "source": "local",
        "message": None,
        "in_catalog": False,
        "suggestions": [],
    }
    bundled = alice.get("/v1/catalog/check", params={"model_path": "smollm2-135m-instruct"}).json()
    assert bundled["ok"] and bundled["source"] == "bundled" and bundled["in_catalog"]
    # A misspelt catalog id on a server without the hub: refused now, with the names it was probably meant to be.
    typo = alice.get("/v1/catalog/check", params={"model_path": "Qwen/Qwen2.5-0.5B-Instruc"}).json()
    assert not typo["ok"] and typo["source"] is None
    assert "model_path" in typo["message"] and "cannot be reached" in typo["message"]
    assert "Qwen/Qwen2.5-0.5B-Instruct" in typo["suggestions"]
    # A folder outside the allowed folders, and one without config.json, name the field.
    outside = alice.get("/v1/catalog/check", params={"model_path": "/etc"}).json()
    assert not outside["ok"] and outside["message"].startswith("model_path")
    assert requests.get(server.url + "/v1/catalog/check?model_path=x", timeout=10).status_code == 401


def test_catalog_marks_the_models_on_this_server(svc):
    from tuneforge.models.loader import SMOLLM2_ID

    _, alice, _ = svc
    models = alice.get("/v1/catalog/models", timeout=120).json()["models"]
    on_server = {m["id"] for m in models if m["on_server"]}
    assert SMOLLM2_ID in on_server  # bundled; the test machine's hub cache holds no other catalog model
    assert len(on_server) < len(models)


def test_a_job_is_named_by_its_suffix_in_views_and_lists(svc):
    from tfservice import payload

    server, alice, _ = svc
    body = payload(server.home)
    r = alice.post("/v1/finetune/llm", json={**body, "suffix": "math-v2"})
    assert r.status_code == 201, r.text
    assert r.json()["suffix"] == "math-v2" and r.json()["spec"]["suffix"] == "math-v2"
    listed = {j["job_id"]: j for j in alice.get("/v1/finetune/llm").json()["jobs"]}
    assert listed[r.json()["job_id"]]["suffix"] == "math-v2"
    bad = alice.post("/v1/finetune/llm", json={**body, "suffix": "my model!"})
    assert bad.status_code == 422 and bad.json()["problems"][0]["field"] == "suffix", bad.text
    assert "letters, digits" in bad.json()["detail"]
    unnamed = alice.post("/v1/finetune/llm", json=body).json()
    assert unnamed["suffix"] is None
    for job in (r.json(), unnamed):
        alice.post(f"/v1/finetune/llm/{job['job_id']}/cancel")
