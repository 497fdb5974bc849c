"""The inference engine: one base model loaded once, LoRA adapters loaded by name on demand, token streaming.

Design (why it is shaped this way):

* **One model thread owns the model.** Every touch of the model (loading or evicting an adapter, switching the
  active adapter, a forward pass) happens on a single background thread. PEFT's active adapter is global state
  of the module tree, so two threads that each `set_adapter()` and then run a forward pass could each run with
  the other's adapter (cross-talk). Confining the model to one thread makes that impossible by construction,
  with no lock to forget, and it costs nothing here: on a CPU (and a single small GPU) one forward pass already
  uses all the compute, so running two at once would not be faster.
* **Round-robin, one token per request per turn.** The model thread keeps every active request's own KV cache
  and, in turn, activates that request's adapter and decodes one token for it. Concurrent requests for
  different adapters therefore stream side by side (no request waits for another to finish), and each token is
  computed with exactly its request's adapter: the adapter is switched *before* the forward pass that produces
  the token, on the only thread that runs forward passes. Per-request `torch.Generator`s keep seeded sampling
  reproducible no matter how requests interleave. (Batching several requests into one forward pass, grouped by
  adapter, would raise throughput on a GPU; it is left for when it is measured to matter.)
* **Adapters: registered by name, loaded lazily, evicted least-recently-used** past `max_loaded_adapters`.
  An adapter that a running request uses is never evicted; the count may exceed the limit until it finishes.
* **Base-model requests** run with the LoRA layers disabled (no merge), so the same process serves the base and
  every adapter. `tuneforge export --merged` folds one adapter into the weights when no added latency is wanted.

Text assembly: tokens are decoded cumulatively (a token can be half a UTF-8 character or half a word), and the
text that could still turn into a stop string is held back until it either completes one (then the output ends
before it) or cannot any more (then it is sent).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from peft import PeftModel

from ..errors import TuneforgeError, close_matches

log = logging.getLogger("tuneforge.serve")

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:/@+")


class UnknownModelError(TuneforgeError):
    """A request named a model that this engine does not serve (the message lists the ones it does)."""


class GenerationError(Exception):
    """Generation failed on the model thread for a reason that is not the user's input (e.g. an adapter whose
    weights do not fit the base)."""


@dataclass
class SamplingParams:
    """What a request may set. The defaults are OpenAI's (temperature 1, top_p 1)."""

    max_tokens: int | None = None  # None: the engine's default_max_tokens, capped by the context length
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None
    ignore_eos: bool = False  # keep going past end-of-sequence (benchmarks want a fixed token count)

    def check(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise TuneforgeError(f"max_tokens must be at least 1, got {self.max_tokens}", field="max_tokens")
        if not 0 <= self.temperature <= 2:
            raise TuneforgeError(f"temperature must be between 0 and 2, got {self.temperature}", field="temperature")
        if not 0 < self.top_p <= 1:
            raise TuneforgeError(f"top_p must be in (0, 1], got {self.top_p}", field="top_p")
        if len(self.stop) > 4:
            raise TuneforgeError(f"stop: at most 4 stop strings, got {len(self.stop)}", field="stop")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise TuneforgeError("stop: stop strings must be non-empty strings", field="stop")


@dataclass
class GenerationResult:
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop string) | "length" (max_tokens or context reached)
    prompt_tokens: int
    completion_tokens: int


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """One token id from the last position's logits (V,): greedy at temperature 0, else nucleus sampling
    (Holtzman et al. 2019, arXiv:1904.09751) over softmax(logits / temperature)."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        pick = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[pick])
    return int(torch.multinomial(probs, 1, generator=generator))


class _TextAssembler:
    """Turns a growing list of token ids into text deltas, honouring stop strings."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already emitted
        self.stopped = False

    def _hold(self, text: str) -> int:
        """How many trailing characters might still become part of a stop string (or of a UTF-8 character)."""
        hold = 0
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for its next bytes
            hold = len(text) - len(text.rstrip("\ufffd"))
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return hold

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s, max(0, self.sent - len(s) + 1)) for s in self.stop) if i >= 0),
                  default=-1)
        if cut >= 0:
            self.stopped = True
            cut = max(cut, self.sent)
            delta, self.sent = text[self.sent:cut], cut
            return delta
        end = max(self.sent, len(text) - self._hold(text))
        delta, self.sent = text[self.sent:end], end
        return delta

    def flush(self) -> str:
        """The held-back text at the end of generation (it did not complete a stop string)."""
        if self.stopped:
            return ""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        delta, self.sent = text[self.sent:], len(text)
        return delta


