"""`tuneforge lm-eval` with a custom local task (multiple choice over a JSON file) on the tiny model and a tiny
adapter: base and adapter scored, results saved beside the run, unknown tasks refused before loading."""

from __future__ import annotations

import json

import pytest

from tuneforge.cli import main

pytestmark = pytest.mark.slow  # the harness itself takes a few seconds per run even on the tiny model

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is optional: pip install 'tuneforge[lm-eval]'")

from tiny import make_tiny_spec, write_qa_data  # noqa: E402


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    data = root / "add.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"what is {a} plus {b}?", "answer": a + b}) + "\n"
            for a in range(3)
            for b in range(3)
        )
    )
    (root / "tiny_add.yaml").write_text(f"""
task: tiny_add
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: ["0", "1", "2", "3", "4"]
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
""")
    return root


def test_custom_local_task_on_an_adapter_and_its_base(tiny_model_dir, task_dir, tmp_path, capsys):
    from tuneforge.train.recipe import train

    data = write_qa_data(tmp_path / "qa.jsonl", n=24)
    run = train(make_tiny_spec(tiny_model_dir, data, max_steps=2), tmp_path / "run", quiet=True).output_dir
    assert main(["lm-eval", str(run), "--tasks", "tiny_add", "--include-path", str(task_dir), "--json", "--quiet"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"base", "adapter"}
    for name in scores:
        assert 0.0 <= scores[name]["tiny_add"]["acc"] <= 1.0
    saved = json.loads((run / "lm_eval.json").read_text())  # beside the run
    assert (
        saved["scores"] == scores
        and saved["results"]["adapter"]["results"]["tiny_add"]["acc,none"] == scores["adapter"]["tiny_add"]["acc"]
    )
    # 9 questions, 5 choices: the reported accuracy is a count over 9.
    assert round(scores["base"]["tiny_add"]["acc"] * 9, 6) == round(scores["base"]["tiny_add"]["acc"] * 9)


def test_a_model_alone_and_an_unknown_task(tiny_model_dir, task_dir, tmp_path, capsys):
    out = tmp_path / "res.json"
    assert (
        main(
            [
                "lm-eval",
                str(tiny_model_dir),
                "--tasks",
                "tiny_add",
                "--include-path",
                str(task_dir),
                "--output",
                str(out),
                "--limit",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["task", "metric", "model"] and "tiny_add" in text
    assert list(json.loads(out.read_text())["scores"]) == ["model"]
    assert main(["lm-eval", str(tiny_model_dir), "--tasks", "tiny_ad", "--include-path", str(task_dir)]) == 2
    err = capsys.readouterr().err
    assert "tuneforge: error: --tasks: unknown lm-evaluation-harness task 'tiny_ad'" in err and "'tiny_add'" in err
