"""OpenAI-compatible inference routes: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`.

`openai_router(engine, auth)` returns a FastAPI `APIRouter`, so `tuneforge serve` (serve/app.py) and the
fine-tuning service mount the same routes. The routes do HTTP only; generation is the engine's.

* `engine`: anything with `model_names() -> list[str]`, `created: int` and
  `submit(model, prompt=None, params=None, *, messages=None, loop=None) -> Generation` (serve/engine.py).
* `auth(request, model)`: called before a request is served, with the model it names (None for `/v1/models`,
  then once more per listed model to decide which ones this caller sees). It denies by raising
  `fastapi.HTTPException` (401 for a missing or wrong key, 403/404 for a model the caller may not use), and may
  be a coroutine function.

Errors come back in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, which the `openai` client
turns into its exceptions (BadRequestError, AuthenticationError, NotFoundError, ...). Request validation errors
are mapped to that shape by the router's own route class, so the mounting app needs no exception handlers.
Streaming answers are server-sent events of `chat.completion.chunk` / `text_completion` objects, ending with
`data: [DONE]`, as OpenAI's API sends them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypeIs

from ..errors import TuneforgeError
from .engine import EngineOverloadedError, GenerationError, SamplingParams, UnknownModelError
from .sampling import MAX_TOP_LOGPROBS, TokenLogprob

MAX_N = 16  # choices per request: each is a full generation, decoded side by side

Auth = Callable[[Request, "str | None"], "Awaitable[None] | None"]


def no_auth(request: Request, model: str | None) -> None:
    """Everyone may use every model (a local `tuneforge serve` without --api-key)."""


def bearer_key_auth(api_key: str | None) -> Auth:
    """Require `Authorization: Bearer <api_key>` (what the openai client sends) on every route; None: open."""
    import secrets

    if not api_key:
        return no_auth

    def check(request: Request, model: str | None) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise HTTPException(
                401,
                "invalid or missing API key: send `Authorization: Bearer <key>`",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


# ------------------------------------------------------------------------------------------ errors
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {
        "error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}
    }


def error_response(
    status: int, message: str, *, param: str | None = None, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param=param, code=code), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, param = [], None
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        param = param or (".".join(loc) or None)
        parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request", param


_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces: safe to echo in a header


def request_id(request: Request) -> str:
    """The client's `x-request-id` when it sent a sane one (so its logs and ours meet), else a new one."""
    sent = request.headers.get("x-request-id", "")
    return sent if _REQUEST_ID.match(sent) else f"req_{uuid.uuid4().hex}"