_DONE = object()  # end of a Generation's stream
_UNKNOWN = object()  # the LoRA layers' state after a load or delete: re-apply on the next switch


class Generation:
    """A handle on one submitted request. Iterate it (sync) or `async for` over `astream()` for text deltas;
    `result()` / `aresult()` wait for the whole text. After the end, `finish_reason`, `prompt_tokens` and
    `completion_tokens` are set. `cancel()` stops it at the next token (a client that went away)."""

    def __init__(self, engine: InferenceEngine, model: str, adapter: str | None, prompt_ids: list[int],
                 params: SamplingParams, max_tokens: int, loop: asyncio.AbstractEventLoop | None):
        self.id = uuid.uuid4().hex
        self.model = model
        self.adapter = adapter
        self.prompt_ids = prompt_ids
        self.params = params
        self.max_tokens = max_tokens
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.created = int(time.time())
        self._engine = engine
        self._loop = loop
        self._queue: asyncio.Queue | queue.Queue = asyncio.Queue() if loop is not None else queue.Queue()
        self._cancelled = threading.Event()
        self._consumed = False
        # model-thread state
        self._cache = None
        self._next_input: list[int] = prompt_ids
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        self._generator = torch.Generator(device=engine.device).manual_seed(seed)
        self._text = _TextAssembler(engine.tokenizer, params.stop)

    # --- consumer side ---
    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _check_once(self) -> None:
        if self._consumed:
            raise RuntimeError("a Generation can be consumed only once")
        self._consumed = True

    def __iter__(self) -> Iterator[str]:
        if self._loop is not None:
            raise RuntimeError("this Generation was submitted with an event loop: use `async for ... in astream()`")
        self._check_once()
        try:
            q = self._queue
            assert isinstance(q, queue.Queue)  # made without an event loop (checked above)
            while True:
                item = q.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()  # a consumer that stops early frees the model thread from this request

    async def astream(self) -> AsyncIterator[str]:
        if self._loop is None:
            raise RuntimeError("submit(..., loop=asyncio.get_running_loop()) to consume a Generation asynchronously")
        self._check_once()
        try:
            while True:
                item = await self._queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()

    def _finish_result(self, text: str) -> GenerationResult:
        return GenerationResult(text=text, finish_reason=self.finish_reason or "stop",
                                prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)

    def result(self) -> GenerationResult:
        return self._finish_result("".join(self))

    async def aresult(self) -> GenerationResult:
        return self._finish_result("".join([d async for d in self.astream()]))

    # --- model-thread side ---
    def _emit(self, item) -> None:
        if self._loop is None:
            self._queue.put(item)
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the consumer's event loop is closed: nobody is listening any more
            self.cancel()


@dataclass
class _Loaded:
    path: str
    pins: int = 0  # running requests that use it


@dataclass
class EngineStats:
    adapter_loads: int = 0
    adapter_evictions: int = 0
    adapter_switches: int = 0  # times the LoRA layers were pointed at another adapter (or the base)
    requests: int = 0
    completion_tokens: int = 0
    loaded: list[str] = field(default_factory=list)  # least recently used first


