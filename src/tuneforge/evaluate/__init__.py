"""Held-out evaluation: did the fine-tune help?

- `metrics`: pure answer-quality metrics (exact match, token F1, ROUGE-L, chrF, JSON, classification).
- `generation`: greedy batched generation and the answer-length budget.
- `runner`: candidates (base / adapter / any model) on an `EvalSet`, the summary and the per-row file.
- `cli`: `tuneforge eval`.  `harness`: lm-evaluation-harness tasks (optional extra).
"""

from .metrics import ALL_METRICS, detect_task, score_answers
from .runner import EVAL_ROWS_FILE, CandidateResult, EvalSet, Evaluation, eval_set, run_candidate, run_with_base

__all__ = [
    "ALL_METRICS",
    "EVAL_ROWS_FILE",
    "CandidateResult",
    "EvalSet",
    "Evaluation",
    "detect_task",
    "eval_set",
    "run_candidate",
    "run_with_base",
    "score_answers",
]
