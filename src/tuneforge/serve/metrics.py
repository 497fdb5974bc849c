"""Prometheus metrics of the serving engines (`GET /metrics` on `tuneforge serve` and on the service).

Counters and histograms are observed by the engines' model threads as requests progress; the gauges (queue depth,
running batch size, loaded adapters) are read from every live engine when Prometheus scrapes, so they are never
stale. The `model` label is the name a request used (the base model's or an adapter's); `base` names the engine
(its base model's served name).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .engine import Generation, InferenceEngine

CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUESTS = Counter(
    "tuneforge_requests",
    "Generation requests that ended, by model and finish reason (stop, length, cancelled, error).",
    ["base", "model", "finish_reason"],
)
GENERATED_TOKENS = Counter("tuneforge_generated_tokens", "Tokens generated, by model.", ["base", "model"])
REJECTED = Counter(
    "tuneforge_rejected_requests", "Requests refused with 503 because the queue was full (--max-waiting).", ["base"]
)
PROMPT_TOKENS = Counter("tuneforge_prompt_tokens", "Prompt tokens processed, by model.", ["base", "model"])
TTFT = Histogram(
    "tuneforge_time_to_first_token_seconds",
    "From submission (queueing included) to the first generated token.",
    ["base", "model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TPOT = Histogram(
    "tuneforge_time_per_output_token_seconds",
    "Mean time between a request's generated tokens after the first.",
    ["base", "model"],
    buckets=(0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5),
)
BATCH = Histogram(
    "tuneforge_decode_batch_size",
    "Requests served by one batched decode step.",
    ["base"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)

_engines: weakref.WeakSet[InferenceEngine] = weakref.WeakSet()
_lock = threading.Lock()


def track(engine: InferenceEngine) -> None:
    with _lock:
        _engines.add(engine)


def untrack(engine: InferenceEngine) -> None:
    with _lock:
        _engines.discard(engine)


def first_token(engine: InferenceEngine, gen: Generation) -> None:
    TTFT.labels(engine.base_name, gen.model).observe(time.perf_counter() - gen.submitted)


def finished(engine: InferenceEngine, gen: Generation) -> None:
    reason = "error" if gen.error is not None else (gen.finish_reason or "stop")
    REQUESTS.labels(engine.base_name, gen.model, reason).inc()
    GENERATED_TOKENS.labels(engine.base_name, gen.model).inc(gen.completion_tokens)
    PROMPT_TOKENS.labels(engine.base_name, gen.model).inc(gen.prompt_tokens)
    if gen.first_token_at is not None and gen.completion_tokens > 1:
        TPOT.labels(engine.base_name, gen.model).observe(
            (time.perf_counter() - gen.first_token_at) / (gen.completion_tokens - 1)
        )


def rejected(engine: InferenceEngine) -> None:
    REJECTED.labels(engine.base_name).inc()


def batch_step(engine: InferenceEngine, rows: int) -> None:
    BATCH.labels(engine.base_name).observe(rows)


class _EngineGauges(Collector):
    """Queue depth, running batch and adapters of every live engine, read at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queue = GaugeMetricFamily("tuneforge_queue_depth", "Requests waiting to join the batch.", labels=["base"])
        running = GaugeMetricFamily("tuneforge_running_requests", "Requests being decoded now.", labels=["base"])
        loaded = GaugeMetricFamily("tuneforge_loaded_adapters", "Adapters held on the device now.", labels=["base"])
        registered = GaugeMetricFamily(
            "tuneforge_registered_adapters", "Adapters that can be requested by name.", labels=["base"]
        )
        with _lock:
            engines = list(_engines)
        for engine in engines:
            stats = engine.stats
            queue.add_metric([engine.base_name], engine.queued)
            running.add_metric([engine.base_name], stats.batch_size)
            loaded.add_metric([engine.base_name], len(stats.loaded))
            registered.add_metric([engine.base_name], len(engine.adapters()))
        yield from (queue, running, loaded, registered)


REGISTRY.register(_EngineGauges())


def exposition() -> bytes:
    """The text format Prometheus scrapes."""
    return generate_latest(REGISTRY)