class OpenAIErrorRoute(APIRoute):
    """Routes whose errors (validation, HTTPException, TuneforgeError) come back in OpenAI's error shape, and whose
    every response carries an `x-request-id` header, as OpenAI's do."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def wrapped(request: Request):
            rid = request_id(request)
            try:
                response = await handler(request)
            except RequestValidationError as exc:
                message, param = _validation_message(exc)
                response = error_response(400, message, param=param)
            except HTTPException as exc:
                response = error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))
            except UnknownModelError as exc:
                response = error_response(404, str(exc), param="model", code="model_not_found")
            except EngineOverloadedError as exc:  # admission control: the openai client retries after the wait
                response = error_response(503, str(exc), headers={"Retry-After": str(exc.retry_after)})
            except TuneforgeError as exc:
                response = error_response(400, str(exc), param=exc.field)
            except GenerationError as exc:
                response = error_response(500, str(exc))
            response.headers["x-request-id"] = rid
            return response

        return wrapped


# ------------------------------------------------------------------------------------------ schemas
class _Lenient(BaseModel):
    # Fields OpenAI defines that do not change the output here (user, metadata, store, ...) are ignored, as
    # OpenAI-compatible servers do; fields that would change it and are not supported are declared and rejected.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: bool = False


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class FunctionCall(_Lenient):
    name: str
    arguments: str | dict = "{}"  # OpenAI sends a JSON string; some clients send the object


class ToolCall(_Lenient):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn that called tools (an agent's history)
    tool_call_id: str | None = None  # a tool turn: the call it answers

    def to_template(self) -> dict:
        if isinstance(self.content, list):
            kinds = {p.type for p in self.content} - {"text"}
            if kinds:
                raise TuneforgeError(f"messages: only text content is supported, got {sorted(kinds)}", field="messages")
            text = "".join(p.text or "" for p in self.content)
        else:
            text = self.content or ""
        # "developer" is OpenAI's newer name for "system"; chat templates know "system".
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": text}
        if self.tool_calls:
            # Hugging Face chat templates take the arguments as an object (they serialise it themselves)
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": _arguments_object(call.function.arguments)},
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        if self.name is not None and self.role == "tool":
            message["name"] = self.name
        return message


def _arguments_object(arguments: str | dict) -> dict | str:
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return arguments  # not JSON: hand the template the text as the client wrote it
    return parsed if isinstance(parsed, dict) else arguments


class FunctionDefinition(_Lenient):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None

    def parameters_schema(self) -> dict:
        return self.parameters or {"type": "object", "properties": {}}


class Tool(_Lenient):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Lenient):
    name: str = "response"
    description: str | None = None
    schema_: dict = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None  # the output always matches the schema here (constrained decoding)


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def output_schema(self) -> dict | None:
        if self.type == "json_object":
            return {"type": "object"}
        if self.type == "json_schema":
            if self.json_schema is None:
                raise TuneforgeError(
                    "response_format.json_schema: required when type is json_schema",
                    field="response_format.json_schema",
                )
            return self.json_schema.schema_
        return None


class _Sampling(_Lenient):
    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # torch.Generator.manual_seed's range
    stream: bool = False
    stream_options: StreamOptions | None = None
    # OpenAI's clients may send an explicit null for a default
    n: int | None = Field(None, ge=1, le=MAX_N)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None

    def params(self, *, default_max_tokens: int | None = None) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        bias: dict[int, float] = {}
        for key, value in (self.logit_bias or {}).items():
            try:
                bias[int(key)] = value
            except ValueError:
                raise TuneforgeError(
                    f"logit_bias: keys are token ids, got {key!r}", field="logit_bias", value=key
                ) from None
        return SamplingParams(
            max_tokens=self.max_tokens or default_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=stop,
            seed=self.seed,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias=bias,
        )


@dataclass
class ToolPlan:
    tools: list[dict] | None  # rendered into the prompt
    require: bool  # refuse a template that does not render tools (tool_choice auto: the model must see them)
    names: list[str]
    schema: dict | None = None  # the output's JSON schema when a call is forced
    forced: Literal["named", "list"] | None = None  # a forced call: the arguments object, or a list of calls

    @property
    def may_call(self) -> bool:
        """tool_choice auto: the answer is text or calls, told apart by parsing it."""
        return self.forced is None and self.require and bool(self.names)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1)  # the newer name of max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = Field(None, max_length=128)  # OpenAI's limit
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None  # false: "required" makes exactly one call
    response_format: ResponseFormat | None = None

    def chat_params(self) -> SamplingParams:
        params = self.params()
        if self.max_completion_tokens and not self.max_tokens:
            params.max_tokens = self.max_completion_tokens
        if self.top_logprobs is not None and not self.logprobs:
            raise TuneforgeError("top_logprobs: needs logprobs: true", field="top_logprobs")
        if self.logprobs:
            params.logprobs = self.top_logprobs or 0
        params.json_schema = self.response_format.output_schema() if self.response_format else None
        return params

    def tool_plan(self) -> ToolPlan:
        """How this request uses its tools: which the template renders, the schema a forced call is held to."""
        tools = self.tools or []
        choice = self.tool_choice or ("auto" if tools else "none")
        if choice != "none" and not tools:
            raise TuneforgeError("tool_choice: needs tools", field="tool_choice")
        rendered = [t.model_dump(exclude_none=True) for t in tools]
        if choice in ("none", "auto"):
            return ToolPlan(rendered or None, require=choice == "auto", names=[t.function.name for t in tools])
        if self.response_format is not None and self.response_format.type != "text":
            raise TuneforgeError(
                "response_format: cannot be combined with a forced tool_choice (the call's arguments are the "
                "constrained output)",
                field="response_format",
            )
        if isinstance(choice, NamedToolChoice):
            match = [t for t in tools if t.function.name == choice.function.name]
            if not match:
                raise TuneforgeError(
                    f"tool_choice: no tool named {choice.function.name!r}; tools: "
                    + ", ".join(t.function.name for t in tools),
                    field="tool_choice",
                    value=choice.function.name,
                )
            return ToolPlan(
                rendered,
                require=False,
                names=[choice.function.name],
                schema=match[0].function.parameters_schema(),
                forced="named",
            )
        # "required": one or more calls, each to one of the tools with arguments matching its parameters (the
        # same shape vLLM constrains "required" to)
        calls = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"name": {"const": t.function.name}, "parameters": t.function.parameters_schema()},
                    "required": ["name", "parameters"],
                    "additionalProperties": False,
                }
                for t in tools
            ]
        }
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": calls}
        if self.parallel_tool_calls is False:
            schema["maxItems"] = 1
        return ToolPlan(rendered, require=False, names=[t.function.name for t in tools], schema=schema, forced="list")


def _is_token_ids(prompt: object) -> TypeIs[list[int]]:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], int)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for /v1/completions
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def single_prompt(self) -> str | list[int]:
        if self.echo:
            raise TuneforgeError("echo: not supported", field="echo")
        if self.suffix:
            raise TuneforgeError("suffix: not supported", field="suffix")
        if (self.best_of or 1) != 1:
            raise TuneforgeError("best_of: only 1 is supported", field="best_of")
        p = self.prompt
        if isinstance(p, str) or _is_token_ids(p):
            return p
        if len(p) != 1:
            raise TuneforgeError(f"prompt: one prompt per request, got a list of {len(p)}", field="prompt")
        return p[0]

    def completion_params(self) -> SamplingParams:
        params = self.params()
        params.logprobs = self.logprobs
        return params


# ------------------------------------------------------------------------------------------ tool calls
_CALL_TAG = "<tool_call>"
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _call(name: object, arguments: object) -> dict:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def parse_tool_calls(text: str, names: list[str]) -> tuple[str | None, list[dict]] | None:
    """The tool calls in a model's free answer (tool_choice auto), or None when it made none. Two formats cover
    the chat templates that render tools: Hermes' `<tool_call>{"name": ..., "arguments": ...}</tool_call>`
    (Qwen2.5/3, Hermes, SmolLM3, ...; text before the first tag is the message content), and a bare JSON object
    or list of them with "name" and "arguments"/"parameters" (Llama 3.1+, Mistral). Calls must name one of the
    request's tools; anything that does not parse is plain content."""

    def calls_from(objs: list) -> list[dict] | None:
        out = []
        for obj in objs:
            if not isinstance(obj, dict) or obj.get("name") not in names:
                return None
            args = obj.get("arguments", obj.get("parameters", {}))
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except ValueError:
                    return None
            if not isinstance(args, dict):
                return None
            out.append(_call(obj["name"], args))
        return out or None

    if _CALL_TAG in text:
        try:
            objs = [json.loads(m) for m in _HERMES_CALL.findall(text)]
        except ValueError:
            return None
        calls = calls_from(objs)
        if calls is None:
            return None
        content = text[: text.index(_CALL_TAG)].strip()
        return content or None, calls
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            parsed = json.loads(stripped)
        except ValueError:
            return None
        calls = calls_from(parsed if isinstance(parsed, list) else [parsed])
        return None if calls is None else (None, calls)
    return None


