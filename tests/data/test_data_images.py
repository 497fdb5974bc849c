"""Image classification rows (data_config.task: image_classification): the three layouts, the label set, and every
bad image named by row and file. Images are synthetic (PIL): no image dataset is reachable offline."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tiny_images import png_bytes, write_image_csv, write_image_folder
from tuneforge.data import DataOptions, DataValidationError, prepare_dataset, validate_source
from tuneforge.data.images import ImageExample, open_image
from tuneforge.errors import TuneforgeError

IMG = DataOptions(task="image_classification")


def test_class_folders(tmp_path):
    folder = write_image_folder(tmp_path / "pets", per_class=6, labels=("red", "blue"))
    (folder / "README.txt").write_text("not an image")
    (folder / "red" / "notes.md").write_text("not an image either")
    r = validate_source(str(folder), IMG)
    assert r.ok and r.format == "image_classification" and r.source_format == "image_folder"
    assert r.labels == {"blue": 6, "red": 6} and r.n_rows == 12
    assert any("2 files without an image extension left out" in n for n in r.notes)
    assert any("images: 12 decoded, 24-24 pixels wide" in n for n in r.notes)
    text = r.to_text()
    assert "labels       2 classes: blue 6, red 6" in text and "Token lengths" not in text

    data = prepare_dataset(str(folder), IMG, tokenizer=None, split_fractions={"train": 0.75, "validation": 0.25})
    assert data.labels == ["blue", "red"] and len(data.train) == 9 and len(data.validation) == 3
    for ex, row in zip(data.train, data.train_rows, strict=True):
        assert isinstance(ex, ImageExample) and data.labels[ex.label] == row["label"]
        assert Path(ex.image).parent.name == row["label"] and open_image(ex.image).mode == "RGB"


def test_csv_paths_relative_to_the_file_and_absolute(tmp_path):
    data_csv = write_image_csv(tmp_path / "d", per_class=5)
    lines = data_csv.read_text().splitlines()
    absolute = str((tmp_path / "d" / lines[1].split(",")[0]).resolve())
    lines[1] = f"{absolute},blue"
    data_csv.write_text("\n".join(lines) + "\n")
    r = validate_source(str(data_csv), DataOptions(task="image_classification", image_column="path"))
    assert r.ok, r.errors
    assert r.labels == {"blue": 5, "red": 5} and r.format_detail == "image: path, label: label"


def test_parquet_of_bytes_and_datasets_image_values(tmp_path):
    rows = [
        {"img": {"bytes": png_bytes(c, i), "path": f"{c}{i}.png"}, "y": c} for c in ("red", "green") for i in range(5)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hf.parquet")
    r = validate_source(
        str(tmp_path / "hf.parquet"), DataOptions(task="image_classification", image_column="img", label_column="y")
    )
    assert r.ok, r.errors
    assert r.labels == {"green": 5, "red": 5}

    plain = [{"image": png_bytes(c, i), "label": k} for k, c in enumerate(("red", "green")) for i in range(5)]
    pq.write_table(pa.Table.from_pylist(plain), tmp_path / "plain.parquet")
    data = prepare_dataset(str(tmp_path / "plain.parquet"), IMG, tokenizer=None, split_fractions={"train": 1.0})
    assert data.labels == ["0", "1"] and all(isinstance(e.image, bytes) for e in data.train)


def test_bad_images_are_named_by_row_and_file(tmp_path):
    folder = write_image_folder(tmp_path / "f", per_class=5)
    (folder / "red" / "broken.png").write_bytes(png_bytes("red", 1)[:40])  # truncated PNG
    (folder / "blue" / "text.jpg").write_text("hello")
    r = validate_source(str(folder), IMG)
    assert not r.ok and r.error_counts == {"bad_image": 2}
    messages = [e.message for e in r.errors]
    assert any(m.startswith("f row ") and "blue/text.jpg' cannot be decoded as an image" in m for m in messages)
    assert any("red/broken.png' cannot be decoded" in m for m in messages)
    with pytest.raises(DataValidationError):
        prepare_dataset(str(folder), IMG, tokenizer=None)


def test_missing_files_columns_and_values(tmp_path):
    data_csv = write_image_csv(tmp_path / "d", per_class=5)
    (tmp_path / "d" / "images" / "red_2.png").unlink()
    r = validate_source(str(data_csv), DataOptions(task="image_classification", image_column="path"))
    assert [e.kind for e in r.errors] == ["missing_image"]
    assert r.errors[0].line == 9 and "red_2.png' does not exist" in r.errors[0].message

    r = validate_source(str(data_csv), IMG)  # image_column defaults to 'image'
    assert r.errors[0].kind == "missing_column" and "no column 'image'" in r.errors[0].message
    assert "data_config.image_column" in r.errors[0].message

    rows = [{"image": 7, "label": "a"}, {"image": "", "label": "b"}]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    r = validate_source(str(tmp_path / "bad.jsonl"), IMG)
    assert [e.kind for e in r.errors] == ["not_image", "not_image"]
    assert "bad.jsonl line 1: 'image' holds a int value 7" in r.errors[0].message

    pq.write_table(pa.Table.from_pylist([{"image": 1.5, "label": "a"}]), tmp_path / "f.parquet")
    r = validate_source(str(tmp_path / "f.parquet"), IMG)
    assert r.errors[0].kind == "not_image" and "holds double values, not images" in r.errors[0].message


def test_single_class_and_missing_label(tmp_path):
    folder = write_image_folder(tmp_path / "one", per_class=6, labels=("red",))
    r = validate_source(str(folder), IMG)
    assert [e.kind for e in r.errors] == ["single_class"]
    assert "every row has the label 'red' in 'label'" in r.errors[0].message

    data_csv = write_image_csv(tmp_path / "d", per_class=3)
    r = validate_source(
        str(data_csv), DataOptions(task="image_classification", image_column="path", label_column="cls")
    )
    assert r.errors[0].kind == "missing_column" and "data_config.label_column" in r.errors[0].message


def test_validation_file_labels_must_occur_in_training(tmp_path):
    train = write_image_folder(tmp_path / "train", per_class=5, labels=("blue", "green", "red"))
    val = write_image_folder(tmp_path / "val", per_class=3, labels=("blue", "purple"))
    val.joinpath("blue", "0.png").rename(val / "purple" / "9.png")
    with pytest.raises(TuneforgeError, match="label 'purple' in 'label' does not occur in the training data"):
        prepare_dataset(str(train), IMG, tokenizer=None, validation_data_path=str(val))
    val2 = write_image_folder(tmp_path / "val2", per_class=3, labels=("blue", "red"))
    data = prepare_dataset(str(train), IMG, tokenizer=None, validation_data_path=str(val2))
    assert sorted({e.label for e in data.validation}) == [0, 2]  # 'red' is id 1 in its file, 2 in training


def test_cli_validates_an_image_folder(tmp_path, capsys):
    from tuneforge.cli import main

    folder = write_image_folder(tmp_path / "photos", per_class=5)
    assert main(["data", "validate", str(folder), "--task", "image_classification"]) == 0
    out = capsys.readouterr().out
    assert "format       image_classification (image: image, label: label)" in out and "blue 5, red 5" in out
    (folder / "red" / "bad.png").write_bytes(b"nope")
    assert main(["data", "validate", str(folder), "--task", "image_classification"]) == 1
    out = capsys.readouterr().out
    assert "photos row 11: file" in out and "red/bad.png' cannot be decoded" in out


def test_a_saved_datasets_folder_with_an_image_feature(tmp_path):
    import datasets

    from tiny_images import coloured_image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {
            "image": [coloured_image(c, i) for c in ("red", "blue") for i in range(5)],
            "label": ["red"] * 5 + ["blue"] * 5,
        },
        features=features,
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    data = prepare_dataset(str(tmp_path / "saved"), IMG, tokenizer=None, split_fractions={"train": 1.0})
    assert data.labels == ["blue", "red"] and all(isinstance(e.image, bytes) for e in data.train)
    assert open_image(data.train[0].image).size == (24, 20)

    from tuneforge.data.images import image_ref

    ref, named = image_ref(coloured_image("red", 0), None)  # a streamed hub dataset yields decoded images
    assert isinstance(ref, bytes) and named.endswith("24x20)") and open_image(ref).getpixel((0, 0))[0] > 150
