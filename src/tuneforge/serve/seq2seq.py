"""Serving seq2seq adapters (T5, BART: `data_config.task: seq2seq`) on OpenAI's `POST /v1/completions`.

A seq2seq adapter (its tuneforge_adapter.json says task seq2seq) is its base loaded as an encoder-decoder
(`AutoModelForSeq2SeqLM`) with the adapter merged in (W + alpha/r·B·A folded once), generating with transformers'
`generate`: the prompt is the source text, as in training (cut to the trained cutoff_len), and the completion is
the target. The request is OpenAI's completion request (serve/openai_routes.CompletionRequest): `prompt` a string
or a list of strings (one choice per prompt and per `n`), `max_tokens` (OpenAI's default 16, as for every model
here), `temperature` (0: greedy; OpenAI's default 1), `top_p`, `n`, `stop`, `seed`; the answer has OpenAI's shape
with `usage`. `stream` sends OpenAI's completion chunks for one prompt with n 1 (transformers' TextIteratorStreamer:
text up to each word boundary, generation stopped when the client goes away); logprobs, echo and suffix are refused
by name (400).

The seq2seq router is mounted before the engine's OpenAI routes and answers only for seq2seq models: any other
model's completion request goes on to the engine's own handler, `GET /v1/models` lists both, and a chat request
for a seq2seq model is refused (400) naming the route to use, since an encoder-decoder has no chat template.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from fastapi import APIRouter, HTTPException, Request

from ..adapter_card import read_card
from ..errors import TuneforgeError
from .engine import UnknownModelError
from .openai_routes import MAX_N, Auth, ChatCompletionRequest, CompletionRequest, OpenAIErrorRoute, _call_auth
from .pool import AdapterPool

MAX_PROMPTS = 256  # prompts per request: a bound on one request's memory and time


def is_seq2seq(adapter_dir: str | Path) -> bool:
    card = read_card(adapter_dir)
    return card is not None and card.task == "seq2seq"


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length" (max_tokens reached)
    tokens: int  # completion tokens


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first occurrence of any stop string (not included), and whether one occurred."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class LoadedSeq2Seq:
    """One seq2seq adapter merged into its base, with its tokenizer."""

    def __init__(self, adapter_dir: str | Path, *, model_path: str | None = None, device: str | None = None):
        from ..inference import load_for_inference

        if not is_seq2seq(adapter_dir):
            raise TuneforgeError(
                f"{adapter_dir}: not a seq2seq adapter (its tuneforge_adapter.json does not say task 'seq2seq')",
                field="adapter",
                value=str(adapter_dir),
            )
        card = read_card(adapter_dir)
        assert card is not None
        model, self.tokenizer = load_for_inference(model_path, adapter_dir, device=device)
        self.model = model.merge_and_unload(safe_merge=True).eval()
        self.max_length = card.max_length or 512
        self.text_column = card.text_column or "text"
        self.lock = threading.Lock()  # one generate at a time per model: torch's CPU threads are shared anyway

    @torch.no_grad()
    def stream(
        self,
        prompt: str,
        *,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> Seq2SeqStream:
        """`prompt`'s completion generated on a thread and read as it is written (Seq2SeqStream)."""
        options: dict[str, Any] = {"do_sample": temperature > 0, "num_beams": 1}
        if temperature > 0:
            options.update(temperature=temperature, top_p=top_p)
        return Seq2SeqStream(self, prompt, max_tokens=max_tokens, options=options, stop=stop, seed=seed)

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        n: int = 1,
        stop: Sequence[str] = (),
        seed: int | None = None,
        batch_size: int = 16,
    ) -> tuple[list[list[Completion]], int]:
        """(for each prompt its `n` completions, the number of prompt tokens). temperature 0: greedy (then the n
        completions are the same); otherwise sampled, reproducibly with `seed`."""
        enc = self.tokenizer(list(prompts), truncation=True, max_length=self.max_length)["input_ids"]
        limit = max_tokens or self.max_length
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        out: list[list[Completion]] = [[] for _ in enc]
        order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
        sample = temperature > 0
        options: dict[str, Any] = {"do_sample": sample, "num_beams": 1, "max_new_tokens": limit}
        if sample:
            options.update(temperature=temperature, top_p=top_p, num_return_sequences=n)
        with self.lock:
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                longest = max(len(enc[i]) for i in idx)
                ids = torch.full((len(idx), longest), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), longest), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, : len(enc[i])] = torch.tensor(enc[i])
                    mask[row, : len(enc[i])] = 1
                device = self.model.device
                generated = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **options)
                per = n if sample else 1
                for j, seq in enumerate(generated.tolist()):
                    i = idx[j // per]
                    tokens = seq[1:]  # after the decoder's start token
                    ended = eos in tokens
                    if ended:
                        tokens = tokens[: tokens.index(eos) + 1]  # what follows is the batch's padding
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
                    text, stopped = cut_at_stop(text, stop)
                    finish = "stop" if ended or stopped else "length"
                    out[i].extend([Completion(text, finish, len(tokens))] * (1 if sample else n))
        return out, sum(len(e) for e in enc)


class _Cancel:
    """A transformers StoppingCriteria that ends a streamed generation once `event` is set (the client went away)."""

    def __init__(self):
        self.event = threading.Event()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Seq2SeqStream:
    """One prompt's completion generated on a thread, its text read piece by piece (`pieces`); `finish_reason`,
    `tokens` and `prompt_tokens` are known once the pieces are exhausted. `close` ends the generation early."""

    def __init__(
        self,
        model: LoadedSeq2Seq,
        prompt: str,
        *,
        max_tokens: int | None,
        options: dict[str, Any],
        stop: Sequence[str],
        seed: int | None,
    ):
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        tok = model.tokenizer
        enc = tok([prompt], truncation=True, max_length=model.max_length, return_tensors="pt")
        self.prompt_tokens = int(enc["input_ids"].shape[1])
        self.stop = [s for s in stop if s]
        # skip_prompt: an encoder-decoder's first streamed ids are the decoder's start token
        self.streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        self.cancel = _Cancel()
        self.result: list[int] = []
        self.error: BaseException | None = None
        self.eos, self.limit = tok.eos_token_id, max_tokens or model.max_length
        device = model.model.device
        kwargs = dict(
            input_ids=enc["input_ids"].to(device),
            attention_mask=enc["attention_mask"].to(device),
            max_new_tokens=self.limit,
            streamer=self.streamer,
            stopping_criteria=StoppingCriteriaList([self.cancel]),
            **options,
        )

        def run() -> None:
            try:
                with model.lock, torch.no_grad():
                    if seed is not None:  # under the lock: transformers samples from torch's global generator
                        torch.manual_seed(seed)
                    self.result = model.model.generate(**kwargs)[0].tolist()[1:]
            except BaseException as exc:  # reported in the stream; the streamer must still end
                self.error = exc
                self.streamer.end()

        self.thread = threading.Thread(target=run, daemon=True, name="seq2seq-stream")
        self.finish_reason = "length"
        self.done = False  # the streamer has been read to its end (reading it again would wait forever)
        self.thread.start()

    def pieces(self):
        """The completion's text in pieces, cut at the first stop string (held back until it cannot be one)."""
        text, sent = "", 0
        hold = max((len(s) for s in self.stop), default=1) - 1
        for piece in self.streamer:
            text += piece
            cut, stopped = cut_at_stop(text, self.stop)
            if stopped:
                self.cancel.event.set()
                self.finish_reason = "stop"
                if cut[sent:]:
                    yield cut[sent:]
                self.close()
                return
            safe = len(text) - hold if self.stop else len(text)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        self.done = True
        self.thread.join()
        if self.error is not None:
            raise self.error
        if text[sent:]:
            yield text[sent:]
        if self.eos in self.result:
            self.finish_reason = "stop"

    @property
    def tokens(self) -> int:
        return self.result.index(self.eos) + 1 if self.eos in self.result else len(self.result)

    def close(self) -> None:
        """Stop generating (at the next token) and wait for the thread; safe to call more than once."""
        self.cancel.event.set()
        if not self.done:
            for _ in self.streamer:  # the streamer ends when generate returns
                pass
            self.done = True
        self.thread.join()


class Seq2SeqModels(Protocol):
    """What the router needs of the served seq2seq models (a seq2seq_pool, or the service's deployments)."""

    created: int

    def names(self) -> list[str]: ...

    def has(self, name: str) -> bool: ...

    def get(self, name: str) -> LoadedSeq2Seq: ...


def seq2seq_pool(
    adapters: dict[str, str], *, model_path: str | None = None, device: str | None = None
) -> AdapterPool[LoadedSeq2Seq]:
    """Seq2seq adapters by name, loaded on first use."""
    return AdapterPool(
        adapters,
        check=is_seq2seq,
        load=LoadedSeq2Seq,
        adapter_kind="seq2seq",
        model_kind="seq2seq model",
        model_path=model_path,
        device=device,
    )


def _prompts(body: CompletionRequest) -> list[str]:
    for name, given in (("logprobs", body.logprobs is not None), ("echo", body.echo), ("suffix", bool(body.suffix))):
        if given:
            raise TuneforgeError(f"{name}: not supported for the seq2seq model {body.model!r}", field=name)
    if (body.best_of or 1) != 1:
        raise TuneforgeError("best_of: only 1 is supported", field="best_of")
    p = body.prompt
    if isinstance(p, str):
        return [p]
    if not p or not all(isinstance(x, str) for x in p):
        raise TuneforgeError(
            f"prompt: the seq2seq model {body.model!r} takes a string or a list of strings (not token ids)",
            field="prompt",
        )
    if len(p) > MAX_PROMPTS:
        raise TuneforgeError(f"prompt: give 1 to {MAX_PROMPTS} prompts, not {len(p)}", field="prompt", value=len(p))
    return [str(x) for x in p]


def _stream_response(model: LoadedSeq2Seq, body: CompletionRequest, prompt: str, stop: list[str]):
    """Server-sent events in OpenAI's completion-chunk shape, then `data: [DONE]` (usage last with
    stream_options.include_usage); the generation stops when the client goes away."""
    import json

    from fastapi.concurrency import run_in_threadpool
    from fastapi.sse import EventSourceResponse, format_sse_event

    from .openai_routes import error_body

    top = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.model,
    }

    def sse(obj: dict) -> bytes:
        return format_sse_event(data_str=json.dumps(obj, ensure_ascii=False))

    async def events():
        stream = await run_in_threadpool(
            lambda: model.stream(
                prompt,
                max_tokens=body.max_tokens,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                stop=stop,
                seed=body.seed,
            )
        )
        pieces = stream.pieces()
        done = object()
        try:
            try:
                while (piece := await run_in_threadpool(next, pieces, done)) is not done:
                    yield sse(
                        {**top, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}
                    )
                yield sse(
                    {
                        **top,
                        "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": stream.finish_reason}],
                    }
                )
                if body.stream_options and body.stream_options.include_usage:
                    usage = {"prompt_tokens": stream.prompt_tokens, "completion_tokens": stream.tokens}
                    yield sse({**top, "choices": [], "usage": {**usage, "total_tokens": sum(usage.values())}})
            except Exception as exc:  # the status line is sent: report in the stream, as OpenAI does
                yield sse(error_body(500, f"{type(exc).__name__}: {exc}"))
            yield format_sse_event(data_str="[DONE]")
        finally:
            await run_in_threadpool(stream.close)

    return EventSourceResponse(events(), headers={"Cache-Control": "no-cache"})


