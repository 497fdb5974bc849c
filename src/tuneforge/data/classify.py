"""Classification rows: one text and one label per row (`data_config.task: classification`).

The same streaming pass as every other format (`validate._Scan`: reading errors, column types, duplicates, token
statistics), with the checks a classifier needs instead of a prompt template's: the text and label columns exist,
no row has an empty text (each named by line or row), every label is a string or an integer, and there are at least
two classes. The label set is read from the data: integers in numeric order, strings in alphabetical order, so the
same data always gives the same label ids. The report counts rows per class and warns about classes too small to
learn or score (< 5 rows), about heavy imbalance (macro-F1 is then the figure to watch) and about text with
encoding damage (mojibake: UTF-8 decoded as Latin-1/Windows-1252/Mac Roman, or U+FFFD replacement characters),
which tokenizes into noise.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..errors import did_you_mean
from .options import DataOptions
from .report import DataIssue, plural
from .sources import Record, Source, where
from .validate import _TEXT_TYPES, Kept, _Scan

MIN_ROWS_PER_CLASS = 5  # fewer: too few to learn the class, and a held-out split may get none of it
IMBALANCE_RATIO = 10  # largest class / smallest class at or above this is "heavy imbalance"

# Mojibake: a UTF-8 lead byte (0xC2-0xF4) read as a Latin-1/Windows-1252 character, followed by a continuation byte
# (0x80-0xBF) read the same way (e.g. "\u00c3\u00a9" for "\u00e9", "\u00e2\u20ac\u2122" for a right quote); and U+FFFD,
# what a decoder writes for bytes that were not UTF-8 at all. Windows-1252 maps 0x80-0x9F to punctuation and letters:
_CP1252_HIGH = bytes(range(0x80, 0xA0)).decode("cp1252", errors="ignore")
_MOJIBAKE = re.compile(f"[\u00c2-\u00f4][\u0080-\u00bf{_CP1252_HIGH}]|\ufffd")


def looks_mojibake(text: str) -> bool:
    """True when `text` carries the marks of a wrong decoding (see _MOJIBAKE)."""
    return _MOJIBAKE.search(text) is not None


@dataclass(frozen=True, slots=True)
class ClassExample:
    """One tokenized classification example: the text's token ids and its label id (an index into the labels)."""

    input_ids: tuple[int, ...]
    label: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        return 1  # one prediction per example: the recipe counts examples where SFT counts target tokens


