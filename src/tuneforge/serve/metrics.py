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


def _samples(metric: Counter | Histogram, base: str, model: str | None = None) -> list[tuple[str, dict, float]]:
    out = []
    for family in metric.collect():
        for sample in family.samples:
            if sample.labels.get("base") == base and (model is None or sample.labels.get("model") == model):
                out.append((sample.name, sample.labels, sample.value))
    return out


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram from its cumulative (upper bound, count) buckets, interpolated linearly within
    the bucket it falls in, as Prometheus' histogram_quantile() does; None without observations. A quantile in the
    +Inf bucket is reported as the highest finite bound (what Prometheus returns too)."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def _latency(metric: Histogram, base: str, model: str) -> dict[str, float | int | None]:
    samples = _samples(metric, base, model)
    buckets = sorted((float(labels["le"]), v) for name, labels, v in samples if name.endswith("_bucket"))
    count = next((v for name, _, v in samples if name.endswith("_count")), 0.0)
    total = next((v for name, _, v in samples if name.endswith("_sum")), 0.0)
    return {
        "count": int(count),
        "mean": total / count if count else None,
        **{f"p{int(q * 100)}": quantile(q, buckets) for q in (0.5, 0.9, 0.99)},
    }


def snapshot(engine: InferenceEngine, model: str) -> dict:
    """What the Prometheus text says about one model (a deployment's name) on one engine, as plain figures: the
    requests it answered by finish reason, its tokens, its TTFT/TPOT percentiles, and its engine's live gauges."""
    base = engine.base_name
    requests = {
        labels["finish_reason"]: int(v)
        for name, labels, v in _samples(REQUESTS, base, model)
        if name.endswith("_total")
    }
    tokens = sum(v for name, _, v in _samples(GENERATED_TOKENS, base, model) if name.endswith("_total"))
    prompt = sum(v for name, _, v in _samples(PROMPT_TOKENS, base, model) if name.endswith("_total"))
    rejected = sum(v for name, _, v in _samples(REJECTED, base) if name.endswith("_total"))
    stats = engine.stats
    return {
        "requests": sum(requests.values()),
        "requests_by_finish_reason": requests,
        "prompt_tokens": int(prompt),
        "generated_tokens": int(tokens),
        "ttft_seconds": _latency(TTFT, base, model),
        "tpot_seconds": _latency(TPOT, base, model),
        "queue_depth": engine.queued,
        "running_requests": stats.batch_size,
        "loaded_adapters": len(stats.loaded),
        "registered_adapters": len(engine.adapters()),
        "rejected_requests": int(rejected),
    }


def exposition() -> bytes:
    """The text format Prometheus scrapes."""
    return generate_latest(REGISTRY)
