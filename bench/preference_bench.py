"""Preference tuning throughput: ORPO and DPO relative to SFT on the same data, in one process.

    python bench/preference_bench.py [--pairs 96] [--steps 8] [--model HuggingFaceTB/SmolLM2-135M-Instruct]

Data: the preference example's pairs (examples/preference/pairs.jsonl). SFT trains on prompt + chosen (the same
prompt template, the chosen answer as completion); ORPO and DPO train on prompt + chosen + rejected. Same model,
LoRA settings, batch size (8 rows for SFT, 8 pairs for ORPO/DPO) and number of optimizer steps; the runs go one
after the other in this process and each one's training loop is timed by the recipe itself (`report.json`'s
tokens_per_second: real, non-padding tokens through the model per second of training, evaluation excluded).

Expected shape: ORPO runs two sequences per pair in one forward/backward, so its tokens/s is close to SFT's while
a pair costs about twice an SFT example; DPO adds a no-grad forward of both sequences with the adapter disabled
(the reference), so its tokens/s is lower. The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAIRS = HERE.parent / "examples" / "preference" / "pairs.jsonl"
PROMPT = "Extract the order as JSON with keys name, item, quantity, city.\nOrder: {text}\nJSON: "


def main() -> int:
    from tuneforge.spec import parse_spec
    from tuneforge.train.recipe import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=96, help="pairs (SFT: rows) to train on")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tf-pref-bench-"))
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines()[: args.pairs]]
    (tmp / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def spec(training: dict, template: str):
        return parse_spec(
            {
                "pretrainedmodel_config": {"model_path": args.model, "lora_r": 8, "lora_alpha": 16},
                "data_config": {
                    "data_path": str(tmp / "pairs.jsonl"),
                    "prompt_template": template,
                    "cutoff_len": 128,
                    "data_split_config": {"train": 1.0},
                },  # no validation: the loop is all that is timed
                "training_config": {
                    "max_steps": args.steps,
                    "batch_size": 8,
                    "learning_rate": 5e-4,
                    "seed": 0,
                    "save_steps": 10_000,
                    **training,
                },  # `training` may override max_steps
            }
        )

    runs = {
        # SFT on the same rows: the template's last placeholder {chosen} is the completion.
        "sft": spec({}, PROMPT + "{chosen}"),
        "orpo": spec({"preference_optimization": "ORPO"}, PROMPT),
        "dpo": spec({"preference_method": "dpo"}, PROMPT),
    }
    # A discarded one-step run first: the first training in a process pays one-off costs (allocator growth, kernel
    # selection, lazy imports) that would otherwise all land on whichever method runs first.
    warm = spec({"max_steps": 1}, PROMPT + "{chosen}")
    train(warm, tmp / "warmup", quiet=True)
    results = {}
    for name, s in runs.items():
        r = train(s, tmp / name, quiet=True).report
        results[name] = r
        print(
            f"{name:5} {r['tokens_per_second']:8.1f} tokens/s  {r['train_seconds']:7.1f} s  "
            f"{r['tokens_seen']:7d} tokens  {r['steps']} steps",
            file=sys.stderr,
            flush=True,
        )
    sft = results["sft"]
    print("\n| run | real tokens/s | vs SFT | train s | s per step | step time vs SFT |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        per_step = r["train_seconds"] / r["steps"]
        print(
            f"| {name.upper()} | {r['tokens_per_second']:.1f} | {r['tokens_per_second'] / sft['tokens_per_second']:.2f}x "
            f"| {r['train_seconds']:.1f} | {per_step:.2f} | {per_step / (sft['train_seconds'] / sft['steps']):.2f}x |"
        )
    ratios = {n: results[n]["tokens_per_second"] / sft["tokens_per_second"] for n in ("orpo", "dpo")}
    print(f"\norpo_tokens_per_s_vs_sft={ratios['orpo']:.2f} dpo_tokens_per_s_vs_sft={ratios['dpo']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
