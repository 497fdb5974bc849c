"""Seq2seq rows: a source text and a target text per row (`data_config.task: seq2seq`, T5/BART-style models).

The same streaming pass as every other format (`validate._Scan`: reading errors, column types, duplicates, token
statistics) with the column checks of classification (`ClassificationScan._choose_format`: both columns exist and
hold text), then per row: neither text is missing or empty (each named by line or row). The source is
`data_config.text_column` as it is (a task prefix such as "translate English to German: " belongs in the text, as
T5 was trained) and the target is `data_config.label_column`. Each side is tokenized on its own and cut to
`cutoff_len` tokens: a longer source is truncated with a warning (the encoder reads only its start); a longer target
too (its end is never learned, nor when to stop). Every target ends with the end-of-sequence token, so the model
learns to stop (T5/BART tokenizers append it already; others get it appended).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .classify import ClassificationScan
from .options import DataOptions
from .report import MASK_CLOSE, MASK_OPEN, DataIssue, plural
from .sources import Record, Source
from .validate import _TEXT_TYPES, Kept, _Scan


@dataclass(frozen=True, slots=True)
class Seq2SeqExample:
    """One tokenized seq2seq example: the encoder's input ids and the target ids the decoder learns (ending with
    the end-of-sequence token; the decoder's inputs are these shifted right, built by the model)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.input_ids) + len(self.labels)  # what a batch costs: the encoder and the decoder side

    @property
    def n_targets(self) -> int:
        return len(self.labels)


def encode_targets(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Target ids of `texts`, each cut to `max_length` and ending with the end-of-sequence token."""
    eos = tokenizer.eos_token_id
    out = []
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        ids = list(ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        if len(ids) > max_length:
            ids = ids[: max_length - 1] + ([eos] if eos is not None else ids[max_length - 1 : max_length])
        out.append(ids)
    return out


class Seq2SeqScan(ClassificationScan):
    """`_Scan` for seq2seq rows: see the module docstring."""

    def __init__(self, source: Source, report: Any, options: DataOptions, *, tokenizer: Any, keep: bool):
        super().__init__(source, report, options, tokenizer=tokenizer, keep=keep)
        self.target_lengths: list[int] = []
        self.target_truncated = 0

    def _choose_format(self, head: list[Record]) -> None:
        super()._choose_format(head)  # both columns exist; text_column holds text
        rep, src = self.report, self.source
        rep.format = "seq2seq"
        rep.format_detail = f"source: {self.input_col}, target: {self.label_col}"
        typ = (src.schema or {}).get(self.label_col)
        if typ is not None and typ not in _TEXT_TYPES:
            rep.add_error(
                DataIssue(
                    "not_text",
                    f"{src.name}: column '{self.label_col}' holds {typ} values, not text (data_config.label_column "
                    "is the target text of a seq2seq task)",
                    field=self.label_col,
                )
            )
            self.renderable = False

    def _record(self, rec: Record) -> None:
        _Scan._record(self, rec)  # counts, reading errors, column types, duplicate fingerprints (self.fmt is None)
        if rec.row == 0 or rec.data is None or not self.renderable:
            return
        failed = False
        for col, what in ((self.input_col, "source"), (self.label_col, "target")):
            value = rec.data.get(col)
            if col not in rec.data:
                self.missing[col] = self.missing.get(col, 0) + 1
                self._row_error(rec, "missing_field", f"no '{col}' {self.noun} (the {what} text)", col)
            elif not isinstance(value, str):
                self._row_error(rec, "not_text", f"'{col}' is {type(value).__name__}, not text (the {what})", col)
            elif not value.strip():
                self._row_error(rec, f"empty_{what}", f"'{col}' is empty; every row needs a {what} text", col)
            else:
                continue
            failed = True
        if not failed:
            self.pending.append(rec)
            if len(self.pending) >= 256:
                self._flush()

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        sources = [r.data[self.input_col] for r in batch]  # type: ignore[index]
        targets = [r.data[self.label_col] for r in batch]  # type: ignore[index]
        src_ids: list[list[int] | None] = [None] * len(batch)
        tgt_ids: list[list[int] | None] = [None] * len(batch)
        if self.tokenizer is not None:
            full = self.tokenizer(sources, add_special_tokens=True)["input_ids"]
            src_ids = list(full)
            tgt_ids = list(encode_targets(self.tokenizer, targets, 1 << 30))  # uncut: the lengths are reported
        for rec, source, target, s_ids, t_ids in zip(batch, sources, targets, src_ids, tgt_ids, strict=True):
            if s_ids is not None and t_ids is not None:
                self.lengths.append(len(s_ids))
                self.target_lengths.append(len(t_ids))
                if len(s_ids) > self.cutoff:
                    self.truncated += 1
                    # Cut by the tokenizer, so the closing </s> of T5/BART stays in place.
                    s_ids = self.tokenizer(source, truncation=True, max_length=self.cutoff)["input_ids"]
                if len(t_ids) > self.cutoff:
                    self.target_truncated += 1
                    t_ids = encode_targets(self.tokenizer, [target], self.cutoff)[0]
            self.report.n_trainable += 1
            ex = Seq2SeqExample(tuple(s_ids), tuple(t_ids)) if s_ids is not None and t_ids is not None else None
            if self.report.first_example is None:
                segments = [{"text": source + "\n", "trained": False}, {"text": target, "trained": True}]
                self.report.first_example = {
                    "line": rec.line,
                    "row": rec.row,
                    "tokenized": ex is not None,
                    "rendered": f"{MASK_OPEN}{source}\n{MASK_CLOSE}{target}",
                    "segments": segments,
                    **({"n_tokens": len(ex), "n_trained": ex.n_targets, "truncated": False} if ex else {}),
                }
            if self.keep:
                self.kept.append(Kept(rec.data, ex, rec.line, rec.row))  # type: ignore[arg-type]

    def _finish(self) -> None:
        _Scan._finish(self)  # columns, missing columns, duplicates, token statistics of the sources
        rep = self.report
        rep.columns_used = [c for c in (self.input_col, self.label_col) if c in rep.columns]
        rep.columns_ignored = [c for c in rep.columns if c not in rep.columns_used]
        n = len(self.lengths)
        for w in rep.warnings:
            if w.kind == "truncated":  # the generic message speaks of completions; here it is the source
                rep.warnings[rep.warnings.index(w)] = DataIssue(
                    "truncated",
                    f"{self.truncated:,} of {n:,} sources ({self.truncated / n:.1%}) in '{self.input_col}' are longer "
                    f"than cutoff_len {self.cutoff} tokens (longest: {max(self.lengths)}) and are cut to it: the model "
                    "reads only their start (raise cutoff_len to read more of them)",
                    field=self.input_col,
                )
        if self.target_truncated:
            rep.add_warning(
                DataIssue(
                    "truncated_target",
                    f"{plural(self.target_truncated, 'target')} in '{self.label_col}' "
                    f"({self.target_truncated / n:.1%}) {'is' if self.target_truncated == 1 else 'are'} longer than "
                    f"cutoff_len {self.cutoff} tokens (longest: "
                    f"{max(self.target_lengths)}) and are cut to it: their end is never learned",
                    field=self.label_col,
                )
            )
        if rep.token_stats is not None and self.target_lengths:
            lengths = sorted(self.target_lengths)
            rep.token_stats["target"] = {
                "min": lengths[0],
                "median": lengths[len(lengths) // 2],
                "p95": lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))],
                "max": lengths[-1],
                "truncated": self.target_truncated,
            }
