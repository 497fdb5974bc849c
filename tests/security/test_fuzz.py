"""A table of hostile inputs against every route of the OpenAPI schema, over real HTTP, on one server: wrong types,
huge and tiny numbers, NUL bytes, long strings and deep nesting in path parameters, query parameters, headers,
every field of every JSON body, the upload form and the uploaded file. No answer may be a 5xx, and the server must
still be healthy (and still answer a normal request) afterwards.

The inputs are bounded (strings of 5,000 characters, nesting 5,000 deep; one value of each kind per body field) so
that the table stays a few minutes even on a busy machine (3 min 18 s with every field given every value, on this
project's shared 2-core machine under load ~15); the limits that keep larger inputs out have their own tests in
test_hardening.py."""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import pytest
import requests
from tfservice import Client, Server, create_key, make_home, payload

# Raw JSON texts, spliced into a body in place of one field's value (so that values the client's own encoder
# would refuse, like 1e400 or 5,000-deep nesting, reach the server as they are).
JSON_VALUES = [
    "null",
    "true",
    "-1",
    "0",
    "9223372036854775808",
    "1180591620717411303424",
    "-1180591620717411303424",
    "1e400",
    "-1e-400",
    "NaN",
    '""',
    '"\\u0000"',
    '"a\\u0000b"',
    json.dumps("x" * 5000),
    '"../../../etc/passwd"',
    '"{__class__}"',
    "[]",
    "{}",
    "[" * 5000 + "]" * 5000,
    '{"a":' * 3000 + "1" + "}" * 3000,
]
# Per field of a body (the table's bulk): one of each kind above.
FIELD_VALUES = [
    "null",
    "true",
    "1180591620717411303424",
    "-1180591620717411303424",
    "1e400",
    '"a\\u0000b"',
    json.dumps("x" * 5000),
    '"../../../etc/passwd"',
    "[]",
    "[" * 5000 + "]" * 5000,
]
# Query, path and header values (strings on the wire).
TEXT_VALUES = [
    "99999999999999999999",
    "-99999999999999999999",
    "1e400",
    "nan",
    "-1",
    "0",
    "\x00",
    "a\x00b",
    "x" * 5000,
    "",
    "../../etc/passwd",
    "[]",
    "ds_0000000000000000",
    "{__class__}",
]
PLACEHOLDER = '"__FUZZ__"'


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model_dir):
    home = make_home(tmp_path_factory.mktemp("fuzz"), tiny_model_dir)
    key = create_key(home, "mallory")
    # Every failure below is the client's; don't let the auth throttle turn the rest of the table into 429s.
    server = Server(home, workers=0, env={"TUNEFORGE_AUTH_FAILURES_PER_MINUTE": "1000000"}).start()
    client = Client(server.url, key)
    schema = client.get("/openapi.json").json()
    yield server, client, schema
    server.stop()


