"""An image classification job end to end on a tiny ViT and ResNet (data_config.task: image_classification): what the
run folder holds, what the metrics say, resume, and the bad inputs that stop it before any work (exit 2). Images are
synthetic (PIL), coloured by class: no image dataset is reachable offline."""

from __future__ import annotations

import json

import pytest

from tiny import save_tiny_classifier_base
from tiny_images import save_tiny_vision_base, write_image_folder
from tuneforge.adapter_card import read_card
from tuneforge.cli import main
from tuneforge.spec import SpecError, parse_spec
from tuneforge.train.plan import work_dir_for
from tuneforge.train.recipe import train


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    return save_tiny_vision_base(tmp_path_factory.mktemp("vit"), "vit")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(
        tmp_path_factory.mktemp("data") / "colours", per_class=20, labels=("blue", "green", "red")
    )


def _spec(model, data, data_config=None, **training):
    t = {"max_steps": 16, "batch_size": 8, "learning_rate": 1e-2, "eval_steps": 8, "precision": "fp32", **training}
    return parse_spec(
        {
            "pretrainedmodel_config": {"model_path": str(model), "lora_r": 4},
            "data_config": {
                "data_path": str(data),
                "task": "image_classification",
                "data_split_config": {"train": 0.7, "validation": 0.15, "test": 0.15},
                **(data_config or {}),
            },
            "training_config": t,
        }
    )


def test_image_classifier_run_learns_and_describes_itself(vit_dir, images, tmp_path):
    result = train(_spec(vit_dir, images, {"image_augmentation": True}), tmp_path / "run", quiet=True)
    run = result.output_dir
    assert {"adapter", "report.json", "metrics.jsonl", "loss.png", "confusion_matrix.png", "spec.json"} <= {
        p.name for p in run.iterdir()
    }
    report = json.loads((run / "report.json").read_text())
    c = report["classification"]
    assert report["task"] == "image_classification" and c["split"] == "test" and c["examples"] == 9
    assert c["labels"] == ["blue", "green", "red"] and report["target_modules"] == ["q_proj", "v_proj"]
    assert c["accuracy"] >= 0.8 and c["macro_f1"] >= 0.75, c  # colours are separable in 16 steps
    assert sum(map(sum, c["confusion_matrix"])) == 9
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "eval"]
    assert evals[0]["step"] == 0 and evals[-1]["eval_loss"] < evals[0]["eval_loss"]

    adapter = result.adapter_dir
    assert (adapter / "preprocessor_config.json").is_file()  # the model's own image processor travels with it
    card = read_card(adapter)
    assert card.task == "image_classification" and card.labels == c["labels"] and card.image_column == "image"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["task_type"] is None and config["modules_to_save"] == ["classifier"]


def test_resumed_augmented_resnet_run_matches_an_uninterrupted_one(images, tmp_path):
    resnet = save_tiny_vision_base(tmp_path / "resnet", "resnet")
    # With augmentation: its random flips and crops come from the checkpointed generator, so resume is exact.
    spec = _spec(resnet, images, {"image_augmentation": True}, max_steps=8, save_steps=4, eval_steps=4)
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


def test_spec_fields_of_the_image_task():
    d = parse_spec({"data_config": {"data_path": "pets", "task": "image_classification"}}).data_config
    assert (d.image_column, d.label_column, d.image_augmentation) == ("image", "label", False)
    with pytest.raises(SpecError, match=r"data_config.image_column and label_column are both 'x'"):
        parse_spec(
            {
                "data_config": {
                    "data_path": "p",
                    "task": "image_classification",
                    "image_column": "x",
                    "label_column": "x",
                }
            }
        )
    with pytest.raises(
        SpecError, match=r"data_config.prompt_template cannot be used with data_config.task 'image_classification'"
    ):
        parse_spec({"data_config": {"data_path": "p", "task": "image_classification", "prompt_template": "{a}{b}"}})
    with pytest.raises(
        SpecError, match=r"data_config.image_augmentation is for data_config.task 'image_classification'"
    ):
        parse_spec({"data_config": {"data_path": "p", "image_augmentation": True}})


def test_cli_bad_image_input_exits_2(vit_dir, images, tmp_path, capsys):
    broken = write_image_folder(tmp_path / "broken", per_class=5)
    (broken / "red" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(_spec(vit_dir, broken).to_dict()))
    assert main(["train", str(spec), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "broken row 11: file" in err and "red/x.png' cannot be decoded" in err
    assert not (tmp_path / "out").exists() and not work_dir_for(tmp_path / "out").exists()

    # A text model for the image task, and a vision model for a text task: refused by name before the data is read.
    bert = save_tiny_classifier_base(tmp_path / "bert", "bert")
    spec.write_text(json.dumps(_spec(bert, images).to_dict()))
    assert main(["train", str(spec), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert "(bert) is not a vision model" in capsys.readouterr().err
    text_job = _spec(vit_dir, images).to_dict()
    text_job["data_config"].update(task="classification")
    spec.write_text(json.dumps(text_job))
    assert main(["train", str(spec), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert "(vit) is a vision model: it reads images, not text" in capsys.readouterr().err


def test_estimate_of_a_vit_job_counts_patches_and_cls(vit_dir, images, tmp_path, capsys):
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(_spec(vit_dir, images).to_dict()))
    assert main(["estimate", str(spec), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    # 32x32 images in 8x8 patches: 16 patches + [CLS] (models/vision_memory.py; more in tests/models)
    assert "training images at 32x32 pixels (17 tokens through the encoder)" in out and "(fits)" in out
