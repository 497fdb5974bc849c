"""`Example`: what the data layer hands the trainer — token ids plus per-token labels."""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100  # label value that cross-entropy skips (torch's default ignore_index)


@dataclass(frozen=True, slots=True)
class Example:
    """One tokenized training example.

    `labels[i]` is the token the loss trains on at position i (equal to `input_ids[i]`; the shift happens in the
    loss), or IGNORE_INDEX where no loss is taken (the prompt, unless train_on_inputs).
    """

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError(f"input_ids ({len(self.input_ids)}) and labels ({len(self.labels)}) differ in length")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)
