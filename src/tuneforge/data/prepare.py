"""The data layer's two entry points: `validate_source` (report only) and `prepare_dataset` (what training uses).

`prepare_dataset` validates and tokenizes in the same pass, refuses to return anything when the report has
errors (`DataValidationError`, carrying the report), then splits the rows deterministically for the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import TuneforgeError
from .classify import ClassExample
from .example import Example
from .formats import MessagesFormat, RowFormat
from .images import ImageExample
from .options import DataOptions
from .pairs import PreferenceFormat, pair_prompt
from .report import DataIssue, DataValidationError, ValidationReport
from .split import DEFAULT_FRACTIONS, check_fractions, held_out_counts, small_validation_warning, split_indices
from .tokenize import Encoder
from .validate import Kept, scan_path


def validate_source(
    data_path: str, options: DataOptions = DataOptions(), *, tokenizer: Any = None, max_errors: int = 20
) -> ValidationReport:
    """Check a dataset without keeping it: streams the source once and returns the report (never raises for
    problems with the data; they are in `report.errors`). Without a tokenizer, token checks and statistics are
    skipped and the report notes it."""
    return scan_path(data_path, options, tokenizer=tokenizer, max_errors=max_errors).report


class PromptRenderer:
    """The prompt of a row exactly as training tokenized it, for generating on held-out rows."""

    def __init__(self, fmt: RowFormat, encoder: Encoder):
        self.fmt = fmt
        self.encoder = encoder

    def render_prompt(self, row: dict[str, Any]) -> str:
        if isinstance(self.fmt, PreferenceFormat):
            return pair_prompt(self.encoder, self.fmt, row)[0]
        if isinstance(self.fmt, MessagesFormat):
            return self.encoder.chat_prompt(self.fmt.conversation(row))
        return self.fmt.render(row)[0]

    def prompt_ids(self, row: dict[str, Any]) -> list[int]:
        """Token ids of the prompt, special tokens included as in training (BOS once; none appended)."""
        if isinstance(self.fmt, PreferenceFormat):
            return pair_prompt(self.encoder, self.fmt, row)[1]
        if isinstance(self.fmt, MessagesFormat):
            # The chat template writes its own BOS; adding the tokenizer's would double it.
            return list(self.encoder.tokenizer(self.render_prompt(row), add_special_tokens=False)["input_ids"])
        return self.encoder.prompt_ids(self.fmt.render(row)[0])

    def reference(self, row: dict[str, Any]) -> str:
        """The text the model should generate after the prompt (the completion, or the last assistant turn),
        without EOS; for a preference pair, the chosen answer)."""
        if isinstance(self.fmt, (MessagesFormat, PreferenceFormat)):
            return self.fmt.completion_text(row) or ""
        return self.fmt.render(row)[1]


@dataclass
class PreparedData:
    """Tokenized splits plus the source rows they came from (same order), and the validation report."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    report: ValidationReport
    train_rows: list[dict[str, Any]] = field(default_factory=list)
    validation_rows: list[dict[str, Any]] = field(default_factory=list)
    test_rows: list[dict[str, Any]] = field(default_factory=list)
    validation_report: ValidationReport | None = None  # the report of validation_data_path, when given
    renderer: PromptRenderer | None = field(default=None, repr=False)  # None for classification data
    labels: list[str] = field(default_factory=list)  # classification: the label names, index = label id

    def render_prompt(self, row: dict[str, Any]) -> str:
        """The prompt text of `row` exactly as tokenized for training (for chat: the conversation up to its last
        assistant turn, with the generation prompt)."""
        assert self.renderer is not None
        return self.renderer.render_prompt(row)

    def prompt_ids(self, row: dict[str, Any]) -> list[int]:
        """The prompt's token ids exactly as in training; feed these to `generate` rather than re-tokenizing the
        text, which would add a second BOS with some tokenizers."""
        assert self.renderer is not None
        return self.renderer.prompt_ids(row)

    def reference(self, row: dict[str, Any]) -> str:
        """The expected output for `row` (completion text without EOS), for exact-match evaluation."""
        assert self.renderer is not None
        return self.renderer.reference(row)


def _check_training_left(n: int, fractions: dict[str, float], *, has_validation_file: bool) -> None:
    """Held-out splits are never shrunk silently to make room for training: ask for fewer instead."""
    counts = held_out_counts(n, {**fractions, "validation": 0.0} if has_validation_file else fractions)
    if n - counts["validation"] - counts["test"] < 1:
        asked = ", ".join(
            f"{k} {fractions[k]:g} ({counts[k]} row{'s' * (counts[k] != 1)})"
            for k in ("validation", "test")
            if counts[k]
        )
        raise TuneforgeError(
            f"data_config.data_split_config: {asked} of {n:,} row{'s' * (n != 1)} leaves no rows for training; "
            "lower the held-out fractions, add rows, or give validation_data_path / test_data_path",
            field="data_config.data_split_config",
            value=fractions,
        )


