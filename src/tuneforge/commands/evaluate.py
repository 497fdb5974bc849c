"""`tuneforge eval ADAPTER_OR_MODEL DATA`: answer quality of an adapter (against its base by default), a merged
model or a base model on any dataset the data layer reads.

Everything that can be wrong with the input (the target, the data, the metrics) is checked with tokenizers only,
before any model is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import TuneforgeError
from ..evaluate.metrics import ALL_METRICS
from ..evaluate.runner import EVAL_ROWS_FILE, CandidateResult, Evaluation, eval_set, run_candidate, run_with_base


@dataclass
class Target:
    """What the user named: an adapter folder (a run folder means its adapter/) or a model."""

    given: str
    adapter_dir: Path | None
    model_path: str  # the adapter's recorded base, or the model itself

    @property
    def is_adapter(self) -> bool:
        return self.adapter_dir is not None


def resolve_target(value: str, field: str) -> Target:
    from ..models.adapters import read_adapter_config

    path = Path(value).expanduser()
    for folder in (path, path / "adapter"):
        if (folder / "adapter_config.json").is_file():
            base = read_adapter_config(folder, field=field).get("base_model_name_or_path")
            if not base:
                raise TuneforgeError(
                    f"{field}: {str(folder)!r} does not record its base model "
                    "(base_model_name_or_path in adapter_config.json)",
                    field=field,
                    value=value,
                )
            return Target(value, folder, base)
    return Target(value, None, value)  # a model id, alias or folder: resolve_model checks it when loading


def _tokenizer(target: Target):
    from ..models.loader import load_tokenizer

    if target.adapter_dir is not None and (target.adapter_dir / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(target.adapter_dir))
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        return tok
    return load_tokenizer(target.model_path)


def _prepare(args, tokenizer):
    from ..data import DataOptions, DataValidationError, prepare_dataset

    try:
        options = DataOptions(
            cutoff_len=args.cutoff_len,
            prompt_template=args.template,
            data_format=args.format,
            completion_column=args.completion_column,
            data_split=args.split,
        )
        data = prepare_dataset(args.data, options, tokenizer=tokenizer, split_fractions={"train": 1.0})
    except DataValidationError as exc:
        print(exc.report.to_text(), file=sys.stderr)  # the same report as `tuneforge data validate`
        raise
    rows, examples = data.train_rows, data.train
    if args.limit:
        rows, examples = rows[: args.limit], examples[: args.limit]
    return eval_set(
        data,
        rows,
        examples,
        tokenizer,
        metrics=args.metrics,
        where=f"the rows of {args.data!r}",
        max_new_tokens=args.max_new_tokens,
    )


def _free_path(path: Path) -> Path:
    """`path`, or path-2, path-3, ... when it exists: an earlier evaluation's rows are never overwritten."""
    if not path.exists():
        return path
    n = 2
    while (candidate := path.with_name(f"{path.stem}-{n}{path.suffix}")).exists():
        n += 1
    return candidate