def check_adapter_folder(path: str | Path, *, field: str = "adapter") -> dict:
    """The adapter's config, after checking that `path` is a LoRA adapter folder with weights in it."""
    from ..inference import read_adapter_config

    config = read_adapter_config(path, field=field)
    p = Path(path).expanduser()
    if not any((p / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise TuneforgeError(f"{field}: {str(p)!r} has an adapter_config.json but no adapter_model.safetensors",
                             field=field, value=str(p))
    if config.get("peft_type", "LORA") != "LORA":
        raise TuneforgeError(f"{field}: {str(p)!r} is a {config.get('peft_type')} adapter; only LoRA adapters are "
                             "served", field=field, value=str(p))
    return config


def check_name(name: str, *, field: str = "adapter") -> str:
    if not name or not set(name) <= _NAME_CHARS or len(name) > 128:
        raise TuneforgeError(f"{field}: invalid model name {name!r}: use 1-128 letters, digits and ._-:/@+",
                             field=field, value=name)
    return name


class InferenceEngine:
    """Serves a base model and any number of LoRA adapters for it, by name.

    >>> engine = InferenceEngine("smollm2", adapters={"orders": "runs/demo/adapter"})
    >>> engine.generate("orders", engine.chat_prompt([{"role": "user", "content": "hi"}]), temperature=0).text
    """

    def __init__(self, model_path: str, *, adapters: Mapping[str, str | Path] | None = None,
                 max_loaded_adapters: int = 4, model_name: str | None = None, device: str | None = None,
                 dtype: torch.dtype = torch.float32, default_max_tokens: int = 256):
        from transformers import AutoModelForCausalLM

        from ..models.loader import load_tokenizer, quiet_transformers, resolve_model

        if max_loaded_adapters < 1:
            raise TuneforgeError(f"--max-adapters must be at least 1, got {max_loaded_adapters}",
                                 field="max_adapters", value=max_loaded_adapters)
        quiet_transformers()
        for name, path in (adapters or {}).items():  # fail on a wrong folder before spending time on the model
            check_name(name)
            check_adapter_folder(path, field=f"adapter {name!r}")
        resolved = resolve_model(model_path, field="--model")
        self.model_id = resolved.model_id
        local = Path(resolved.model_id).is_absolute()
        self.base_name = check_name(model_name or (Path(resolved.model_id).name if local else resolved.model_id),
                                    field="--model-name")
        self._aliases = {model_path, resolved.model_id, self.base_name}
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.max_loaded_adapters = max_loaded_adapters
        self.default_max_tokens = default_max_tokens
        self.tokenizer = load_tokenizer(model_path)
        self.base = AutoModelForCausalLM.from_pretrained(resolved.load_from, dtype=dtype).to(
            self.device).eval()  # type: ignore[arg-type]  # transformers wraps .to() in a decorator that mypy reads as taking the model
        # transformers 5.x renamed `past_key_values` to `cache` (input and output); accept either
        self._cache_kw = "cache" if "cache" in inspect.signature(self.base.forward).parameters else "past_key_values"
        self.context_length = int(getattr(self.base.config, "max_position_embeddings", 0) or 2048)
        eos = {self.tokenizer.eos_token_id}
        gen_eos = getattr(self.base.generation_config, "eos_token_id", None)
        eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_ids = {int(e) for e in eos if e is not None}

        self._peft: PeftModel | None = None  # the PeftModel wrapping `self.base` once an adapter is loaded
        self._active: str | None | object = _UNKNOWN  # adapter the LoRA layers are set to; None: disabled
        self._registry: dict[str, str] = {}
        self._registry_lock = threading.Lock()
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()  # LRU order: least recently used first
        self.stats = EngineStats()
        self.created = int(time.time())
        self._inbox: queue.Queue = queue.Queue()
        self._closed = False
        for name, path in (adapters or {}).items():
            self.add_adapter(name, path)
        self._thread = threading.Thread(target=self._run, name="tuneforge-model", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- registry (any thread)
    def add_adapter(self, name: str, path: str | Path) -> None:
        """Register (or re-point) adapter `name`; it is loaded on its first request."""
        check_name(name)
        if name in self._aliases:
            raise TuneforgeError(f"adapter: name {name!r} is the base model's name; choose another", field="adapter",
                                 value=name)
        config = check_adapter_folder(path, field=f"adapter {name!r}")
        recorded = config.get("base_model_name_or_path")
        if recorded and recorded not in self._aliases:
            log.warning("adapter %r was trained on %r, serving it on %r", name, recorded, self.model_id)
        with self._registry_lock:
            self._registry[name] = str(Path(path).expanduser().resolve())
        self._inbox.put(None)  # wake the model thread (a re-pointed adapter is reloaded when idle)

    def remove_adapter(self, name: str) -> None:
        with self._registry_lock:
            if self._registry.pop(name, None) is None:
                raise self._unknown(name)
        self._inbox.put(None)

    def adapters(self) -> dict[str, str]:
        with self._registry_lock:
            return dict(self._registry)

    def model_names(self) -> list[str]:
        return [self.base_name, *sorted(self.adapters())]

    def loaded_adapters(self) -> list[str]:
        """Adapters in memory now, least recently used first."""
        return list(self.stats.loaded)

    def _unknown(self, name: str) -> UnknownModelError:
        names = self.model_names()
        hint = close_matches(name, names)
        return UnknownModelError(
            f"model {name!r} is not served here; available: {', '.join(names)}"
            + (f" (did you mean {hint[0]!r}?)" if hint else ""),
            field="model", value=name)

    def resolve(self, model: str) -> str | None:
        """The adapter name for `model`, None for the base model; UnknownModelError otherwise."""
        if model in self._aliases:
            return None
        with self._registry_lock:
            if model in self._registry:
                return model
        raise self._unknown(model)

    # ---------------------------------------------------------------- prompts
    def chat_prompt(self, messages: list[dict]) -> str:
        if not self.tokenizer.chat_template:
            raise TuneforgeError(f"model {self.base_name!r} has no chat template: use /v1/completions with a "
                                 "formatted prompt", field="messages")
        if not messages:
            raise TuneforgeError("messages must not be empty", field="messages")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, prompt: str | Sequence[int], *, chat: bool = False) -> list[int]:
        """Token ids of a prompt. A rendered chat template carries its own special tokens; a plain completion
        prompt gets the tokenizer's usual ones (e.g. BOS)."""
        if not isinstance(prompt, str):
            ids = [int(i) for i in prompt]
            if any(not 0 <= i < len(self.tokenizer) for i in ids):
                raise TuneforgeError(f"prompt: token ids must be in [0, {len(self.tokenizer)})", field="prompt")
            return ids
        return self.tokenizer(prompt, add_special_tokens=not chat)["input_ids"]

    # ---------------------------------------------------------------- requests (any thread)
    def submit(self, model: str, prompt: str | Sequence[int] | None = None, params: SamplingParams | None = None,
               *, messages: list[dict] | None = None, chat: bool = False,
               loop: asyncio.AbstractEventLoop | None = None, context_length: int | None = None) -> Generation:
        """Queue a request and return at once. Give either `messages` (rendered with the chat template) or
        `prompt`: text (already chat-formatted when `chat`) or token ids. Pass `loop` to consume the result with
        `async for` on that event loop. `context_length` caps prompt + completion below the model's own limit (a
        deployment's max_model_len). Bad input raises TuneforgeError here, before anything is queued."""
        if self._closed:
            raise RuntimeError("the engine is closed")
        params = params or SamplingParams()
        params.check()
        adapter = self.resolve(model)
        if (messages is None) == (prompt is None):
            raise TypeError("give exactly one of prompt= and messages=")
        if messages is not None:
            prompt, chat = self.chat_prompt(messages), True
        assert prompt is not None  # exactly one of the two was given
        ids = self.encode(prompt, chat=chat)
        if not ids:
            raise TuneforgeError("prompt must not be empty", field="prompt")
        limit = min(self.context_length, context_length or self.context_length)
        room = limit - len(ids)
        if room < 1:
            raise TuneforgeError(f"the prompt has {len(ids)} tokens; this model's context is {limit}",
                                 field="prompt")
        max_tokens = min(params.max_tokens or self.default_max_tokens, room)
        gen = Generation(self, model, adapter, ids, params, max_tokens, loop)
        self._inbox.put(gen)
        return gen

    def generate(self, model: str, prompt: str | Sequence[int] | None = None, *, messages: list[dict] | None = None,
                 chat: bool = False, **params) -> GenerationResult:
        """Blocking convenience: submit and wait for the whole text."""
        return self.submit(model, prompt, SamplingParams(**params), messages=messages, chat=chat).result()

    def close(self, timeout: float = 10.0) -> None:
        self._closed = True
        self._inbox.put(None)
        self._thread.join(timeout)

    # ---------------------------------------------------------------- the model thread
    def _run(self) -> None:
        active: list[Generation] = []
        while True:
            try:  # block only when there is nothing to decode
                item = self._inbox.get() if not active else self._inbox.get_nowait()
            except queue.Empty:
                item = _DONE
            while item is not _DONE:
                if isinstance(item, Generation) and self._start(item):
                    active.append(item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = _DONE
            if self._closed:
                for gen in active:
                    self._end(gen, error=RuntimeError("the engine was closed"))
                return
            for gen in list(active):
                if gen.cancelled:
                    self._end(gen, reason="cancelled")
                else:
                    try:
                        self._step(gen)
                    except Exception as exc:  # noqa: BLE001 -- delivered to the request, the engine keeps serving
                        log.exception("generation failed")
                        self._end(gen, error=GenerationError(f"generation failed: {exc}"))
                if gen.finish_reason is not None or gen.error is not None:
                    active.remove(gen)
            try:
                self._housekeep()
            except Exception:  # noqa: BLE001 -- an unload that failed must not stop the model thread
                log.exception("adapter housekeeping failed")

    def _start(self, gen: Generation) -> bool:
        self.stats.requests += 1
        try:
            if gen.adapter is not None:
                with self._registry_lock:
                    path = self._registry.get(gen.adapter)
                if path is None:  # removed between submit and now
                    raise self._unknown(gen.adapter)
                self._ensure_loaded(gen.adapter, path)
                self._loaded[gen.adapter].pins += 1
                self._loaded.move_to_end(gen.adapter)
                self.stats.loaded = list(self._loaded)
        except Exception as exc:  # noqa: BLE001
            gen.error = exc
            gen._emit(exc)
            return False
        return True

    def _ensure_loaded(self, name: str, path: str) -> None:
        entry = self._loaded.get(name)
        if entry is not None and entry.path == path:
            return
        if entry is not None:  # re-pointed to another folder: drop the old weights
            self._delete(name)
        from peft import PeftModel

        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self.base, path, adapter_name=name, is_trainable=False)
            else:
                self._peft.load_adapter(path, adapter_name=name, is_trainable=False)
        except Exception as exc:  # noqa: BLE001 -- e.g. shapes that do not fit this base model
            if self._peft is not None and name in self._peft.peft_config:
                self._delete(name)
            raise GenerationError(f"adapter {name!r} ({path}) could not be loaded on {self.model_id!r}: {exc}") \
                from None
        self._peft.eval()
        self._loaded[name] = _Loaded(path)
        self._active = _UNKNOWN  # new LoRA layers: their on/off state is not known
        self.stats.adapter_loads += 1
        log.info("loaded adapter %r from %s", name, path)

    def _delete(self, name: str) -> None:
        assert self._peft is not None  # only loaded adapters are deleted
        self._loaded.pop(name, None)
        if len(self._peft.peft_config) == 1:
            # The last adapter: take the LoRA layers out altogether (PEFT's per-adapter bookkeeping does not
            # expect zero adapters) and continue with the plain base model.
            self.base = self._peft.unload()
            self._peft = None
        else:
            self._peft.delete_adapter(name)
        self._active = _UNKNOWN
        self.stats.loaded = list(self._loaded)

    def _housekeep(self) -> None:
        """Drop adapters that were removed or re-pointed, then evict least recently used ones past the limit."""
        with self._registry_lock:
            registry = dict(self._registry)
        for name, entry in list(self._loaded.items()):
            if entry.pins == 0 and registry.get(name) != entry.path:
                self._delete(name)
        for name in list(self._loaded):
            if len(self._loaded) <= self.max_loaded_adapters:
                break
            if self._loaded[name].pins == 0:
                self._delete(name)
                self.stats.adapter_evictions += 1
                log.info("evicted adapter %r (least recently used)", name)
        self.stats.loaded = list(self._loaded)

    def _activate(self, adapter: str | None) -> None:
        if self._active == adapter or self._peft is None:
            return
        # PeftModel types `base_model` as a plain nn.Module: its LoraModel methods are invisible to mypy.
        if adapter is None:
            self._peft.base_model.disable_adapter_layers()  # type: ignore[operator]
        else:
            if self._active is None or self._active is _UNKNOWN:
                self._peft.base_model.enable_adapter_layers()  # type: ignore[operator]
            self._peft.set_adapter(adapter, inference_mode=True)
        self._active = adapter
        self.stats.adapter_switches += 1

    @torch.no_grad()
    def _step(self, gen: Generation) -> None:
        """Decode one token for `gen`, with its adapter."""
        self._activate(gen.adapter)
        model = self._peft if self._peft is not None else self.base
        ids = torch.tensor([gen._next_input], device=self.device)  # (1, T): the prompt first, then one token
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_kw: gen._cache})
        gen._cache = getattr(out, self._cache_kw)
        token = sample_next(out.logits[0, -1], gen.params.temperature, gen.params.top_p, gen._generator)
        gen.completion_tokens += 1
        gen._next_input = [token]
        if token in self.eos_ids and not gen.params.ignore_eos:
            self._end(gen, reason="stop")
            return
        delta = gen._text.add(token)
        if delta:
            gen._emit(delta)
        if gen._text.stopped:
            self._end(gen, reason="stop")
        elif gen.completion_tokens >= gen.max_tokens:
            self._end(gen, reason="length")

    def _end(self, gen: Generation, *, reason: str | None = None, error: BaseException | None = None) -> None:
        if error is not None:
            gen.error = error
            gen._emit(error)
        else:
            tail = gen._text.flush()
            if tail:
                gen._emit(tail)
            gen.finish_reason = reason
            gen._emit(_DONE)
        gen._cache = None  # free the KV cache now, not when the consumer drops the handle
        self.stats.completion_tokens += gen.completion_tokens
        if gen.adapter is not None and gen.adapter in self._loaded:
            self._loaded[gen.adapter].pins -= 1

