"""Validation: one streaming pass over a source that checks every row and builds the `ValidationReport`.

The same pass builds the training examples when `keep=True` (prepare_dataset), so what is validated is exactly
what is trained. With `keep=False` nothing per row is held except a 16-byte fingerprint (for duplicates) and the
token length, so a multi-GB file validates in bounded memory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TuneforgeError, did_you_mean
from .example import IGNORE_INDEX, Example
from .formats import SHORT_COMPLETION_CHARS, MessagesFormat, RowFormat, TemplateFormat, learned, resolve_format
from .options import DataOptions
from .pairs import PairExample, PreferenceFormat, encode_preference
from .report import MASK_CLOSE, MASK_OPEN, DataIssue, ValidationReport, plural
from .sources import Record, Source, SourceError, open_source, redact_url, where
from .tokenize import ChatTemplateError, Encoder, chat_example, pair_example

if TYPE_CHECKING:
    from .classify import ClassExample
    from .images import ImageExample
    from .seq2seq import Seq2SeqExample

HEAD_ROWS = 100  # good records read before choosing the format (JSON has no header to learn the columns from)
BATCH = 256  # rows tokenized per call
_TEXT_TYPES = {"string", "large_string", "string_view"}
_JSON_TYPES = {
    str: "string",
    bool: "bool",
    int: "int",
    float: "float",
    type(None): "null",
    list: "list",
    dict: "object",
}


@dataclass(slots=True)
class Kept:
    """A row that passed validation, with its example (None when validating without a tokenizer)."""

    data: dict[str, Any]
    example: Example | PairExample | ClassExample | ImageExample | Seq2SeqExample | None
    line: int | None
    row: int


@dataclass
class ScanResult:
    report: ValidationReport
    kept: list[Kept] = field(default_factory=list)
    fmt: RowFormat | None = None
    encoder: Encoder | None = None


def display_name(data_path: str) -> str:
    return redact_url(data_path) if data_path.lower().startswith(("http://", "https://")) else data_path


def scan_path(
    data_path: str,
    options: DataOptions = DataOptions(),
    *,
    tokenizer: Any = None,
    max_errors: int = 20,
    keep: bool = False,
) -> ScanResult:
    cutoff_len = options.cutoff_len
    report = ValidationReport(source=display_name(data_path), cutoff_len=cutoff_len, max_errors=max_errors)
    if not isinstance(cutoff_len, int) or cutoff_len <= 0:
        report.add_error(DataIssue("config", f"cutoff_len must be a positive number of tokens, got {cutoff_len!r}"))
        return ScanResult(report)
    try:
        if options.task == "image_classification":
            from .images import ImageClassificationScan, class_folder_source, is_class_folder

            folder = Path(data_path.strip()).expanduser()
            if is_class_folder(folder):  # a folder of class subfolders; otherwise a file with an image column
                source = class_folder_source(
                    folder, image_column=options.image_column, label_column=options.label_column
                )
                return ImageClassificationScan(source, report, options, tokenizer=None, keep=keep).run()
        with open_source(
            data_path, data_subset=options.data_subset, data_split=options.data_split, hf_token=options.hf_token
        ) as source:
            if options.task == "image_classification":
                return ImageClassificationScan(source, report, options, tokenizer=None, keep=keep).run()
            if options.task == "classification":
                from .classify import ClassificationScan

                return ClassificationScan(source, report, options, tokenizer=tokenizer, keep=keep).run()
            if options.task == "seq2seq":
                from .seq2seq import Seq2SeqScan

                return Seq2SeqScan(source, report, options, tokenizer=tokenizer, keep=keep).run()
            return _Scan(source, report, options, tokenizer=tokenizer, keep=keep).run()
    except SourceError as err:
        report.add_error(err.issue)
        return ScanResult(report)


class _Scan:
    def __init__(self, source: Source, report: ValidationReport, options: DataOptions, *, tokenizer: Any, keep: bool):
        self.source = source
        self.report = report
        self.cutoff = report.cutoff_len or 0
        self.tokenizer = tokenizer
        self.options = options
        self.keep = keep
        self.noun = "column" if source.schema is not None else "field"

        self.fmt: RowFormat | None = None
        self.encoder: Encoder | None = None
        self.skip: frozenset[str] = frozenset()
        self.renderable = False
        self.kept: list[Kept] = []
        self.pending: list[Record] = []
        self.types: dict[str, set[str]] = {}
        self.n_data = 0
        self.missing: dict[str, int] = {}
        self.empty_prompt: dict[str, list[Any]] = {}  # field -> [count, first location]
        self.dropped: dict[str, list[Any]] = {}  # field left out of the template -> [count, first lines/rows]
        self.short: list[Any] = [0, []]  # count, first locations
        self.hashes = array("Q")
        self.locs = array("Q")  # the line (or row, for sources without lines) of each fingerprint
        self.all_lines = True
        self.lengths = array("I")
        self.truncated = 0

    # --- setup ---------------------------------------------------------------------------------------------------
    def _choose_format(self, head: list[Record]) -> None:
        src, rep = self.source, self.report
        if src.schema is not None:
            columns = list(src.schema)
        else:
            columns = list(dict.fromkeys(k for r in head if r.data is not None for k in r.data))
        if not any(r.data is not None for r in head):
            return  # nothing readable: the reading errors or "no rows" say what is wrong, not the format
        choice = resolve_format(
            columns,
            data_format=self.options.data_format,
            prompt_template=self.options.prompt_template,
            completion_column=self.options.completion_column,
            source_name=src.name,
            head=[r.data for r in head if r.data is not None],
        )
        for message in choice.errors:
            rep.add_error(DataIssue(choice.kind, message))
        for message in choice.warnings:
            rep.add_warning(DataIssue("format_choice", message))
        fmt = choice.format
        if fmt is None:
            return
        self.fmt = fmt
        rep.format = fmt.name
        rep.format_detail = fmt.describe()
        ok = True
        if self.tokenizer is not None:
            try:
                self.encoder = Encoder(self.tokenizer)
            except TuneforgeError as err:
                rep.add_error(DataIssue("config", str(err)))
                ok = False
            if self.encoder is not None and isinstance(fmt, MessagesFormat) and not self.encoder.has_chat_template:
                rep.add_error(
                    DataIssue(
                        "chat_template",
                        f"the tokenizer has no chat template, so '{fmt.fields[0]}' cannot be rendered; use a model "
                        "with a chat "
                        "template (an instruct/chat model) or give a prompt_template",
                    )
                )
                ok = False
        if src.schema is not None:
            ok = self._check_schema(fmt, src.schema, columns) and ok
        self.renderable = ok

    def _check_schema(self, fmt: RowFormat, schema: dict[str, str], columns: list[str]) -> bool:
        """Column-level checks where the types are declared: one error per column instead of one per row."""
        name, rep = self.source.name, self.report
        skip = set()
        for col in fmt.fields:
            if isinstance(fmt, TemplateFormat):
                needed = (
                    "the template needs it as the completion"
                    if col == fmt.template.completion
                    else "the template needs it in the prompt"
                )
            else:
                needed = f"data_format '{fmt.name}' needs it"
            if col not in schema:
                rep.add_error(
                    DataIssue(
                        "missing_column",
                        f"{name}: no column '{col}'{did_you_mean(col, columns)}; {needed}; the columns are: "
                        f"{', '.join(columns)}",
                        field=col,
                    )
                )
                skip.add(col)
                continue
            typ = schema[col]
            if col in fmt.text_fields and typ not in _TEXT_TYPES:
                rep.add_error(
                    DataIssue(
                        "not_text",
                        f"{name}: column '{col}' holds {typ} values, not text; {needed}, so it must be text "
                        "(convert the column to strings)",
                        field=col,
                    )
                )
                skip.add(col)
            elif isinstance(fmt, MessagesFormat) and not ("list" in typ or typ in _TEXT_TYPES):
                rep.add_error(
                    DataIssue(
                        "bad_messages",
                        f"{name}: column '{col}' holds {typ} values; it must hold lists of messages",
                        field=col,
                    )
                )
                skip.add(col)
        self.skip = frozenset(skip)
        return not skip

    # --- the pass ------------------------------------------------------------------------------------------------
    def run(self) -> ScanResult:
        src, rep = self.source, self.report
        rep.source_format = src.kind
        rep.source_detail = src.detail
        rep.notes.extend(src.notes)
        if self.tokenizer is not None:
            rep.tokenizer_used = getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__
        records: Iterator[Record] = src.records()
        head: list[Record] = []
        good = 0
        for rec in records:
            head.append(rec)
            good += rec.data is not None
            if good >= HEAD_ROWS or len(head) >= 10 * HEAD_ROWS:
                break
        self._choose_format(head)
        for rec in itertools.chain(head, records):
            self._record(rec)
        self._flush()
        self._finish()
        return ScanResult(rep, self.kept, self.fmt, self.encoder)

    def _record(self, rec: Record) -> None:
        rep = self.report
        if rec.row == 0:  # a problem with the file as a whole (e.g. the CSV header), not a row
            if rec.error is not None:
                rep.add_error(rec.error)
            return
        rep.n_rows += 1
        if rec.error is not None:
            rep.add_error(rec.error)
            return
        data = rec.data
        assert data is not None
        self.n_data += 1
        if self.source.schema is None:
            for k, v in data.items():
                t = self.types.get(k)
                if t is None:
                    t = self.types[k] = set()
                t.add(_JSON_TYPES.get(type(v), type(v).__name__))
        digest = hashlib.blake2b(
            json.dumps(data, sort_keys=True, ensure_ascii=False, default=str).encode(), digest_size=8
        ).digest()
        self.hashes.append(int.from_bytes(digest, "little"))
        self.locs.append(rec.line if rec.line is not None else rec.row)
        self.all_lines = self.all_lines and rec.line is not None
        fmt = self.fmt
        if fmt is None:
            return
        failed = False
        for p in fmt.check(data, self.noun, self.skip):
            if p.warning:
                if p.kind == "dropped_input":
                    dropped = self.dropped.setdefault(p.field, [0, []])
                    dropped[0] += 1
                    if len(dropped[1]) < 5:
                        dropped[1].append(rec.line if rec.line is not None else rec.row)
                    continue
                entry = self.empty_prompt.setdefault(p.field, [0, where(self.source.name, rec.line, rec.row)])
                entry[0] += 1
                continue
            failed = True
            if p.kind == "missing_field":
                self.missing[p.field] = self.missing.get(p.field, 0) + 1
            self._row_error(rec, p.kind, p.text, p.field)
        if failed or not self.renderable:
            return
        self.pending.append(rec)
        if len(self.pending) >= BATCH:
            self._flush()

    def _row_error(self, rec: Record, kind: str, text: str, field_name: str | None) -> None:
        self.report.add_error(
            DataIssue(kind, f"{where(self.source.name, rec.line, rec.row)}: {text}", rec.line, rec.row, field_name)
        )

    # --- tokenizing a batch ---------------------------------------------------------------------------------------
    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        fmt, enc = self.fmt, self.encoder
        assert fmt is not None
        if enc is None:
            for rec in batch:
                self._accept(rec, None, None)
            return
        if isinstance(fmt, PreferenceFormat):
            self._flush_pairs(enc, fmt, batch)
            return
        if isinstance(fmt, MessagesFormat):
            results = enc.encode_chats([fmt.conversation(r.data) for r in batch])  # type: ignore[arg-type]
            for rec, res in zip(batch, results, strict=True):
                if isinstance(res, ChatTemplateError):
                    self._row_error(rec, "chat_template", str(res), fmt.fields[0])
                    continue
                ids, trained = res
                first = next((i for i, t in enumerate(trained) if t), None)
                if not self.options.train_on_inputs and (first is None or first >= self.cutoff):
                    at = f"starts at token {first + 1}" if first is not None else "is empty after rendering"
                    self._row_error(
                        rec,
                        "prompt_too_long",
                        f"the first assistant turn {at}, but cutoff_len is {self.cutoff}; nothing would be learned "
                        "(raise cutoff_len or shorten the conversation before the first assistant turn)",
                        fmt.fields[0],
                    )
                    continue
                ex = chat_example(ids, trained, cutoff_len=self.cutoff, train_on_inputs=self.options.train_on_inputs)
                self._accept(rec, ex, len(ids))
            return
        rendered = [fmt.render(r.data) for r in batch]  # type: ignore[arg-type]
        pairs = enc.encode_pairs([p for p, _ in rendered], [c for _, c in rendered])
        for rec, (p_ids, c_ids) in zip(batch, pairs, strict=True):
            if not self.options.train_on_inputs and len(p_ids) >= self.cutoff:
                self._row_error(
                    rec,
                    "prompt_too_long",
                    f"the prompt alone is {len(p_ids)} tokens and cutoff_len is {self.cutoff}; nothing of the "
                    "completion would be learned (raise cutoff_len or shorten the prompt)",
                    None,
                )
                continue
            ex = pair_example(p_ids, c_ids, cutoff_len=self.cutoff, train_on_inputs=self.options.train_on_inputs)
            self._accept(rec, ex, len(p_ids) + len(c_ids))

    def _flush_pairs(self, enc: Encoder, fmt: PreferenceFormat, batch: list[Record]) -> None:
        results = encode_preference(enc, fmt, [r.data for r in batch], cutoff_len=self.cutoff)  # type: ignore[misc]
        for rec, res in zip(batch, results, strict=True):
            if isinstance(res, ChatTemplateError):
                self._row_error(rec, "chat_template", str(res), "prompt")
                continue
            pair, full_len, prompt_len = res
            if prompt_len >= self.cutoff:
                self._row_error(
                    rec,
                    "prompt_too_long",
                    f"the prompt alone is {prompt_len} tokens and cutoff_len is {self.cutoff}; nothing of the chosen "
                    "and rejected answers would be compared (raise cutoff_len or shorten the prompt)",
                    "prompt",
                )
                continue
            self._accept(rec, pair, full_len)

    def _accept(self, rec: Record, ex: Example | PairExample | None, full_len: int | None) -> None:
        rep = self.report
        rep.n_trainable += 1
        data = rec.data
        assert data is not None and self.fmt is not None
        if full_len is not None:
            self.lengths.append(full_len)
            if full_len > self.cutoff:
                self.truncated += 1
        answer = self.fmt.completion_text(data)
        if answer is not None and len(answer.strip()) < SHORT_COMPLETION_CHARS:
            self.short[0] += 1
            if len(self.short[1]) < 3:
                self.short[1].append(f"{where(self.source.name, rec.line, rec.row)}: {answer.strip()!r}")
        if rep.first_example is None:
            rep.first_example = self._first_example(rec, ex, full_len)
        if self.keep:
            self.kept.append(Kept(data, ex, rec.line, rec.row))

    def _first_example(self, rec: Record, ex: Example | PairExample | None, full_len: int | None) -> dict[str, Any]:
        if isinstance(self.fmt, PreferenceFormat):
            return self._first_pair(rec, ex)
        segments: list[tuple[str, bool]] = []
        if isinstance(ex, Example):  # (a PairExample comes only with PreferenceFormat, shown by _first_pair)
            tok = self.tokenizer
            for trained, group in itertools.groupby(
                zip(ex.input_ids, ex.labels, strict=True), key=lambda pair: pair[1] != IGNORE_INDEX
            ):
                ids = [i for i, _ in group]
                segments.append(
                    (tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False), trained)
                )
        elif isinstance(self.fmt, MessagesFormat):
            for m in self.fmt.conversation(rec.data).messages:  # type: ignore[arg-type]
                text = m["content"] or json.dumps([c["function"] for c in m.get("tool_calls", [])])
                segments.append((f"<{m['role']}>\n{text}\n", learned(m)))
        else:
            assert self.fmt is not None
            prompt, completion = self.fmt.render(rec.data)  # type: ignore[arg-type]
            segments = [(prompt, self.options.train_on_inputs), (completion, True)]
        segments = [s for s in segments if s[0]]
        rendered = "".join(text if trained else f"{MASK_OPEN}{text}{MASK_CLOSE}" for text, trained in segments)
        out: dict[str, Any] = {
            "line": rec.line,
            "row": rec.row,
            "tokenized": ex is not None,
            "rendered": rendered,
            "segments": [{"text": t, "trained": tr} for t, tr in segments],
        }
        if ex is not None:
            out.update(n_tokens=len(ex), n_trained=ex.n_targets, truncated=bool(full_len and full_len > len(ex)))
        return out

    def _first_pair(self, rec: Record, pair: Example | PairExample | None) -> dict[str, Any]:
        """The first pair as the model sees it: the prompt once (no loss), then each answer."""
        assert isinstance(self.fmt, PreferenceFormat) and rec.data is not None
        out: dict[str, Any] = {"line": rec.line, "row": rec.row, "tokenized": pair is not None, "pair": True}
        if isinstance(pair, PairExample):
            tok = self.tokenizer
            n_prompt = len(pair.chosen) - pair.chosen.n_targets

            def text(ids: tuple[int, ...]) -> str:
                return tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

            prompt = text(pair.chosen.input_ids[:n_prompt])
            chosen = text(pair.chosen.input_ids[n_prompt:])
            rejected = text(pair.rejected.input_ids[n_prompt:])
            out.update(
                n_tokens=len(pair),
                n_trained=pair.n_targets,
                chosen_tokens=len(pair.chosen),
                rejected_tokens=len(pair.rejected),
            )
        else:
            parts = [
                p if isinstance(p, str) else "".join(f"<{m['role']}>\n{m['content']}\n" for m in p)
                for p in self.fmt.parts(rec.data)
            ]
            prompt, chosen, rejected = parts
        out.update(prompt=prompt, chosen=chosen, rejected=rejected)
        out["segments"] = [
            {"text": prompt, "trained": False},
            {"text": chosen, "trained": True},
            {"text": rejected, "trained": True},
        ]
        out["rendered"] = f"{MASK_OPEN}{prompt}{MASK_CLOSE}\n[chosen]   {chosen}\n[rejected] {rejected}"
        return out

    # --- the summary ----------------------------------------------------------------------------------------------
    def _finish(self) -> None:
        src, rep = self.source, self.report
        if src.schema is not None:
            rep.columns = dict(src.schema)
        else:
            rep.columns = {k: "|".join(sorted(v)) for k, v in self.types.items()}
        if self.fmt is not None:
            rep.columns_used = [c for c in rep.columns if c in self.fmt.fields or c in self.fmt.extra_fields]
            rep.columns_ignored = [c for c in rep.columns if c not in rep.columns_used]
        if rep.n_rows == 0 and not rep.error_counts:
            rep.add_error(DataIssue("no_rows", src.no_rows_message or f"{src.name}: no records"))
        # A field missing from every row is a missing column: say it once, with the columns there are.
        for name, count in self.missing.items():
            if count == self.n_data and self.n_data > 1:
                cols = list(rep.columns)
                rep.replace_errors(
                    "missing_field",
                    name,
                    count,
                    DataIssue(
                        "missing_column",
                        f"{src.name}: no row has a field '{name}'{did_you_mean(name, cols)}; the fields are: "
                        f"{', '.join(cols) or 'none'}",
                        field=name,
                    ),
                )
        self._warn_duplicates()
        n = rep.n_trainable
        for name, (count, first) in self.empty_prompt.items():
            rep.add_warning(
                DataIssue(
                    "empty_prompt_field",
                    f"{count:,} of {self.n_data:,} rows ({count / max(self.n_data, 1):.1%}) have an empty '{name}' "
                    f"(allowed: it renders as empty text in the prompt), first at {first}",
                    field=name,
                )
            )
        unit = "lines" if src.kind in ("json", "jsonl", "csv") else "rows"
        for name, (count, places) in self.dropped.items():
            shown = ", ".join(map(str, places)) + (f" and {count - len(places):,} more" if count > len(places) else "")
            rep.add_warning(
                DataIssue(
                    "dropped_input",
                    f"{src.name}: column '{name}' is not in prompt_template, but {count:,} of {self.n_data:,} rows have "
                    f"text in it ({unit} {shown}); that text is dropped from the prompt: add {{{name}}} to the "
                    "template (or leave prompt_template empty to use data_format 'alpaca')",
                    field=name,
                )
            )
        if self.short[0]:
            count = self.short[0]
            rep.add_warning(
                DataIssue(
                    "short_completion",
                    f"{count:,} of {n:,} rows ({count / n:.1%}) have a very short completion (under "
                    f"{SHORT_COMPLETION_CHARS} characters), e.g. {'; '.join(self.short[1])}",
                )
            )
        if self.lengths:
            self._token_stats()

    def _warn_duplicates(self) -> None:
        if len(self.hashes) < 2:
            return
        import numpy as np

        hashes = np.frombuffer(self.hashes, dtype=np.uint64)
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        dup = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1  # positions (in `order`) of repeats
        if not len(dup):
            return
        locs = np.frombuffer(self.locs, dtype=np.uint64)
        unit = "line" if self.all_lines else "row"
        examples = []
        for pos in sorted(dup, key=lambda p: locs[order[p]])[:3]:
            start = pos
            while start > 0 and ordered[start - 1] == ordered[pos]:
                start -= 1
            examples.append(f"{unit} {int(locs[order[pos]])} repeats {unit} {int(locs[order[start]])}")
        count = len(dup)
        self.report.add_warning(
            DataIssue(
                "duplicate_rows",
                f"{plural(count, 'duplicate row')} ({count / len(hashes):.1%}): {', '.join(examples)}; duplicates weigh "
                "those examples more and leak between train and validation splits: remove them unless intended",
            )
        )

    def _token_stats(self) -> None:
        import numpy as np

        lengths = np.frombuffer(self.lengths, dtype=np.uint32)
        n = len(lengths)
        rep = self.report
        rep.token_stats = {
            "count": int(n),
            "min": int(lengths.min()),
            "median": round(float(np.percentile(lengths, 50))),
            "p95": round(float(np.percentile(lengths, 95))),
            "max": int(lengths.max()),
            "mean": round(float(lengths.mean()), 1),
            "cutoff_len": self.cutoff,
            "truncated": int(self.truncated),
            "truncated_share": self.truncated / n,
        }
        if self.truncated and isinstance(self.fmt, PreferenceFormat):
            rep.add_warning(
                DataIssue(
                    "truncated",
                    f"{self.truncated:,} of {n:,} pairs ({self.truncated / n:.1%}) have prompt + answer longer than "
                    f"cutoff_len {self.cutoff} tokens and will be truncated (longest: {int(lengths.max())} tokens); "
                    "the cut part of an answer is not compared",
                )
            )
        elif self.truncated:
            rep.add_warning(
                DataIssue(
                    "truncated",
                    f"{self.truncated:,} of {n:,} examples ({self.truncated / n:.1%}) are longer than cutoff_len "
                    f"{self.cutoff} tokens and will be cut (longest: {int(lengths.max())} tokens); the cut part is "
                    "not learned, and a cut completion never learns to stop",
                )
            )
