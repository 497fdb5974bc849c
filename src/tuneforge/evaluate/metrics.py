"""Answer-quality metrics: pure functions of (prediction, reference) strings, no model, no I/O.

Each follows a reference implementation so that numbers compare with published ones:
  - exact match / normalised exact match / token F1: the SQuAD v1.1 evaluation script (lower-case, drop
    punctuation and English articles, collapse whitespace; F1 over bags of tokens).
  - ROUGE-L: google-research `rouge_score` (F-measure of the longest common token subsequence, tokens are
    lower-cased alphanumeric runs, no stemming), except that non-ASCII letters count as word characters.
  - chrF: sacreBLEU's defaults (character n-grams 1..6, whitespace removed, beta = 2, precision and recall
    averaged over the orders present; Popović 2015). Row scores are sentence chrF; the summary is corpus chrF
    (statistics summed over rows first), as `sacrebleu.corpus_chrf` reports it.
  - JSON validity / field match, accuracy / macro-F1: defined below.
Every score is a fraction in [0, 1].
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import TuneforgeError, did_you_mean

# --- normalisation ---------------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the answer is the reference up to surrounding whitespace."""
    return float(prediction.strip() == reference.strip())


def normalized_exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall over the normalised bags of words (SQuAD)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


# --- ROUGE-L ---------------------------------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def _rouge_tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence by dynamic programming over one row: O(len(a) * len(b)) time, O(len(b)) memory."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            keep = row[j]
            row[j] = prev_diag + 1 if x == y else max(row[j], row[j - 1])
            prev_diag = keep
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    pred, ref = _rouge_tokens(prediction), _rouge_tokens(reference)
    if not pred or not ref:
        return 0.0
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


# --- chrF ------------------------------------------------------------------------------------------------------------

CHRF_ORDER = 6
CHRF_BETA = 2.0


def chrf_statistics(prediction: str, reference: str, order: int = CHRF_ORDER) -> list[int]:
    """Per n-gram order: (prediction n-grams, reference n-grams, matched n-grams), flattened. Sum them over rows
    for the corpus score."""
    hyp, ref = "".join(prediction.split()), "".join(reference.split())
    stats: list[int] = []
    for n in range(1, order + 1):
        h = Counter(hyp[i : i + n] for i in range(len(hyp) - n + 1))
        r = Counter(ref[i : i + n] for i in range(len(ref) - n + 1))
        stats += [sum(h.values()), sum(r.values()), sum((h & r).values())]
    return stats


def chrf_from_statistics(stats: Sequence[int], beta: float = CHRF_BETA) -> float:
    precision = recall = 0.0
    orders = 0
    for i in range(0, len(stats), 3):
        n_hyp, n_ref, n_match = stats[i : i + 3]
        if n_hyp > 0 and n_ref > 0:  # orders longer than a string are left out, not scored 0 (sacreBLEU)
            precision += n_match / n_hyp
            recall += n_match / n_ref
            orders += 1
    if orders == 0:
        return 0.0
    precision, recall = precision / orders, recall / orders
    if precision + recall == 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall)


def chrf(prediction: str, reference: str) -> float:
    return chrf_from_statistics(chrf_statistics(prediction, reference))


def corpus_chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    total = [0] * (3 * CHRF_ORDER)
    for p, r in zip(predictions, references, strict=True):
        total = [a + b for a, b in zip(total, chrf_statistics(p, r), strict=True)]
    return chrf_from_statistics(total)


# --- JSON ------------------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)


def parse_json(text: str):
    """The JSON value of an answer, or None. A surrounding markdown code fence (```json ... ```) is allowed, since
    chat models add one; anything else around the value makes the answer invalid."""
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except ValueError:
        return None


def _is_json_container(text: str) -> bool:
    return isinstance(parse_json(text), (dict, list))


def json_valid(prediction: str, reference: str = "") -> float:
    return float(parse_json(prediction) is not None or prediction.strip() == "null")


def json_field_match(prediction: str, reference: str) -> float:
    """For an object reference: the share of its fields whose values the answer reproduces exactly (same JSON
    value, so 41 and "41" differ). For any other JSON reference: 1.0 when the values are equal."""
    ref, pred = parse_json(reference), parse_json(prediction)
    if isinstance(ref, dict):
        if not ref:
            return float(pred == {})
        if not isinstance(pred, dict):
            return 0.0
        return sum(k in pred and pred[k] == v for k, v in ref.items()) / len(ref)
    return float(pred == ref and pred is not None)


# --- classification --------------------------------------------------------------------------------------------------

MAX_LABELS = 20  # more distinct references than this is free text, not a label set
MAX_LABEL_WORDS = 4


def label(text: str) -> str:
    return normalize_answer(text)


def accuracy(prediction: str, reference: str) -> float:
    return float(label(prediction) == label(reference))


def macro_f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """F1 per reference label, averaged with equal weight (scikit-learn's `f1_score(average="macro",
    labels=<reference labels>)`): an answer outside the label set is a miss for its row's label."""
    preds, refs = [label(p) for p in predictions], [label(r) for r in references]
    labels = sorted(set(refs))
    if not labels:
        return 0.0
    total = 0.0
    for c in labels:
        tp = sum(p == c and r == c for p, r in zip(preds, refs, strict=True))
        fp = sum(p == c and r != c for p, r in zip(preds, refs, strict=True))
        fn = sum(p != c and r == c for p, r in zip(preds, refs, strict=True))
        total += 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return total / len(labels)


