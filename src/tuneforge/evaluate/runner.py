"""Held-out evaluation: generate answers with one or more candidates (a base model, an adapter, a merged model),
score them against the references, and report a summary plus one line per row.

The same code serves a finished job (base vs adapter on the job's test rows, in `train()`), `tuneforge eval` and
`tuneforge demo`. A base and its adapter are one model in memory: the base's answers are generated inside PEFT's
`disable_adapter()`, so no second copy of the weights is loaded.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.example import Example
from ..data.prepare import PreparedData
from ..errors import TuneforgeError
from .generation import MAX_NEW_TOKENS_CAP, greedy_generate, max_new_tokens_for
from .metrics import LOSS_METRICS, Scored, check_metrics, detect_task, metrics_for, score_answers

EVAL_ROWS_FILE = "eval_rows.jsonl"  # per-row answers and scores, beside report.json
SAMPLE_ROWS = 5  # rows where the candidates' answers differ, shown in report.json, the API and the UI


@dataclass
class EvalSet:
    """The rows to evaluate on, tokenized for one tokenizer, with the task and the metrics chosen for it."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    references: list[str]
    examples: list[Example]  # for the test loss (may be empty: then no loss metrics)
    task: str
    metrics: list[str]
    max_new_tokens: int

    def __len__(self) -> int:
        return len(self.references)


def eval_set(
    data: PreparedData,
    rows: Sequence[dict[str, Any]],
    examples: Sequence[Example],
    tokenizer,
    *,
    metrics: Sequence[str] | None = None,
    where: str = "the test rows",
    field: str = "--metrics",
    max_new_tokens: int | None = None,
) -> EvalSet:
    """Check that `rows` can be evaluated (every row has a reference answer; requested metrics fit the data) and
    tokenize their prompts exactly as training did. Raises TuneforgeError before any model work otherwise."""
    if not rows:
        raise TuneforgeError(f"nothing to evaluate: {where} are empty")
    assert data.renderer is not None
    if data.renderer.fmt.name == "text":
        raise TuneforgeError(
            f"{where} have no reference answers: data_format 'text' trains on whole texts with no prompt/answer "
            "split; give a prompt_template (its last placeholder is the answer), a 'messages' column ending with "
            "an assistant turn, or 'prompt'/'completion' columns",
            field="data_config.data_format",
            value="text",
        )
    references = [data.reference(r) for r in rows]
    missing = [i + 1 for i, ref in enumerate(references) if not ref.strip()]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise TuneforgeError(
            f"{where}: {len(missing)} of {len(rows)} rows have an empty reference answer (rows {shown} of "
            f"{where}); every evaluated row needs the answer to compare with",
            field="reference",
        )
    task = detect_task(references)
    with_loss = bool(examples)
    chosen = (
        check_metrics(metrics, task, with_loss=with_loss, field=field)
        if metrics
        else metrics_for(task, with_loss=with_loss)
    )
    lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in references]  # + EOS
    return EvalSet(
        prompts=[data.render_prompt(r) for r in rows],
        prompt_ids=[data.prompt_ids(r) for r in rows],
        references=references,
        examples=list(examples),
        task=task,
        metrics=chosen,
        max_new_tokens=max_new_tokens or max_new_tokens_for(lengths, cap=MAX_NEW_TOKENS_CAP),
    )


@dataclass
class CandidateResult:
    """One model's answers and scores on an EvalSet."""

    name: str  # the key in reports: 'base', 'adapter', 'model', 'compare'
    source: str  # what was loaded (model id, adapter folder)
    answers: list[str]
    scored: Scored
    test_loss: float | None
    seconds: float  # generation time

    @property
    def summary(self) -> dict[str, float]:
        out = dict(self.scored.summary)
        if self.test_loss is not None:
            out["test_loss"] = self.test_loss
            out["test_perplexity"] = math.exp(min(self.test_loss, 50))
        return out


# The mean per-token loss of examples (train.recipe.evaluate): passed in by the caller, since evaluation sits below
# the training layer that owns the loss computation.
LossFn = Callable[..., float]


def run_candidate(
    name: str,
    model,
    tokenizer,
    es: EvalSet,
    *,
    runtime,
    loss_fn: LossFn,
    source: str = "",
    batch_size: int = 16,
    log: Callable[[str], None] | None = None,
) -> CandidateResult:
    loss = None
    if es.examples and any(m in LOSS_METRICS for m in es.metrics):
        loss = loss_fn(model, es.examples, batch_size=batch_size, pad_id=tokenizer.pad_token_id, runtime=runtime)
    start = time.perf_counter()
    answers = greedy_generate(
        model,
        tokenizer,
        es.prompt_ids,
        max_new_tokens=es.max_new_tokens,
        batch_size=batch_size,
        autocast=runtime.autocast,
    )
    seconds = time.perf_counter() - start
    result = CandidateResult(name, source, answers, score_answers(answers, es.references, es.metrics), loss, seconds)
    if log:
        log(
            f"evaluated {name} on {len(es)} rows in {seconds:.1f} s ({len(es) / max(seconds, 1e-9):.2f} rows/s): "
            + ", ".join(f"{k} {v:.4f}" for k, v in result.summary.items())
        )
    return result


