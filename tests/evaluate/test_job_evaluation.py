"""Held-out evaluation after training on the tiny model: splits, base vs adapter, report.json, eval_rows.jsonl,
the `evaluation` event, and the bad-input errors raised before any work."""

from __future__ import annotations

import json

import pytest

from tiny import write_qa_data
from tuneforge.errors import TuneforgeError
from tuneforge.spec import parse_spec
from tuneforge.train.recipe import train, work_dir_for


@pytest.fixture(scope="module")
def qa_data(tmp_path_factory):
    return write_qa_data(tmp_path_factory.mktemp("data") / "qa.jsonl", n=60)


def spec(model_dir, data, split=None, **data_config):
    return parse_spec(
        {
            "pretrainedmodel_config": {"model_path": str(model_dir), "lora_r": 4},
            "data_config": {
                "data_path": str(data),
                "prompt_template": "Question: {question}\nAnswer: {answer}",
                "cutoff_len": 64,
                "data_split_config": split or {"train": 0.7, "validation": 0.1, "test": 0.2},
                **data_config,
            },
            "training_config": {
                "max_steps": 4,
                "batch_size": 8,
                "learning_rate": 3e-3,
                "eval_steps": 2,
                "precision": "fp32",
            },
        }
    )


def test_a_job_with_test_rows_compares_base_and_adapter(tiny_model_dir, qa_data, tmp_path):
    events = []
    out = tmp_path / "run"
    result = train(spec(tiny_model_dir, qa_data), out, quiet=True, on_event=events.append)
    report = json.loads((out / "report.json").read_text())
    ev = report["evaluation"]
    assert report["test_examples"] == 12 and ev["rows"] == 12 and ev == result.report["evaluation"]
    assert ev["task"] == "text"  # sums 0..18 over 12 rows: mostly distinct, not a label set
    assert ev["metrics"] == [
        "exact_match",
        "normalized_exact_match",
        "token_f1",
        "rouge_l",
        "chrf",
        "test_loss",
        "test_perplexity",
    ]
    assert set(ev["results"]) == {"base", "adapter"} and ev["rows_file"] == "eval_rows.jsonl"
    for name, values in ev["results"].items():
        assert all(0.0 <= values[k] <= 1.0 for k in ev["metrics"][:5]), (name, values)
        assert values["test_loss"] > 0
    # The adapter learned something in 4 steps at lr 3e-3: its test loss is below the base's.
    assert ev["results"]["adapter"]["test_loss"] < ev["results"]["base"]["test_loss"]
    assert 1 <= ev["max_new_tokens"] <= 16  # answers are 1-2 digits: the budget follows the references

    rows = [json.loads(line) for line in (out / "eval_rows.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and [r["row"] for r in rows] == list(range(1, 13))
    assert rows[0]["prompt"].startswith("Question: what is") and rows[0]["prompt"].endswith("Answer: ")
    assert set(rows[0]["answers"]) == set(rows[0]["scores"]) == {"base", "adapter"}
    em = sum(r["scores"]["adapter"]["exact_match"] for r in rows) / 12
    assert em == pytest.approx(ev["results"]["adapter"]["exact_match"])
    assert ev["differing_rows"] == sum(r["answers"]["base"].strip() != r["answers"]["adapter"].strip() for r in rows)
    assert len(ev["samples"]) == min(5, ev["differing_rows"])
    [event] = [e for e in events if e["type"] == "evaluation"]
    assert event["results"] == ev["results"]

    # Test rows never reach training or validation.
    from tuneforge.data import DataOptions, prepare_dataset
    from tuneforge.models.loader import load_tokenizer

    options = DataOptions(cutoff_len=64, prompt_template="Question: {question}\nAnswer: {answer}")
    data = prepare_dataset(
        str(qa_data),
        options,
        tokenizer=load_tokenizer(str(tiny_model_dir)),
        split_fractions={"train": 0.7, "validation": 0.1, "test": 0.2},
        seed=42,
    )
    assert report["train_examples"] == len(data.train) == 42 and report["validation_examples"] == 6
    ids = lambda rs: {id(r) for r in rs}  # noqa: E731
    assert not ids(data.test_rows) & (ids(data.train_rows) | ids(data.validation_rows))
    assert [data.reference(r) for r in data.test_rows] == [r["reference"] for r in rows]


def test_a_separate_test_file_is_the_test_split(tiny_model_dir, qa_data, tmp_path):
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(
        "".join(json.dumps({"question": f"what is {i} plus 1?", "answer": str(i + 1)}) + "\n" for i in range(5))
    )
    out = tmp_path / "run"
    result = train(spec(tiny_model_dir, qa_data, test_data_path=str(test_file)), out, quiet=True)
    # The 'test' fraction of data_path went to training instead.
    assert result.report["test_examples"] == 5 and result.report["train_examples"] == 54
    rows = [json.loads(line) for line in (out / "eval_rows.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows] == ["1", "2", "3", "4", "5"]


def test_no_test_rows_means_no_evaluation(tiny_model_dir, qa_data, tmp_path):
    result = train(spec(tiny_model_dir, qa_data, split={"train": 0.8, "validation": 0.2}), tmp_path / "r", quiet=True)
    assert result.report["evaluation"] is None and not (tmp_path / "r" / "eval_rows.jsonl").exists()


def test_held_out_fractions_that_leave_no_training_rows_fail_before_any_work(tiny_model_dir, tmp_path):
    data = tmp_path / "two.jsonl"
    data.write_text('{"question": "q1", "answer": "a"}\n{"question": "q2", "answer": "b"}\n')
    out = tmp_path / "run"
    with pytest.raises(
        TuneforgeError,
        match=r"data_config.data_split_config: validation 0.4 \(1 row\), test 0.1 "
        r"\(1 row\) of 2 rows leaves no rows for training",
    ):
        train(spec(tiny_model_dir, data, split={"train": 0.5, "validation": 0.4, "test": 0.1}), out, quiet=True)
    assert not out.exists() and not work_dir_for(out).exists()


def test_test_rows_without_reference_answers_fail_before_training(tiny_model_dir, tmp_path):
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": f"some plain text number {i}"}) + "\n" for i in range(20)))
    out = tmp_path / "run"
    with pytest.raises(
        TuneforgeError,
        match=r"the test rows have no reference answers: data_format 'text' trains "
        r"on whole texts",
    ):
        train(spec(tiny_model_dir, data, split={"train": 0.5, "test": 0.5}, prompt_template=None), out, quiet=True)
    assert not out.exists() and not work_dir_for(out).exists()
