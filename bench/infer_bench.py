"""Inference latency: time per generated token for the base model, base + LoRA adapter unmerged, and merged.

    python bench/infer_bench.py [--reps 7] [--rank 8]

All through the serving engine (`tuneforge.serve.engine.InferenceEngine`, what `tuneforge serve` runs), on the
default model SmolLM2-135M-Instruct, in one process:
  base              an engine over the plain base model;
  adapter unmerged  an engine with a LoRA adapter (rank --rank, all 7 projections, random nonzero B as after
                    training) applied on the fly: every projection also computes x·Aᵀ·Bᵀ·(alpha/r);
  merged            an engine over `merge_adapter(...)`'s output (W + (alpha/r)·B·A folded into W);
  base, LoRA off    the adapter engine answering for the base model (LoRA layers disabled, not removed).
Time per generated token is the decode cost alone: (t(N2 tokens) - t(N1 tokens)) / (N2 - N1), greedy, end of
sequence ignored, so prefill cancels out. The variants run interleaved, rep after rep, and the median is kept,
so load from other processes on the machine hits them alike. The merged and unmerged outputs are checked equal.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def make_adapter(out: Path, rank: int, seed: int = 0) -> Path:
    """A LoRA adapter shaped like a trained tuneforge adapter (all projections), B random and nonzero."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.models.loader import SMOLLM2_ID, resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model(SMOLLM2_ID).load_from, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    peft_model.peft_config["default"].base_model_name_or_path = SMOLLM2_ID
    peft_model.save_pretrained(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank (tuneforge's default is 8)")
    ap.add_argument("--short", type=int, default=8, help="N1 generated tokens")
    ap.add_argument("--long", type=int, default=72, help="N2 generated tokens")
    args = ap.parse_args()

    from tuneforge.inference import merge_adapter
    from tuneforge.models.loader import SMOLLM2_ID
    from tuneforge.serve.engine import InferenceEngine

    tmp = Path(tempfile.mkdtemp(prefix="tuneforge-infer-bench-"))
    adapter = make_adapter(tmp / "adapter", args.rank)
    merged = merge_adapter(adapter, tmp / "merged")
    engines = {
        "base": InferenceEngine(SMOLLM2_ID),
        "lora": InferenceEngine(SMOLLM2_ID, adapters={"ft": str(adapter)}),
        "merged": InferenceEngine(str(merged), model_name="merged"),
    }
    variants = {  # label -> (engine, model name)
        "base": (engines["base"], engines["base"].base_name),
        f"base + adapter, unmerged (r={args.rank})": (engines["lora"], "ft"),
        "merged": (engines["merged"], "merged"),
        "base, adapter loaded but off": (engines["lora"], engines["lora"].base_name),
    }
    messages = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a message in "
                                            "a bottle, in three paragraphs."}]

    def run(engine, model, n):
        t = time.perf_counter()
        res = engine.generate(model, messages=messages, temperature=0, max_tokens=n, ignore_eos=True)
        assert res.completion_tokens == n
        return time.perf_counter() - t, res

    # Warm-up (loads the adapter, allocator warm) and the equality check merged == unmerged.
    outputs = {label: run(e, m, args.short)[1].text for label, (e, m) in variants.items()}
    unmerged_label = f"base + adapter, unmerged (r={args.rank})"
    same = outputs["merged"] == outputs[unmerged_label]
    prompt_tokens = run(*variants["base"], 1)[1].prompt_tokens

    per_token: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(args.reps):
        for label, (engine, model) in variants.items():
            t_short, _ = run(engine, model, args.short)
            t_long, _ = run(engine, model, args.long)
            per_token[label].append((t_long - t_short) / (args.long - args.short))
    for e in engines.values():
        e.close()

    med = {label: statistics.median(v) for label, v in per_token.items()}
    base = med["base"]
    print(f"\nSmolLM2-135M-Instruct, fp32, {torch.get_num_threads()} threads, {platform.machine()}, torch "
          f"{torch.__version__}; prompt {prompt_tokens} tokens; decode time per token = (t({args.long}) - "
          f"t({args.short})) / {args.long - args.short}, median of {args.reps} interleaved reps\n")
    print("| variant | ms / generated token | tokens / s | vs base |")
    print("| --- | ---: | ---: | ---: |")
    for label, v in med.items():
        spread = f" (min {min(per_token[label]) * 1e3:.1f}, max {max(per_token[label]) * 1e3:.1f})"
        print(f"| {label} | {v * 1e3:.2f}{spread} | {1 / v:.1f} | {v / base:.3f}x |")
    ratio = med["merged"] / base
    print(f"\nmerged output == unmerged output (greedy, {args.short} tokens): {same}")
    print(f"merged vs base: {ratio:.3f}x -> {'within' if abs(ratio - 1) <= 0.05 else 'NOT within'} 5%")
    return 0 if same and abs(ratio - 1) <= 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
