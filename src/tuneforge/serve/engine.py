"""The inference engine: one base model loaded once, LoRA adapters loaded by name on demand, token streaming.

Design (why it is shaped this way):

* **One model thread owns the model.** Every touch of the model (loading or evicting an adapter, switching the
  active adapter, a forward pass) happens on a single background thread. PEFT's active adapter is global state
  of the module tree, so two threads that each `set_adapter()` and then run a forward pass could each run with
  the other's adapter (cross-talk). Confining the model to one thread makes that impossible by construction,
  with no lock to forget, and it costs nothing here: on a CPU (and a single small GPU) one forward pass already
  uses all the compute, so running two at once would not be faster.
* **Continuous batching across adapters (scheduler "batched", the default).** Each turn of the model thread
  admits waiting requests and prefills their prompts through the lean step in chunks, at most `step_tokens`
  prompt tokens per turn (so a long prompt delays the running streams by one bounded chunk, not by its whole
  prefill), then runs ONE decode step for every running request together: the base weights are read once for
  the whole batch and each adapter's low-rank product runs on its own rows (segmented LoRA, as in Punica,
  S-LoRA and LoRAX), so requests for different adapters and for the base share the step. A decode step of 16
  rows costs a few times one row's, not 16 times (bench/serve_bench.py). Rows have their own lengths in a
  shared padded KV cache (`fast_decode.BatchCache`) and join or leave at every step; a cancelled request (a
  client that went away) leaves at the next one. Admission control: at most `max_batch_size` rows, and a
  request joins only when the cache stays within `kv_cache_mb`; the others wait in the queue, and past
  `max_waiting` queued requests `submit` refuses with EngineOverloadedError (HTTP 503 + Retry-After).
  Sampling and text stay per request (`gen.sampler.choose(row)`, `_accept`), so seeded sampling is
  reproducible however requests batch. Numerics: fp32 matrix products of M rows and of one row are blocked
  differently by the CPU's BLAS, so a row's logits in a batch may differ from serving it alone in the last
  bits; greedy outputs are the same tokens in the tests and the benchmark (`identical_outputs=1`).
  Scheduler "roundrobin" (the engine before batching, kept for the benchmark's comparison): each turn decodes
  one token for each request in turn, with its own KV cache and adapter.
* **Adapters: registered by name, loaded lazily, evicted least-recently-used** past `max_loaded_adapters`
  (hundreds can be registered; only the hot ones are held). The batched scheduler reads an adapter's tensors
  from its safetensors on a loader thread (no PEFT module injection), so a cold load never stalls the
  decoding of the other requests; "loaded adapter"/"evicted adapter" log lines say when. An adapter that a
  running or waiting request uses is never evicted; the count may exceed the limit until they finish.
* **Decoding: the lean step.** `fast_decode.FastDecoder` (fused projections, pre-allocated KV cache, LoRA
  weights passed in as tensors). The batched scheduler runs prompts and tokens through it; round-robin runs the
  prompt through the model's own forward (PEFT adapter active) and each following token through the lean step.
  The model thread's warm-up compares the lean step with the model's forward on a short prompt and 4 tokens
  (fp32 on CPU: bit-identical logits; bf16/fp16: within 5% of the largest logit) and only then switches it on.
  A warm-up failure (then the round-robin loop serves everything with the plain forward), an architecture or
  adapter it does not model (that adapter is loaded into PEFT and its requests take the plain forward beside
  the batch), or a failure mid-request (round-robin: the request's cache is handed back to a transformers
  cache) keeps or puts that work on the plain forward, with one log line. Weights are bf16 on CUDA and on CPUs
  with native bf16 (AVX512-BF16/AMX), fp32 elsewhere (`serving_dtype`). `weights="int8"` (`--weights int8`,
  opt-in, CPU) runs the lean step's projections and output head on q8_0 copies of the weights
  (`cpu_kernels.Q8Linear`), and a single sequence's whole decode step as one C call (`cpu_kernels.NativeStep`):
  ~4x faster per token on a memory-bound CPU, not bit-identical, so its warm-up check is a bound on the
  next-token distributions' KL divergence (see `_check_lean`); if the kernels do not build or the check fails,
  the lean step runs on the model's own weights.
* **Base-model requests** run with the LoRA layers disabled (no merge), so the same process serves the base and
  every adapter. `tuneforge export --merged` folds one adapter into the weights when no added latency is wanted.

Text assembly: tokens are decoded incrementally over a short window (a token can be half a UTF-8 character or
half a word), and the text that could still turn into a stop string is held back until it either completes one
(then the output ends before it) or cannot any more (then it is sent).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..adapter_card import AdapterCard, check_mode, read_card, render_chat
from ..errors import TuneforgeError, close_matches
from ..models.adapters import check_adapter_folder
from ..models.loader import load_tokenizer, quiet_transformers, resolve_model
from ..runtime import default_device
from . import metrics
from .fast_decode import (
    INT8_MAX_KL,
    WEIGHT_FORMATS,
    AdapterPlan,
    BatchCache,
    DecodeState,
    FastDecoder,
    Segments,
    next_token_kl,
)
from .grammar import GrammarCompiler
from .sampling import SamplingParams, TokenLogprob, TokenSampler

if TYPE_CHECKING:
    from peft import PeftModel

log = logging.getLogger("tuneforge.serve")

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:/@+")


class UnknownModelError(TuneforgeError):
    """A request named a model that this engine does not serve (the message lists the ones it does)."""


class GenerationError(Exception):
    """Generation failed on the model thread for a reason that is not the user's input (e.g. an adapter whose
    weights do not fit the base)."""


class EngineOverloadedError(TuneforgeError):
    """More requests are queued than the engine accepts (`max_waiting`): retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


SCHEDULERS = ("batched", "roundrobin")


@dataclass
class GenerationResult:
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop string) | "length" (max_tokens or context reached)
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None  # one per generated token, when the request asked for them


