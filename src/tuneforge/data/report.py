"""`ValidationReport`: everything the data layer found out about a dataset, for people and for programs.

The CLI prints `to_text()`, the API returns `to_dict()`, the UI renders the dict as a panel. Errors make a dataset
untrainable; warnings do not. Errors are capped (the first `max_errors` are kept with their messages) while
`error_counts` counts every error by kind, so a broken million-row file still gives a short, readable report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import TuneforgeError

# Markers around the masked (no-loss) part of the rendered first example. ASCII so that every terminal shows them.
MASK_OPEN = "[no loss]"
MASK_CLOSE = "[/no loss]"
TOKENS_SKIPPED = "no tokenizer given; pass --model to count tokens"


def plural(n: int, word: str) -> str:
    """'1 row', '2 rows', '1,234 rows'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True, slots=True)
class DataIssue:
    """One problem found in the data.

    `line` is the 1-based line an editor shows (for CSV the file line, header included; for JSON the line where
    the record starts), `row` the 1-based record number; sources without lines (Parquet, datasets folders, hub
    datasets) have only `row`. `message` is complete on its own: it names the file, the place, the field and what
    is allowed.
    """

    kind: str
    message: str
    line: int | None = None
    row: int | None = None
    field: str | None = None
    column: int | None = None  # 1-based character column, for JSON syntax errors

    def __str__(self) -> str:
        return self.message


