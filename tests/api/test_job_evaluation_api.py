"""A job with held-out test rows through `tuneforge server` (tiny model): the job's `evaluation` field, its
`evaluation` event, and `GET /v1/finetune/llm/{id}/eval` (paging, differing rows, 404/409, tenancy)."""

from __future__ import annotations

import pytest
from tfservice import Client, Server, create_key, make_home, payload

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model_dir):
    home = make_home(tmp_path_factory.mktemp("eval-svc"), tiny_model_dir)
    keys = {"alice": create_key(home, "alice"), "bob": create_key(home, "bob")}
    server = Server(home, workers=1).start()
    yield server, {name: Client(server.url, k) for name, k in keys.items()}
    server.stop()


def test_a_job_with_a_test_split_reports_base_vs_adapter(svc):
    server, c = svc
    body = payload(server.home, max_steps=4)
    body["data_config"]["data_split_config"] = {"train": 0.7, "validation": 0.1, "test": 0.2}
    r = c["alice"].post("/v1/finetune/llm", json=body)
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    r = c["alice"].get(f"/v1/finetune/llm/{job_id}/eval")
    assert r.status_code == 409 and "once it has succeeded" in r.json()["detail"]

    job = c["alice"].wait_status(job_id, ("succeeded", "failed"), 240, server)
    assert job["status"] == "succeeded", job
    ev = job["evaluation"]
    assert ev["rows"] == 16 and set(ev["results"]) == {"base", "adapter"} and ev == job["result"]["evaluation"]
    assert job["eval_url"] == f"/v1/finetune/llm/{job_id}/eval"
    [event] = [e for e in c["alice"].events(job_id) if e["type"] == "evaluation"]
    assert event["results"] == ev["results"]

    page = c["alice"].get(job["eval_url"], params={"limit": 5, "offset": 10}).json()
    assert page["total"] == 16 and [row["row"] for row in page["rows"]] == [11, 12, 13, 14, 15]
    assert page["evaluation"] == ev
    row = page["rows"][0]
    assert set(row) == {"row", "prompt", "reference", "answers", "scores"} and set(row["answers"]) == {
        "base",
        "adapter",
    }
    differing = c["alice"].get(job["eval_url"], params={"differing": "true", "limit": 1000}).json()
    assert differing["total"] == ev["differing_rows"]
    assert all(r["answers"]["base"].strip() != r["answers"]["adapter"].strip() for r in differing["rows"])
    assert c["bob"].get(job["eval_url"]).status_code == 404  # another owner's job does not exist for bob

    # Without test rows: no evaluation, and the route says why.
    r = c["alice"].post("/v1/finetune/llm", json=payload(server.home, max_steps=2))
    plain = c["alice"].wait_status(r.json()["job_id"], ("succeeded", "failed"), 240, server)
    assert plain["status"] == "succeeded" and plain["evaluation"] is None and plain["eval_url"] is None
    r = c["alice"].get(f"/v1/finetune/llm/{plain['job_id']}/eval")
    assert r.status_code == 404 and "no held-out test rows" in r.json()["detail"]