class TextDelta(str):
    """A streamed piece of text (a plain `str` to every consumer) that also carries the log probabilities of the
    tokens it completes, when the request asked for them. Text and tokens do not align one to one (a token can be
    half a character; text that may start a stop string is held back), so each token's record travels with the
    first piece of text emitted at or after it; a final empty piece carries any that produced no text."""

    logprobs: list[TokenLogprob]

    def __new__(cls, text: str, logprobs: list[TokenLogprob]) -> TextDelta:
        piece = super().__new__(cls, text)
        piece.logprobs = logprobs
        return piece


def serving_dtype(dtype: torch.dtype | str, device: torch.device) -> torch.dtype:
    """The weight dtype to serve in. "auto": bf16 on CUDA and on CPUs with native bf16 arithmetic (AVX512-BF16 or
    AMX), fp32 elsewhere: on a CPU without them every bf16 matmul is emulated, and decoding measured ~5x slower
    per matrix-vector product than fp32 (AVX2 machine, bench/RESULTS.md)."""
    if not isinstance(dtype, str):
        return dtype
    if dtype != "auto":
        try:
            return {
                "float32": torch.float32,
                "fp32": torch.float32,
                "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16,
                "float16": torch.float16,
                "fp16": torch.float16,
            }[dtype]
        except KeyError:
            raise TuneforgeError(
                f"--dtype: {dtype!r} is not one of auto, float32, bfloat16, float16", field="dtype", value=dtype
            ) from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return torch.bfloat16
    return torch.float32


def check_weights(weights: str, dtype: torch.dtype, device: torch.device) -> str:
    """The lean step's weight format (--weights): "dense" (the model's own weights) or "int8" (llama.cpp's q8_0:
    int8 weights and activations with one scale per block of 32, tuneforge's C kernels; ~4x faster per token than
    the fp32 lean step on a 2-core AVX2 CPU, next-token KL ~0.005 nats and the same greedy token as fp32 at 59-62
    of 64 teacher-forced positions on SmolLM2; bench/RESULTS.md). int8 is opt-in, for CPU serving in float32."""
    if weights not in WEIGHT_FORMATS:
        raise TuneforgeError(
            f"--weights: {weights!r} is not one of {', '.join(WEIGHT_FORMATS)}", field="weights", value=weights
        )
    if weights == "int8" and (device.type != "cpu" or dtype != torch.float32):
        raise TuneforgeError(
            f"--weights int8 runs on CPU over float32 activations (this engine: {device.type}, "
            f"{str(dtype).removeprefix('torch.')}); use --dtype float32 on a CPU, or dense weights",
            field="weights",
            value=weights,
        )
    return weights