@dataclass
class ValidationReport:
    source: str
    source_format: str | None = None  # how the file/dataset was read: json, jsonl, csv, parquet, arrow, hub
    source_detail: str = ""  # e.g. "delimiter ';'", "split 'train'"
    format: str | None = None  # row shape: a data_format value (formats.FORMATS)
    format_detail: str = ""  # e.g. "completion: {output}"
    n_rows: int = 0  # records read, good and bad
    n_trainable: int = 0  # records without errors
    columns: dict[str, str] = field(default_factory=dict)  # name -> type
    columns_used: list[str] = field(default_factory=list)  # the columns the format reads
    columns_ignored: list[str] = field(default_factory=list)  # the others: not trained on
    errors: list[DataIssue] = field(default_factory=list)  # the first `max_errors`
    error_counts: dict[str, int] = field(default_factory=dict)  # every error, by kind
    warnings: list[DataIssue] = field(default_factory=list)
    token_stats: dict[str, Any] | None = None
    first_example: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    splits: dict[str, int] | None = None  # rows per split, when the data was split for training
    tokenizer_used: str | None = None  # the tokenizer's name when one was given; None: token checks were skipped
    cutoff_len: int | None = None
    max_errors: int = 20
    labels: dict[str, int] | None = None  # classification: rows per class, in label-id order

    # --- building ---------------------------------------------------------------------------------------------
    def add_error(self, issue: DataIssue) -> None:
        self.error_counts[issue.kind] = self.error_counts.get(issue.kind, 0) + 1
        if len(self.errors) < self.max_errors:
            self.errors.append(issue)

    def replace_errors(self, kind: str, field_name: str, count: int, replacement: DataIssue) -> None:
        """Replace `count` row errors of `kind` about `field_name` by one column-level error (e.g. a column that
        no row has), so the report says it once instead of once per row."""
        self.errors = [e for e in self.errors if not (e.kind == kind and e.field == field_name)]
        self.error_counts[kind] = self.error_counts.get(kind, 0) - count
        if self.error_counts[kind] <= 0:
            del self.error_counts[kind]
        self.errors.insert(0, replacement)
        self.error_counts[replacement.kind] = self.error_counts.get(replacement.kind, 0) + 1
        del self.errors[self.max_errors :]

    def add_warning(self, issue: DataIssue) -> None:
        self.warnings.append(issue)

    # --- reading ----------------------------------------------------------------------------------------------
    @property
    def n_errors(self) -> int:
        return sum(self.error_counts.values())

    @property
    def ok(self) -> bool:
        """Trainable: no errors and at least one example to learn from."""
        return self.n_errors == 0 and self.n_trainable > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.source,
            "source_format": self.source_format,
            "source_detail": self.source_detail,
            "format": self.format,
            "format_detail": self.format_detail,
            "n_rows": self.n_rows,
            "n_trainable": self.n_trainable,
            "columns": dict(self.columns),
            "columns_used": list(self.columns_used),
            "columns_ignored": list(self.columns_ignored),
            "n_errors": self.n_errors,
            "error_counts": dict(self.error_counts),
            "errors": [asdict(e) for e in self.errors],
            "warnings": [asdict(w) for w in self.warnings],
            "token_stats": dict(self.token_stats) if self.token_stats is not None else None,
            "tokenizer": self.tokenizer_used,
            "token_stats_skipped": None if self.tokenizer_used is not None else TOKENS_SKIPPED,
            "first_example": dict(self.first_example) if self.first_example is not None else None,
            "notes": list(self.notes),
            "splits": dict(self.splits) if self.splits is not None else None,
            "cutoff_len": self.cutoff_len,
            "labels": dict(self.labels) if self.labels is not None else None,
        }

    def summary(self) -> str:
        """One line: what the CLI's error path and exception messages show."""
        if self.ok:
            return f"{self.source}: trainable, {plural(self.n_trainable, 'row')} ({self.format})"
        if self.n_errors == 0:
            return f"{self.source}: not trainable: no rows to learn from"
        kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(self.error_counts.items(), key=lambda kv: -kv[1]))
        first = self.errors[0].message if self.errors else ""
        return f"{self.source}: not trainable: {self.n_errors:,} error{'s' * (self.n_errors != 1)} ({kinds}); first: {first}"

    def to_text(self) -> str:
        out: list[str] = []
        verdict = "trainable" if self.ok else "NOT TRAINABLE"
        out.append(f"Dataset {self.source}: {verdict}")
        read_as = self.source_format or "(could not be read)"
        out.append(f"  read as      {read_as}" + (f" ({self.source_detail})" if self.source_detail else ""))
        fmt = self.format or "not determined"
        out.append(f"  format       {fmt}" + (f" ({self.format_detail})" if self.format_detail else ""))
        out.append(f"  rows         {self.n_rows:,} ({self.n_trainable:,} without errors)")
        if self.splits:
            out.append("  splits       " + ", ".join(f"{k} {n:,}" for k, n in self.splits.items()))
        if self.columns:
            cols = ", ".join(f"{name}: {typ}" for name, typ in self.columns.items())
            out.append(f"  columns      {cols}")
        if self.format:
            out.append(f"  used         {', '.join(self.columns_used) or 'none'}")
            if self.columns_ignored:
                out.append(f"  ignored      {', '.join(self.columns_ignored)}")
        if self.labels:
            out.append(
                f"  labels       {len(self.labels)} classes: " + ", ".join(f"{k} {n:,}" for k, n in self.labels.items())
            )
        for note in self.notes:
            out.append(f"  note         {note}")

        if self.n_errors:
            shown = len(self.errors)
            kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(self.error_counts.items(), key=lambda kv: -kv[1]))
            head = f"Errors: {self.n_errors:,} ({kinds})"
            if shown < self.n_errors:
                head += f"; the first {shown} are shown"
            out.append("")
            out.append(head)
            out.extend(f"  - {e.message}" for e in self.errors)
        if self.warnings:
            out.append("")
            out.append(f"Warnings: {len(self.warnings)}")
            out.extend(f"  - {w.message}" for w in self.warnings)

        out.append("")
        if self.token_stats:
            s = self.token_stats
            out.append(
                f"Token lengths ({plural(s['count'], 'example')}, cutoff_len {s['cutoff_len']}): min {s['min']}, "
                f"median {s['median']}, p95 {s['p95']}, max {s['max']}; truncated {s['truncated']:,} "
                f"({s['truncated_share']:.1%})"
            )
            if "target" in s:  # seq2seq (data/seq2seq.py): the lines above are the sources
                t = s["target"]
                out.append(
                    f"Target lengths: min {t['min']}, median {t['median']}, p95 {t['p95']}, max {t['max']}; "
                    f"truncated {t['truncated']:,}"
                )
        elif self.tokenizer_used is None and self.format != "image_classification":  # images have no tokens
            out.append(f"Token lengths: skipped ({TOKENS_SKIPPED})")

        if self.first_example:
            fe = self.first_example
            where = f"line {fe['line']}" if fe.get("line") else f"row {fe.get('row')}"
            out.append("")
            if "label" in fe:
                size = (
                    f", {fe['n_tokens']} tokens"
                    if fe.get("tokenized")
                    else ""
                    if self.format == "image_classification"
                    else ", as text: no tokenizer"
                )
                out.append(f"First example ({where}{size}), label {fe['label']!r}:")
            elif fe.get("pair"):
                sizes = (
                    f", chosen {fe['chosen_tokens']} tokens, rejected {fe['rejected_tokens']} tokens"
                    if fe.get("tokenized")
                    else ", as text: no tokenizer"
                )
                out.append(
                    f"First pair ({where}{sizes}); {MASK_OPEN}...{MASK_CLOSE} marks the prompt (no loss), "
                    "then each answer:"
                )
            elif fe.get("tokenized"):
                out.append(
                    f"First example ({where}, {fe['n_tokens']} tokens, {fe['n_trained']} trained), exactly as the "
                    f"model sees it; {MASK_OPEN}...{MASK_CLOSE} marks the part without loss:"
                )
            else:
                out.append(
                    f"First example ({where}, as text: no tokenizer); {MASK_OPEN}...{MASK_CLOSE} marks the part "
                    "without loss:"
                )
            out.extend("  | " + line for line in fe["rendered"].split("\n"))
        return "\n".join(out)


class DataValidationError(TuneforgeError):
    """The dataset is not trainable; `.report` says why (print `report.to_text()` for the full report)."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.summary(), field="data_config.data_path", value=report.source)