def _routes(schema: dict) -> list[tuple[str, str, dict]]:
    return [
        (method.upper(), path, op)
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    for key in ("anyOf", "allOf"):
        for option in node.get(key, []):
            option = _resolve(schema, option)
            if option.get("properties"):
                return option
    return node


def _leaf_fields(schema: dict, node: dict, prefix: tuple = ()) -> list[tuple]:
    """Paths of every field in a JSON body schema, nested sections included."""
    node = _resolve(schema, node)
    out = []
    for name, sub in (node.get("properties") or {}).items():
        sub_resolved = _resolve(schema, sub)
        out.append(prefix + (name,))
        if sub_resolved.get("properties"):
            out += _leaf_fields(schema, sub_resolved, prefix + (name,))
    return out


def _base_body(server, path: str) -> dict:
    """A plausible body for the route, so that a hostile value in one field meets the code behind validation."""
    home = server.home
    if path == "/v1/finetune/llm":
        return payload(home)
    if path == "/v1/deploy/llm":  # a base that does not exist: nothing gets loaded, whatever the other fields say
        return {"basemodel_path": str(home / "models" / "missing"), "deployment_name": "fuzz"}
    if path == "/v1/deploy/terminate":
        return {"deployment_id": "00000000-0000-0000-0000-000000000000"}
    if path == "/v1/data/inspect":
        return {"data_path": str(home / "datasets" / "qa.jsonl"), "prompt_template": "{question} {answer}"}
    if path in ("/v1/chat/completions",):
        return {"model": "none", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    if path in ("/v1/completions",):
        return {"model": "none", "prompt": "hi", "max_tokens": 1}
    if path == "/v1/classify":
        return {"model": "none", "input": ["hi"]}
    return {}


def _splice(body: dict, field: tuple, raw: str) -> str:
    data = json.loads(json.dumps(body))
    holder = data
    for name in field[:-1]:
        if not isinstance(holder.get(name), dict):
            holder[name] = {}
        holder = holder[name]
    holder[field[-1]] = "__FUZZ__"
    return json.dumps(data).replace(PLACEHOLDER, raw, 1)


def _fill_path(path: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", quote(value, safe=""), path)


def _check(failures: list, what: str, send, *args, **kwargs) -> None:
    """`send(*args, **kwargs)`; a 5xx answer or a dropped connection is recorded as a failure."""
    kwargs.setdefault("timeout", 30)
    try:
        r = send(*args, **kwargs)
    except requests.RequestException as exc:  # the server hung up or reset: as bad as a 500
        failures.append(f"{what}: {type(exc).__name__}: {exc}")
        return
    if r.status_code >= 500:
        failures.append(f"{what}: {r.status_code} {r.text[:300]}")


def _healthy(server, client: Client) -> None:
    assert requests.get(server.url + "/v1/health", timeout=10).json()["status"] == "ok"
    assert client.get("/v1/finetune/llm").status_code == 200


def test_every_route_survives_hostile_path_and_query_values(svc):
    server, client, schema = svc
    failures: list[str] = []
    routes = _routes(schema)
    assert len(routes) >= 15, [p for _, p, _ in routes]
    for method, path, op in routes:
        params = [p for p in op.get("parameters", []) if p["in"] in ("query", "path")]
        fixed = _fill_path(path, "00000000-0000-0000-0000-000000000000")
        if "{" in path:
            for value in TEXT_VALUES:
                _check(
                    failures, f"{method} {path} path={value[:20]!r}", client.request, method, _fill_path(path, value)
                )
        for param in params:
            if param["in"] != "query":
                continue
            for value in TEXT_VALUES:
                _check(
                    failures,
                    f"{method} {path} ?{param['name']}={value[:20]!r}",
                    client.request,
                    method,
                    fixed,
                    params={param["name"]: value},
                )
    assert not failures, "\n".join(failures)
    _healthy(server, client)


def test_every_json_body_field_survives_hostile_values(svc):
    server, client, schema = svc
    failures: list[str] = []
    bodies = 0
    for method, path, op in _routes(schema):
        content = (op.get("requestBody") or {}).get("content", {})
        if "application/json" not in content:
            continue
        bodies += 1
        body_schema = content["application/json"]["schema"]
        base = _base_body(server, path)
        target = _fill_path(path, "00000000-0000-0000-0000-000000000000")
        for raw in JSON_VALUES:  # the whole body hostile
            _check(
                failures,
                f"{method} {path} body={raw[:20]}",
                client.request,
                method,
                target,
                data=raw,
                headers={"Content-Type": "application/json"},
            )
        for field in _leaf_fields(schema, body_schema):
            for raw in FIELD_VALUES:
                _check(
                    failures,
                    f"{method} {path} {'.'.join(field)}={raw[:20]}",
                    client.request,
                    method,
                    target,
                    data=_splice(base, field, raw),
                    headers={"Content-Type": "application/json"},
                )
    assert bodies >= 6
    assert not failures, "\n".join(failures)
    _healthy(server, client)


def test_upload_form_file_and_headers_survive_hostile_values(svc):
    server, client, schema = svc
    failures: list[str] = []
    form = schema["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    good = (server.home / "datasets" / "qa.jsonl").read_bytes()
    for name in form["properties"]:
        if name == "file":
            continue
        for value in TEXT_VALUES:
            _check(
                failures,
                f"upload {name}={value[:20]!r}",
                client.post,
                "/v1/datasets",
                files={"file": ("t.jsonl", good)},
                data={name: value},
            )
    files = [
        b"\x00" * 1000,
        b"[" * 20000 + b"]" * 20000,
        b'{"question": "' + b"q" * 60000 + b'", "answer": "a"}',
        b"\xff\xfe\x00garbage",
        b"",
        b"question,answer\n" + b'"' * 1000 + b"\n",
        b'{"question": {"a": ' * 3000 + b"1" + b"}" * 3000 + b"\n",
    ]
    for i, content in enumerate(files):
        for filename in ("t.jsonl", "t.json", "t.csv", "t.parquet", "\x00.jsonl", "x" * 5000 + ".jsonl"):
            _check(
                failures,
                f"upload file #{i} as {filename[:20]!r}",
                client.post,
                "/v1/datasets",
                files={"file": (filename, content)},
            )
    _check(failures, "upload without multipart", client.post, "/v1/datasets", data=b"{}")
    _check(
        failures,
        "upload truncated multipart",
        client.post,
        "/v1/datasets",
        data=b'--b\r\nContent-Disposition: form-data; name="file"',
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    for value in ("Bearer " + "x" * 10000, "Bearer", "Basic Og==", "Bearer \t", "bearer " + "\u00e9" * 100):
        _check(
            failures,
            f"Authorization {value[:20]!r}",
            requests.get,
            server.url + "/v1/finetune/llm",
            headers={"Authorization": value.encode("utf-8")},
        )
    for value in ("9" * 40, "-1", "x", "1" * 18, "\u0661\u0662"):
        _check(
            failures,
            f"Last-Event-ID {value[:20]!r}",
            client.get,
            "/v1/finetune/llm/00000000-0000-0000-0000-000000000000/events",
            headers={"Last-Event-ID": value.encode("utf-8")},
            params={"stream": "true"},
        )
    assert not failures, "\n".join(failures)
    _healthy(server, client)
