"""Serving under load: continuous batching against the round-robin scheduler, over the real HTTP server.

    python bench/serve_bench.py [--quick] [--concurrency 1,4,16,32] [--max-tokens 48]   (also: make bench-serve)

The default model (SmolLM2-135M-Instruct) behind `tuneforge serve`'s app (uvicorn in this process, one server per
scheduler, both up for the whole run), driven by the official `openai` client: C concurrent streaming chat
completions, request i for model i mod 4 among three random LoRA adapters (rank 8, all projections, B nonzero so
they change the output) and the base, greedy. Per scheduler and concurrency level: aggregate generated tokens/s
(all tokens / wall time), time to first token p50/p99 and time per output token p50. The two schedulers run
interleaved at each level, so load from other processes on the machine hits both alike: quote the ratios.

identical_outputs=1 when every request's text is the same under both schedulers at every concurrency level; the
round-robin scheduler decodes each request as a batch of one with its own KV cache (as if it ran alone), so this
says batching changed no greedy output.
Last line: `batched_vs_roundrobin_c16=X single_stream_vs_roundrobin=Y identical_outputs=1` where X is the ratio of
aggregate tokens/s at concurrency 16 and Y at concurrency 1. A plot of tokens/s against concurrency is written
to bench/serve_bench.png (--plot to change).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from infer_bench import load_avg, make_adapter

TOPICS = ["a lighthouse keeper", "a lost robot", "a mountain village", "a time traveller", "an old library"]


class Server:
    """uvicorn serving `app` in a thread, on a port the OS picked."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def one_request(client, model: str, topic: str, max_tokens: int) -> dict:
    """One streaming chat completion: its text, tokens, time to first token and time per output token."""
    t0 = time.perf_counter()
    first, text, tokens = None, [], 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"Write a short story about {topic}."}],
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter()
            text.append(chunk.choices[0].delta.content)
    end = time.perf_counter()
    first = first or end
    return {
        "text": "".join(text),
        "tokens": tokens,
        "ttft": first - t0,
        "tpot": (end - first) / max(tokens - 1, 1),
    }


def run_level(url: str, models: list[str], concurrency: int, max_tokens: int) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
    jobs = [(models[i % len(models)], TOPICS[i % len(TOPICS)]) for i in range(concurrency)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda job: one_request(client, job[0], job[1], max_tokens), jobs))
    wall = time.perf_counter() - t0
    ttft = sorted(r["ttft"] for r in results)
    return {
        "tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "ttft_p50": statistics.median(ttft),
        "ttft_p99": ttft[min(len(ttft) - 1, round(0.99 * (len(ttft) - 1)))],
        "tpot_p50": statistics.median(r["tpot"] for r in results),
        "texts": [r["text"] for r in results],
    }


def plot(rows: dict, levels: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for scheduler, marker in (("roundrobin", "o"), ("batched", "s")):
        ax.plot(levels, [rows[(scheduler, c)]["tokens_per_s"] for c in levels], marker=marker, label=scheduler)
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("generated tokens/s (all streams)")
    ax.set_title("SmolLM2-135M, 3 adapters + base, CPU")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,4,16,32", help="comma-separated levels (must include 1 and 16)")
    ap.add_argument("--max-tokens", type=int, default=48, help="tokens per request at most")
    ap.add_argument("--quick", action="store_true", help="levels 1,4,16 and 24 tokens (a loaded machine)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--plot", default=str(Path(__file__).parent / "serve_bench.png"))
    args = ap.parse_args()
    levels = [1, 4, 16] if args.quick else sorted({int(c) for c in args.concurrency.split(",")})
    max_tokens = 24 if args.quick else args.max_tokens
    if 1 not in levels or 16 not in levels:
        ap.error("--concurrency must include 1 and 16 (the last line's ratios)")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from tuneforge.models.loader import SMOLLM2_ID
    from tuneforge.serve.app import create_app
    from tuneforge.serve.engine import InferenceEngine

    tmp = Path(tempfile.mkdtemp(prefix="tuneforge-serve-bench-"))
    adapters = {f"tenant{i}": str(make_adapter(tmp / f"tenant{i}", rank=8, seed=i)) for i in range(3)}
    servers, engines = {}, {}
    for scheduler in ("roundrobin", "batched"):
        engine = InferenceEngine(
            SMOLLM2_ID, adapters=adapters, model_name="base", scheduler=scheduler, device=args.device
        )
        engines[scheduler], servers[scheduler] = engine, Server(create_app(engine))
    models = [*adapters, "base"]
    print(
        f"# {engines['batched'].device}, {str(engines['batched'].dtype).removeprefix('torch.')}, "
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {load_avg()} at the start; "
        f"models {', '.join(models)}; max_tokens {max_tokens}, greedy"
    )
    for scheduler in servers:  # warm-up: adapters loaded, first-request costs paid
        run_level(servers[scheduler].url, models, len(models), 4)
    rows: dict[tuple[str, int], dict] = {}
    print(f"{'scheduler':<11} {'streams':>7} {'tokens/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9}")
    for c in levels:
        for scheduler in ("roundrobin", "batched"):
            r = rows[(scheduler, c)] = run_level(servers[scheduler].url, models, c, max_tokens)
            print(
                f"{scheduler:<11} {c:>7} {r['tokens_per_s']:>9.1f} {r['ttft_p50']:>8.2f}s {r['ttft_p99']:>8.2f}s "
                f"{r['tpot_p50'] * 1000:>7.0f}ms",
                flush=True,
            )
    print(f"# load average {load_avg()} at the end; batched engine: {engines['batched'].stats}")
    # Round-robin decodes every request as a batch of one with its own KV cache, i.e. exactly as if it were alone,
    # and request i is the same (model, topic) at every level: every text must equal round-robin's.
    reference = rows[("roundrobin", max(levels))]["texts"]
    identical = all(rows[(s, c)]["texts"] == reference[:c] for s in ("roundrobin", "batched") for c in levels)
    plot(rows, levels, Path(args.plot))
    for server in servers.values():
        server.stop()
    for engine in engines.values():
        engine.close()
    x = rows[("batched", 16)]["tokens_per_s"] / rows[("roundrobin", 16)]["tokens_per_s"]
    y = rows[("batched", 1)]["tokens_per_s"] / rows[("roundrobin", 1)]["tokens_per_s"]
    print(f"batched_vs_roundrobin_c16={x:.2f} single_stream_vs_roundrobin={y:.2f} identical_outputs={int(identical)}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
