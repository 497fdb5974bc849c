"""Continuous batching on the tiny model: a mixed batch (three adapters and the base, rows of different lengths,
joining and leaving) gives every request the tokens it gets alone; 300 registered adapters served LRU; a cold
adapter load does not stall running streams; admission control, cancellation, corrupt adapters, chunked prefill
and the Prometheus metrics."""

from __future__ import annotations

import json
import random
import shutil
import threading

import pytest
import torch
from serve_helpers import LiveServer

from tuneforge.errors import TuneforgeError
from tuneforge.serve.engine import EngineOverloadedError, GenerationError, InferenceEngine, SamplingParams
from tuneforge.serve.fast_decode import FastDecoder

NAMES = ["alpha", "beta", "tiny", "gamma"]


def greedy(n=12):
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


def prompt(i: int) -> str:
    return f"{i}: the quick brown fox " * (1 + i % 5)  # rows of different lengths


@pytest.fixture(scope="module")
def batched(tiny_model_dir, adapters):
    engine = InferenceEngine(
        str(tiny_model_dir), adapters={k: str(v) for k, v in adapters.items()}, max_loaded_adapters=4, model_name="tiny"
    )
    yield engine
    engine.close()


def test_mixed_batch_gives_every_request_its_tokens_alone(batched, tiny_model_dir, adapters):
    jobs = [(NAMES[i % 4], prompt(i)) for i in range(12)]
    alone = [batched.generate(name, p, temperature=0, max_tokens=12, ignore_eos=True).text for name, p in jobs]
    assert len(set(alone)) > 4  # the adapters and prompts really change the output
    # The old scheduler (PEFT-injected adapters, Hugging Face prefill) gives the same tokens.
    rr = InferenceEngine(
        str(tiny_model_dir),
        adapters={k: str(v) for k, v in adapters.items()},
        scheduler="roundrobin",
        model_name="tiny",
    )
    try:
        assert [rr.generate(n, p, temperature=0, max_tokens=12, ignore_eos=True).text for n, p in jobs[:4]] == alone[:4]
    finally:
        rr.close()

    # The first half is submitted at once (half of it streamed); the second half joins once the first streams
    # have produced text, so rows join a running batch and leave it at different steps.
    steps_before = batched.stats.decode_steps
    out: dict[int, str] = {}
    first = [batched.submit(n, p, greedy()) for n, p in jobs[:6]]
    streams = {i: [] for i in range(0, 6, 2)}

    def consume(i, gen):
        if i in streams:
            for delta in gen:
                streams[i].append(delta)
            out[i] = "".join(streams[i])
        else:
            out[i] = gen.result().text

    threads = [threading.Thread(target=consume, args=(i, g)) for i, g in enumerate(first)]
    for t in threads:
        t.start()
    while not streams[0]:
        threading.Event().wait(0.01)
    later = [batched.submit(n, p, greedy(8 + i)) for i, (n, p) in enumerate(jobs[6:])]
    threads += [threading.Thread(target=consume, args=(6 + i, g)) for i, g in enumerate(later)]
    for t in threads[6:]:
        t.start()
    for t in threads:
        t.join(60)
    shared_steps = batched.stats.decode_steps - steps_before  # before the one-at-a-time references below add theirs
    expected = alone[:6] + [
        batched.generate(n, p, temperature=0, max_tokens=8 + i, ignore_eos=True).text
        for i, (n, p) in enumerate(jobs[6:])
    ]
    assert [out[i] for i in range(12)] == expected
    assert all(len(streams[i]) > 1 for i in streams)  # streamed as it was decoded, not one block
    assert batched.stats.max_batch >= 6
    assert shared_steps < 12 * 12 / 2  # steps were shared: 12 requests alone would take ~12 steps each


def test_chunked_prefill_gives_the_same_tokens(batched, tiny_model_dir, adapters):
    long_prompt = prompt(4) * 4
    chunked = InferenceEngine(
        str(tiny_model_dir), adapters={"beta": str(adapters["beta"])}, model_name="tiny", step_tokens=3
    )
    try:
        for name in ("beta", "tiny"):
            a = chunked.generate(name, long_prompt, temperature=0, max_tokens=10, ignore_eos=True).text
            assert a == batched.generate(name, long_prompt, temperature=0, max_tokens=10, ignore_eos=True).text
    finally:
        chunked.close()


