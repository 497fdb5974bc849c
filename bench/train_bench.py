"""Training throughput, memory and quality: tuneforge vs the recipe most people copy, in one run.

    python bench/train_bench.py [--train-examples 64] [--quick]

Same model (SmolLM2-135M-Instruct), same tokenized examples, same hyperparameters, same number of steps:
  baseline        transformers Trainer + PEFT LoRA, DataCollatorForSeq2Seq (pad to the longest in the batch), fp32,
                  full-vocabulary logits — the default recipe;
  tuneforge LoRA  `tuneforge.train.recipe.train` (what `tuneforge train` runs);
  tuneforge QLoRA the same with use_quantization (bitsandbytes 4-bit NF4 + double quantization).
Each configuration runs in a fresh subprocess, one after the other, so each has its own peak memory; the parent
measures the machine's matmul peak (fp32 and bf16) in the same run and prints ratios, a markdown table, a chart
(bench/out/train_bench.png) and, last, one machine-readable line.

Validation loss is measured identically for all three: the trained adapter on the fp32 base, tuneforge's evaluator
(mean cross-entropy over completion tokens of the held-out split).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SEED_TASKS = ROOT.parent / "shared" / "datasets" / "seed_tasks.jsonl"
TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n{output}"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
HYPER = {"learning_rate": 1e-3, "batch_size": 8, "warmup_steps": 1, "lr_scheduler_type": "cosine", "seed": 0}
LORA = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0}


# ------------------------------------------------------------------------------------------------------ the data
def build_dataset(path: Path, n_rows: int, seed: int = 0) -> None:
    """Instruction data with realistic lengths, built from the Self-Instruct seed tasks (human-written text).

    Response lengths follow a log-normal law (median ~130 tokens of the whole example, long tail clipped by
    cutoff_len 512), as in Alpaca-style sets; responses are the tasks' own outputs, extended with the outputs of the
    following tasks when the drawn length asks for more text.
    """
    import numpy as np

    tasks = [json.loads(line) for line in SEED_TASKS.read_text().splitlines()]
    # Prompts of a few hundred words would leave no room for the response under cutoff_len 512.
    tasks = [t for t in tasks if len((t["instruction"] + " " + t["instances"][0]["input"]).split()) <= 150]
    pieces = [inst["output"].strip() for t in tasks for inst in t["instances"] if inst["output"].strip()]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_rows):
        task = tasks[i % len(tasks)]
        inst = task["instances"][0]
        prompt = task["instruction"].strip() + (("\n\n" + inst["input"].strip()) if inst["input"].strip() else "")
        target_words = int(min(600, rng.lognormal(mean=math.log(70), sigma=0.8)))
        words: list[str] = []
        j = i
        while len(words) < target_words:
            words.extend(pieces[j % len(pieces)].split())
            j += 7
        rows.append({"prompt": prompt, "output": " ".join(words[: max(target_words, 3)])})
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def spec_dict(data_path: Path, quantized: bool) -> dict:
    return {
        "pretrainedmodel_config": {"model_path": MODEL, "use_quantization": quantized, **LORA},
        "data_config": {"data_path": str(data_path), "prompt_template": TEMPLATE, "cutoff_len": 512,
                        "data_split_config": {"train": 0.8, "validation": 0.2}},
        "training_config": {**HYPER, "num_train_epochs": 1, "eval_steps": 10_000, "save_steps": 10_000},
    }


def prepared(data_path: Path):
    """The tokenized splits every configuration trains and evaluates on (exactly what the tuneforge runs use)."""
    from tuneforge.models.loader import load_tokenizer
    from tuneforge.spec import parse_spec
    from tuneforge.train.recipe import prepare_spec_data

    tok = load_tokenizer(MODEL)
    return tok, prepare_spec_data(parse_spec(spec_dict(data_path, quantized=False)), tok)


# ----------------------------------------------------------------------------------------------------- helpers
def peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def eval_adapter(adapter_dir: Path, data, pad_id: int) -> float:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.models.loader import resolve_model
    from tuneforge.train.recipe import evaluate
    from tuneforge.runtime import pick_runtime

    base = AutoModelForCausalLM.from_pretrained(resolve_model(MODEL).load_from, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    return evaluate(model, data.validation, batch_size=8, pad_id=pad_id, runtime=pick_runtime("fp32"))


# ----------------------------------------------------------------------------------------------------- workers
def run_baseline(data_path: Path, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainerCallback,
                              TrainingArguments)

    from tuneforge.models.loader import resolve_model
    from tuneforge.models.lora import weight_bytes

    tok, data = prepared(data_path)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(MODEL).load_from, dtype=torch.float32)
    weights = weight_bytes(model)
    model = get_peft_model(model, LoraConfig(r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"], lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"], task_type="CAUSAL_LM"))
    train_ds = Dataset.from_list([{"input_ids": list(e.input_ids), "labels": list(e.labels),
                                   "attention_mask": [1] * len(e)} for e in data.train])

    class Clock(TrainerCallback):
        seconds = 0.0

        def on_train_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_train_end(self, *a, **k):
            Clock.seconds = time.perf_counter() - self.t0

    args = TrainingArguments(output_dir=str(out / "baseline"), per_device_train_batch_size=HYPER["batch_size"],
                             num_train_epochs=1, learning_rate=HYPER["learning_rate"], warmup_steps=HYPER["warmup_steps"],
                             lr_scheduler_type=HYPER["lr_scheduler_type"], seed=HYPER["seed"], logging_steps=1,
                             save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100),
                      callbacks=[Clock()])
    trainer.train()
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else peak_rss()
    model.save_pretrained(out / "baseline" / "adapter")
    tokens = sum(len(e) for e in data.train)
    del trainer, model
    return {"tokens": tokens, "seconds": Clock.seconds, "peak_bytes": peak, "weight_bytes": weights,
            "eval_loss": eval_adapter(out / "baseline" / "adapter", data, tok.pad_token_id)}


def run_tuneforge(data_path: Path, out: Path, quantized: bool) -> dict:
    import shutil

    from tuneforge.spec import parse_spec
    from tuneforge.train.recipe import train

    name = "qlora" if quantized else "lora"
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(run_dir.with_name(name + ".partial"), ignore_errors=True)
    result = train(parse_spec(spec_dict(data_path, quantized)), run_dir, quiet=True)
    tok, data = prepared(data_path)
    r = result.report
    return {"tokens": r["tokens_seen"], "seconds": r["train_seconds"], "peak_bytes": r["peak_memory_bytes"],
            "weight_bytes": r["weight_bytes"], "eval_loss": eval_adapter(result.adapter_dir, data, tok.pad_token_id)}


# ------------------------------------------------------------------------------------------------------ parent
def matmul_peak(dtype_name: str) -> float:
    import torch

    from tuneforge.estimate import matmul_peak_flops

    return matmul_peak_flops(dtype_name, "cuda" if torch.cuda.is_available() else "cpu", n=2048)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-examples", type=int, default=80, help="rows in the benchmark set (80%% train)")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--worker", choices=["baseline", "lora", "qlora"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data_path = args.out / "bench_data.jsonl"

    if args.worker:
        if args.worker == "baseline":
            result = run_baseline(data_path, args.out)
        else:
            result = run_tuneforge(data_path, args.out, quantized=args.worker == "qlora")
        print("RESULT " + json.dumps(result), flush=True)
        return

    if not SEED_TASKS.is_file():
        sys.exit(f"benchmark data source missing: {SEED_TASKS} (the shared datasets folder beside the repo)")
    rows = int(args.train_examples / 0.8)
    build_dataset(data_path, rows)
    import torch
    from transformers import AutoConfig

    from tuneforge.estimate import train_flops_per_token
    from tuneforge.models.loader import resolve_model

    _tok, data = prepared(data_path)
    lengths = sorted(len(e) for e in data.train)
    config = AutoConfig.from_pretrained(resolve_model(MODEL).load_from)
    mean_len = sum(lengths) / len(lengths)
    flops_tok = train_flops_per_token(config, mean_len)
    peaks = {"fp32": matmul_peak("fp32"), "bf16": matmul_peak("bf16")}  # measured again after the runs: max kept
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"# tuneforge training benchmark ({device}, {os.cpu_count()} CPUs, torch {torch.__version__})")
    print(f"data: {len(data.train)} train / {len(data.validation)} validation examples, tokens per example "
          f"min {lengths[0]} median {lengths[len(lengths) // 2]} p95 {lengths[int(0.95 * (len(lengths) - 1))]} "
          f"max {lengths[-1]}; matmul peak fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s",
          flush=True)

    results = {}
    for name in ("baseline", "lora", "qlora"):
        started = time.time()
        proc = subprocess.run([sys.executable, __file__, "--worker", name, "--out", str(args.out),
                               "--train-examples", str(args.train_examples)], capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(line[len("RESULT "):])
        results[name]["tokens_per_second"] = results[name]["tokens"] / results[name]["seconds"]
        print(f"  {name}: {results[name]['tokens_per_second']:.1f} tokens/s, done in {time.time() - started:.0f} s",
              flush=True)

    # The machine's peak is the best of the measurements before and after the runs (a busy moment only lowers it).
    peaks = {k: max(v, matmul_peak(k)) for k, v in peaks.items()}
    print(f"matmul peak (best of before/after): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    from tuneforge.estimate import estimate_job
    from tuneforge.spec import parse_spec

    for name in ("lora", "qlora"):  # `tuneforge estimate`'s prediction for the same job
        results[name]["predicted_peak_bytes"] = estimate_job(parse_spec(spec_dict(data_path, name == "qlora")),
                                                             device=device).memory.total
    base = results["baseline"]
    labels = {"baseline": "baseline (Trainer + PEFT, fp32)", "lora": "tuneforge LoRA", "qlora": "tuneforge QLoRA"}
    print("\n| run | real tokens/s | speed-up | wall (train) s | peak memory MiB | of which weights MiB | memory vs "
          "baseline | validation loss | MFU vs fp32 peak | MFU vs bf16 peak |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        achieved = r["tokens_per_second"] * flops_tok
        print(f"| {labels[name]} | {r['tokens_per_second']:.1f} | {r['tokens_per_second'] / base['tokens_per_second']:.2f}x "
              f"| {r['seconds']:.1f} | {r['peak_bytes'] / 2**20:.0f} | {r['weight_bytes'] / 2**20:.0f} "
              f"| {r['peak_bytes'] / base['peak_bytes']:.2f}x | {r['eval_loss']:.4f} "
              f"| {achieved / peaks['fp32']:.1%} | {achieved / peaks['bf16']:.1%} |")
    (args.out / "train_bench.json").write_text(json.dumps({"peaks": peaks, "flops_per_token": flops_tok,
                                                             "results": results}, indent=2))
    _chart(results, labels, args.out / "train_bench.png")
    lora, qlora = results["lora"], results["qlora"]
    for name in ("lora", "qlora"):
        r = results[name]
        print(f"{labels[name]}: `tuneforge estimate` predicted {r['predicted_peak_bytes'] / 2**20:.0f} MiB peak, "
              f"measured {r['peak_bytes'] / 2**20:.0f} MiB ({r['predicted_peak_bytes'] / r['peak_bytes'] - 1:+.0%})")
    print(f"\nchart: {args.out / 'train_bench.png'}")
    print(f"speedup_vs_baseline={lora['tokens_per_second'] / base['tokens_per_second']:.2f} "
          f"memory_vs_baseline={lora['peak_bytes'] / base['peak_bytes']:.2f} "
          f"eval_loss_vs_baseline={lora['eval_loss'] / base['eval_loss']:.3f} "
          f"qlora_weights_vs_fp32={qlora['weight_bytes'] / base['weight_bytes']:.2f}")


def _chart(results: dict, labels: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    axes[0].bar([labels[n] for n in names], [results[n]["tokens_per_second"] for n in names], color="#1f77b4")
    axes[0].set_title("real tokens / second (higher is better)")
    peak = [results[n]["peak_bytes"] / 2**20 for n in names]
    weights = [results[n]["weight_bytes"] / 2**20 for n in names]
    axes[1].bar([labels[n] for n in names], weights, color="#2ca02c", label="weights")
    axes[1].bar([labels[n] for n in names], [p - w for p, w in zip(peak, weights, strict=True)], bottom=weights, color="#98df8a",
                label="everything else")
    axes[1].set_title("peak memory, MiB (lower is better)")
    axes[1].legend()
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