class ToolCallSplitter:
    """Streams an answer that may call tools (tool_choice auto): text goes out as content while it cannot be a
    call, and is held from where one may begin, a `<tool_call>` tag (text before it stays content, as Hermes-style
    models write it) or a JSON object or list as the whole answer (Llama style). `finish()` then parses what was
    held: tool calls, or more content."""

    def __init__(self, names: list[str]):
        self.names = names
        self.sent = ""  # content streamed so far
        self.held = ""
        self.calling = False  # a call may have begun: hold everything from here

    def feed(self, piece: str) -> str:
        """The content to stream now, given the next piece of the answer."""
        text, self.held = self.held + piece, ""
        if self.calling:
            self.held = text
            return ""
        if not self.sent:
            head = text.lstrip()
            if not head or head[0] in "{[":  # only whitespace yet, or a JSON answer: wait for the end
                self.held, self.calling = text, bool(head)
                return ""
            text = head  # the content does not start with the whitespace before it (as parse_tool_calls strips)
        at = text.find(_CALL_TAG)
        if at >= 0:
            out, self.held, self.calling = text[:at], text[at:], True
        else:  # hold a tail that may be the start of a tag
            keep = next(
                (k for k in range(min(len(_CALL_TAG) - 1, len(text)), 0, -1) if text.endswith(_CALL_TAG[:k])), 0
            )
            out, self.held = text[: len(text) - keep], text[len(text) - keep :]
        self.sent += out
        return out

    def finish(self) -> tuple[str, list[dict] | None]:
        """At the end of the answer: the content still to send, and the tool calls (None: it made none)."""
        parsed = parse_tool_calls(self.held, self.names) if self.calling else None
        if parsed is not None:
            return "", parsed[1]
        return self.held, None


