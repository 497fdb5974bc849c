"""A seq2seq job end to end on a tiny T5 (data_config.task: seq2seq): the run folder, the generation metrics, resume,
and the bad inputs that stop it before any work (exit 2)."""

from __future__ import annotations

import json

import pytest

from tiny import save_tiny, save_tiny_seq2seq, write_seq2seq_data
from tuneforge.adapter_card import read_card
from tuneforge.cli import main
from tuneforge.errors import TuneforgeError
from tuneforge.spec import SpecError, parse_spec
from tuneforge.train.plan import work_dir_for
from tuneforge.train.recipe import train


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return save_tiny_seq2seq(tmp_path_factory.mktemp("t5"), "t5")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_seq2seq_data(tmp_path_factory.mktemp("data") / "reverse.jsonl", n=120)


def _spec_dict(model, data, **training):
    t = {"max_steps": 30, "batch_size": 8, "learning_rate": 1e-2, "eval_steps": 10, "precision": "fp32", **training}
    return {
        "pretrainedmodel_config": {"model_path": str(model), "lora_r": 8},
        "data_config": {
            "data_path": str(data),
            "task": "seq2seq",
            "text_column": "source",
            "label_column": "target",
            "cutoff_len": 32,
            "data_split_config": {"train": 0.8, "validation": 0.1, "test": 0.1},
        },
        "training_config": t,
    }


def _spec(model, data, **training):
    return parse_spec(_spec_dict(model, data, **training))


def test_seq2seq_run_learns_and_describes_itself(t5_dir, pairs, tmp_path):
    result = train(_spec(t5_dir, pairs), tmp_path / "run", quiet=True)
    run = result.output_dir
    assert {"adapter", "report.json", "metrics.jsonl", "loss.png", "spec.json"} <= {p.name for p in run.iterdir()}
    report = json.loads((run / "report.json").read_text())
    s = report["seq2seq"]
    assert report["task"] == "seq2seq" and s["split"] == "test" and s["examples"] == 12
    assert {"exact_match", "chrf", "rouge_l", "loss", "samples"} <= set(s)
    assert all(0.0 <= s[m] <= 1.0 for m in ("exact_match", "chrf", "rouge_l"))
    assert report["target_modules"] == ["q", "k", "v", "o", "wi", "wo"]
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "eval"]
    assert evals[0]["step"] == 0 and {"eval_loss", "eval_exact_match", "eval_chrf", "eval_rouge_l"} <= set(evals[-1])
    # the loss is on the target tokens only, and it falls; what is generated moves toward the references
    assert evals[-1]["eval_loss"] < 0.7 * evals[0]["eval_loss"], evals
    assert evals[-1]["eval_chrf"] > evals[0]["eval_chrf"], evals

    card = read_card(result.adapter_dir)
    assert card.task == "seq2seq" and card.text_column == "source" and card.completion_column == "target"
    assert card.max_length == 32
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_2_SEQ_LM"


def test_resumed_seq2seq_run_matches_an_uninterrupted_one(t5_dir, pairs, tmp_path):
    spec = _spec(t5_dir, pairs, max_steps=8, save_steps=4, eval_steps=4)
    reference = train(spec, tmp_path / "a", quiet=True)

    class Crash(Exception):
        pass

    def crash(event):
        if event.get("type") == "train" and event["step"] == 6:
            raise Crash

    with pytest.raises(Crash):
        train(spec, tmp_path / "b", quiet=True, on_event=crash)
    assert work_dir_for(tmp_path / "b").is_dir()
    resumed = train(spec, tmp_path / "b", resume=True, quiet=True)
    assert resumed.report["train_loss"] == pytest.approx(reference.report["train_loss"], rel=1e-4)
    assert resumed.report["seq2seq"]["chrf"] == pytest.approx(reference.report["seq2seq"]["chrf"], abs=1e-6)


def test_seq2seq_on_a_decoder_and_causal_lm_on_t5_are_refused_before_any_work(t5_dir, pairs, tmp_path):
    llama = save_tiny(tmp_path / "llama")
    with pytest.raises(TuneforgeError, match=r"is not an encoder-decoder model.*use T5, Flan-T5, BART"):
        train(_spec(llama, pairs), tmp_path / "r1", quiet=True)
    assert not (tmp_path / "r1").exists() and not work_dir_for(tmp_path / "r1").exists()

    causal = _spec_dict(t5_dir, pairs)
    causal["data_config"] = {"data_path": str(pairs), "prompt_template": "{source} => {target}", "cutoff_len": 32}
    with pytest.raises(TuneforgeError, match=r"\(t5\) is an encoder-decoder model.*set data_config.task to 'seq2seq'"):
        train(parse_spec(causal), tmp_path / "r2", quiet=True)
    assert not work_dir_for(tmp_path / "r2").exists()


def test_seq2seq_spec_refuses_causal_only_fields():
    bad = _spec_dict("t5", "x.jsonl")
    bad["data_config"]["prompt_template"] = "{source}"
    with pytest.raises(SpecError, match=r"data_config.prompt_template cannot be used with data_config.task 'seq2seq'"):
        parse_spec(bad)


def test_cli_bad_rows_exit_2_with_row_numbers(t5_dir, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(
        json.dumps({"source": "a b", "target": "b a"}) + "\n" + json.dumps({"source": "a c", "target": " "}) + "\n"
    )
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_spec_dict(t5_dir, data)))
    assert main(["train", str(spec), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "line 2: 'target' is empty; every row needs a target text" in err
    assert not (tmp_path / "run").exists()