def _split_metrics(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [m.strip() for v in values for m in v.split(",") if m.strip()]


def run_eval(args) -> int:
    import torch

    from ..inference import load_for_inference
    from ..runtime import pick_runtime
    from ..train.recipe import evaluate as mean_loss

    args.metrics = _split_metrics(args.metrics)
    runtime = pick_runtime(args.precision, args.device)
    main = resolve_target(args.target, "ADAPTER_OR_MODEL")
    other = resolve_target(args.compare, "--compare") if args.compare else None

    # Every check before loading a model: the data, the references and the metrics, per tokenizer.
    tok_main = _tokenizer(main)
    es_main = _prepare(args, tok_main)
    tok_other = es_other = None
    if other is not None:
        tok_other = _tokenizer(other)
        es_other = _prepare(args, tok_other)
        if len(es_other) != len(es_main):
            raise TuneforgeError(
                f"--compare: {args.data!r} gives {len(es_other)} rows with {other.given!r}'s "
                f"tokenizer and {len(es_main)} with {main.given!r}'s (rows over --cutoff-len "
                "differ); raise --cutoff-len",
                field="--compare",
                value=other.given,
            )
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if not args.quiet else None
    if log:
        log(
            f"{len(es_main)} rows, {es_main.task} task; metrics: {', '.join(es_main.metrics)}; at most "
            f"{es_main.max_new_tokens} new tokens per answer"
        )

    def load(target: Target):
        model, _ = load_for_inference(
            target.model_path, target.adapter_dir, dtype=torch.float32, device=str(runtime.device)
        )
        return model

    results: list[CandidateResult] = []
    name = "adapter" if main.is_adapter else "model"
    model = load(main)
    if main.is_adapter and other is None:
        results = run_with_base(
            model,
            tok_main,
            es_main,
            runtime=runtime,
            loss_fn=mean_loss,
            base_source=main.model_path,
            adapter_source=str(main.adapter_dir),
            batch_size=args.batch_size,
            log=log,
        )
    else:
        results.append(
            run_candidate(
                name,
                model,
                tok_main,
                es_main,
                runtime=runtime,
                loss_fn=mean_loss,
                source=main.given,
                batch_size=args.batch_size,
                log=log,
            )
        )
    del model
    if other is not None:
        assert tok_other is not None and es_other is not None
        model = load(other)
        results.append(
            run_candidate(
                "compare",
                model,
                tok_other,
                es_other,
                runtime=runtime,
                loss_fn=mean_loss,
                source=other.given,
                batch_size=args.batch_size,
                log=log,
            )
        )
        del model

    evaluation = Evaluation(es_main, results)
    out = evaluation.write_rows(_free_path(Path(args.output).expanduser()))
    if args.json:
        print(json.dumps(evaluation.metrics(), indent=2))
        print(f"per-row results: {out}", file=sys.stderr)
        return 0
    print(f"evaluated on {len(es_main)} rows of {args.data} ({es_main.task} task)")
    for r in results:
        print(f"  {r.name:<8} {r.source}")
    print()
    print(evaluation.table())
    print(f"\nper-row results: {out}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        metavar="ADAPTER_OR_MODEL",
        help="an adapter folder (or a run folder holding adapter/), a merged model folder, a hub id or "
        "an alias; an adapter is compared with its base model unless --compare is given",
    )
    p.add_argument(
        "data",
        metavar="DATA",
        help="a dataset the data layer reads: .json/.jsonl/.csv/.parquet, a datasets folder, a hub id or a URL",
    )
    p.add_argument(
        "--template",
        help="prompt template (its last placeholder is the reference answer); default: "
        "'messages', 'prompt'/'completion' columns",
    )
    p.add_argument(
        "--format",
        default="auto",
        choices=["auto", "template", "chat", "prompt_completion"],
        help="row shape (as data_config.data_format)",
    )
    p.add_argument("--completion-column", help="the template column that is the answer (default: the last)")
    p.add_argument("--split", help="split of a hub dataset or datasets folder (default: train)")
    p.add_argument(
        "--metrics",
        nargs="+",
        metavar="METRIC",
        help=f"metrics to report (space- or comma-separated): {', '.join(ALL_METRICS)}; default: those "
        "that fit the data (JSON and classification metrics when the references are JSON or labels)",
    )
    p.add_argument("--compare", metavar="OTHER", help="compare with this adapter or model instead of the base")
    p.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"base": {"exact_match": 0.3, ...}, "adapter": {...}} (metrics as fractions)',
    )
    p.add_argument(
        "--output",
        default=EVAL_ROWS_FILE,
        help=f"per-row results file (JSONL; default {EVAL_ROWS_FILE}, never overwritten: -2, -3, ... are added)",
    )
    p.add_argument("--limit", type=_positive, help="evaluate only the first N rows")
    p.add_argument("--cutoff-len", type=_positive, default=512, help="maximum tokens per row for the test loss")
    p.add_argument(
        "--max-new-tokens",
        type=_positive,
        help="answer budget (default: from the longest reference, 1.25x, at most 512)",
    )
    p.add_argument("--batch-size", type=_positive, default=16, help="rows generated together (left-padded)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
