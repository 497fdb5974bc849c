"""CUDA checks (marker `gpu`, not part of `make test`): run them on a machine with an NVIDIA GPU via
`bash bench/gpu_check.sh`. They use the tiny model, so they take seconds once CUDA is initialised."""

from __future__ import annotations

import json

import pytest
import torch

from tiny import make_tiny_spec, write_qa_data
from tuneforge.train.recipe import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_lora_bf16_on_cuda(tiny_model_dir, tmp_path):
    spec = make_tiny_spec(
        tiny_model_dir,
        write_qa_data(tmp_path / "qa.jsonl"),
        max_steps=30,
        eval_steps=10,
        learning_rate=1e-2,
        precision="auto",
    )
    report = train(spec, tmp_path / "run", quiet=True).report
    assert report["device"] == "cuda" and report["precision"] == "bf16"
    assert report["peak_memory_kind"] == "cuda_max_allocated"
    evals = [
        json.loads(x)["eval_loss"]
        for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if '"eval"' in x
    ]
    assert evals[-1] < 0.7 * evals[0]


def test_qlora_with_bitsandbytes_kernels_and_paged_adamw_8bit(tiny_model_dir, tmp_path):
    import bitsandbytes as bnb

    spec = make_tiny_spec(
        tiny_model_dir,
        write_qa_data(tmp_path / "qa.jsonl"),
        max_steps=30,
        eval_steps=10,
        learning_rate=1e-2,
        precision="auto",
        p={"use_quantization": True},
    )
    report = train(spec, tmp_path / "run", quiet=True).report
    assert report["optimizer"] == "paged_adamw_8bit" and report["quantization"].startswith("4-bit nf4")
    evals = [
        json.loads(x)["eval_loss"]
        for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if '"eval"' in x
    ]
    assert evals[-1] < evals[0]
    from tuneforge.models.loader import resolve_model
    from tuneforge.models.lora import QuantSettings, load_base_model
    from tuneforge.runtime import pick_runtime

    model = load_base_model(resolve_model(str(tiny_model_dir)), pick_runtime("auto"), quant=QuantSettings())
    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert layer.weight.device.type == "cuda" and layer.weight.quant_state.quant_type == "nf4"


def test_engine_decodes_in_bf16_with_the_lean_step_on_cuda(tiny_model_dir, tmp_path):
    """On CUDA the engine serves in bf16 and its warm-up switches the lean decode step on (the warm-up compares
    it with the model's own forward); greedy output matches the plain forward's on the first tokens."""
    from tuneforge.serve.engine import InferenceEngine

    messages = [{"role": "user", "content": "what is two plus two?"}]
    fast = InferenceEngine(str(tiny_model_dir), device="cuda")
    plain = InferenceEngine(str(tiny_model_dir), device="cuda", fast_decode=False)
    try:
        assert fast.dtype == torch.bfloat16 and fast._fast is not None
        a = fast.generate(fast.base_name, messages=messages, temperature=0, max_tokens=8, ignore_eos=True)
        b = plain.generate(plain.base_name, messages=messages, temperature=0, max_tokens=8, ignore_eos=True)
        assert a.completion_tokens == 8 and a.text[:8] == b.text[:8]
    finally:
        fast.close()
        plain.close()