def run_with_base(
    peft_model,
    tokenizer,
    es: EvalSet,
    *,
    runtime,
    loss_fn: LossFn,
    base_source: str = "",
    adapter_source: str = "",
    batch_size: int = 16,
    log: Callable[[str], None] | None = None,
) -> list[CandidateResult]:
    """The base (adapter disabled: the same weights in memory) and then the adapter."""
    disable = getattr(peft_model, "disable_adapter", None)
    if disable is None:
        raise TypeError("run_with_base needs a PEFT model")
    with disable():
        base = run_candidate(
            "base",
            peft_model,
            tokenizer,
            es,
            runtime=runtime,
            loss_fn=loss_fn,
            source=base_source,
            batch_size=batch_size,
            log=log,
        )
    adapter = run_candidate(
        "adapter",
        peft_model,
        tokenizer,
        es,
        runtime=runtime,
        loss_fn=loss_fn,
        source=adapter_source,
        batch_size=batch_size,
        log=log,
    )
    return [base, adapter]


@dataclass
class Evaluation:
    es: EvalSet
    results: list[CandidateResult]
    rows_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, dict[str, float]]:
        """{candidate: {metric: value}}: what `tuneforge eval --json` prints."""
        return {r.name: r.summary for r in self.results}

    def differing_rows(self) -> list[int]:
        if len(self.results) < 2:
            return []
        return [i for i in range(len(self.es)) if len({r.answers[i].strip() for r in self.results}) > 1]

    def row(self, i: int) -> dict[str, Any]:
        return {
            "row": i + 1,
            "prompt": self.es.prompts[i],
            "reference": self.es.references[i],
            "answers": {r.name: r.answers[i] for r in self.results},
            "scores": {r.name: r.scored.rows[i] for r in self.results},
        }

    def summary(self) -> dict[str, Any]:
        """What report.json, the job's API view and its `evaluation` event carry."""
        differing = self.differing_rows()
        return {
            "rows": len(self.es),
            "task": self.es.task,
            "metrics": self.es.metrics,
            "max_new_tokens": self.es.max_new_tokens,
            "candidates": {r.name: r.source for r in self.results},
            "results": self.metrics(),
            "rows_per_second": {r.name: len(self.es) / max(r.seconds, 1e-9) for r in self.results},
            "differing_rows": len(differing),
            "samples": [self.row(i) for i in differing[:SAMPLE_ROWS]],
            "rows_file": self.rows_file,
            **self.extra,
        }

    def write_rows(self, path: str | Path) -> Path:
        """One JSON line per row (prompt, reference, each candidate's answer and scores), written atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for i in range(len(self.es)):
                f.write(json.dumps(self.row(i), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        self.rows_file = path.name
        return path

    def table(self) -> str:
        names = [r.name for r in self.results]
        width = max(len(m) for m in self.es.metrics + ["metric"]) + 2
        lines = [f"{'metric':<{width}}" + "".join(f"{n:>14}" for n in names)]
        for m in self.es.metrics:
            cells = []
            for r in self.results:
                v = r.summary.get(m)
                cells.append(f"{'—':>14}" if v is None else f"{v:>14.4f}" if m in LOSS_METRICS else f"{v:>13.1%} ")
            lines.append(f"{m:<{width}}" + "".join(cells))
        lines.append(
            f"{'rows/s':<{width}}" + "".join(f"{len(self.es) / max(r.seconds, 1e-9):>14.2f}" for r in self.results)
        )
        return "\n".join(lines)


def job_eval_set(data: PreparedData, tokenizer) -> EvalSet | None:
    """A job's test rows as an EvalSet (None without test rows), checked before training starts."""
    if not data.test_rows:
        return None
    return eval_set(
        data, data.test_rows, data.test, tokenizer, where="the test rows", field="data_config.data_split_config"
    )


def evaluate_after_training(
    model,
    tokenizer,
    es: EvalSet,
    *,
    runtime,
    loss_fn: LossFn,
    run_dir: Path,
    base_source: str,
    batch_size: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """A finished job's held-out evaluation: base vs adapter on its test rows; writes eval_rows.jsonl into
    `run_dir` and returns the summary for report.json."""
    log(
        f"evaluating base and adapter on {len(es)} held-out test rows ({es.task} task; at most "
        f"{es.max_new_tokens} new tokens per answer)"
    )
    results = run_with_base(
        model,
        tokenizer,
        es,
        runtime=runtime,
        loss_fn=loss_fn,
        base_source=base_source,
        adapter_source="adapter",
        batch_size=batch_size,
        log=log,
    )
    evaluation = Evaluation(es, results)
    evaluation.write_rows(run_dir / EVAL_ROWS_FILE)
    return evaluation.summary()