def label_key(value: Any) -> int | str | None:
    """A label as the label set stores it: an integer, or a stripped non-empty string; None for anything else
    (booleans, fractional numbers, lists, empty strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)  # Parquet/pandas store an integer column with gaps as floats
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def ordered_labels(keys: set[int | str] | Counter) -> list[int | str]:
    """Integers in numeric order, else strings in alphabetical order (mixed sets are refused before this)."""
    return sorted(keys, key=lambda k: (isinstance(k, str), k))


class ClassificationScan(_Scan):
    """`_Scan` for classification rows: see the module docstring."""

    def __init__(self, source: Source, report: Any, options: DataOptions, *, tokenizer: Any, keep: bool):
        super().__init__(source, report, options, tokenizer=tokenizer, keep=keep)
        self.input_col, self.label_col = options.text_column, options.label_column
        self.counts: Counter[int | str] = Counter()
        self.mojibake: list[Any] = [0, []]  # count, first places
        self.held: list[tuple[Record, Any, int | str]] = []  # kept rows (token ids or image) until the label ids exist

    # --- setup ---------------------------------------------------------------------------------------------------
    input_option = "text_column"  # the data_config field naming the input column (images.py: image_column)
    format_name = "classification"
    input_kind = "not_text"  # the error kind of an input column of the wrong type

    def _column_problem(self, typ: str) -> str | None:
        """Why a declared column type cannot be the input column, or None."""
        if typ in _TEXT_TYPES:
            return None
        return (
            f"column '{self.input_col}' holds {typ} values, not text (data_config.text_column must name a text column)"
        )

    def _choose_format(self, head: list[Record]) -> None:
        src, rep = self.source, self.report
        rep.format = self.format_name
        rep.format_detail = f"{self.input_option.removesuffix('_column')}: {self.input_col}, label: {self.label_col}"
        if src.schema is not None:
            columns = list(src.schema)
        else:
            columns = list(dict.fromkeys(k for r in head if r.data is not None for k in r.data))
        if not any(r.data is not None for r in head):
            return
        ok = True
        for col, option in ((self.input_col, self.input_option), (self.label_col, "label_column")):
            if col not in columns and (src.schema is not None or len(head) >= 2):
                rep.add_error(
                    DataIssue(
                        "missing_column",
                        f"{src.name}: no column '{col}'{did_you_mean(col, columns)} (data_config.{option}); the "
                        f"columns are: {', '.join(columns)}",
                        field=col,
                    )
                )
                ok = False
        typ = (src.schema or {}).get(self.input_col)
        problem = self._column_problem(typ) if typ is not None else None
        if problem:
            rep.add_error(DataIssue(self.input_kind, f"{src.name}: {problem}", field=self.input_col))
            ok = False
        self.renderable = ok

    # --- the pass ------------------------------------------------------------------------------------------------
    def _record(self, rec: Record) -> None:
        super()._record(rec)  # counts, reading errors, column types, duplicate fingerprints (self.fmt is None)
        if rec.row == 0 or rec.data is None or not self.renderable:
            return
        failed = not self._check_input(rec)
        data = rec.data
        value = data.get(self.label_col)
        key = label_key(value)
        if self.label_col not in data:
            self.missing[self.label_col] = self.missing.get(self.label_col, 0) + 1
            self._row_error(rec, "missing_field", f"no '{self.label_col}' {self.noun}", self.label_col)
            failed = True
        elif key is None:
            self._row_error(
                rec,
                "bad_label",
                f"label {value!r} in '{self.label_col}' is not allowed; a label is a non-empty string or an integer",
                self.label_col,
            )
            failed = True
        if failed:
            return
        assert key is not None
        self.counts[key] += 1
        self.pending.append(rec)
        if len(self.pending) >= 256:
            self._flush()

    def _check_input(self, rec: Record) -> bool:
        """Check the row's text (errors and the mojibake count go to the report); False when the row is refused."""
        data = rec.data
        assert data is not None
        text = data.get(self.input_col)
        place = where(self.source.name, rec.line, rec.row)
        if self.input_col not in data:
            self.missing[self.input_col] = self.missing.get(self.input_col, 0) + 1
            self._row_error(rec, "missing_field", f"no '{self.input_col}' {self.noun}", self.input_col)
            return False
        if not isinstance(text, str):
            kind = type(text).__name__
            self._row_error(rec, "not_text", f"'{self.input_col}' is {kind}, not text", self.input_col)
            return False
        if not text.strip():
            self._row_error(rec, "empty_text", f"'{self.input_col}' is empty; every row needs text", self.input_col)
            return False
        if (damage := _MOJIBAKE.search(text)) is not None:
            self.mojibake[0] += 1
            if len(self.mojibake[1]) < 3:  # show the damage itself, not the start of a long text
                start = max(0, damage.start() - 30)
                self.mojibake[1].append(f"{place}: {'...' * (start > 0)}{text[start : damage.end() + 30]!r}")
        return True

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        texts = [r.data[self.input_col] for r in batch]  # type: ignore[index]
        ids: list[list[int] | None] = [None] * len(batch)
        if self.tokenizer is not None:
            ids = list(self.tokenizer(texts, add_special_tokens=True)["input_ids"])
        for rec, text, row_ids in zip(batch, texts, ids, strict=True):
            full = len(row_ids) if row_ids is not None else None
            if full is not None:
                self.lengths.append(full)
                if full > self.cutoff:
                    self.truncated += 1
                    # Truncated by the tokenizer, so an encoder's closing [SEP] / </s> stays in place.
                    row_ids = self.tokenizer(text, truncation=True, max_length=self.cutoff)["input_ids"]
            key = label_key(rec.data[self.label_col])  # type: ignore[index]
            assert key is not None
            self.report.n_trainable += 1
            if self.report.first_example is None:
                self.report.first_example = {
                    "line": rec.line,
                    "row": rec.row,
                    "tokenized": row_ids is not None,
                    "rendered": text,
                    "label": str(key),
                    **(
                        {"n_tokens": len(row_ids), "n_trained": 1, "truncated": bool(full and full > len(row_ids))}
                        if row_ids
                        else {}
                    ),
                }
            if self.keep:
                self.held.append((rec, tuple(row_ids) if row_ids is not None else None, key))

    def _example(self, ids: Any, label: int) -> Any:
        return ClassExample(ids, label)

    # --- the summary ----------------------------------------------------------------------------------------------
    def _finish(self) -> None:
        super()._finish()
        rep, src = self.report, self.source
        rep.columns_used = [c for c in (self.input_col, self.label_col) if c in rep.columns]
        rep.columns_ignored = [c for c in rep.columns if c not in rep.columns_used]
        for w in rep.warnings:
            if w.kind == "truncated":  # the generic message speaks of completions; say what it means here
                rep.warnings[rep.warnings.index(w)] = DataIssue(
                    "truncated",
                    w.message.split(" and will be cut")[0] + " and are cut to it: the classifier sees only "
                    "their start (raise cutoff_len to read more of them)",
                )
        kinds = {type(k) for k in self.counts}
        if len(kinds) > 1:
            ints = sorted(k for k in self.counts if isinstance(k, int))[:3]
            strs = sorted(k for k in self.counts if isinstance(k, str))[:3]
            rep.add_error(
                DataIssue(
                    "mixed_labels",
                    f"{src.name}: '{self.label_col}' mixes integer labels ({', '.join(map(str, ints))}) and string "
                    f"labels ({', '.join(map(repr, strs))}); use one kind",
                    field=self.label_col,
                )
            )
            return
        labels = ordered_labels(self.counts)
        rep.labels = {str(k): self.counts[k] for k in labels}
        if len(labels) == 1 and rep.n_errors == 0:
            rep.add_error(
                DataIssue(
                    "single_class",
                    f"{src.name}: every row has the label {str(labels[0])!r} in '{self.label_col}'; a classifier needs "
                    "at least two classes",
                    field=self.label_col,
                )
            )
        small = [k for k in labels if self.counts[k] < MIN_ROWS_PER_CLASS]
        if small and len(labels) > 1:
            listed = ", ".join(f"{str(k)!r} ({self.counts[k]})" for k in small)
            rep.add_warning(
                DataIssue(
                    "small_class",
                    f"{src.name}: class{'es' * (len(small) > 1)} {listed} ha{'ve' if len(small) > 1 else 's'} fewer "
                    f"than {MIN_ROWS_PER_CLASS} rows: too few to learn, and the held-out splits may get none",
                    field=self.label_col,
                )
            )
        if len(labels) > 1:
            big, low = max(labels, key=lambda k: self.counts[k]), min(labels, key=lambda k: self.counts[k])
            ratio = self.counts[big] / self.counts[low]
            if ratio >= IMBALANCE_RATIO:
                rep.add_warning(
                    DataIssue(
                        "imbalance",
                        f"{src.name}: heavy class imbalance: {str(big)!r} has {ratio:.0f}x the rows of {str(low)!r} "
                        f"({self.counts[big]:,} vs {self.counts[low]:,}); accuracy then rewards predicting "
                        f"{str(big)!r}: judge by macro-F1, or balance the classes",
                        field=self.label_col,
                    )
                )
        if self.mojibake[0]:
            n = self.mojibake[0]
            rep.add_warning(
                DataIssue(
                    "mojibake",
                    f"{src.name}: {plural(n, 'row')} ({n / max(rep.n_trainable, 1):.1%}) {'has' if n == 1 else 'have'} "
                    "encoding damage in "
                    f"'{self.input_col}' (mojibake such as 'Ã©' for 'é', or U+FFFD replacement characters), e.g. "
                    f"{'; '.join(self.mojibake[1])}; the model learns the damaged text as it is (repair it, e.g. "
                    "with ftfy, or remove those rows)",
                    field=self.input_col,
                )
            )
        if self.keep and rep.n_errors == 0:
            label_id = {k: i for i, k in enumerate(labels)}
            for rec, ids, key in self.held:
                ex = self._example(ids, label_id[key]) if ids is not None else None
                self.kept.append(Kept(rec.data, ex, rec.line, rec.row))  # type: ignore[arg-type]
        self.held = []
