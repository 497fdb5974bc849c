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
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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


class OpenAIErrorRoute(APIRoute):
    """Routes whose errors (validation, HTTPException, TuneforgeError) come back in OpenAI's error shape."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def wrapped(request: Request):
            try:
                return await handler(request)
            except RequestValidationError as exc:
                message, param = _validation_message(exc)
                return error_response(400, message, param=param)
            except HTTPException as exc:
                return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))
            except UnknownModelError as exc:
                return error_response(404, str(exc), param="model", code="model_not_found")
            except EngineOverloadedError as exc:  # admission control: the openai client retries after the wait
                return error_response(503, str(exc), headers={"Retry-After": str(exc.retry_after)})
            except TuneforgeError as exc:
                return error_response(400, str(exc), param=exc.field)
            except GenerationError as exc:
                return error_response(500, str(exc))

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


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def to_template(self) -> dict:
        if isinstance(self.content, list):
            kinds = {p.type for p in self.content} - {"text"}
            if kinds:
                raise TuneforgeError(f"messages: only text content is supported, got {sorted(kinds)}", field="messages")
            text = "".join(p.text or "" for p in self.content)
        else:
            text = self.content or ""
        # "developer" is OpenAI's newer name for "system"; chat templates know "system".
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class _Sampling(_Lenient):
    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # torch.Generator.manual_seed's range
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=128)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict | None = None

    def params(self, *, default_max_tokens: int | None = None) -> SamplingParams:
        if (self.n or 1) != 1:
            raise TuneforgeError("n: only n=1 is supported", field="n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise TuneforgeError(f"{name}: not supported (send 0 or leave it out)", field=name)
        if self.logit_bias:
            raise TuneforgeError("logit_bias: not supported", field="logit_bias")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=self.max_tokens or default_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=stop,
            seed=self.seed,
        )


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1)  # the newer name of max_tokens
    logprobs: bool | None = None
    tools: list | None = None
    response_format: dict | None = None

    def check(self) -> None:
        if self.logprobs:
            raise TuneforgeError("logprobs: not supported", field="logprobs")
        if self.tools:
            raise TuneforgeError("tools: tool calling is not supported", field="tools")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise TuneforgeError("response_format: only {'type': 'text'} is supported", field="response_format")


def _is_token_ids(prompt: object) -> TypeIs[list[int]]:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], int)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for /v1/completions
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def single_prompt(self) -> str | list[int]:
        if self.logprobs:
            raise TuneforgeError("logprobs: not supported", field="logprobs")
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


# ------------------------------------------------------------------------------------------ the router
def _sse(obj: dict) -> bytes:
    return format_sse_event(data_str=json.dumps(obj, ensure_ascii=False))


def _usage(gen) -> dict:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


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

    def submit(request_model: str, params: SamplingParams, **prompt) -> Any:
        return engine.submit(request_model, params=params, loop=asyncio.get_running_loop(), **prompt)

    async def stream(gen, make_chunk, first: dict | None, include_usage: bool) -> AsyncIterator[bytes]:
        try:
            try:
                if first is not None:
                    yield _sse(make_chunk(first, None))
                async for delta in gen.astream():
                    yield _sse(make_chunk(delta, None))
                yield _sse(make_chunk(None, gen.finish_reason))
                if include_usage:
                    yield _sse({**make_chunk(None, None), "choices": [], "usage": _usage(gen)})
            except (TuneforgeError, GenerationError) as exc:
                # the status line is sent already: report in the stream, as OpenAI does (the client raises it)
                yield _sse(error_body(400 if isinstance(exc, TuneforgeError) else 500, str(exc)))
            yield format_sse_event(data_str="[DONE]")
        finally:
            gen.cancel()  # done, or the client went away: either way free the model thread from this request

    @router.post(
        "/chat/completions",
        summary="Chat completion (messages rendered as the adapter was trained: its "
        "training prompt, or the model's chat template)",
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        await _call_auth(auth, request, body.model)
        body.check()
        params = body.params()
        if body.max_completion_tokens and not body.max_tokens:
            params.max_tokens = body.max_completion_tokens
        gen = submit(body.model, params, messages=[m.to_template() for m in body.messages])
        cid, created = f"chatcmpl-{gen.id}", int(time.time())
        if body.stream:

            def chunk(delta, finish):
                d = {} if delta is None else delta if isinstance(delta, dict) else {"content": delta}
                return {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body.model,
                    "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}],
                }

            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventSourceResponse(
                stream(gen, chunk, {"role": "assistant", "content": ""}, include_usage),
                headers={"Cache-Control": "no-cache"},
            )
        try:
            res = await gen.aresult()
        finally:
            gen.cancel()
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": res.text},
                    "logprobs": None,
                    "finish_reason": res.finish_reason,
                }
            ],
            "usage": _usage(gen),
        }

    @router.post("/completions", summary="Text completion of a raw prompt (no chat template)")
    async def completions(body: CompletionRequest, request: Request):
        await _call_auth(auth, request, body.model)
        prompt = body.single_prompt()
        gen = submit(body.model, body.params(), prompt=prompt)
        cid, created = f"cmpl-{gen.id}", int(time.time())
        if body.stream:

            def chunk(delta, finish):
                return {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": body.model,
                    "choices": [{"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}],
                }

            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventSourceResponse(stream(gen, chunk, None, include_usage), headers={"Cache-Control": "no-cache"})
        try:
            res = await gen.aresult()
        finally:
            gen.cancel()
        return {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "text": res.text, "logprobs": None, "finish_reason": res.finish_reason}],
            "usage": _usage(gen),
        }

    return router
