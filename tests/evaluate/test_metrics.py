"""The answer-quality metrics against values from their reference implementations (sacrebleu 2.x
`sentence_chrf`/`corpus_chrf`, google-research `rouge_score`, the SQuAD v1.1 script, scikit-learn's macro F1)."""

from __future__ import annotations

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.evaluate import metrics as m

PAIRS = [  # (prediction, reference)
    ("The quick brown dog jumps on the log.", "The quick brown fox jumps over the lazy dog"),
    ("Bruno ordered 41 candles", "Bruno ordered 41 candles to Madrid"),
    ("abc", "xyz"),
    ("a", "abc"),
    ("héllo wörld", "hello world"),
]


@pytest.mark.parametrize(
    "pair, chrf, rouge_l",
    [
        (PAIRS[0], 52.5324471643681, 0.5882352941176471),  # rouge_score README's own example
        (PAIRS[1], 74.18272272179469, 0.8),
        (PAIRS[2], 0.0, 0.0),
        (PAIRS[3], 38.46153846153846, 0.0),  # only the orders both strings have are averaged
        (PAIRS[4], 31.223544973544975, 0.0),
    ],
)
def test_chrf_and_rouge_l_match_sacrebleu_and_rouge_score(pair, chrf, rouge_l):
    assert m.chrf(*pair) * 100 == pytest.approx(chrf, abs=1e-9)
    assert m.rouge_l(*pair) == pytest.approx(rouge_l, abs=1e-12)


def test_corpus_chrf_sums_statistics_before_scoring():
    preds, refs = zip(*PAIRS, strict=True)
    assert m.corpus_chrf(preds, refs) * 100 == pytest.approx(57.19730844853701, abs=1e-9)
    assert m.corpus_chrf(preds, refs) != pytest.approx(sum(m.chrf(p, r) for p, r in PAIRS) / len(PAIRS))


def test_squad_exact_match_and_token_f1():
    assert m.exact_match("  Paris\n", "Paris") == 1.0 and m.exact_match("paris", "Paris") == 0.0
    assert m.normalized_exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    # SQuAD: pred "the cat sat" vs gold "a cat sat down": normalised tokens [cat, sat] / [cat, sat, down]
    assert m.token_f1("the cat sat", "a cat sat down") == pytest.approx(2 * 1.0 * (2 / 3) / (1 + 2 / 3))
    assert m.token_f1("", "") == 1.0 and m.token_f1("x", "") == 0.0 and m.token_f1("dog", "cat") == 0.0


def test_json_validity_and_field_match():
    ref = '{"name": "Bruno", "item": "candles", "quantity": 41, "city": "Madrid"}'
    assert m.json_valid(ref) == 1.0 and m.json_valid("```json\n" + ref + "\n```") == 1.0
    assert m.json_valid("Sure! " + ref) == 0.0
    assert m.json_field_match('{"name": "Bruno", "item": "candle", "quantity": "41", "city": "Madrid"}', ref) == 0.5
    assert m.json_field_match("not json", ref) == 0.0
    assert m.json_field_match("[1, 2]", "[1, 2]") == 1.0 and m.json_field_match("[2, 1]", "[1, 2]") == 0.0


def test_macro_f1_matches_scikit_learn_with_reference_labels():
    refs = ["pos", "neg", "neu", "pos", "neg"]
    preds = ["pos", "pos", "neu", "other", "neg"]
    assert m.macro_f1(preds, refs) == pytest.approx(0.7222222222222222)
    assert m.accuracy("Positive.", "positive") == 1.0


def test_task_detection():
    assert m.detect_task(['{"a": 1}', "[1]"]) == "json"
    assert m.detect_task(["positive", "negative", "neutral"] * 3) == "classification"
    assert m.detect_task(["one answer", "another answer", "a third", "and a fourth"]) == "text"
    assert m.detect_task(["7", "12", "3", "9"]) == "text"  # every answer distinct: not a label set
    assert m.detect_task(["1", "2", "1", "2", "1", "2"]) == "text"  # numbers are quantities, not classes
    assert m.detect_task(["yes", "no", "yes", "no", "maybe"]) == "text"  # too few rows per label


def test_metrics_that_do_not_fit_the_task_are_refused_with_what_fits():
    with pytest.raises(
        TuneforgeError,
        match=r"--metrics: 'accuracy' does not fit this data \(text task\).*"
        r"metrics that fit: exact_match",
    ):
        m.check_metrics(["accuracy"], "text", with_loss=False)
    with pytest.raises(TuneforgeError, match=r"'json_valid' does not fit.*not all JSON"):
        m.check_metrics(["json_valid"], "classification", with_loss=True)
    with pytest.raises(TuneforgeError, match=r"unknown metric 'rougel'.*did you mean 'rouge_l'"):
        m.check_metrics(["rougel"], "text", with_loss=True)
    with pytest.raises(TuneforgeError, match="'test_loss' does not fit"):
        m.check_metrics(["test_loss"], "text", with_loss=False)
    assert m.check_metrics(["chrf", "exact_match", "chrf"], "text", with_loss=False) == ["chrf", "exact_match"]


def test_score_answers_summarises_row_means_and_corpus_scores():
    scored = m.score_answers(
        ["pos", "pos", "neg", "neg"], ["pos", "neg", "neg", "neg"], ["exact_match", "accuracy", "macro_f1", "chrf"]
    )
    assert [r["exact_match"] for r in scored.rows] == [1.0, 0.0, 1.0, 1.0]
    assert scored.summary["exact_match"] == 0.75 and scored.summary["accuracy"] == 0.75
    assert scored.summary["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert list(scored.summary) == ["exact_match", "accuracy", "macro_f1", "chrf"]