def seq2seq_router(models: Seq2SeqModels, auth: Auth, *, fallback: APIRouter | None = None) -> APIRouter:
    """`POST /v1/completions` for the seq2seq `models`, in front of `fallback` (the engine's OpenAI router, or None
    when only seq2seq models are served): other models' requests, and the model list, go on to it."""
    from fastapi.concurrency import run_in_threadpool

    router = APIRouter(prefix="/v1", route_class=OpenAIErrorRoute, tags=["inference (OpenAI-compatible)"])
    behind = {
        (route.path, method): route.endpoint  # type: ignore[attr-defined]
        for route in (fallback.routes if fallback is not None else [])
        for method in getattr(route, "methods", ())
    }

    def passed_on(path: str, method: str, model: str | None):
        endpoint = behind.get((f"/v1{path}", method))
        if endpoint is None:
            raise UnknownModelError(
                f"model {model!r} is not served here; models: {', '.join(models.names()) or 'none'}",
                field="model",
                value=model,
            )
        return endpoint

    def card(name: str) -> dict:
        return {"id": name, "object": "model", "created": models.created, "owned_by": "tuneforge"}

    async def visible(request: Request) -> list[str]:
        names = []
        for name in models.names():
            try:
                await _call_auth(auth, request, name)
            except HTTPException:  # the caller may not see this model
                continue
            names.append(name)
        return names

    # include_in_schema=False: the OpenAPI document keeps describing these routes once, as the engine's router does.
    @router.get("/models", include_in_schema=False)
    async def list_models(request: Request):
        await _call_auth(auth, request, None)
        listed: dict[str, Any] = {"object": "list", "data": []}
        if ("/v1/models", "GET") in behind:
            listed = await behind[("/v1/models", "GET")](request=request)
        shown = {m["id"] for m in listed["data"]}
        extra = [card(n) for n in await visible(request) if n not in shown]
        return {**listed, "data": [*listed["data"], *extra]}

    @router.get("/models/{model:path}", include_in_schema=False)
    async def get_model(model: str, request: Request):
        if models.has(model) and model in await visible(request):
            return card(model)
        return await passed_on("/models/{model:path}", "GET", model)(model=model, request=request)

    @router.post("/chat/completions", include_in_schema=False)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        await _call_auth(auth, request, body.model)  # first: it may choose which deployment the name means
        if not models.has(body.model):
            return await passed_on("/chat/completions", "POST", body.model)(body=body, request=request)
        raise TuneforgeError(
            f"model {body.model!r} is a seq2seq (encoder-decoder) model without a chat template: send its source "
            "text as `prompt` to POST /v1/completions",
            field="model",
            value=body.model,
        )

    @router.post("/completions", include_in_schema=False)
    async def completions(body: CompletionRequest, request: Request):
        await _call_auth(auth, request, body.model)  # first: it may choose which deployment the name means
        if not models.has(body.model):
            return await passed_on("/completions", "POST", body.model)(body=body, request=request)
        prompts = _prompts(body)
        n = body.n or 1
        if n > MAX_N:
            raise TuneforgeError(f"n: at most {MAX_N}", field="n", value=n)
        if body.stream and (len(prompts) > 1 or n > 1):
            raise TuneforgeError(
                f"stream: the seq2seq model {body.model!r} streams one prompt with n 1; send one prompt, or stream "
                "false",
                field="stream",
            )
        model = await run_in_threadpool(models.get, body.model)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if body.stream:
            return _stream_response(model, body, prompts[0], stop)
        answers, prompt_tokens = await run_in_threadpool(
            lambda: model.generate(
                prompts,
                max_tokens=body.max_tokens,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                n=n,
                stop=stop,
                seed=body.seed,
            )
        )
        choices = [
            {"index": i * n + k, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
            for i, completions in enumerate(answers)
            for k, c in enumerate(completions)
        ]
        completion_tokens = sum(c.tokens for completions in answers for c in completions)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    return router
