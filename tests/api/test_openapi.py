"""The OpenAPI page documents every JSON answer of the service (jobs, job pages, events, datasets, deployments),
and the response models keep the wire format: a view with a key the model does not declare is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tuneforge.api.app import create_app
from tuneforge.api.responses import Job, JobLaunched
from tuneforge.jobs.store import Store
from tuneforge.settings import Settings

TYPED = ("/v1/finetune/llm", "/v1/datasets", "/v1/deploy")


@pytest.fixture(scope="module")
def openapi(tmp_path_factory):
    settings = Settings(home=tmp_path_factory.mktemp("openapi") / "home")
    settings.ensure_dirs()
    app = create_app(settings, store=Store(settings.database_url))
    try:
        yield app.openapi()
    finally:
        app.state.deployments.close()


def test_every_json_answer_of_jobs_datasets_and_deployments_has_a_schema(openapi):
    documented = {}
    for path, ops in openapi["paths"].items():
        if not path.startswith(TYPED):
            continue
        for method, op in ops.items():
            ok = op["responses"].get("200") or op["responses"]["201"]
            content = ok["content"]
            if "application/zip" in content:
                continue  # the adapter and export downloads
            schema = content["application/json"]["schema"]
            # MonsterAPI's deployment /generate answers a JSON-encoded string, by that API's own design.
            documented[f"{method.upper()} {path}"] = schema["$ref"].rsplit("/", 1)[1] if "$ref" in schema else schema
    assert documented == {
        "POST /v1/finetune/llm": "JobLaunched",
        "GET /v1/finetune/llm": "JobPage",
        "GET /v1/finetune/llm/{job_id}": "Job",
        "POST /v1/finetune/llm/{job_id}/cancel": "Job",
        "GET /v1/finetune/llm/{job_id}/eval": "JobEvaluation",
        "GET /v1/finetune/llm/{job_id}/events": "JobEvents",
        "POST /v1/finetune/llm/{job_id}/exports": "JobExport",
        "GET /v1/finetune/llm/{job_id}/exports": "JobExports",
        "GET /v1/finetune/llm/{job_id}/exports/{export_id}": "JobExport",
        "POST /v1/datasets": "Dataset",
        "GET /v1/datasets": "DatasetPage",
        "GET /v1/datasets/{dataset_id}": "Dataset",
        "POST /v1/datasets/{dataset_id}/validate": "Dataset",
        "DELETE /v1/datasets/{dataset_id}": "DatasetDeleted",
        "POST /v1/deploy/llm": "DeploymentCreated",
        "GET /v1/deploy/status/{deployment_id}": "Deployment",
        "GET /v1/deploy/logs/{deployment_id}": "DeploymentLogs",
        "GET /v1/deploy/metrics/{deployment_id}": "DeploymentMetrics",
        "GET /v1/deploy/list": "DeploymentPage",
        "POST /v1/deploy/terminate": "DeploymentTerminated",
        "POST /v1/deploy/{deployment}/generate": {"type": "string"},
    }
    events = openapi["paths"]["/v1/finetune/llm/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert "text/event-stream" in events  # the streamed form is documented beside the JSON one
    schemas = openapi["components"]["schemas"]
    assert {"progress", "losses", "spec", "result"} <= set(schemas["Job"]["properties"])
    assert list(schemas["JobLaunched"]["properties"])[:2] == ["message", "job_id"]  # MonsterAPI's key order


def test_a_view_with_an_undeclared_key_is_refused():
    view = {
        "job_id": "j",
        "deployment_id": "j",
        "owner": "o",
        "suffix": None,
        "status": "queued",
        "model": "m",
        "data_path": "d",
        "created_at": None,
        "started_at": None,
        "finished_at": None,
        "updated_at": None,
        "queue_position": 1,
        "progress": {
            "step": 0,
            "total_steps": None,
            "epoch": None,
            "percent": 0.0,
            "steps_per_second": None,
            "eta_seconds": None,
        },
        "losses": {"train_loss": None, "eval_loss": None, "best_eval_loss": None, "best_step": None},
        "error": None,
        "cancel_requested": False,
        "attempts": 0,
        "node": None,
        "devices": None,
        "events_url": "/e",
        "adapter_url": None,
        "spec": {},
        "result": None,
    }
    wire = JobLaunched(message="queued", **view).model_dump(mode="json")
    assert list(wire)[:2] == ["message", "job_id"] and {k: wire[k] for k in view} == view
    with pytest.raises(ValidationError, match="surprise"):
        Job(**view, surprise=1)