def forced_tool_calls(text: str, plan: ToolPlan) -> list[dict] | None:
    """The calls of a constrained answer (tool_choice required or named); None when it was cut short."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    if plan.forced == "named":
        return [_call(plan.names[0], parsed)]
    return [_call(item["name"], item["parameters"]) for item in parsed]


# ------------------------------------------------------------------------------------------ the router
def _sse(obj: dict) -> bytes:
    return format_sse_event(data_str=json.dumps(obj, ensure_ascii=False))


def _usage(gens: list) -> dict:
    # the prompt is counted once, the completions of all n choices together (as OpenAI counts them)
    prompt, completion = gens[0].prompt_tokens, sum(g.completion_tokens for g in gens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _token_text(raw: bytes) -> str:
    # OpenAI's convention for a token that is not whole UTF-8 (part of a multi-byte character)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def _chat_logprobs(gen, records: list[TokenLogprob]) -> dict:
    def entry(token: int, logprob: float) -> dict:
        raw = gen.token_bytes(token)
        return {"token": _token_text(raw), "logprob": logprob, "bytes": list(raw)}

    return {
        "content": [{**entry(r.token, r.logprob), "top_logprobs": [entry(t, lp) for t, lp in r.top]} for r in records]
    }


def _completion_logprobs(gen, records: list[TokenLogprob], offset: int) -> dict:
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    for r in records:
        text = _token_text(gen.token_bytes(r.token))
        tokens.append(text)
        token_logprobs.append(r.logprob)
        top_logprobs.append({_token_text(gen.token_bytes(t)): lp for t, lp in r.top})
        text_offset.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }


async def _merged(gens: list) -> AsyncIterator[tuple[int, str | None]]:
    """The streams of n concurrent generations as (choice index, text piece); a None piece: that choice ended."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, gen) -> None:
        try:
            async for piece in gen.astream():
                await queue.put((index, piece))
            await queue.put((index, None))
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    try:
        running = len(gens)
        while running:
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                running -= 1
            yield index, item
    finally:
        for task in tasks:
            task.cancel()


async def _call_auth(auth: Auth, request: Request, model: str | None) -> None:
    result = auth(request, model)
    if inspect.isawaitable(result):
        await result


