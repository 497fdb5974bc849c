"""The OpenAI-compatible routes over real HTTP (uvicorn on a loopback port), driven by the official `openai`
client unchanged: models, chat and text completions, streaming, concurrency across adapters, errors, API keys."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from serve_helpers import LiveServer

MESSAGES = [{"role": "user", "content": "what is two plus two?"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def reference(engine, model, **kw):
    params = dict(temperature=0, max_tokens=12, ignore_eos=False)
    params.update(kw)
    return engine.generate(model, messages=MESSAGES, **params)


def test_models_lists_base_and_adapters(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny", "alpha", "beta", "gamma"]
    assert all(m.object == "model" and m.owned_by == "tuneforge" for m in models.data)
    assert client.models.retrieve("beta").id == "beta"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_chat_completion_per_adapter(client, engine):
    seen = set()
    for model in ["tiny", "alpha", "beta"]:
        resp = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=12)
        ref = reference(engine, model)
        choice = resp.choices[0]
        assert resp.object == "chat.completion" and resp.model == model and resp.id.startswith("chatcmpl-")
        assert choice.message.role == "assistant" and choice.message.content == ref.text
        assert choice.finish_reason == ref.finish_reason
        assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (ref.prompt_tokens, ref.completion_tokens)
        assert resp.usage.total_tokens == ref.prompt_tokens + ref.completion_tokens
        seen.add(choice.message.content)
    assert len(seen) == 3


def test_chat_streaming_chunks(client, engine):
    stream = client.chat.completions.create(
        model="alpha",
        messages=MESSAGES,
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    ref = reference(engine, "alpha")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.model == "alpha" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) >= 3 and "".join(content) == ref.text  # token by token, same text as non-streaming
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [ref.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == ref.completion_tokens


def test_raw_sse_wire_format(server):
    body = {"model": "beta", "messages": MESSAGES, "temperature": 0, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in resp.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"


def test_text_completions(client, engine):
    prompt = "Question: what is two plus two? Answer:"
    ref = engine.generate("gamma", prompt, temperature=0, max_tokens=8)
    resp = client.completions.create(model="gamma", prompt=prompt, temperature=0, max_tokens=8)
    assert resp.object == "text_completion" and resp.choices[0].text == ref.text
    assert resp.usage.prompt_tokens == ref.prompt_tokens
    pieces = [
        c.choices[0].text
        for c in client.completions.create(model="gamma", prompt=prompt, temperature=0, max_tokens=8, stream=True)
    ]
    assert "".join(pieces) == ref.text
    # a prompt given as token ids
    ids = engine.encode(prompt)
    assert client.completions.create(model="gamma", prompt=ids, temperature=0, max_tokens=8).choices[0].text == ref.text


def test_stop_seed_and_max_tokens(client, engine):
    long = client.chat.completions.create(model="alpha", messages=MESSAGES, temperature=0, max_tokens=3)
    assert long.choices[0].finish_reason == "length" and long.usage.completion_tokens == 3
    a = client.chat.completions.create(
        model="alpha", messages=MESSAGES, temperature=1.0, top_p=0.9, seed=11, max_tokens=10
    )
    b = client.chat.completions.create(
        model="alpha", messages=MESSAGES, temperature=1.0, top_p=0.9, seed=11, max_tokens=10
    )
    assert a.choices[0].message.content == b.choices[0].message.content
    full = reference(engine, "beta", max_tokens=20, ignore_eos=True).text
    stop = next(full[i : i + 2] for i in range(3, len(full) - 2) if full[i : i + 2].isprintable())
    resp = client.chat.completions.create(model="beta", messages=MESSAGES, temperature=0, max_tokens=20, stop=stop)
    assert resp.choices[0].message.content == full[: full.find(stop)]
    assert resp.choices[0].finish_reason == "stop"


def test_concurrent_requests_to_two_adapters_over_http(client, engine):
    names = ["alpha", "beta"] * 4
    expected = {n: reference(engine, n, max_tokens=16).text for n in set(names)}
    assert expected["alpha"] != expected["beta"]

    def ask(name):
        if name == "alpha":  # mix streaming and non-streaming requests
            chunks = client.chat.completions.create(
                model=name, messages=MESSAGES, temperature=0, max_tokens=16, stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        resp = client.chat.completions.create(model=name, messages=MESSAGES, temperature=0, max_tokens=16)
        return resp.choices[0].message.content

    with ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(ask, names))
    assert answers == [expected[n] for n in names]


def test_errors_in_openai_shape(client, server):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="alpah", messages=MESSAGES)
    assert "available: tiny, alpha, beta, gamma" in str(exc.value) and "did you mean 'alpha'" in str(exc.value)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="alpha", messages=MESSAGES, temperature=5)
    with pytest.raises(openai.BadRequestError, match="n: Input should be less than or equal to 16"):
        client.chat.completions.create(model="alpha", messages=MESSAGES, n=17)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="alpha", messages=[])
    with pytest.raises(openai.BadRequestError, match="one prompt per request"):
        client.completions.create(model="alpha", prompt=["a", "b"])
    resp = httpx.post(server.url + "/v1/chat/completions", json={"model": "alpha"}, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "messages"


def test_api_key_is_required_when_set(engine):
    from tuneforge.serve.app import create_app

    with LiveServer(create_app(engine, api_key="s3cret")) as live:
        wrong = openai.OpenAI(base_url=live.url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model="alpha", messages=MESSAGES, max_tokens=2)
        right = openai.OpenAI(base_url=live.url + "/v1", api_key="s3cret", max_retries=0)
        assert right.chat.completions.create(model="alpha", messages=MESSAGES, max_tokens=2).choices[0].message
        assert httpx.get(live.url + "/health").json()["status"] == "ok"


def test_router_mounts_with_a_per_model_auth(engine):
    """What the fine-tuning service does: mount the same router with its own auth, here per-model keys."""
    from fastapi import FastAPI, HTTPException

    from tuneforge.serve.openai_routes import openai_router

    keys = {"alpha": "key-a", "beta": "key-b"}

    def auth(request, model):
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in keys.values():
            raise HTTPException(401, "unknown key")
        if model is not None and keys.get(model) != token:
            raise HTTPException(404, f"model {model!r} not found")

    app = FastAPI()
    app.include_router(openai_router(engine, auth))
    with LiveServer(app) as live:
        a = openai.OpenAI(base_url=live.url + "/v1", api_key="key-a", max_retries=0)
        assert [m.id for m in a.models.list().data] == ["alpha"]
        assert a.chat.completions.create(model="alpha", messages=MESSAGES, max_tokens=2).model == "alpha"
        with pytest.raises(openai.NotFoundError):
            a.chat.completions.create(model="beta", messages=MESSAGES, max_tokens=2)
