"""`tuneforge predict ADAPTER FILE`: label every row of a file with a classifier adapter, or write each row's
generated target with a seq2seq adapter (T5, BART), in batches.

FILE is anything the data layer reads (.jsonl/.json/.csv/.parquet, a datasets folder, a hub id, a URL). For an image
classifier it is a folder of images (every image file in it and its subfolders, as `{"image": path}` rows) or a file
with an image column (paths relative to the file, bytes, or datasets Image values). The output
keeps each row's own fields and adds the prediction:

- JSON Lines (default, `FILE.predictions.jsonl`): `"predicted_label": "positive"` and `"probs": {"negative": 0.01,
  "neutral": 0.04, "positive": 0.95}` (in label-id order);
- CSV (`--output x.csv`): the row's columns, then `predicted_label` and one `prob_<label>` column per label.

A seq2seq adapter adds `"generated_text"` (JSON Lines and CSV alike): the greedy generation from the row's source
text, at most `--max-new-tokens` tokens (default: the trained cutoff_len).

Rows whose text is missing or empty, or whose image is missing or cannot be decoded, are refused before any model
loads, by line/row (and file). The output is written beside
under a temporary name and renamed when complete; an existing output file is never overwritten.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..adapter_card import read_card
from ..data.images import IMAGE_SUFFIXES, ImageRef, image_ref, open_image
from ..data.report import plural
from ..data.sources import SourceError, open_source, where
from ..errors import TuneforgeError

CHUNK = 1024  # rows read, predicted and written at a time: memory stays bounded on large files


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="a classifier or seq2seq adapter folder (a run's adapter/, or the run folder)")
    parser.add_argument("file", help="rows to label: .jsonl/.json/.csv/.parquet, a datasets folder, a hub id or a URL")
    parser.add_argument(
        "--output",
        "-o",
        default=None,
        help="where to write: .jsonl (default FILE.predictions.jsonl) or .csv; never overwritten",
    )
    parser.add_argument("--text-column", default=None, help="the text column (default: the one trained on)")
    parser.add_argument(
        "--image-column", default=None, help="image classifiers: the image column (default: the one trained on)"
    )
    parser.add_argument("--model", "-m", default=None, help="base model (default: the one the adapter names)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="seq2seq: the most tokens generated per row (default: the adapter's trained cutoff_len)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _adapter_dir(path: str) -> Path:
    folder = Path(path).expanduser()
    if (folder / "adapter" / "adapter_config.json").is_file():
        folder = folder / "adapter"  # a run folder
    card = read_card(folder) if (folder / "adapter_config.json").is_file() else None
    if card is None or card.task not in ("classification", "image_classification", "seq2seq"):
        raise TuneforgeError(
            f"adapter: {path!r} is not a classifier or seq2seq adapter (a folder with adapter_config.json and a "
            "tuneforge_adapter.json of task 'classification', 'image_classification' or 'seq2seq'); "
            "`tuneforge generate` runs generation adapters",
            field="adapter",
            value=path,
        )
    return folder


def _output_path(file: str, output: str | None) -> Path:
    out = Path(output).expanduser() if output else Path(Path(file).name).with_suffix(".predictions.jsonl")
    if out.suffix.lower() not in (".jsonl", ".csv"):
        raise TuneforgeError(f"--output {str(out)!r}: give a .jsonl or .csv file", field="--output", value=str(out))
    if out.exists():
        raise TuneforgeError(f"--output {str(out)!r} exists; choose another name", field="--output", value=str(out))
    return out


def run_predict(args: argparse.Namespace) -> int:
    from ..serve.classify import LoadedClassifier
    from ..serve.seq2seq import LoadedSeq2Seq

    if args.batch_size <= 0:
        raise TuneforgeError(f"--batch-size must be positive, not {args.batch_size}", field="--batch-size")
    if args.max_new_tokens is not None and args.max_new_tokens <= 0:
        raise TuneforgeError(f"--max-new-tokens must be positive, not {args.max_new_tokens}", field="--max-new-tokens")
    adapter = _adapter_dir(args.adapter)
    card = read_card(adapter)
    assert card is not None
    out = _output_path(args.file, args.output)
    vision = card.task == "image_classification"
    if vision:
        column = args.image_column or card.image_column or "image"
        rows, refs = _image_rows(args.file, column)
    else:
        column = args.text_column or card.text_column or "text"
        rows, refs = _text_rows(args.file, column), []
    jsonl = out.suffix.lower() == ".jsonl"
    if card.task == "seq2seq":
        generator = LoadedSeq2Seq(adapter, model_path=args.model, device=args.device)

        def outputs(start: int, chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
            answers, _ = generator.generate(
                [r[column] for r in chunk], max_tokens=args.max_new_tokens, temperature=0.0, batch_size=args.batch_size
            )
            return [{"generated_text": a[0].text} for a in answers]

        done = "written (generated_text)"
    else:
        classifier = LoadedClassifier(adapter, model_path=args.model, device=args.device)
        labels = classifier.labels

        def outputs(start: int, chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
            if vision:
                preds = classifier.predict_images(refs[start : start + len(chunk)], batch_size=args.batch_size)
            else:
                preds, _ = classifier.predict([r[column] for r in chunk], batch_size=args.batch_size)
            if jsonl:
                return [{"predicted_label": p.label, "probs": dict(zip(labels, p.probs, strict=True))} for p in preds]
            return [
                {"predicted_label": p.label, **{f"prob_{n}": v for n, v in zip(labels, p.probs, strict=True)}}
                for p in preds
            ]

        done = f"labelled ({', '.join(labels)})"
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = None
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            for row, extra in zip(chunk, outputs(start, chunk), strict=True):
                if jsonl:
                    fh.write(json.dumps({**row, **extra}, ensure_ascii=False, default=str) + "\n")
                    continue
                if writer is None:
                    writer = csv.DictWriter(fh, fieldnames=[*row, *extra], extrasaction="ignore")
                    writer.writeheader()
                writer.writerow({**row, **extra})
            print(f"predicted {min(start + CHUNK, len(rows)):,} of {len(rows):,} rows", file=sys.stderr)
    os.replace(tmp, out)
    print(f"{out}: {plural(len(rows), 'row')} {done}")
    return 0


def _refuse(file: str, problems: list[str], hint: str) -> None:
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5:,} more" if len(problems) > 5 else "")
        raise TuneforgeError(
            f"{file}: {plural(len(problems), 'row')} cannot be labelled: {shown} ({hint})", field="file", value=file
        )


def _records(file: str):
    try:
        with open_source(file) as source:
            return source, list(source.records())
    except SourceError as err:
        raise TuneforgeError(f"{file}: {err.issue.message}", field="file", value=file) from None


def _text_rows(file: str, column: str) -> list[dict[str, Any]]:
    """The rows of `file` with a non-empty text in `column`; every other row refused by line/row."""
    source, records = _records(file)
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    for rec in records:
        if rec.row == 0 or rec.data is None:
            if rec.error is not None:
                problems.append(rec.error.message)
            continue
        text = rec.data.get(column)
        if not isinstance(text, str) or not text.strip():
            what = "missing" if text is None else "empty" if isinstance(text, str) else f"{type(text).__name__}"
            problems.append(f"{where(source.name, rec.line, rec.row)}: '{column}' is {what}")
            continue
        rows.append(rec.data)
    _refuse(file, problems, "--text-column names the text")
    return rows


def _image_rows(file: str, column: str) -> tuple[list[dict[str, Any]], list[ImageRef]]:
    """(rows, their images) of a folder of images or a file with an image `column`; each image decoded once here so
    a bad one is refused, by row and file, before the model loads."""
    folder = Path(file).expanduser()
    if folder.is_dir() and not (folder / "dataset_dict.json").is_file() and not (folder / "state.json").is_file():
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise TuneforgeError(f"{file}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in it", field="file")
        name = folder.name or str(folder)
        items = [(f"{name} row {i}", {column: str(p)}) for i, p in enumerate(paths, start=1)]
        base: Path | None = folder
        problems: list[str] = []
    else:
        source, records = _records(file)
        base, problems, items = source.folder, [], []
        for rec in records:
            if rec.row == 0 or rec.data is None:
                if rec.error is not None:
                    problems.append(rec.error.message)
                continue
            items.append((where(source.name, rec.line, rec.row), rec.data))
    rows: list[dict[str, Any]] = []
    refs: list[ImageRef] = []
    for place, data in items:
        if column not in data:
            problems.append(f"{place}: no '{column}'")
            continue
        ref, named = image_ref(data[column], base)
        try:
            if ref is None:
                raise ValueError(f"'{column}' holds a {named}")
            open_image(ref)
        except (OSError, ValueError, SyntaxError) as err:
            problems.append(f"{place}: {named}: {err}")
            continue
        rows.append({k: v for k, v in data.items() if not isinstance(v, (bytes, dict))})  # bytes stay out of JSON
        refs.append(ref)
    _refuse(file, problems, "--image-column names the image column")
    return rows, refs