def openai_router(engine, auth: Auth = no_auth, *, prefix: str = "/v1") -> APIRouter:
    """The OpenAI-compatible routes over `engine`, with access decided by `auth` (see the module doc)."""
    router = APIRouter(prefix=prefix, route_class=OpenAIErrorRoute, tags=["inference (OpenAI-compatible)"])

    def card(name: str) -> dict:
        return {"id": name, "object": "model", "created": engine.created, "owned_by": "tuneforge"}

    async def visible_models(request: Request) -> list[str]:
        await _call_auth(auth, request, None)
        names = []
        for name in engine.model_names():
            try:
                await _call_auth(auth, request, name)
            except HTTPException:
                continue
            names.append(name)
        return names

    @router.get("/models", summary="List the base model and the adapters served here")
    async def list_models(request: Request):
        return {"object": "list", "data": [card(n) for n in await visible_models(request)]}

    @router.get("/models/{model:path}", summary="One model")
    async def get_model(model: str, request: Request):
        if model not in await visible_models(request):
            return error_response(404, f"model {model!r} is not served here", param="model", code="model_not_found")
        return card(model)

    def submit_n(body: _Sampling, params: SamplingParams, **prompt) -> list:
        """`body.n` generations of one prompt; they decode concurrently. With a seed, choice i uses seed + i (so
        the choices differ and each is reproducible)."""
        gens: list = []
        try:
            for i in range(body.n or 1):
                seed = None if params.seed is None else (params.seed + i + 2**63) % 2**64 - 2**63
                p = dataclasses.replace(params, seed=seed)
                gens.append(engine.submit(body.model, params=p, loop=asyncio.get_running_loop(), **prompt))
        except BaseException:
            for gen in gens:
                gen.cancel()
            raise
        return gens

    async def results(gens: list) -> list:
        try:
            return await asyncio.gather(*(g.aresult() for g in gens))
        finally:
            for gen in gens:
                gen.cancel()

    async def stream(gens: list, choice_chunks, include_usage: bool, top: dict) -> AsyncIterator[bytes]:
        """Server-sent events: `choice_chunks(index, piece, finish_reason)` gives the choice dicts of each event."""
        try:
            try:
                for index in range(len(gens)):
                    for choice in choice_chunks(index, "", None, start=True):
                        yield _sse({**top, "choices": [choice]})
                async for index, piece in _merged(gens):
                    finish = gens[index].finish_reason if piece is None else None
                    for choice in choice_chunks(index, piece, finish):
                        yield _sse({**top, "choices": [choice]})
                if include_usage:
                    yield _sse({**top, "choices": [], "usage": _usage(gens)})
            except (TuneforgeError, GenerationError) as exc:
                # the status line is sent already: report in the stream, as OpenAI does (the client raises it)
                yield _sse(error_body(400 if isinstance(exc, TuneforgeError) else 500, str(exc)))
            yield format_sse_event(data_str="[DONE]")
        finally:
            for gen in gens:  # done, or the client went away: either way free the model thread from these requests
                gen.cancel()

    def head(gen, object_name: str, prefix: str, model: str) -> dict:
        return {
            "id": f"{prefix}-{gen.id}",
            "object": object_name,
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": gen.system_fingerprint,
        }

    def chat_message(text: str, finish: str, plan: ToolPlan) -> tuple[dict, str]:
        """The assistant message of a finished answer, with its tool calls parsed out, and its finish reason."""
        calls = None
        content: str | None = text
        if plan.forced is not None:
            calls = forced_tool_calls(text, plan) if finish == "stop" else None
            if calls is not None:
                content = None
        elif plan.may_call:
            parsed = parse_tool_calls(text, plan.names)
            if parsed is not None:
                content, calls = parsed
        if calls:
            return {"role": "assistant", "content": content, "tool_calls": calls}, "tool_calls"
        return {"role": "assistant", "content": content}, finish

    @router.post(
        "/chat/completions",
        summary="Chat completion (messages rendered as the adapter was trained: its "
        "training prompt, or the model's chat template)",
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        await _call_auth(auth, request, body.model)
        params = body.chat_params()
        plan = body.tool_plan()
        if plan.schema is not None:
            params.json_schema, params.json_schema_field = plan.schema, "tools"
        messages = [m.to_template() for m in body.messages]
        gens = submit_n(body, params, messages=messages, tools=plan.tools, require_tools=plan.require)
        top = head(gens[0], "chat.completion", "chatcmpl", body.model)
        logprobs = body.logprobs
        if body.stream:
            # A forced call is sent whole at its end (its arguments are one JSON document); an answer that may call
            # a tool streams as content until a call may begin (ToolCallSplitter)
            held: dict[int, list[str]] = {i: [] for i in range(len(gens))}
            splitters = {i: ToolCallSplitter(plan.names) for i in range(len(gens))} if plan.may_call else {}
            pending: dict[int, list] = {i: [] for i in range(len(gens))}  # log probabilities not yet sent

            def choice(index: int, delta: dict, records: list | None = None, finish: str | None = None) -> dict:
                lp = _chat_logprobs(gens[index], records) if logprobs and records is not None else None
                return {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}

            def indexed(calls: list[dict]) -> list[dict]:
                return [{"index": k, **call} for k, call in enumerate(calls)]

            def choice_chunks(index: int, piece: str | None, finish: str | None, start: bool = False) -> list[dict]:
                if start:
                    return [choice(index, {"role": "assistant", "content": ""})]
                if piece is not None:
                    if plan.forced is not None:
                        held[index].append(piece)
                        return []
                    pending[index] += getattr(piece, "logprobs", ())
                    out = splitters[index].feed(piece) if splitters else piece
                    # an empty piece may carry the log probabilities of tokens that produced no text
                    if not out and not (pending[index] and not splitters):
                        return []
                    records, pending[index] = pending[index], []
                    return [choice(index, {"content": str(out)} if out else {}, records)]
                records = pending.pop(index)
                if plan.forced is not None:
                    pieces = held.pop(index)
                    message, finish = chat_message("".join(pieces), finish or "stop", plan)
                    del message["role"]  # sent in the first chunk
                    if "tool_calls" in message:
                        message["tool_calls"] = indexed(message["tool_calls"])
                    records = [lp for p in pieces for lp in getattr(p, "logprobs", ())]
                    return [choice(index, message, records), choice(index, {}, finish=finish)]
                chunks = []
                if splitters:
                    tail, calls = splitters[index].finish()
                    if calls:
                        chunks.append(choice(index, {"content": None, "tool_calls": indexed(calls)}, records))
                        finish = "tool_calls"
                    elif tail or records:
                        chunks.append(choice(index, {"content": tail} if tail else {}, records))
                return [*chunks, choice(index, {}, finish=finish)]

            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            top = {**top, "object": "chat.completion.chunk"}
            return EventSourceResponse(
                stream(gens, choice_chunks, include_usage, top), headers={"Cache-Control": "no-cache"}
            )
        answers = await results(gens)
        choices = []
        for index, (gen, res) in enumerate(zip(gens, answers, strict=True)):
            message, finish = chat_message(res.text, res.finish_reason, plan)
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": _chat_logprobs(gen, res.logprobs or []) if logprobs else None,
                    "finish_reason": finish,
                }
            )
        return {**top, "choices": choices, "usage": _usage(gens)}

    @router.post("/completions", summary="Text completion of a raw prompt (no chat template)")
    async def completions(body: CompletionRequest, request: Request):
        await _call_auth(auth, request, body.model)
        prompt = body.single_prompt()
        gens = submit_n(body, body.completion_params(), prompt=prompt)
        top = head(gens[0], "text_completion", "cmpl", body.model)
        logprobs = body.logprobs is not None
        if body.stream:
            offsets = [0] * len(gens)

            def choice_chunks(index: int, piece: str | None, finish: str | None, start: bool = False) -> list[dict]:
                if start:
                    return []
                gen, lp = gens[index], None
                if piece is None:
                    return [{"index": index, "text": "", "logprobs": None, "finish_reason": finish}]
                if logprobs:
                    lp = _completion_logprobs(gen, getattr(piece, "logprobs", []), offsets[index])
                offsets[index] += len(piece)
                if not piece and lp is None:
                    return []
                return [{"index": index, "text": str(piece), "logprobs": lp, "finish_reason": None}]

            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventSourceResponse(
                stream(gens, choice_chunks, include_usage, top), headers={"Cache-Control": "no-cache"}
            )
        answers = await results(gens)
        choices = [
            {
                "index": index,
                "text": res.text,
                "logprobs": _completion_logprobs(gen, res.logprobs or [], 0) if logprobs else None,
                "finish_reason": res.finish_reason,
            }
            for index, (gen, res) in enumerate(zip(gens, answers, strict=True))
        ]
        return {**top, "choices": choices, "usage": _usage(gens)}

    return router
