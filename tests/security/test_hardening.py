"""Issue 12, reproduced over real HTTP against a `tuneforge server` subprocess (no workers: jobs stay queued):
each attack that the service let through, and that it is refused now, with a 4xx that names the field and, for a
limit, the setting."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import requests
from tfservice import Client, Server, create_key, make_home, payload, wait_for


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("harden")
    home = make_home(root, tiny_model_dir)
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text(json.dumps({"question": "SECRET", "answer": "42"}) + "\n")
    linked = home / "datasets" / "linked"
    linked.mkdir()
    (linked / "train.jsonl").symlink_to(outside / "secret.jsonl")
    keys = {name: create_key(home, name) for name in ("alice", "bob", "quota")}
    # cwd=home: a relative name like `models/tiny` would resolve to the tiny model if it were taken as a path.
    server = Server(home, workers=0, cwd=home, env={"TUNEFORGE_MAX_ACTIVE_JOBS_PER_KEY": "2"}).start()
    yield server, {name: Client(server.url, k) for name, k in keys.items()}, keys
    server.stop()


def problem(r: requests.Response, status: int, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    detail = r.json()["detail"]
    text = detail if isinstance(detail, str) else json.dumps(detail)
    for w in words:
        assert w in text, (w, text)
    return text


def upload(client: Client, content: bytes, name: str = "train.jsonl", **fields) -> requests.Response:
    return client.post("/v1/datasets", files={"file": (name, content)}, data=fields)


# --- 1. relative names are hub ids, never paths under the server's working directory ----------------------------------


def test_relative_model_name_is_not_opened_under_the_working_directory(svc):
    server, c, _ = svc
    assert (server.home / "models" / "tiny" / "config.json").is_file()  # what the relative name would have reached
    r = c["alice"].post("/v1/deploy/llm", json={"basemodel_path": "models/tiny", "deployment_name": "escape"})
    problem(r, 422, "basemodel_path", "Hugging Face cache")
    r = upload(c["alice"], b'{"question": "q", "answer": "a"}\n', model_path="models/tiny")
    problem(r, 422, "model_path")
    r = c["alice"].post("/v1/data/inspect", json={"data_path": "ds_0000000000000000", "model_path": "models/tiny"})
    assert r.status_code in (404, 422), r.text


# --- 2. symlinks inside an allowed folder ------------------------------------------------------------------------------


def test_symlink_inside_an_allowed_folder_is_refused(svc):
    server, c, _ = svc
    folder = str(server.home / "datasets" / "linked")
    text = problem(
        c["alice"].post("/v1/data/inspect", json={"data_path": folder}), 422, "data_path", "link", "train.jsonl"
    )
    assert "SECRET" not in text
    assert str(server.home) not in text.replace(folder, "")  # server paths (but the caller's own) relative to home
    text = problem(
        c["alice"].post("/v1/finetune/llm", json=payload(server.home, data_path=folder)),
        422,
        "data_config.data_path",
        "link",
    )
    assert "SECRET" not in text
    # The same folder without the link is fine.
    os.remove(os.path.join(folder, "train.jsonl"))
    try:
        (server.home / "datasets" / "linked" / "train.jsonl").write_text('{"question": "q", "answer": "a"}\n')
        assert c["alice"].post("/v1/data/inspect", json={"data_path": folder}).status_code == 200
    finally:
        os.remove(os.path.join(folder, "train.jsonl"))


# --- 3. limits ---------------------------------------------------------------------------------------------------------


def test_request_body_limit(svc):
    server, c, _ = svc
    big = payload(server.home)
    big["data_config"]["prompt_template"] = "{question} " + "x" * (2 * 1024**2) + " {answer}"
    problem(c["alice"].post("/v1/finetune/llm", json=big), 413, "TUNEFORGE_MAX_REQUEST_BYTES")

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"data_config": {"data_path": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}}'

    r = c["alice"].post("/v1/finetune/llm", data=chunks(), headers={"Content-Type": "application/json"})
    problem(r, 413, "TUNEFORGE_MAX_REQUEST_BYTES")


def test_field_step_and_token_limits_name_the_setting(svc):
    server, c, _ = svc
    p = payload(server.home)
    p["data_config"]["prompt_template"] = "{question} " + "y" * 40000 + " {answer}"
    problem(
        c["alice"].post("/v1/finetune/llm", json=p), 422, "data_config.prompt_template", "TUNEFORGE_MAX_FIELD_CHARS"
    )
    problem(
        c["alice"].post("/v1/finetune/llm", json=payload(server.home, max_steps=10**6)),
        422,
        "training_config.max_steps",
        "TUNEFORGE_MAX_STEPS_PER_JOB",
    )
    p = payload(server.home, max_steps=5000, batch_size=4096)
    p["data_config"]["cutoff_len"] = 8192
    problem(c["alice"].post("/v1/finetune/llm", json=p), 422, "TUNEFORGE_MAX_TOKENS_PER_JOB")
    ds = upload(
        c["alice"],
        (server.home / "datasets" / "qa.jsonl").read_bytes(),
        prompt_template="Question: {question}\nAnswer: {answer}",
    ).json()
    p = payload(server.home, data_path=ds["id"], num_train_epochs=1e6)
    p["training_config"].pop("max_steps")
    problem(
        c["alice"].post("/v1/finetune/llm", json=p),
        422,
        "training_config.num_train_epochs",
        "TUNEFORGE_MAX_STEPS_PER_JOB",
    )


def test_active_jobs_per_key(svc):
    server, c, _ = svc
    for _ in range(2):
        assert c["quota"].post("/v1/finetune/llm", json=payload(server.home)).status_code == 201
    problem(c["quota"].post("/v1/finetune/llm", json=payload(server.home)), 429, "TUNEFORGE_MAX_ACTIVE_JOBS_PER_KEY")
    assert c["bob"].post("/v1/finetune/llm", json=payload(server.home)).status_code == 201  # other keys unaffected


# --- 4. 4xx instead of 500 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, field, value",
    [
        ("data_config", "data_path", "/tmp/a\x00b.jsonl"),
        ("pretrainedmodel_config", "model_path", "models/\x00tiny"),
        ("pretrainedmodel_config", "model_path", "a" * 5000),
        ("pretrainedmodel_config", "model_path", "/" + "b" * 5000),
    ],
)
def test_hostile_path_fields_are_4xx_naming_the_field(svc, section, field, value):
    server, c, _ = svc
    p = payload(server.home)
    p[section][field] = value
    problem(c["alice"].post("/v1/finetune/llm", json=p), 422, f"{section}.{field}")


def test_upload_form_and_query_and_header_extremes(svc):
    server, c, _ = svc
    problem(upload(c["alice"], b'{"a": 1}\n', model_path="m" * 5000), 422, "model_path")
    problem(upload(c["alice"], b'{"a": 1}\n', model_path="/x\x00y"), 422, "model_path")
    job = c["alice"].post("/v1/finetune/llm", json=payload(server.home)).json()["job_id"]
    problem(c["alice"].get(f"/v1/finetune/llm/{job}/events", params={"after": "99999999999999999999"}), 422, "after")
    r = c["alice"].get(f"/v1/finetune/llm/{job}/events", params={"stream": "true"}, headers={"Last-Event-ID": "9" * 40})
    problem(r, 422, "Last-Event-ID")
    r = c["alice"].post(
        "/v1/chat/completions", json={"model": "x", "seed": 2**70, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed", r.text  # OpenAI's error shape there
    c["alice"].post(f"/v1/finetune/llm/{job}/cancel")


def test_deeply_nested_input(svc):
    server, c, _ = svc
    depth = 100_000
    r = c["alice"].post(
        "/v1/finetune/llm", data="[" * depth + "]" * depth, headers={"Content-Type": "application/json"}
    )
    assert 400 <= r.status_code < 500, r.text
    depth = 30_000  # within the tests' 64 KiB upload limit
    r = upload(c["alice"], b'{"question": ' + b"[" * depth + b"]" * depth + b', "answer": "a"}\n')
    assert r.status_code == 201, r.text
    report = r.json()["report"]
    assert not r.json()["ok"] and "nested too deeply" in json.dumps(report)
    assert requests.get(server.url + "/v1/health").ok


# --- 5. refused at submission, not in the queue ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (lambda p: p["training_config"].update(seed=2**32), "training_config.seed", "4294967295"),
        (lambda p: p["training_config"].update(max_steps=2**63), "training_config.max_steps", "less than or equal"),
        (
            lambda p: p["data_config"].update(prompt_template="no placeholder"),
            "data_config.prompt_template",
            "no {column}",
        ),
        (lambda p: p["data_config"].update(prompt_template="Q: {question} {"), "data_config.prompt_template", "'{'"),
        (
            lambda p: p["data_config"].update(prompt_template="{question.__class__} {answer}"),
            "data_config.prompt_template",
            "attribute",
        ),
        (
            lambda p: p["pretrainedmodel_config"].update(target_modules=["nope_proj"]),
            "pretrainedmodel_config.target_modules",
            "q_proj",
        ),
        (
            lambda p: (
                p["pretrainedmodel_config"].update(model_path="smollm2"),
                p["training_config"].update(batch_size=4096),
                p["data_config"].update(cutoff_len=2048),
            ),
            "pretrainedmodel_config.model_path",
            "too large",
        ),
    ],
)
def test_refused_at_submission(svc, mutate, field, words):
    server, c, _ = svc
    p = payload(server.home)
    mutate(p)
    problem(c["alice"].post("/v1/finetune/llm", json=p), 422, field, words)


def test_dataset_with_errors_is_refused_at_submission(svc):
    server, c, _ = svc
    ds = upload(c["alice"], b'{"question": "q", "answer": "a"}\nnot json\n').json()
    assert ds["ok"] is False
    problem(
        c["alice"].post("/v1/finetune/llm", json=payload(server.home, data_path=ds["id"])),
        422,
        "data_config.data_path",
        "has errors",
    )


# --- 6. deployment tokens ----------------------------------------------------------------------------------------------


def _deploy(client: Client, home, **kw) -> requests.Response:
    return client.post("/v1/deploy/llm", json={"basemodel_path": str(home / "models" / "tiny"), **kw})


def test_weak_and_reused_tokens_are_refused(svc):
    server, c, _ = svc
    problem(_deploy(c["alice"], server.home, api_auth_token="password"), 422, "api_auth_token", "32")
    strong = "s3cure-" + "k" * 40
    r = _deploy(c["alice"], server.home, api_auth_token=strong, deployment_name="tok-a")
    assert r.status_code == 200, r.text
    problem(_deploy(c["bob"], server.home, api_auth_token=strong, deployment_name="tok-b"), 409, "api_auth_token")
    db = (server.home / "tuneforge.db").read_bytes() + b"".join(p.read_bytes() for p in server.home.glob("*.db-*"))
    assert strong.encode() not in db  # stored hashed


def test_revoking_a_key_stops_its_deployments_tokens(svc):
    server, _, _ = svc
    out = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "keys", "create", "dora", "--home", str(server.home)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    key_id, key = out.split("created key ")[1].split()[0], out.splitlines()[-1]
    r = _deploy(Client(server.url, key), server.home, deployment_name="dora-d")
    assert r.status_code == 200, r.text
    token, dep = r.json()["api_auth_token"], r.json()["deployment_id"]
    wait_for(
        lambda: Client(server.url, key).get(f"/v1/deploy/status/{dep}").json()["status"] == "live",
        120,
        what="the deployment to go live",
    )
    by_token = Client(server.url, token)
    chat = {"model": "dora-d", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert by_token.post("/v1/chat/completions", json=chat).status_code == 200
    subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "keys", "revoke", key_id, "--home", str(server.home)],
        check=True,
        capture_output=True,
    )
    assert by_token.post("/v1/chat/completions", json=chat).status_code == 401


def test_deployment_names_are_per_owner(svc):
    server, c, _ = svc
    ids = {}
    for who in ("alice", "bob"):
        r = _deploy(c[who], server.home, deployment_name="orders")
        assert r.status_code == 200, r.text  # bob is not told that alice has an `orders`
        ids[who] = (r.json()["deployment_id"], r.json()["api_auth_token"])
    problem(_deploy(c["alice"], server.home, deployment_name="orders"), 409, "deployment_name", "you already have")
    for who in ("alice", "bob"):
        wait_for(
            lambda who=who: c[who].get(f"/v1/deploy/status/{ids[who][0]}").json()["status"] == "live",
            120,
            what="the deployments to go live",
        )
    chat = {"model": "orders", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for who in ("alice", "bob"):  # each key and each token reaches its own `orders`
        for client in (c[who], Client(server.url, ids[who][1])):
            assert client.post("/v1/chat/completions", json=chat).status_code == 200
        log = c[who].get(f"/v1/deploy/logs/{ids[who][0]}").json()["logs"]
        assert sum("request: chat" in line for line in log) == 2, log
    assert c["quota"].post("/v1/chat/completions", json=chat).status_code == 404


# --- 8. secrets and disclosure -----------------------------------------------------------------------------------------


def test_tokens_dropped_when_the_job_ends_and_files_are_private(svc):
    server, c, _ = svc
    p = payload(server.home)
    p["hf_config"] = {"hf_token": "hf_SECRETTOKEN123"}
    p["logging_config"] = {"use_wandb": False, "wandb_login_key": "WANDBSECRET456"}
    job = c["bob"].post("/v1/finetune/llm", json=p).json()["job_id"]
    conn = sqlite3.connect(server.home / "tuneforge.db")
    spec = conn.execute("select spec from jobs where id = ?", (job,)).fetchone()[0]
    assert "hf_SECRETTOKEN123" in spec  # needed while it may still run
    assert c["bob"].post(f"/v1/finetune/llm/{job}/cancel").json()["status"] == "cancelled"
    spec = conn.execute("select spec from jobs where id = ?", (job,)).fetchone()[0]
    conn.close()
    assert "hf_SECRETTOKEN123" not in spec and "WANDBSECRET456" not in spec
    assert stat.S_IMODE(os.stat(server.home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(server.home / "tuneforge.db").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(server.home / "uploads").st_mode) == 0o700


def test_errors_show_paths_relative_to_the_home(svc):
    server, c, _ = svc
    text = problem(
        c["alice"].post("/v1/finetune/llm", json=payload(server.home, data_path="/etc/passwd")),
        422,
        "data_config.data_path",
        "<home>/datasets",
    )
    assert str(server.home) not in text
    r = upload(c["alice"], b'{"question": "q", "answer": "a"}\nnot json\n')
    assert r.status_code == 201 and r.json()["report"]["source"].startswith("<home>/uploads/"), r.text
    assert str(server.home) not in r.text


def test_download_checks_every_redirect_hop():
    from tuneforge.data.sources import SourceError, open_source, set_url_guard

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/data.jsonl":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/internal.jsonl")
                self.end_headers()
            else:
                body = b'{"prompt": "internal", "completion": "secret"}\n'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def guard(url: str) -> None:  # stands in for the private-address rule: "localhost" public, 127.0.0.1 private
        if "127.0.0.1" in url:
            raise ValueError("127.0.0.1 is a private address")

    set_url_guard(guard)
    try:
        with (
            pytest.raises(SourceError, match="redirected to a refused address"),
            open_source(f"http://localhost:{httpd.server_port}/data.jsonl") as src,
        ):
            list(src.records())
    finally:
        set_url_guard(None)
        httpd.shutdown()


# --- throttling and the docs setting: their own server, so that its failures don't throttle the tests above ------------


def test_failed_auth_is_throttled_and_docs_can_be_private(tmp_path, tiny_model_dir):
    home = make_home(tmp_path, tiny_model_dir)
    key = create_key(home, "erin")
    server = Server(
        home, workers=0, env={"TUNEFORGE_AUTH_FAILURES_PER_MINUTE": "5", "TUNEFORGE_PUBLIC_DOCS": "false"}
    ).start()
    try:
        assert requests.get(server.url + "/openapi.json").status_code == 404
        assert requests.get(server.url + "/docs").status_code == 404
        codes = [
            Client(server.url, f"guess-{i}")
            .post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            .status_code
            for i in range(5)
        ]
        assert codes == [401] * 5
        r = Client(server.url, key).get("/v1/finetune/llm")  # even a right key, from this address, for now
        problem(r, 429, "TUNEFORGE_AUTH_FAILURES_PER_MINUTE")
        assert int(r.headers["Retry-After"]) >= 1
        assert requests.get(server.url + "/v1/health").ok
    finally:
        server.stop()
