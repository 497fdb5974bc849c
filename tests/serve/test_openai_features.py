"""The OpenAI features clients and agent frameworks rely on, over real HTTP with the official `openai` client and
LangChain's `ChatOpenAI`: n choices, logprobs, JSON mode and JSON schema (constrained: even the random tiny model's
output parses and matches), tools and tool_choice, penalties and logit_bias, system_fingerprint, x-request-id."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import openai
import pytest
import torch
from serve_helpers import PET, LiveServer

from tiny import CHATML_TOOLS, save_tiny

MESSAGES = [{"role": "user", "content": "what is two plus two?"}]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tool_engine(tmp_path_factory, adapters):
    """The tiny model with a chat template that renders tools (Hermes/Qwen style), and one adapter."""
    from tuneforge.serve.engine import InferenceEngine

    folder = save_tiny(tmp_path_factory.mktemp("tiny-tools"), chat_template=CHATML_TOOLS)
    eng = InferenceEngine(str(folder), adapters={"alpha": str(adapters["alpha"])}, model_name="tooly")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def tool_server(tool_engine):
    from tuneforge.serve.app import create_app

    with LiveServer(create_app(tool_engine)) as live:
        yield live


@pytest.fixture(scope="module")
def tool_client(tool_server):
    return openai.OpenAI(base_url=tool_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def check_pet(doc: dict) -> None:
    assert list(doc) == ["kind", "age", "name"] and doc["kind"] in ("cat", "dog")
    assert 0 <= doc["age"] <= 30 and isinstance(doc["name"], str) and len(doc["name"]) <= 6


# ------------------------------------------------------------------------------------------ n
def test_n_choices_are_the_seeded_generations(client, engine):
    resp = client.chat.completions.create(model="alpha", messages=MESSAGES, n=3, seed=7, max_tokens=8)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    expected = [engine.generate("alpha", messages=MESSAGES, seed=7 + i, max_tokens=8).text for i in range(3)]
    assert [c.message.content for c in resp.choices] == expected
    assert resp.usage.completion_tokens == sum(
        engine.submit("alpha", messages=MESSAGES, params=_params(seed=7 + i, max_tokens=8)).result().completion_tokens
        for i in range(3)
    )
    stream = client.chat.completions.create(model="alpha", messages=MESSAGES, n=3, seed=7, max_tokens=8, stream=True)
    texts, finished = ["", "", ""], set()
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert texts == expected and finished == {0, 1, 2}
    legacy = client.completions.create(model="tiny", prompt="The quick", n=2, seed=3, max_tokens=6)
    assert [c.text for c in legacy.choices] == [
        engine.generate("tiny", "The quick", seed=3 + i, max_tokens=6).text for i in range(2)
    ]


def _params(**kw):
    from tuneforge.serve.sampling import SamplingParams

    return SamplingParams(**kw)


# ------------------------------------------------------------------------------------------ logprobs
def test_chat_logprobs_match_the_model(client, engine):
    resp = client.chat.completions.create(
        model="tiny", messages=MESSAGES, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3
    )
    choice = resp.choices[0]
    entries = choice.logprobs.content
    assert len(entries) in (resp.usage.completion_tokens, resp.usage.completion_tokens - 1)  # the EOS is not listed
    assert b"".join(bytes(e.bytes) for e in entries).decode(errors="replace") == choice.message.content
    for e in entries:
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token  # greedy: the most likely one
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob) and e.logprob <= 0
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
    # the first token's log probability, from the model itself
    ids = torch.tensor([engine.encode(engine.chat_prompt(MESSAGES), chat=True)])
    with torch.no_grad():
        first = torch.log_softmax(engine.base(input_ids=ids).logits[0, -1].float(), -1)
    assert entries[0].logprob == pytest.approx(float(first.max()), abs=1e-4)

    streamed = []
    for chunk in client.chat.completions.create(
        model="tiny", messages=MESSAGES, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3, stream=True
    ):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.content
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_legacy_shape(client):
    resp = client.completions.create(model="beta", prompt="The quick", temperature=0, max_tokens=6, logprobs=2)
    choice = resp.choices[0]
    lp = choice.logprobs
    n = len(lp.tokens)
    assert n >= 1 and len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    for top, logprob in zip(lp.top_logprobs, lp.token_logprobs, strict=True):
        assert len(top) <= 2 and max(top.values()) == pytest.approx(logprob)  # greedy: the chosen one leads
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(n)]
    streamed = []
    for chunk in client.completions.create(
        model="beta", prompt="The quick", temperature=0, max_tokens=6, logprobs=2, stream=True
    ):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.tokens
    assert streamed == lp.tokens


# ------------------------------------------------------------------------------------------ response_format
def test_json_schema_output_always_parses_and_matches(client):
    for model in ("tiny", "gamma"):
        resp = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "a pet, as JSON"}],
            n=4,
            seed=1,
            max_tokens=64,
            response_format={"type": "json_schema", "json_schema": {"name": "pet", "schema": PET, "strict": True}},
        )
        for choice in resp.choices:
            assert choice.finish_reason == "stop"
            check_pet(json.loads(choice.message.content))
    stream = client.chat.completions.create(
        model="alpha",
        messages=MESSAGES,
        seed=2,
        max_tokens=64,
        stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "pet", "schema": PET}},
    )
    check_pet(json.loads("".join(c.choices[0].delta.content or "" for c in stream if c.choices)))


def test_json_object_mode_with_logit_bias(client, engine):
    close = engine.tokenizer.convert_tokens_to_ids("}")
    resp = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=32,
        response_format={"type": "json_object"},
        logit_bias={str(close): 100},
    )
    assert json.loads(resp.choices[0].message.content) == {}
    with pytest.raises(openai.BadRequestError, match=r"response_format\.json_schema: required"):
        client.chat.completions.create(model="tiny", messages=MESSAGES, response_format={"type": "json_schema"})
    with pytest.raises(openai.BadRequestError, match=r"not supported|not a usable") as exc:
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}},
        )
    assert exc.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError, match="logit_bias: token id 99999 is not in this model's vocabulary"):
        client.chat.completions.create(model="tiny", messages=MESSAGES, logit_bias={"99999": 1})


def test_penalties_change_a_greedy_answer(client):
    def answer(**kw):
        resp = client.completions.create(model="tiny", prompt="The quick", temperature=0, max_tokens=24, **kw)
        return resp.choices[0].text

    plain, penalised = answer(), answer(frequency_penalty=2.0, presence_penalty=2.0)
    assert plain != penalised
    with pytest.raises(openai.BadRequestError, match="presence_penalty"):
        answer(presence_penalty=3)


# ------------------------------------------------------------------------------------------ tools
def test_forced_tool_calls_match_the_tools_parameters(tool_client):
    named = tool_client.chat.completions.create(
        model="tooly",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=64,
    )
    choice = named.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    assert list(args) == ["city", "unit"] and args["unit"] in ("C", "F") and len(args["city"]) <= 8

    for seed in range(3):
        required = tool_client.chat.completions.create(
            model="alpha",
            messages=MESSAGES,
            tools=[WEATHER, TIME],
            tool_choice="required",
            parallel_tool_calls=seed != 0,
            seed=seed,
            max_tokens=96,
        )
        choice = required.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        if seed == 0:  # parallel_tool_calls false: exactly one
            assert len(choice.message.tool_calls) == 1
        for call in choice.message.tool_calls:
            args = json.loads(call.function.arguments)
            assert (call.function.name, sorted(args)) in [("get_weather", ["city", "unit"]), ("get_time", ["zone"])]

    stream = tool_client.chat.completions.create(
        model="tooly",
        messages=MESSAGES,
        tools=[TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        stream=True,
        max_tokens=32,
    )
    chunks = [c for c in stream if c.choices]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function.name == "get_time"
    assert json.loads(calls[0].function.arguments)["zone"] in ("UTC", "CET")
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tools_auto_needs_a_template_that_renders_them(client, tool_client, tool_engine):
    with pytest.raises(openai.BadRequestError, match="does not render tools") as exc:
        client.chat.completions.create(model="tiny", messages=MESSAGES, tools=[WEATHER], max_tokens=4)
    assert exc.value.body["param"] == "tools"
    # a forced call works without: the output is held to the parameters either way
    forced = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=[TIME], tool_choice="required")
    assert forced.choices[0].message.tool_calls[0].function.name == "get_time"

    # a template with tools shows them to the model; the random model answers in text, which stays content
    assert '"name": "get_weather"' in tool_engine.chat_prompt(MESSAGES, tools=[WEATHER])
    resp = tool_client.chat.completions.create(model="tooly", messages=MESSAGES, tools=[WEATHER], max_tokens=8)
    assert resp.choices[0].finish_reason in ("stop", "length") and resp.choices[0].message.tool_calls is None
    # streamed, the same seeded answer arrives as the same content
    kw = dict(model="tooly", messages=MESSAGES, tools=[WEATHER], max_tokens=12, seed=4)
    whole = tool_client.chat.completions.create(**kw).choices[0]
    chunks = [c for c in tool_client.chat.completions.create(**kw, stream=True) if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.message.content.lstrip()
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason
    # an agent's next turn: the assistant's call and the tool's result go back in
    history = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    assert tool_client.chat.completions.create(model="tooly", messages=history, tools=[WEATHER], max_tokens=4).choices
    prompt = tool_engine.chat_prompt([m if "tool_calls" not in m else _hf(m) for m in history], tools=[WEATHER])
    assert '{"name": "get_weather", "arguments": {"city": "Oslo"}}' in prompt and "sunny, 21 C" in prompt
    with pytest.raises(openai.BadRequestError, match="tool_choice: no tool named 'nope'"):
        tool_client.chat.completions.create(
            model="tooly",
            messages=MESSAGES,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )


def _hf(message: dict) -> dict:
    from tuneforge.serve.openai_routes import ChatMessage

    return ChatMessage.model_validate(message).to_template()


def test_parse_tool_calls_formats():
    from tuneforge.serve.openai_routes import parse_tool_calls

    names = ["get_weather", "get_time"]
    content, calls = parse_tool_calls(
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": "{\\"zone\\": \\"UTC\\"}"}</tool_call>',
        names,
    )
    assert content == "Let me check."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_time", {"zone": "UTC"}),
    ]
    # Llama 3.1 style: a bare object with "parameters"; and a call cut short at the end of the output
    assert parse_tool_calls('{"name": "get_time", "parameters": {"zone": "CET"}}', names)[1][0]["function"] == {
        "name": "get_time",
        "arguments": '{"zone": "CET"}',
    }
    assert parse_tool_calls('<tool_call>{"name": "get_time", "arguments": {}}', names)[1][0]["function"]["name"]
    for text in ('{"name": "rm_rf", "arguments": {}}', '{"answer": 4}', "<tool_call>{not json", "four"):
        assert parse_tool_calls(text, names) is None


def test_tool_call_splitter_streams_content_until_a_call_may_begin():
    from tuneforge.serve.openai_routes import ToolCallSplitter

    def run(pieces: list[str]) -> tuple[str, str, list | None]:
        splitter = ToolCallSplitter(["get_time"])
        streamed = "".join(splitter.feed(p) for p in pieces)
        tail, calls = splitter.finish()
        return streamed, tail, calls

    call = '{"name": "get_time", "arguments": {"zone": "UTC"}}'
    streamed, tail, calls = run(["Let me", " check.\n<tool", "_call>\n", call, "\n</tool_call>"])
    assert (streamed, tail) == ("Let me check.\n", "") and calls[0]["function"]["name"] == "get_time"
    streamed, tail, calls = run(["\n ", call[:9], call[9:]])  # Llama style: the whole answer is the call
    assert (streamed, tail) == ("", "") and json.loads(calls[0]["function"]["arguments"]) == {"zone": "UTC"}
    # text that only looked like a tag's start goes out once it is not one; JSON that is no call is content
    assert run(["a <to", "ol> b <tool_c", "all"]) == ("a <tool> b ", "<tool_call", None)
    assert run(['{"answer"', ": 4}"]) == ("", '{"answer": 4}', None)
    assert run(["plain text"]) == ("plain text", "", None)


# ------------------------------------------------------------------------------------------ fingerprint, request id
def test_system_fingerprint_and_request_id(client, server):
    a = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
    b = client.completions.create(model="alpha", prompt="hi", max_tokens=2)
    assert a.system_fingerprint and a.system_fingerprint == b.system_fingerprint
    assert a.system_fingerprint.startswith("fp_")
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2}
    sent = httpx.post(server.url + "/v1/chat/completions", json=body, headers={"x-request-id": "trace-42"}, timeout=30)
    assert sent.headers["x-request-id"] == "trace-42"
    fresh = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert fresh.headers["x-request-id"].startswith("req_") and fresh.headers["x-request-id"] != "trace-42"
    bad = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny"}, timeout=30)
    assert bad.status_code == 400 and bad.headers["x-request-id"].startswith("req_")
    assert httpx.get(server.url + "/v1/models", headers={"x-request-id": "m-1"}).headers["x-request-id"] == "m-1"


# ------------------------------------------------------------------------------------------ LangChain
def test_langchain_structured_output_and_bind_tools(tool_server):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class Pet(BaseModel):
        """A pet."""

        kind: Literal["cat", "dog"]
        age: int = Field(ge=0, le=30)
        name: str = Field(max_length=6)

    llm = ChatOpenAI(
        base_url=tool_server.url + "/v1", api_key="unused", model="tooly", max_tokens=64, max_retries=0, seed=5
    )
    # response_format json_schema, then a forced tool call. strict: the schema gets additionalProperties false (a
    # schema that allows more properties lets the random model add keys until max_tokens)
    for method in ("json_schema", "function_calling"):
        structured = llm.with_structured_output(Pet, method=method, strict=True)
        pet = structured.invoke("Describe a pet.")
        assert isinstance(pet, Pet), method
        check_pet(pet.model_dump())

    @tool
    def get_time(zone: Literal["UTC", "CET"]) -> str:
        """The time in a zone."""
        return "12:00"

    forced = llm.bind_tools([get_time], tool_choice="get_time", strict=True).invoke("What time is it in Paris?")
    assert [c["name"] for c in forced.tool_calls] == ["get_time"] and forced.tool_calls[0]["args"]["zone"] in (
        "UTC",
        "CET",
    )
    anyway = llm.bind_tools([get_time], tool_choice="any", strict=True).invoke("What time is it?")
    assert anyway.tool_calls and anyway.response_metadata["finish_reason"] == "tool_calls"
    auto = llm.bind_tools([get_time]).invoke("What time is it?")  # the random model answers in text
    assert auto.response_metadata["finish_reason"] in ("stop", "length")


# ------------------------------------------------------------------------------------------ the real default model
@pytest.mark.slow
def test_smollm2_structured_output_and_forced_tool_call():
    """SmolLM2-135M-Instruct (49k vocabulary, a chat template without tools): a JSON-schema answer that parses and
    matches, a forced call with valid arguments, and a clear 400 for tools with tool_choice auto."""
    from tuneforge.models.loader import SMOLLM2_ID
    from tuneforge.serve.app import create_app
    from tuneforge.serve.engine import InferenceEngine

    eng = InferenceEngine(SMOLLM2_ID, model_name="smollm2")
    try:
        with LiveServer(create_app(eng)) as live:
            client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=300)
            resp = client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": "Describe a pet as JSON: kind, age, name."}],
                temperature=0,
                max_tokens=40,
                response_format={"type": "json_schema", "json_schema": {"name": "pet", "schema": PET}},
            )
            check_pet(json.loads(resp.choices[0].message.content))
            call = client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": "What time is it in Berlin?"}],
                tools=[TIME],
                tool_choice={"type": "function", "function": {"name": "get_time"}},
                temperature=0,
                max_tokens=16,
            )
            assert call.choices[0].finish_reason == "tool_calls"
            assert json.loads(call.choices[0].message.tool_calls[0].function.arguments)["zone"] in ("UTC", "CET")
            with pytest.raises(openai.BadRequestError, match="does not render tools"):
                client.chat.completions.create(model="smollm2", messages=MESSAGES, tools=[TIME], max_tokens=4)
    finally:
        eng.close()