def _many_adapters(src, root, n):
    """`n` adapters with distinct weights: the tensors of `src`, each perturbed with its own seed."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src / "adapter_model.safetensors"))
    folders = {}
    for i in range(n):
        folder = root / f"t{i}"
        folder.mkdir()
        shutil.copy(src / "adapter_config.json", folder)
        g = torch.Generator().manual_seed(i)
        save_file(
            {k: v + 0.5 * v.std() * torch.randn(v.shape, generator=g) for k, v in tensors.items()},
            str(folder / "adapter_model.safetensors"),
        )
        folders[f"t{i}"] = str(folder)
    return folders


def test_300_adapters_random_requests(tiny_model_dir, adapters, tmp_path, caplog):
    folders = _many_adapters(adapters["alpha"], tmp_path, 300)
    engine = InferenceEngine(str(tiny_model_dir), adapters=folders, max_loaded_adapters=8, model_name="tiny")
    try:
        assert len(engine.model_names()) == 301
        rng = random.Random(0)
        picks = [f"t{rng.randrange(300)}" for _ in range(40)] + ["tiny"] * 4
        with caplog.at_level("INFO", logger="tuneforge.serve"):
            gens = [engine.submit(name, prompt(i), greedy(6)) for i, name in enumerate(picks)]
            results = [g.result().text for g in gens]
        assert engine.stats.adapter_loads >= len(set(picks)) - 1 and engine.stats.adapter_evictions > 0
        assert any("evicted adapter" in r.message for r in caplog.records)
        assert any("loaded adapter" in r.message for r in caplog.records)
        assert len(set(results)) > 20  # different adapters, different outputs
        # the same as each request alone, in another order (so with other adapters evicted or loaded)
        for i in rng.sample(range(len(picks)), 12):
            alone = engine.generate(picks[i], prompt(i), temperature=0, max_tokens=6, ignore_eos=True).text
            assert alone == results[i], picks[i]
        engine.generate("tiny", "x", max_tokens=1)  # idle again: housekeeping evicts down to the limit
        assert len(engine.loaded_adapters()) <= 8
    finally:
        engine.close()


class _GatedLoads:
    """Adapter loads on the loader thread wait for `gate` (the test decides when a cold load finishes)."""

    def __init__(self, monkeypatch):
        self.gate, self.started = threading.Event(), threading.Event()
        load = FastDecoder.load_adapter_plan

        def gated(decoder, path):
            self.started.set()
            if not self.gate.wait(60):
                raise TimeoutError("the test never opened the gate")
            return load(decoder, path)

        monkeypatch.setattr(FastDecoder, "load_adapter_plan", gated)


def test_cold_adapter_load_does_not_stall_running_streams(tiny_model_dir, adapters, monkeypatch):
    gated = _GatedLoads(monkeypatch)
    engine = InferenceEngine(str(tiny_model_dir), adapters={"beta": str(adapters["beta"])}, model_name="tiny")
    try:
        base = iter(engine.submit("tiny", prompt(1), greedy(40)))
        next(base)
        cold = engine.submit("beta", prompt(2), greedy(5))
        assert gated.started.wait(30)
        # The load is still running: if it blocked the model thread, the base stream could not go on.
        received = [next(base) for _ in range(10)]
        assert all(received)
        gated.gate.set()
        assert cold.result().completion_tokens == 5
        assert len("".join(base)) > 0
    finally:
        gated.gate.set()
        engine.close()


def test_model_thread_sleeps_while_only_a_cold_load_is_pending(tiny_model_dir, adapters, monkeypatch):
    # A turn that only waits for the loader must block, not spin: a spinning model thread holds the GIL the loader
    # needs (a first load imports PEFT), and a cold load took over a minute under `tuneforge serve`.
    gated = _GatedLoads(monkeypatch)
    turns = 0
    resolve = InferenceEngine._resolve_adapters

    def counted(self, *args):
        nonlocal turns
        turns += 1
        return resolve(self, *args)

    monkeypatch.setattr(InferenceEngine, "_resolve_adapters", counted)
    engine = InferenceEngine(str(tiny_model_dir), adapters={"beta": str(adapters["beta"])}, model_name="tiny")
    try:
        cold = engine.submit("beta", prompt(2), greedy(3))
        assert gated.started.wait(30)
        before = turns
        threading.Event().wait(1.0)
        assert turns - before <= 2, f"the model thread took {turns - before} turns in 1 s waiting on one load"
        cold.cancel()  # a cancel wakes the blocked thread: the request ends without waiting for the load
        assert cold.result().finish_reason == "cancelled"
        gated.gate.set()
        assert engine.submit("beta", prompt(2), greedy(3)).result().completion_tokens == 3
    finally:
        gated.gate.set()
        engine.close()


def test_admission_control_waits_or_refuses(tiny_model_dir, adapters, monkeypatch):
    # KV budget: 0.375 MiB = 768 positions of the tiny model (2 layers x 2 kv heads x 16 x 2 x 4 bytes); rows of
    # ~300 positions fit two at a time (2 slots x 320), the others wait their turn instead of failing.
    engine = InferenceEngine(str(tiny_model_dir), model_name="tiny", kv_cache_mb=0.375)
    try:
        assert engine.kv_cache_positions == 768
        with pytest.raises(TuneforgeError, match=r"max_tokens: .*\(768 positions, --kv-cache-mb\)"):
            engine.submit("tiny", prompt(1), SamplingParams(max_tokens=1000))
        # 700 positions would round up to 768 in the cache: still one row's worth; 770 would not fit
        assert engine.submit("tiny", [5] * 10, SamplingParams(max_tokens=690)).result().completion_tokens >= 1
        with pytest.raises(TuneforgeError, match="max_tokens"):
            engine.submit("tiny", [5] * 10, SamplingParams(max_tokens=760))
        gens = [
            engine.submit("tiny", prompt(i), SamplingParams(temperature=0, max_tokens=290, ignore_eos=True))
            for i in range(4)
        ]
        assert all(g.result().completion_tokens == 290 for g in gens)
        assert engine.stats.max_batch == 2
    finally:
        engine.close()

    # A full queue: 503 with Retry-After over HTTP (a cold adapter load holds the queued request).
    gated = _GatedLoads(monkeypatch)
    engine = InferenceEngine(
        str(tiny_model_dir), adapters={"beta": str(adapters["beta"])}, model_name="tiny", max_waiting=1
    )
    try:
        held = engine.submit("beta", prompt(1), greedy(3))
        assert gated.started.wait(30)
        with pytest.raises(EngineOverloadedError, match="1 requests are queued"):
            engine.submit("tiny", prompt(1), greedy(3))
        import httpx

        from tuneforge.serve.app import create_app

        with LiveServer(create_app(engine)) as live:
            r = httpx.post(f"{live.url}/v1/completions", json={"model": "tiny", "prompt": "hi"}, timeout=30)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "retry shortly" in r.json()["error"]["message"]
            assert 'tuneforge_rejected_requests_total{base="tiny"} 2.0' in httpx.get(f"{live.url}/metrics").text
            gated.gate.set()
            assert held.result().completion_tokens == 3
            r = httpx.post(f"{live.url}/v1/completions", json={"model": "tiny", "prompt": "hi"}, timeout=30)
            assert r.status_code == 200
    finally:
        gated.gate.set()
        engine.close()


def test_cancelled_row_leaves_and_others_go_on(batched):
    long = batched.submit("alpha", prompt(3), greedy(300))
    other = batched.submit("beta", prompt(4), greedy(30))
    stream = iter(long)
    next(stream)
    long.cancel()  # what the route does when the client disconnects
    assert other.result().completion_tokens == 30
    assert list(stream) == [] or long.finish_reason == "cancelled"
    while long.finish_reason is None:
        threading.Event().wait(0.01)
    assert long.finish_reason == "cancelled" and long.completion_tokens < 300


def test_corrupt_adapter_fails_only_its_request(batched, adapters, tmp_path):
    bad = tmp_path / "corrupt"
    bad.mkdir()
    shutil.copy(adapters["alpha"] / "adapter_config.json", bad)
    (bad / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    batched.add_adapter("corrupt", bad)
    try:
        ok = batched.submit("alpha", prompt(1), greedy(20))
        broken = batched.submit("corrupt", prompt(1), greedy(5))
        with pytest.raises(GenerationError, match=r"adapter 'corrupt' .*adapter_model.safetensors could not be read"):
            broken.result()
        assert ok.result().completion_tokens == 20
        assert "corrupt" not in batched.loaded_adapters()
    finally:
        batched.remove_adapter("corrupt")


def test_adapter_the_lean_step_does_not_model_is_served_by_peft(batched, adapters, tmp_path, tiny_model_dir):
    # LoRA on the embeddings: the lean step refuses it, the plain forward with PEFT serves it, beside the batch.
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(tmp_path / "embed")
    batched.add_adapter("embed", tmp_path / "embed")
    try:
        gens = [batched.submit(n, prompt(2), greedy(8)) for n in ("embed", "alpha", "embed")]
        texts = [g.result().text for g in gens]
        assert texts[0] == texts[2] and texts[0] != texts[1]
    finally:
        batched.remove_adapter("embed")


def test_metrics_endpoint(batched):
    from tuneforge.serve.app import create_app

    batched.generate("alpha", prompt(1), temperature=0, max_tokens=4, ignore_eos=True)
    with LiveServer(create_app(batched)) as live:
        import httpx

        text = httpx.get(f"{live.url}/metrics", timeout=30).text
    for line in (
        'tuneforge_requests_total{base="tiny",finish_reason="length",model="alpha"}',
        'tuneforge_generated_tokens_total{base="tiny",model="alpha"}',
        'tuneforge_time_to_first_token_seconds_count{base="tiny",model="alpha"}',
        'tuneforge_time_per_output_token_seconds_bucket{base="tiny",le="0.005",model="alpha"}',
        'tuneforge_decode_batch_size_count{base="tiny"}',
        'tuneforge_queue_depth{base="tiny"} 0.0',
        'tuneforge_running_requests{base="tiny"}',
        'tuneforge_registered_adapters{base="tiny"} 3.0',
    ):
        assert line in text, line
    loaded = [x for x in text.splitlines() if x.startswith('tuneforge_loaded_adapters{base="tiny"}')]
    assert loaded and float(loaded[0].split()[-1]) >= 1


def test_settings_are_checked(tiny_model_dir):
    with pytest.raises(TuneforgeError, match="--scheduler: 'fifo' is not one of batched, roundrobin"):
        InferenceEngine(str(tiny_model_dir), scheduler="fifo")
    with pytest.raises(TuneforgeError, match="--max-batch-size must be at least 1, got 0"):
        InferenceEngine(str(tiny_model_dir), max_batch_size=0)


def test_adapter_config_alpha_pattern_and_rslora_scale(tiny_model_dir, adapters, tmp_path, batched):
    # PEFT's own scaling rules (rank from the tensors, alpha_pattern, rsLoRA) give PEFT's outputs.
    folder = tmp_path / "patterned"
    shutil.copytree(adapters["gamma"], folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg.update(use_rslora=True, alpha_pattern={"v_proj": 3})
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folder).eval()
    ids = batched.encode(prompt(3))
    out = model.generate(
        input_ids=torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    batched.add_adapter("patterned", folder)
    try:
        res = batched.generate("patterned", ids, temperature=0, max_tokens=8, ignore_eos=True)
        assert res.text == batched.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
    finally:
        batched.remove_adapter("patterned")


def test_failed_batched_step_fails_its_requests_and_serving_goes_on(tiny_model_dir, monkeypatch, caplog):
    from tuneforge.serve.fast_decode import BatchCache

    engine = InferenceEngine(str(tiny_model_dir), model_name="tiny")
    try:
        expected = engine.generate("tiny", prompt(1), temperature=0, max_tokens=6, ignore_eos=True).text
        real, calls = BatchCache.step, []

        def flaky(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("kernel failed")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(BatchCache, "step", flaky)
        with (
            caplog.at_level("ERROR", logger="tuneforge.serve"),
            pytest.raises(GenerationError, match="generation failed: kernel failed"),
        ):
            engine.generate("tiny", prompt(1), temperature=0, max_tokens=6, ignore_eos=True)
        assert any("batched step failed" in r.getMessage() for r in caplog.records)
        assert engine.generate("tiny", prompt(1), temperature=0, max_tokens=6, ignore_eos=True).text == expected
    finally:
        engine.close()