def prepare_dataset(
    data_path: str,
    options: DataOptions,
    *,
    tokenizer: Any,
    split_fractions: dict[str, float] | None = None,
    validation_data_path: str | None = None,
    test_data_path: str | None = None,
    seed: int = 42,
) -> PreparedData:
    """Validate, tokenize and split. Raises `DataValidationError` (with `.report`) when the data is not trainable.

    With `validation_data_path`, that source is the validation split (validated in the same format) and the
    'validation' fraction is ignored; a 'test' fraction is still taken from `data_path`. Likewise with
    `test_data_path`: that source is the test split and the 'test' fraction is ignored.

    Raises TuneforgeError when the held-out fractions would leave no training rows.
    """
    if tokenizer is None and options.task != "image_classification":  # images are read without one
        raise TuneforgeError("prepare_dataset needs the model's tokenizer to build training examples")
    fractions = check_fractions(dict(split_fractions if split_fractions is not None else DEFAULT_FRACTIONS))
    result = scan_path(data_path, options, tokenizer=tokenizer, keep=True)
    report = result.report
    if not report.ok:
        raise DataValidationError(report)
    classification = options.task in ("classification", "image_classification")
    assert options.task != "causal_lm" or (result.fmt is not None and result.encoder is not None)
    fmt_name = result.fmt.name if result.fmt is not None else options.data_format
    labels = list(report.labels or {})
    kept = result.kept

    def side_source(path: str, split: str):
        # The same hub dataset or datasets folder as the training data means its split of that name.
        same = path.strip() == data_path.strip()
        res = scan_path(
            path,
            replace(options, data_format=fmt_name, data_split=split if same else None),
            tokenizer=tokenizer,
            keep=True,
        )
        if not res.report.ok:
            raise DataValidationError(res.report)
        if classification:
            relabel(res.kept, list(res.report.labels or {}), labels, res.report.source, options.label_column)
        return res

    test_kept_file = None
    if test_data_path:
        test_kept_file = side_source(test_data_path, "test").kept
        # The test rows come from the file: a 'test' share of data_path goes to training instead.
        fractions = {**fractions, "train": fractions["train"] + fractions["test"], "test": 0.0}
    _check_training_left(len(kept), fractions, has_validation_file=bool(validation_data_path))

    val_report = None
    if validation_data_path:
        vres = side_source(validation_data_path, "validation")
        val_report = vres.report
        # The validation rows come from the file: training gets everything but a requested test share.
        fractions = {"train": 1.0 - fractions["test"], "validation": 0.0, "test": fractions["test"]}
        idx = split_indices(len(kept), fractions, seed)
        val_kept = vres.kept
    else:
        idx = split_indices(len(kept), fractions, seed)
        val_kept = [kept[i] for i in idx["validation"]]
    train_kept = [kept[i] for i in idx["train"]]
    test_kept = test_kept_file if test_kept_file is not None else [kept[i] for i in idx["test"]]

    report.splits = {"train": len(train_kept), "validation": len(val_kept), "test": len(test_kept)}
    wanted_val = validation_data_path or fractions.get("validation", 0) > 0
    if wanted_val:
        if validation_data_path:
            source = f"{val_report.source if val_report else validation_data_path} has"
        else:
            source = f"the 'validation' fraction {fractions['validation']:g} of {len(kept):,} rows gives"
        message = small_validation_warning(len(val_kept), source)
        if message:
            report.add_warning(DataIssue("small_validation", message))

    def examples(rows: list[Kept]) -> list[Example]:
        # Preference data holds PairExamples here: the recipe hands those to its PreferenceObjective only.
        return [k.example for k in rows if k.example is not None]  # type: ignore[misc]

    return PreparedData(
        train=examples(train_kept),
        validation=examples(val_kept),
        test=examples(test_kept),
        report=report,
        train_rows=[k.data for k in train_kept],
        validation_rows=[k.data for k in val_kept],
        test_rows=[k.data for k in test_kept],
        validation_report=val_report,
        renderer=PromptRenderer(result.fmt, result.encoder) if result.fmt and result.encoder else None,
        labels=labels,
    )


def relabel(kept: list[Kept], own: list[str], labels: list[str], source: str, column: str) -> None:
    """Give the examples of a separate validation or test file the training data's label ids (each file orders
    only the labels it has); a label the training data lacks cannot be learned or scored: refused by name."""
    unknown = [name for name in own if name not in labels]
    if unknown:
        raise TuneforgeError(
            f"{source}: label{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} in '{column}' "
            f"{'do' if len(unknown) > 1 else 'does'} not occur in the training data; its labels are: "
            f"{', '.join(labels)}",
            field="data_config.label_column",
            value=unknown,
        )
    index = {name: labels.index(name) for name in own}
    for i, k in enumerate(kept):
        ex = k.example
        if isinstance(ex, (ClassExample, ImageExample)):
            kept[i] = Kept(k.data, replace(ex, label=index[own[ex.label]]), k.line, k.row)
