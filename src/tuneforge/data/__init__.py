"""The dataset layer: sources -> validated rows -> rendered text -> token ids with loss masks -> splits.

- `DataOptions`: how rows are read and rendered (the data_config fields both entry points take).
- `validate_source(...)` -> `ValidationReport`: stream a dataset once and say everything wrong with it.
- `prepare_dataset(...)` -> `PreparedData`: what training uses; raises `DataValidationError` (with the report)
  when the data is not trainable.
"""

from .example import IGNORE_INDEX, Example
from .formats import FORMATS, Template
from .options import DataOptions
from .prepare import PreparedData, PromptRenderer, prepare_dataset, validate_source
from .report import DataIssue, DataValidationError, ValidationReport
from .split import DEFAULT_FRACTIONS, split_indices

__all__ = [
    "DEFAULT_FRACTIONS",
    "FORMATS",
    "IGNORE_INDEX",
    "DataIssue",
    "DataOptions",
    "DataValidationError",
    "Example",
    "PreparedData",
    "PromptRenderer",
    "Template",
    "ValidationReport",
    "prepare_dataset",
    "split_indices",
    "validate_source",
]
