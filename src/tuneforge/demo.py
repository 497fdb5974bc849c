"""`tuneforge demo`: fine-tune SmolLM2-135M-Instruct on a small task and show that it learned.

The task (examples/demo/): turn a free-text shop order into one line of JSON with fixed keys. The base model
answers with prose or other keys; exact match on held-out orders measures whether the adapter learned the format.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .errors import TuneforgeError
from .evaluate.runner import EVAL_ROWS_FILE
from .models.loader import load_tokenizer
from .spec import load_spec
from .train.plan import prepare_spec_data, work_dir_for
from .train.recipe import train


def find_demo_dir() -> Path:
    """examples/demo in the source checkout (the package is installed editable by `make demo`), or under cwd."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        candidate = root / "examples" / "demo"
        if (candidate / "spec.yaml").is_file():
            return candidate
    raise TuneforgeError(
        "the demo files (examples/demo/spec.yaml) were not found; run the demo from a tuneforge checkout"
    )


def _base_validation_loss(metrics_file: Path) -> float | None:
    """The validation loss recorded before the first step: the base model's (train() evaluates it at step 0)."""
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        if record.get("type") == "eval" and record.get("step") == 0:
            return record["eval_loss"]
    return None


def run_demo(output: str = "runs/demo", max_steps: int | None = None) -> int:
    started = time.time()
    demo_dir = find_demo_dir()
    overrides = [f"data_config.data_path={demo_dir / 'orders.jsonl'}"]
    if max_steps:
        overrides.append(f"training_config.max_steps={max_steps}")
    spec = load_spec(demo_dir / "spec.yaml", overrides)
    d = spec.data_config
    print(f"tuneforge demo: LoRA fine-tune of {spec.pretrainedmodel_config.model_path} on {demo_dir / 'orders.jsonl'}")
    print(f"task: {d.prompt_template!r}")
    data = prepare_spec_data(spec, load_tokenizer(spec.pretrainedmodel_config.model_path))  # the splits train() uses
    print(f"data: {len(data.train)} train, {len(data.validation)} validation, {len(data.test)} held-out test rows")
    print(
        "fine-tuning (LoRA), then base model vs adapter on the held-out rows (the evaluation every job with test "
        "rows gets) ..."
    )
    out = Path(output)
    for stale in (out, work_dir_for(out)):
        if stale.exists():
            shutil.rmtree(stale)  # the demo always starts fresh
    result = train(spec, out)

    r = result.report
    ev = r["evaluation"]
    before_loss, after_loss = _base_validation_loss(result.output_dir / "metrics.jsonl"), r["eval_loss"]
    base, tuned = ev["results"]["base"], ev["results"]["adapter"]
    sample = json.loads((result.output_dir / EVAL_ROWS_FILE).read_text().splitlines()[0])
    print("\n" + "=" * 78)
    print(f"{'':34}{'base model':>16}{'fine-tuned':>16}")
    print(f"{'validation loss':34}{before_loss:>16.4f}{after_loss:>16.4f}")
    for name in ev["metrics"]:
        label = f"{name} ({ev['rows']} held-out)"
        if name.startswith("test_"):
            print(f"{label:34}{base[name]:>16.4f}{tuned[name]:>16.4f}")
        else:
            print(f"{label:34}{base[name]:>15.1%} {tuned[name]:>15.1%}")
    print("=" * 78)
    print(f"sample prompt: {' | '.join(sample['prompt'].strip().splitlines()[-2:])}")
    print(f"expected     : {sample['reference']}")
    print(f"base model   : {sample['answers']['base'].strip()[:160]!r}")
    print(f"fine-tuned   : {sample['answers']['adapter'].strip()[:160]!r}")
    rate = {k: f"{v:.2f}" for k, v in ev["rows_per_second"].items()}
    print(
        f"\ntraining: {r['steps']} steps, {r['tokens_per_second']:.0f} tokens/s, {r['train_seconds']:.0f} s; "
        f"{r['trainable_parameters']:,} trainable parameters ({r['trainable_share']:.2%}); evaluation "
        f"{rate['base']} (base) and {rate['adapter']} (fine-tuned) rows/s; demo total {time.time() - started:.0f} s"
    )
    print(
        f"adapter: {result.adapter_dir}   loss curve: {result.output_dir / 'loss.png'}   "
        f"per-row answers: {result.output_dir / EVAL_ROWS_FILE}"
    )
    (result.output_dir / "demo.json").write_text(
        json.dumps(
            {
                "before": {"validation_loss": before_loss, **base},
                "after": {"validation_loss": after_loss, **tuned},
                "test_rows": ev["rows"],
                "rows_per_second": ev["rows_per_second"],
                "total_seconds": time.time() - started,
            },
            indent=2,
        )
    )
    if not (tuned["exact_match"] > base["exact_match"] and after_loss < before_loss):
        print("the fine-tuned model did not beat the base model", flush=True)
        return 1
    return 0