# --- tasks and metric choice -----------------------------------------------------------------------------------------

TEXT_METRICS = ("exact_match", "normalized_exact_match", "token_f1", "rouge_l", "chrf")
JSON_METRICS = ("json_valid", "json_field_match")
CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
LOSS_METRICS = ("test_loss", "test_perplexity")
ALL_METRICS = TEXT_METRICS + JSON_METRICS + CLASSIFICATION_METRICS + LOSS_METRICS

# Per-row scorers; chrf and macro_f1 are summarised over the corpus, the rest are row means.
ROW_SCORERS = {
    "exact_match": exact_match,
    "normalized_exact_match": normalized_exact_match,
    "token_f1": token_f1,
    "rouge_l": rouge_l,
    "chrf": chrf,
    "json_valid": json_valid,
    "json_field_match": json_field_match,
    "accuracy": accuracy,
}


def _is_number(text: str) -> bool:
    try:
        float(text.replace(" ", ""))
    except ValueError:
        return False
    return True


def detect_task(references: Sequence[str]) -> str:
    """'json' when every reference is a JSON object or array; 'classification' when the references are a small set
    of short, non-numeric labels, each seen three times or more on average; otherwise 'text'. (Numbers are
    quantities, as in arithmetic answers, not classes: their metrics are the text ones.)"""
    if references and all(_is_json_container(r) for r in references):
        return "json"
    labels = {label(r) for r in references}
    if (
        len(references) >= 4
        and 2 <= len(labels) <= min(MAX_LABELS, len(references) // 3)
        and all(0 < len(label(r).split()) <= MAX_LABEL_WORDS for r in references)
        and not all(_is_number(r) for r in labels)
    ):
        return "classification"
    return "text"


def metrics_for(task: str, *, with_loss: bool) -> list[str]:
    names = list(TEXT_METRICS)
    if task == "json":
        names += JSON_METRICS
    if task == "classification":
        names += CLASSIFICATION_METRICS
    if with_loss:
        names += LOSS_METRICS
    return names


def check_metrics(requested: Sequence[str], task: str, *, with_loss: bool, field: str = "--metrics") -> list[str]:
    """The requested metric names, checked against what the task supports (a clear error otherwise)."""
    fits = metrics_for(task, with_loss=with_loss)
    out: list[str] = []
    for name in requested:
        if name not in ALL_METRICS:
            raise TuneforgeError(
                f"{field}: unknown metric {name!r}{did_you_mean(name, ALL_METRICS)}; allowed: {', '.join(ALL_METRICS)}",
                field=field,
                value=name,
            )
        if name not in fits:
            why = {
                "json": "the references are not all JSON objects or arrays",
                "classification": f"the references are not a small label set (at most {MAX_LABELS} distinct "
                f"answers of at most {MAX_LABEL_WORDS} words, not numbers, each seen three times on average)",
                "loss": "the rows have no tokenized examples to compute a loss on",
            }["json" if name in JSON_METRICS else "classification" if name in CLASSIFICATION_METRICS else "loss"]
            raise TuneforgeError(
                f"{field}: {name!r} does not fit this data ({task} task): {why}; metrics that fit: {', '.join(fits)}",
                field=field,
                value=name,
            )
        if name not in out:
            out.append(name)
    return out


@dataclass
class Scored:
    """One candidate's answers scored against the references: per-row scores and the summary."""

    rows: list[dict[str, float]]
    summary: dict[str, float]


def score_answers(predictions: Sequence[str], references: Sequence[str], metrics: Sequence[str]) -> Scored:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    row_metrics = [m for m in metrics if m in ROW_SCORERS]
    rows = [{m: ROW_SCORERS[m](p, r) for m in row_metrics} for p, r in zip(predictions, references, strict=True)]
    n = max(len(rows), 1)
    summary = {m: sum(row[m] for row in rows) / n for m in row_metrics}
    if "chrf" in metrics:
        summary["chrf"] = corpus_chrf(predictions, references)
    if "macro_f1" in metrics:
        summary["macro_f1"] = macro_f1(predictions, references)
    return Scored(rows, {m: summary[m] for m in metrics if m in summary})


# --- classifiers (data_config.task: classification) -------------------------------------------------------------------


def classification_scores(predicted: Sequence[int], true: Sequence[int], labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1 (over every label of the label set, as scikit-learn's `f1_score(average="macro",
    labels=range(k))`: a class with no rows and no predictions scores 0), per-class precision/recall/F1/support
    and the confusion matrix (`confusion_matrix[i][j]`: rows of true label i predicted as j) for label ids."""
    k = len(labels)
    matrix = [[0] * k for _ in range(k)]
    for p, t in zip(predicted, true, strict=True):
        matrix[t][p] += 1
    n = len(true)
    per_class, f1s = {}, []
    for i, name in enumerate(labels):
        tp = matrix[i][i]
        predicted_i = sum(matrix[r][i] for r in range(k))
        support = sum(matrix[i])
        precision = tp / predicted_i if predicted_i else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return {
        "accuracy": sum(matrix[i][i] for i in range(k)) / n if n else 0.0,
        "macro_f1": sum(f1s) / k if k else 0.0,
        "per_class": per_class,
        "labels": list(labels),
        "confusion_matrix": matrix,
        "examples": n,
    }
