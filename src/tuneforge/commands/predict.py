"""`tuneforge predict ADAPTER FILE`: label every row of a file with a classifier adapter, or write each row's
generated target with a seq2seq adapter (T5, BART), in batches.

FILE is anything the data layer reads (.jsonl/.json/.csv/.parquet, a datasets folder, a hub id, a URL). The output
keeps each row's own fields and adds the prediction:

- JSON Lines (default, `FILE.predictions.jsonl`): `"predicted_label": "positive"` and `"probs": {"negative": 0.01,
  "neutral": 0.04, "positive": 0.95}` (in label-id order);
- CSV (`--output x.csv`): the row's columns, then `predicted_label` and one `prob_<label>` column per label.

A seq2seq adapter adds `"generated_text"` (JSON Lines and CSV alike): the greedy generation from the row's source
text, at most `--max-new-tokens` tokens (default: the trained cutoff_len).

Rows whose text is missing or empty are refused before any model loads, by line/row. The output is written beside
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
    if card is None or card.task not in ("classification", "seq2seq"):
        raise TuneforgeError(
            f"adapter: {path!r} is not a classifier or seq2seq adapter (a folder with adapter_config.json and a "
            "tuneforge_adapter.json of task 'classification' or 'seq2seq'); `tuneforge generate` runs generation "
            "adapters",
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
    column = args.text_column or card.text_column or "text"
    out = _output_path(args.file, args.output)
    try:
        with open_source(args.file) as source:
            records = list(source.records())
    except SourceError as err:
        raise TuneforgeError(f"{args.file}: {err.issue.message}", field="file", value=args.file) from None
    problems = []
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
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5:,} more" if len(problems) > 5 else "")
        raise TuneforgeError(
            f"{args.file}: {plural(len(problems), 'row')} cannot be labelled: {shown} (--text-column names the text)",
            field="file",
            value=args.file,
        )
    jsonl = out.suffix.lower() == ".jsonl"
    if card.task == "seq2seq":
        generator = LoadedSeq2Seq(adapter, model_path=args.model, device=args.device)

        def outputs(texts: list[str]) -> list[dict[str, Any]]:
            answers, _ = generator.generate(
                texts, max_tokens=args.max_new_tokens, temperature=0.0, batch_size=args.batch_size
            )
            return [{"generated_text": a[0].text} for a in answers]

        done = "written (generated_text)"
    else:
        classifier = LoadedClassifier(adapter, model_path=args.model, device=args.device)
        labels = classifier.labels

        def outputs(texts: list[str]) -> list[dict[str, Any]]:
            preds, _ = classifier.predict(texts, batch_size=args.batch_size)
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
            for row, extra in zip(chunk, outputs([r[column] for r in chunk]), strict=True):
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
