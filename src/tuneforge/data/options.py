"""`DataOptions`: how a source's rows are read and turned into training text, in one object.

Validation (`validate_source`, the API's reports), preparation for training (`prepare_dataset`) and the scan
under both take the same options; passing them as one value keeps those call sites from drifting apart (a
field added here reaches every one of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..spec import DataConfig


@dataclass(frozen=True)
class DataOptions:
    cutoff_len: int = 512  # tokens per example; longer ones are cut (and counted in the report)
    prompt_template: str | None = None  # "{column}" placeholders; the completion is the last (or completion_column)
    data_format: str = "auto"  # one of data.FORMATS or "auto"
    completion_column: str | None = None  # with prompt_template: the placeholder the loss is taken on
    train_on_inputs: bool = False  # take the loss on the prompt too
    data_subset: str | None = None  # hub dataset configuration
    data_split: str | None = None  # hub dataset split
    hf_token: str | None = None  # for private or gated hub datasets
    task: str = "causal_lm"  # data_config.task: classification rows are read by data/classify.py
    text_column: str = "text"  # classification: the text
    label_column: str = "label"  # classification, image_classification: the label
    image_column: str = "image"  # image_classification: the image (path, bytes or datasets Image value)

    @classmethod
    def from_config(cls, d: DataConfig, *, hf_token: str | None = None) -> DataOptions:
        """The options of a job's `data_config` (the token lives in the spec's hf_config)."""
        return cls(
            cutoff_len=d.cutoff_len,
            prompt_template=d.prompt_template,
            data_format=d.data_format,
            completion_column=d.completion_column,
            train_on_inputs=d.train_on_inputs,
            data_subset=d.data_subset,
            data_split=d.data_split,
            hf_token=hf_token,
            task=d.task,
            text_column=d.text_column,
            label_column=d.label_column,
            image_column=d.image_column,
        )
