"""`tuneforge data validate SOURCE ...`: print the validation report; exit 0 when trainable, 1 when not.

Two functions so the main CLI can mount the command wherever it likes: `add_validate_arguments(parser)` and
`run_validate(args)`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from ..data import FORMATS, DataOptions, validate_source
from ..models.loader import load_tokenizer
from ..spec import TASKS


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        help="a .json/.jsonl/.csv/.parquet file, a datasets folder, a Hugging Face dataset id, or an http(s) URL",
    )
    parser.add_argument(
        "--template",
        "--prompt-template",
        dest="template",
        default=None,
        help="prompt_template with {column} placeholders; the last one is the completion ('{{' for a literal brace; "
        "\\n and \\t are a newline and a tab, as a shell cannot easily pass them)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model (hub id, local folder or alias) whose tokenizer counts tokens and renders the first example; "
        "without it token checks are skipped",
    )
    parser.add_argument("--cutoff-len", type=int, default=512, help="maximum tokens per example (default 512)")
    parser.add_argument(
        "--data-format",
        default="auto",
        choices=("auto", *FORMATS),
        help="row shape; auto: template when --template is given, else detected from the columns",
    )
    parser.add_argument(
        "--completion-column", default=None, help="the template column that is the completion (default: the last)"
    )
    parser.add_argument(
        "--task",
        default="causal_lm",
        choices=TASKS,
        help="what the data trains: causal_lm (text generation, the default), classification (a text column and "
        "a label column; the report counts rows per class), image_classification (a folder with one subfolder per "
        "class, or an image column and a label column; every image is decoded) or seq2seq (a source and a target "
        "text column)",
    )
    parser.add_argument(
        "--text-column", default="text", help="classification: the text column; seq2seq: the source (default text)"
    )
    parser.add_argument(
        "--label-column", default="label", help="classification: the label column; seq2seq: the target (default label)"
    )
    parser.add_argument(
        "--image-column", default="image", help="image_classification: the image column (default image)"
    )
    parser.add_argument("--data-subset", default=None, help="configuration (subset) of a hub dataset")
    parser.add_argument("--data-split", default=None, help="split of a hub dataset or datasets folder (default train)")
    parser.add_argument("--hf-token", default=None, help="Hugging Face token for private datasets and models")
    parser.add_argument("--max-errors", type=int, default=20, help="errors listed in full (all are counted)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def unescape_template(text: str | None) -> str | None:
    """'\\n' -> newline, '\\t' -> tab, '\\\\' -> backslash: templates typed in a shell carry escapes, not newlines."""
    if text is None:
        return None
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def run_validate(args: argparse.Namespace) -> int:
    tokenizer = None
    if args.model and args.task != "image_classification":  # images have no tokens to count
        tokenizer = load_tokenizer(args.model, hf_token=args.hf_token)
    options = DataOptions(
        cutoff_len=args.cutoff_len,
        prompt_template=unescape_template(args.template),
        data_format=args.data_format,
        completion_column=args.completion_column,
        data_subset=args.data_subset,
        data_split=args.data_split,
        hf_token=args.hf_token,
        task=args.task,
        text_column=args.text_column,
        label_column=args.label_column,
        image_column=args.image_column,
    )
    report = validate_source(args.source, options, tokenizer=tokenizer, max_errors=args.max_errors)
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print(report.to_text())
    return 0 if report.ok else 1