class _TextAssembler:
    """Turns a growing list of token ids into text deltas, honouring stop strings.

    Detokenisation is incremental (as in vLLM and TGI): each token decodes only a short window of ids, from the
    start of the previous token's piece, instead of the whole text so far, so the cost per token does not grow
    with the output. Decoding the window with one token of context in front keeps what the whole-text decode
    would give (a SentencePiece "▁" word start, a byte-level piece), and a window that ends in half a UTF-8
    character ("\ufffd") waits for the next token.
    """

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.ids: list[int] = []
        self.text = ""  # the decoded text of ids[:self._read]
        self.sent = 0  # characters of `text` already emitted
        self.stopped = False
        self._prefix = 0  # the window starts here: one piece of context before the ids not yet decoded
        self._read = 0  # ids before this are in `text`

    def _decode_window(self, final: bool = False) -> None:
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        window = decode(self.ids[self._prefix :], skip_special_tokens=True)
        if len(window) > len(before) and (final or not window.endswith("\ufffd")):
            self.text += window[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)

    def _hold(self, text: str) -> int:
        """How many trailing characters might still become part of a stop string."""
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return hold

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        self._decode_window()
        text = self.text
        cut = min((i for i in (text.find(s, max(0, self.sent - len(s) + 1)) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            cut = max(cut, self.sent)
            delta, self.sent = text[self.sent : cut], cut
            return delta
        end = max(self.sent, len(text) - self._hold(text))
        delta, self.sent = text[self.sent : end], end
        return delta

    def flush(self) -> str:
        """The held-back text at the end of generation (it did not complete a stop string)."""
        if self.stopped:
            return ""
        self._decode_window(final=True)
        delta, self.sent = self.text[self.sent :], len(self.text)
        return delta


_DONE = object()  # end of a Generation's stream
_UNKNOWN = object()  # the LoRA layers' state after a load or delete: re-apply on the next switch


class _Plain:
    """The lean-step plan of an adapter that the lean step does not model: its requests take the plain forward."""


_PLAIN = _Plain()


class Generation:
    """A handle on one submitted request. Iterate it (sync) or `async for` over `astream()` for text deltas;
    `result()` / `aresult()` wait for the whole text. After the end, `finish_reason`, `prompt_tokens` and
    `completion_tokens` are set. `cancel()` stops it at the next token (a client that went away)."""

    def __init__(
        self,
        engine: InferenceEngine,
        model: str,
        adapter: str | None,
        prompt_ids: list[int],
        params: SamplingParams,
        max_tokens: int,
        loop: asyncio.AbstractEventLoop | None,
    ):
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
        self.submitted = time.perf_counter()  # for the time-to-first-token and per-output-token metrics
        self.first_token_at: float | None = None
        self._engine = engine
        self._loop = loop
        self._queue: asyncio.Queue | queue.Queue = asyncio.Queue() if loop is not None else queue.Queue()
        self._cancelled = threading.Event()
        self._consumed = False
        # model-thread state
        self._cache: object | None = None  # the plain forward's KV cache (transformers Cache)
        self._state: DecodeState | None = None  # the lean step's KV cache of this request alone
        self._pinned = False  # holds a pin on its adapter (released at the end)
        self._ready = adapter is None  # batched: its adapter's weights are on the device (or it needs none)
        self._plan: AdapterPlan | None = None  # batched: its adapter's lean-step weights (None: the base)
        self._prefilled = 0  # batched: prompt tokens in `_state` so far
        self._next_input: list[int] = prompt_ids
        self.system_fingerprint = engine.system_fingerprint
        constraint = None
        if params.json_schema is not None:
            grammar = engine.grammars.json_schema(params.json_schema, field=params.json_schema_field)
            constraint = engine.grammars.constraint(grammar)
        self.sampler = TokenSampler(params, engine.device, constraint)
        self._text = _TextAssembler(engine.tokenizer, params.stop)
        self._logprobs: list[TokenLogprob] = []  # recorded, not yet sent with a piece of text

    # --- consumer side ---
    def token_bytes(self, token: int) -> bytes:
        """The exact bytes of token id `token` in this generation's vocabulary (for reporting log probabilities)."""
        return self._engine.grammars.token_bytes(token)

    def cancel(self) -> None:
        self._cancelled.set()
        self._engine._inbox.put(None)  # wake the model thread if it is blocked, so the request ends now

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

    def _finish_result(self, pieces: list[str]) -> GenerationResult:
        logprobs = None
        if self.params.logprobs is not None:
            logprobs = [lp for piece in pieces for lp in getattr(piece, "logprobs", ())]
        return GenerationResult(
            text="".join(pieces),
            finish_reason=self.finish_reason or "stop",
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            logprobs=logprobs,
        )

    def result(self) -> GenerationResult:
        return self._finish_result(list(self))

    async def aresult(self) -> GenerationResult:
        return self._finish_result([d async for d in self.astream()])

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
    pins: int = 0  # waiting and running requests that use it
    plan: AdapterPlan | None = None  # the lean step's tensors (batched scheduler); None: loaded into PEFT


@dataclass
class EngineStats:
    adapter_loads: int = 0
    adapter_evictions: int = 0
    adapter_switches: int = 0  # forward passes whose adapter (or the base) differs from the previous one's
    requests: int = 0
    completion_tokens: int = 0
    decode_steps: int = 0  # forward passes that decoded one token for each running request
    max_batch: int = 0  # the most requests one decode step has served
    batch_size: int = 0  # requests in the running batch now
    waiting: int = 0  # requests queued, not yet running
    loaded: list[str] = field(default_factory=list)  # least recently used first


def check_name(name: str, *, field: str = "adapter") -> str:
    if not name or not set(name) <= _NAME_CHARS or len(name) > 128:
        raise TuneforgeError(
            f"{field}: invalid model name {name!r}: use 1-128 letters, digits and ._-:/@+", field=field, value=name
        )
    return name


_IMPORT_LOCK = threading.Lock()


class InferenceEngine:
    """Serves a base model and any number of LoRA adapters for it, by name.

    >>> engine = InferenceEngine("smollm2", adapters={"orders": "runs/demo/adapter"})
    >>> engine.generate("orders", engine.chat_prompt([{"role": "user", "content": "hi"}]), temperature=0).text
    """

    def __init__(
        self,
        model_path: str,
        *,
        adapters: Mapping[str, str | Path] | None = None,
        max_loaded_adapters: int = 4,
        model_name: str | None = None,
        device: str | None = None,
        dtype: torch.dtype | str = "auto",
        default_max_tokens: int = 256,
        chat_template: str = "training",
        fast_decode: bool = True,
        weights: str = "dense",
        relative_is_local: bool = True,
        scheduler: str = "batched",
        max_batch_size: int = 32,
        step_tokens: int = 256,
        kv_cache_mb: float = 2048,
        max_waiting: int = 1024,
    ):
        with _IMPORT_LOCK:
            # transformers resolves its classes lazily on first attribute access; two threads doing that at once
            # (deployments rebuilt in parallel after a restart) saw `ImportError: cannot import name
            # 'AutoModelForCausalLM'`. One import at a time makes the first one complete before anyone uses it.
            from transformers import AutoModelForCausalLM

        # "training": chat requests to an adapter are rendered as it was trained (its tuneforge_adapter.json);
        # "model": always with the base model's chat template.
        self.chat_template_mode = check_mode(chat_template, "--chat-template")

        if max_loaded_adapters < 1:
            raise TuneforgeError(
                f"--max-adapters must be at least 1, got {max_loaded_adapters}",
                field="max_adapters",
                value=max_loaded_adapters,
            )
        if scheduler not in SCHEDULERS:
            raise TuneforgeError(
                f"--scheduler: {scheduler!r} is not one of {', '.join(SCHEDULERS)}", field="scheduler", value=scheduler
            )
        for flag, value, low in (
            ("--max-batch-size", max_batch_size, 1),
            ("--step-tokens", step_tokens, 1),
            ("--kv-cache-mb", kv_cache_mb, 0.01),
            ("--max-waiting", max_waiting, 1),
        ):
            if value < low:
                raise TuneforgeError(f"{flag} must be at least {low}, got {value}", field=flag[2:], value=value)
        self.scheduler = scheduler
        self.max_batch_size = max_batch_size
        self.step_tokens = step_tokens
        self.max_waiting = max_waiting
        quiet_transformers()
        for name, path in (adapters or {}).items():  # fail on a wrong folder before spending time on the model
            check_name(name)
            check_adapter_folder(path, field=f"adapter {name!r}")
        resolved = resolve_model(model_path, field="--model", relative_is_local=relative_is_local)
        self.model_id = resolved.model_id
        local = Path(resolved.model_id).is_absolute()
        self.base_name = check_name(
            model_name or (Path(resolved.model_id).name if local else resolved.model_id), field="--model-name"
        )
        self._aliases = {model_path, resolved.model_id, self.base_name}
        self.device = torch.device(default_device(device))
        self.max_loaded_adapters = max_loaded_adapters
        self.default_max_tokens = default_max_tokens
        self.tokenizer = load_tokenizer(model_path, relative_is_local=relative_is_local)
        self.dtype = serving_dtype(dtype, self.device)
        self.weights = check_weights(weights, self.dtype, self.device)
        from .. import __version__

        # OpenAI's system_fingerprint: changes with what produces the outputs (code version, base model, precision, device)
        self.system_fingerprint = (
            "fp_"
            + hashlib.sha256(
                f"tuneforge {__version__}|{resolved.model_id}|{self.dtype}|{self.weights}|{self.device.type}".encode()
            ).hexdigest()[:12]
        )
        base = AutoModelForCausalLM.from_pretrained(
            resolved.load_from, dtype=self.dtype, local_files_only=resolved.is_local
        )
        # transformers wraps .to() in a decorator that mypy reads as taking the model
        self.base = base.to(self.device).eval()  # type: ignore[arg-type]
        # transformers 5.x renamed `past_key_values` to `cache` (input and output); accept either
        self._cache_kw = "cache" if "cache" in inspect.signature(self.base.forward).parameters else "past_key_values"
        self.context_length = int(getattr(self.base.config, "max_position_embeddings", 0) or 2048)
        eos = {self.tokenizer.eos_token_id}
        gen_eos = getattr(self.base.generation_config, "eos_token_id", None)
        eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_ids = {int(e) for e in eos if e is not None}
        # the logits' width: the embedding matrix may have more rows than the tokenizer has tokens
        self.vocab_size = int(self.base.get_output_embeddings().weight.shape[0])
        self.grammars = GrammarCompiler(self.tokenizer, self.vocab_size, self.eos_ids)
        # about a second for a 50k vocabulary, off the request path; a failure shows on the first constrained request
        threading.Thread(target=self._prepare_grammars, name="tuneforge-grammar", daemon=True).start()
        cfg = self.base.config
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        # one position of one row in the batch's KV cache: keys and values of every layer
        self._kv_position_bytes = 2 * cfg.num_hidden_layers * kv_heads * head_dim * self.dtype.itemsize
        self.kv_cache_positions = int(kv_cache_mb * 2**20) // self._kv_position_bytes

        self._peft: PeftModel | None = None  # the PeftModel wrapping `self.base` once an adapter is loaded
        self._active: str | object | None = _UNKNOWN  # adapter the LoRA layers are set to; None: disabled
        self._registry: dict[str, str] = {}
        self._cards: dict[str, AdapterCard | None] = {}  # how each adapter was trained (None: not by tuneforge)
        self._modes: dict[str, str] = {}  # each adapter's chat template mode ("training" | "model")
        self._registry_lock = threading.Lock()
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()  # LRU order: least recently used first
        self.stats = EngineStats()
        self.created = int(time.time())
        self._inbox: queue.Queue = queue.Queue()
        self._closed = False
        self._want_fast = fast_decode
        self._fast: FastDecoder | None = None  # set by the model thread's warm-up when the lean step checks out
        self._plans: dict[str, AdapterPlan | _Plain] = {}  # adapter -> its fused LoRA weights (_PLAIN: plain path)
        self._last_adapter: str | object | None = _UNKNOWN  # adapter of the previous forward pass
        self._batch: BatchCache | None = None  # the batched scheduler's running rows' KV cache
        self._loading: dict[str, tuple[str, Future]] = {}  # adapter -> (its folder, its load on the loader thread)
        self._loader: ThreadPoolExecutor | None = None
        self._queued = 0  # submitted, not yet admitted to the batch (admission control)
        self._queued_lock = threading.Lock()
        metrics.track(self)
        for name, path in (adapters or {}).items():
            self.add_adapter(name, path)
        self._thread = threading.Thread(target=self._run, name="tuneforge-model", daemon=True)
        self._thread.start()

    def _prepare_grammars(self) -> None:
        try:
            self.grammars.prepare()
        except Exception as exc:
            log.info("constrained decoding is not prepared ahead: %s", exc)

    # ---------------------------------------------------------------- registry (any thread)
    def add_adapter(self, name: str, path: str | Path, *, chat_template: str | None = None) -> None:
        """Register (or re-point) adapter `name`; it is loaded on its first request. `chat_template` ("training" or
        "model") overrides the engine's mode for this adapter's chat requests."""
        check_name(name)
        if name in self._aliases:
            raise TuneforgeError(
                f"adapter: name {name!r} is the base model's name; choose another", field="adapter", value=name
            )
        config = check_adapter_folder(path, field=f"adapter {name!r}")
        recorded = config.get("base_model_name_or_path")
        if recorded and recorded not in self._aliases:
            log.warning("adapter %r was trained on %r, serving it on %r", name, recorded, self.model_id)
        card = read_card(path)
        mode = check_mode(chat_template or self.chat_template_mode, "chat_template")
        with self._registry_lock:
            self._registry[name] = str(Path(path).expanduser().resolve())
            self._cards[name] = card
            self._modes[name] = mode
        self._inbox.put(None)  # wake the model thread (a re-pointed adapter is reloaded when idle)

    def remove_adapter(self, name: str) -> None:
        with self._registry_lock:
            if self._registry.pop(name, None) is None:
                raise self._unknown(name)
            self._cards.pop(name, None)
            self._modes.pop(name, None)
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
            field="model",
            value=name,
        )

    def resolve(self, model: str) -> str | None:
        """The adapter name for `model`, None for the base model; UnknownModelError otherwise."""
        if model in self._aliases:
            return None
        with self._registry_lock:
            if model in self._registry:
                return model
        raise self._unknown(model)

    # ---------------------------------------------------------------- prompts
    def card(self, adapter: str | None) -> AdapterCard | None:
        """How `adapter` was trained (None for the base model and adapters trained elsewhere)."""
        with self._registry_lock:
            return self._cards.get(adapter) if adapter is not None else None

    def chat_prompt(
        self,
        messages: list[dict],
        adapter: str | None = None,
        *,
        tools: list[dict] | None = None,
        require_tools: bool = True,
    ) -> str:
        """`messages` (and `tools`, see render_chat) rendered for `adapter`: with its training prompt when it was
        trained on a prompt template (and the engine's mode is "training"), else with the model's chat template."""
        with self._registry_lock:
            mode = self._modes.get(adapter, self.chat_template_mode) if adapter else self.chat_template_mode
        return render_chat(
            self.tokenizer,
            messages,
            self.card(adapter),
            mode,
            model_name=f"model {self.base_name!r}",
            tools=tools,
            require_tools=require_tools,
        )

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
    def submit(
        self,
        model: str,
        prompt: str | Sequence[int] | None = None,
        params: SamplingParams | None = None,
        *,
        messages: list[dict] | None = None,
        chat: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
        context_length: int | None = None,
        tools: list[dict] | None = None,
        require_tools: bool = True,
    ) -> Generation:
        """Queue a request and return at once. Give either `messages` (rendered with the chat template, with
        `tools` when given: see render_chat) or `prompt`: text (already chat-formatted when `chat`) or token ids.
        Pass `loop` to consume the result with `async for` on that event loop. `context_length` caps prompt +
        completion below the model's own limit (a deployment's max_model_len). Bad input raises TuneforgeError
        here, before anything is queued."""
        if self._closed:
            raise RuntimeError("the engine is closed")
        params = params or SamplingParams()
        params.check(vocab_size=self.vocab_size)
        adapter = self.resolve(model)
        if (messages is None) == (prompt is None):
            raise TypeError("give exactly one of prompt= and messages=")
        if messages is not None:
            prompt, chat = self.chat_prompt(messages, adapter, tools=tools, require_tools=require_tools), True
        assert prompt is not None  # given, or rendered from the messages
        ids = self.encode(prompt, chat=chat)
        if not ids:
            raise TuneforgeError("prompt must not be empty", field="prompt")
        limit = min(self.context_length, context_length or self.context_length)
        room = limit - len(ids)
        if room < 1:
            raise TuneforgeError(f"the prompt has {len(ids)} tokens; this model's context is {limit}", field="prompt")
        max_tokens = min(params.max_tokens or self.default_max_tokens, room)
        # the batch's cache holds a row's positions rounded up to its allocation unit (BatchCache.shape_for)
        if self.scheduler == "batched" and BatchCache.round_capacity(len(ids) + max_tokens) > self.kv_cache_positions:
            raise TuneforgeError(
                f"max_tokens: the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) need more KV cache "
                f"than this server holds for one request ({self.kv_cache_positions} positions, --kv-cache-mb); "
                "ask for fewer tokens",
                field="max_tokens",
                value=max_tokens,
            )
        with self._queued_lock:
            if self._queued >= self.max_waiting:
                metrics.rejected(self)
                raise EngineOverloadedError(
                    f"the server is busy: {self._queued} requests are queued (--max-waiting {self.max_waiting}); "
                    "retry shortly",
                    retry_after=1,
                )
            self._queued += 1
        gen = Generation(self, model, adapter, ids, params, max_tokens, loop)
        self._inbox.put(gen)
        return gen

    def generate(
        self,
        model: str,
        prompt: str | Sequence[int] | None = None,
        *,
        messages: list[dict] | None = None,
        chat: bool = False,
        **params,
    ) -> GenerationResult:
        """Blocking convenience: submit and wait for the whole text."""
        return self.submit(model, prompt, SamplingParams(**params), messages=messages, chat=chat).result()

    def close(self, timeout: float = 10.0) -> None:
        self._closed = True
        self._inbox.put(None)
        self._thread.join(timeout)
        if self._loader is not None:
            self._loader.shutdown(wait=False, cancel_futures=True)
        metrics.untrack(self)

    @property
    def queued(self) -> int:
        """Requests submitted and not yet running (queue depth)."""
        return self._queued

    def _dequeued(self, gen: Generation) -> None:
        with self._queued_lock:
            self._queued -= 1

    # ---------------------------------------------------------------- the model thread
    def _run(self) -> None:
        if self._want_fast:
            self._warm_up()
        if self.scheduler == "batched" and self._fast is not None:
            self._run_batched(self._fast)
        else:  # round-robin (or no lean step: the plain forward has no batched path here)
            self._run_roundrobin()

    def _run_roundrobin(self) -> None:
        active: list[Generation] = []
        while True:
            try:  # block only when there is nothing to decode
                item = self._inbox.get() if not active else self._inbox.get_nowait()
            except queue.Empty:
                item = _DONE
            while item is not _DONE:
                if isinstance(item, Generation):
                    self.stats.requests += 1
                    self._dequeued(item)
                    if self._start(item):
                        active.append(item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = _DONE
            if self._closed:
                for gen in active:
                    self._end(gen, error=RuntimeError("the engine was closed"))
                return
            self._step_each(active)
            self.stats.batch_size = len(active)
            try:
                self._housekeep()
            except Exception:
                log.exception("adapter housekeeping failed")

    def _step_each(self, gens: list[Generation]) -> None:
        """One token for each of `gens` in turn on the plain path (round-robin); the cancelled, failed and finished
        leave the list. A failure ends only its own request."""
        for gen in list(gens):
            if gen.cancelled:
                self._end(gen, reason="cancelled")
            else:
                try:
                    self._step(gen)
                except Exception as exc:
                    log.exception("generation failed")
                    self._end(gen, error=GenerationError(f"generation failed: {exc}"))
            if gen.finish_reason is not None or gen.error is not None:
                gens.remove(gen)

    # ---------------------------------------------------------------- the batched scheduler
    def _run_batched(self, fast: FastDecoder) -> None:
        """Continuous batching (module docstring): each turn admits and prefills under the token budget, then
        decodes one token for every running request in one forward pass."""
        self._batch = batch = BatchCache(fast)
        waiting: deque[Generation] = deque()  # FIFO; requests whose adapter is loading are passed over
        running: list[Generation] = []  # row i of `batch` is running[i]
        prefill: Generation | None = None  # the request whose prompt is being prefilled, chunk by chunk
        plain: list[Generation] = []  # requests for adapters the lean step does not model: the plain forward
        while True:
            # Requests whose adapter is still loading are not work: spinning over them would hold the GIL the
            # loader thread needs (a first load imports PEFT), so block until the load's callback wakes us.
            busy = bool(running or prefill or plain) or any(g._ready or g.adapter not in self._loading for g in waiting)
            try:  # block only when there is nothing to do (a finished load or a cancel wakes us through the inbox)
                item = self._inbox.get() if not busy else self._inbox.get_nowait()
            except queue.Empty:
                item = _DONE
            while item is not _DONE:
                if isinstance(item, Generation):
                    self.stats.requests += 1
                    waiting.append(item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = _DONE
            if self._closed:
                for gen in [*waiting, *running, *plain, *([prefill] if prefill else [])]:
                    self._end(gen, error=RuntimeError("the engine was closed"))
                return
            try:
                self._resolve_adapters(fast, waiting, plain)
                prefill = self._admit_and_prefill(fast, batch, waiting, running, prefill)
                if running:
                    self._decode_batch(batch, running)
                self._step_each(plain)
            except Exception as exc:  # a bug in a batched step: fail what it touched, keep serving the rest
                log.exception("batched step failed")
                failed = [*running, *([prefill] if prefill else [])]
                for gen in failed:
                    self._end(gen, error=GenerationError(f"generation failed: {exc}"))
                running.clear()
                prefill = None
                self._batch = batch = BatchCache(fast)
            self.stats.batch_size, self.stats.waiting = len(running) + len(plain), len(waiting) + (prefill is not None)
            try:
                self._housekeep()
            except Exception:
                log.exception("adapter housekeeping failed")

    def _load_done(self, future: Future) -> None:
        self._inbox.put(None)  # wake the model thread

    def _resolve_adapters(self, fast: FastDecoder, waiting: deque[Generation], plain: list[Generation]) -> None:
        """Pin the adapters of waiting requests that are on the device; start loading the others on the loader
        thread; take in finished loads. A load that fails ends only the requests for that adapter."""
        for name, (path, future) in list(self._loading.items()):
            if not future.done():
                continue
            del self._loading[name]
            exc = future.exception()
            if exc is None:
                self._loaded[name] = _Loaded(path, plan=future.result())
                self.stats.adapter_loads += 1
                log.info("loaded adapter %r from %s (%d on the device)", name, path, len(self._loaded))
            elif isinstance(exc, ValueError):  # not modelled by the lean step: PEFT and the plain forward
                log.info("adapter %r is served with the plain forward pass: lean decode does not model %s", name, exc)
                for gen in [g for g in waiting if g.adapter == name]:
                    waiting.remove(gen)
                    self._dequeued(gen)
                    if self._start(gen):
                        plain.append(gen)
            else:
                error = GenerationError(f"adapter {name!r} ({path}) could not be loaded on {self.model_id!r}: {exc}")
                log.warning("%s", error)
                for gen in [g for g in waiting if g.adapter == name]:
                    waiting.remove(gen)
                    self._dequeued(gen)
                    self._end(gen, error=error)
        with self._registry_lock:
            registry = dict(self._registry)
        for gen in list(waiting):
            if gen._ready or gen.adapter is None:
                continue
            folder = registry.get(gen.adapter)
            entry = self._loaded.get(gen.adapter)
            if folder is None:  # removed between submit and now
                waiting.remove(gen)
                self._dequeued(gen)
                self._end(gen, error=self._unknown(gen.adapter))
            elif entry is not None and entry.path == folder and entry.plan is not None:
                entry.pins += 1
                gen._pinned, gen._ready, gen._plan = True, True, entry.plan
                self._loaded.move_to_end(gen.adapter)
            elif entry is not None and entry.path == folder:  # already in PEFT (an adapter the lean step skips)
                waiting.remove(gen)
                self._dequeued(gen)
                if self._start(gen):
                    plain.append(gen)
            elif gen.adapter not in self._loading:
                if entry is not None and entry.pins == 0:  # re-pointed to another folder: drop the old tensors
                    self._delete(gen.adapter)
                if self._loader is None:
                    self._loader = ThreadPoolExecutor(1, thread_name_prefix="tuneforge-adapter-loader")
                future = self._loader.submit(fast.load_adapter_plan, folder)
                future.add_done_callback(self._load_done)
                self._loading[gen.adapter] = (folder, future)
        self.stats.loaded = list(self._loaded)

    def _fits(self, batch: BatchCache, running: list[Generation], gen: Generation) -> bool:
        """Admission control: one more row within max_batch_size, and the batch's KV cache within its budget."""
        if len(running) + 1 > self.max_batch_size:
            return False
        need = max([g.prompt_tokens + g.max_tokens for g in running] + [gen.prompt_tokens + gen.max_tokens])
        return batch.positions(len(running) + 1, need) <= self.kv_cache_positions

    def _admit_and_prefill(
        self,
        fast: FastDecoder,
        batch: BatchCache,
        waiting: deque[Generation],
        running: list[Generation],
        prefill: Generation | None,
    ) -> Generation | None:
        """Prefill prompts, oldest admissible request first, up to `step_tokens` tokens this turn; a request whose
        prompt is done samples its first token and joins the batch. Returns the request left half-prefilled."""
        for gen in [g for g in waiting if g.cancelled]:
            waiting.remove(gen)
            self._dequeued(gen)
            self._end(gen, reason="cancelled")
        if prefill is not None and prefill.cancelled:
            self._end(prefill, reason="cancelled")
            prefill = None
        budget = self.step_tokens
        while budget > 0:
            if prefill is None:
                # the oldest request whose adapter is ready; it waits (and so do the ones after it, to keep the
                # order fair) while the batch has no room for it
                admit = next((g for g in waiting if g._ready), None)
                if admit is None or not self._fits(batch, running, admit):
                    break
                waiting.remove(admit)
                self._dequeued(admit)
                admit._state = fast.new_state(1, admit.prompt_tokens)
                prefill = admit
            gen = prefill
            chunk = gen.prompt_ids[gen._prefilled : gen._prefilled + budget]
            assert gen._state is not None  # made at admission
            tokens = torch.tensor([chunk], device=self.device)
            logits = fast.forward(gen._state.keys, gen._state.values, tokens, [gen._prefilled], [(None, gen._plan)])
            gen._prefilled += len(chunk)
            gen._state.length = gen._prefilled
            budget -= len(chunk)
            if gen._prefilled < gen.prompt_tokens:
                continue  # the rest of its prompt next turn: the running streams decode first
            prefill = None
            self._accept(gen, gen.sampler.choose(logits[0]))
            if gen.finish_reason is None and gen.error is None:
                batch.add(gen._state, gen.prompt_tokens + gen.max_tokens)
                gen._state = None
                running.append(gen)
        return prefill

    def _decode_batch(self, batch: BatchCache, running: list[Generation]) -> None:
        """One token for every running request in one forward pass; finished and cancelled rows leave."""
        for row in range(len(running) - 1, -1, -1):  # backwards: a removed row is refilled from the last one
            if running[row].cancelled:
                self._end(running[row], reason="cancelled")
                self._leave(batch, running, row)
        if not running:
            return
        groups: dict[str | None, list[int]] = {}
        for row, gen in enumerate(running):
            groups.setdefault(gen.adapter, []).append(row)
        segments: Segments
        if len(groups) == 1:
            segments = [(None, running[0]._plan)]
        else:
            segments = [
                (torch.tensor(rows, device=self.device), running[rows[0]]._plan)
                for rows in groups.values()
                if running[rows[0]]._plan is not None
            ]
        tokens = torch.tensor([gen._next_input[0] for gen in running], device=self.device)
        logits = batch.step(tokens, segments)
        self.stats.decode_steps += 1
        self.stats.max_batch = max(self.stats.max_batch, len(running))
        metrics.batch_step(self, len(running))
        for row, gen in enumerate(running):
            self._accept(gen, gen.sampler.choose(logits[row]))
        for row in range(len(running) - 1, -1, -1):
            if running[row].finish_reason is not None or running[row].error is not None:
                self._leave(batch, running, row)

    @staticmethod
    def _leave(batch: BatchCache, running: list[Generation], row: int) -> None:
        batch.remove(row)
        last = running.pop()
        if row < len(running):
            running[row] = last

    @torch.no_grad()
    def _warm_up(self) -> None:
        """Switch to the lean decode step if it reproduces the model's own forward here. With int8 weights that
        fail the check, the lean step in the model's own weights is tried next; any failure of that leaves the
        plain forward serving. One log line says why for each fallback. Requests that arrive meanwhile wait in the
        inbox (the check is a short prefill and 4 steps)."""
        for weights in dict.fromkeys((self.weights, "dense")):
            try:
                fast = FastDecoder(self.base, weights=weights)
                self._check_lean(fast)
            except Exception as exc:
                if weights == "dense":
                    log.warning("lean decode off, serving with the plain forward pass: %s", exc)
                else:
                    log.warning("%s weights off, serving the model's own weights: %s", weights, exc)
                continue
            self._fast = fast
            self.weights = weights
            shown = f", {weights} weights" if weights != "dense" else ""
            log.info("lean decode on (%s, %s%s)", self.device, str(self.dtype).removeprefix("torch."), shown)
            return

    def _check_lean(self, fast: FastDecoder) -> None:
        """Run a short prompt and 4 tokens through the model's forward and the lean step; ValueError if their
        logits differ by more than the weight format allows. The prompt's logits are compared first: the batched
        scheduler prefills through the lean step too."""
        ids = torch.tensor([self.encode("Hello, world")[:8] or [0]], device=self.device)
        out = self.base(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = getattr(out, self._cache_kw)
        state = fast.new_state(1, ids.shape[1] + 4)
        mine = fast.forward(state.keys, state.values, ids, [0], [(None, None)])
        state.length = ids.shape[1]
        expected = out.logits[:, -1]
        # fp32 dense: the same ops in the same order, so the same bits; bf16/fp16: differences of a few units in the
        # last place of the logits, from kernels that block a reduction differently (5% of the largest |logit|).
        exact = fast.weights == "dense" and self.dtype == torch.float32 and self.device.type == "cpu"
        kls, agree = [], 0
        for step in range(5):
            if step:
                token = expected.argmax(-1)
                ref = self.base(input_ids=token.view(1, 1), use_cache=True, logits_to_keep=1, **{self._cache_kw: cache})
                cache = getattr(ref, self._cache_kw)
                mine, expected = fast.decode_step(state, token), ref.logits[:, -1]
            what = "prompt" if step == 0 else "decode"
            if fast.weights == "int8":
                kls.append(next_token_kl(expected, mine))
                agree += int(torch.equal(mine.argmax(-1), expected.argmax(-1)))
            elif not (
                torch.equal(mine, expected)
                if exact
                else torch.allclose(mine.float(), expected.float(), rtol=0, atol=0.05 * float(expected.abs().max()))
            ):
                diff = float((mine.float() - expected.float()).abs().max())
                raise ValueError(f"its {what} logits differ from the model's forward by up to {diff:.3g}")
        # int8 (q8_0: 8-bit weights and activations per block of 32) is never bit-exact, and its logits' largest
        # absolute difference says little. What matters is the next-token distribution, so the bound is on
        # KL(model ‖ int8), the measure llama.cpp's `perplexity --kl-divergence` uses for quantized weights:
        # SmolLM2-135M measured a mean of 0.0055 nats here (5/5 top-1), FBGEMM's earlier per-channel int8 with 7-bit
        # activations 0.12, one activation scale for a whole prompt 0.73, a kernel off by 30% 4.5, garbage 7.7.
        if kls and (mean := sum(kls) / len(kls)) > INT8_MAX_KL:
            raise ValueError(
                f"its next-token distributions diverge from the model's forward by a mean KL of {mean:.3g} nats over "
                f"the prompt and 4 tokens (int8 allows {INT8_MAX_KL}; same greedy token at {agree}/{len(kls)})"
            )

    def _start(self, gen: Generation) -> bool:
        try:
            if gen.adapter is not None:
                with self._registry_lock:
                    path = self._registry.get(gen.adapter)
                if path is None:  # removed between submit and now
                    raise self._unknown(gen.adapter)
                self._ensure_loaded(gen.adapter, path)
                self._loaded[gen.adapter].pins += 1
                gen._pinned = True
                self._loaded.move_to_end(gen.adapter)
                self.stats.loaded = list(self._loaded)
        except Exception as exc:
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
        except Exception as exc:
            if self._peft is not None and name in self._peft.peft_config:
                self._delete(name)
            raise GenerationError(
                f"adapter {name!r} ({path}) could not be loaded on {self.model_id!r}: {exc}"
            ) from None
        self._peft.eval()
        self._loaded[name] = _Loaded(path)
        self._active = _UNKNOWN  # new LoRA layers: their on/off state is not known
        self.stats.adapter_loads += 1
        log.info("loaded adapter %r from %s", name, path)

    def _delete(self, name: str) -> None:
        entry = self._loaded.pop(name, None)
        self._plans.pop(name, None)
        if entry is not None and entry.plan is not None:  # lean-step tensors only: nothing in the module tree
            self.stats.loaded = list(self._loaded)
            return
        assert self._peft is not None  # only loaded adapters are deleted
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

    def _plan(self, fast: FastDecoder, adapter: str | None) -> AdapterPlan | _Plain | None:
        """The lean step's fused LoRA weights for `adapter` (None for the base); _PLAIN when the adapter has
        something the lean step does not model, so its requests take the plain forward."""
        if adapter is None:
            return None
        if adapter not in self._plans:
            try:
                self._plans[adapter] = fast.adapter_plan(self._peft, adapter)
            except ValueError as exc:
                log.info(
                    "adapter %r is served with the plain forward pass: lean decode does not model %s", adapter, exc
                )
                self._plans[adapter] = _PLAIN
        return self._plans[adapter]

    def _fast_logits(self, gen: Generation) -> torch.Tensor | None:
        """The next-token logits (V,) from the lean step, or None when `gen` decodes with the plain forward. A
        failure of the lean step is logged once, turns it off, and hands this request's cache to the plain path."""
        if self._fast is None:
            return None
        plan = self._plan(self._fast, gen.adapter)
        if gen._state is None:
            # prefill (the plain forward), or an adapter the lean step cannot run
            if gen._cache is None or isinstance(plan, _Plain):
                return None
            capacity = gen.prompt_tokens + gen.max_tokens
            gen._state, gen._cache = self._fast.state_from_cache(gen._cache, capacity), None
        try:
            if isinstance(plan, _Plain):  # not reached: a request's adapter stays loaded while it decodes
                raise ValueError(f"adapter {gen.adapter!r} can no longer be run by the lean step")
            token = torch.tensor(gen._next_input, device=self.device)
            return self._fast.decode_step(gen._state, token, plan)[0]
        except Exception as exc:
            log.warning("lean decode off after a failure, serving with the plain forward pass: %s", exc)
            self._fast = None
            gen._cache = self._hf_cache(gen._state)
            gen._state = None
            return None

    def _hf_cache(self, state) -> object:
        """A transformers DynamicCache holding a lean-step state's keys and values."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.base.config)
        n = state.length
        for i in range(state.keys.shape[0]):
            cache.update(state.keys[i, :, :, :n].clone(), state.values[i, :, :, :n].clone(), i)
        return cache

    @torch.no_grad()
    def _step(self, gen: Generation) -> None:
        """Decode one token for `gen`, with its adapter."""
        if gen.adapter != self._last_adapter:
            self._last_adapter = gen.adapter
            self.stats.adapter_switches += 1
        logits = self._fast_logits(gen)
        if logits is None:
            self._activate(gen.adapter)
            model = self._peft if self._peft is not None else self.base
            ids = torch.tensor([gen._next_input], device=self.device)  # (1, T): the prompt first, then one token
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_kw: gen._cache})
            gen._cache = getattr(out, self._cache_kw)
            logits = out.logits[0, -1]
        self._accept(gen, gen.sampler.choose(logits))

    def _accept(self, gen: Generation, token: int) -> None:
        """Record the token `gen`'s sampler chose: stream its text, and end the request at end-of-sequence, a stop
        string or its token limit. Every decode path (one row or a batch) goes through here."""
        if gen.first_token_at is None:
            gen.first_token_at = time.perf_counter()
            metrics.first_token(self, gen)
        gen.completion_tokens += 1
        gen._next_input = [token]
        if token in self.eos_ids and not gen.params.ignore_eos:
            self._end(gen, reason="stop")
            return
        delta = gen._text.add(token)
        if gen.params.logprobs is not None and gen.sampler.last_logprob is not None:
            gen._logprobs.append(gen.sampler.last_logprob)
            if delta:
                delta, gen._logprobs = TextDelta(delta, gen._logprobs), []
        if delta:
            gen._emit(delta)
        if gen._text.stopped or gen.sampler.finished:  # a stop string, or a complete constrained output
            self._end(gen, reason="stop")
        elif gen.completion_tokens >= gen.max_tokens:
            self._end(gen, reason="length")

    def _end(self, gen: Generation, *, reason: str | None = None, error: BaseException | None = None) -> None:
        if error is not None:
            gen.error = error
            gen._emit(error)
        else:
            tail = gen._text.flush()
            if gen._logprobs:
                tail, gen._logprobs = TextDelta(tail, gen._logprobs), []
                gen._emit(tail)
            elif tail:
                gen._emit(tail)
            gen.finish_reason = reason
            gen._emit(_DONE)
        gen._cache = gen._state = None  # free the KV cache now, not when the consumer drops the handle
        self.stats.completion_tokens += gen.completion_tokens
        metrics.finished(self, gen)
        if gen._pinned and gen.adapter is not None and gen.adapter in self._loaded:
            self._loaded[gen.adapter].pins -= 1
            gen._pinned = False
