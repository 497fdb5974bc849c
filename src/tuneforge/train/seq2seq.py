"""Seq2seq training beside the causal-LM path of recipe.py (`data_config.task: seq2seq`, T5/BART-style models).

The recipe stays one loop; it hands batches to `Seq2SeqTask` instead of `train_step`/`evaluate`. The encoder reads
the source; the decoder reads the target shifted right (the model's decoder_start_token_id first) and the loss is
the cross-entropy on the target tokens only (padding is -100), averaged over the step's target tokens however they
are split into micro-batches, as SFT averages. Each evaluation records the validation loss and, from greedy
generation bounded by the longest reference, exact match, chrF and ROUGE-L (evaluate/metrics.py, which follows
sacreBLEU and rouge_score); after training, `scores` gives the published adapter's figures on the held-out rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..data.example import IGNORE_INDEX
from ..data.seq2seq import Seq2SeqExample
from ..evaluate.metrics import score_answers
from ..runtime import Runtime

SEQ2SEQ_METRICS = ("exact_match", "chrf", "rouge_l")
MAX_NEW_TOKENS = 512  # the generation bound's ceiling, whatever the references' lengths


def collate_seq2seq(examples: Sequence[Seq2SeqExample], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (B, S) right-padded with `pad_id`; labels (B, T) right-padded with -100."""
    src = max(len(e.input_ids) for e in examples)
    tgt = max(len(e.labels) for e in examples)
    input_ids = torch.full((len(examples), src), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), src), dtype=torch.long)
    labels = torch.full((len(examples), tgt), IGNORE_INDEX, dtype=torch.long)
    for row, ex in enumerate(examples):
        input_ids[row, : len(ex.input_ids)] = torch.tensor(ex.input_ids)
        attention_mask[row, : len(ex.input_ids)] = 1
        labels[row, : len(ex.labels)] = torch.tensor(ex.labels)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def decoder_inputs(labels: torch.Tensor, *, start_id: int, pad_id: int) -> torch.Tensor:
    """The decoder's inputs: `labels` shifted one to the right after `start_id`, -100 read as padding (what T5's
    and BART's `_shift_right`/`shift_tokens_right` do)."""
    shifted = labels.new_full(labels.shape, pad_id)
    shifted[:, 0] = start_id
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_id)


def _start_id(model, pad_id: int) -> int:
    start = getattr(model.config, "decoder_start_token_id", None)
    return pad_id if start is None else int(start)


def target_loss_sum(model, batch: dict[str, torch.Tensor], pad_id: int) -> torch.Tensor:
    """Summed cross-entropy (fp32) over the target tokens of `batch`."""
    dec = decoder_inputs(batch["labels"], start_id=_start_id(model, pad_id), pad_id=pad_id)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=dec
    ).logits.float()
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), batch["labels"].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


class Seq2SeqTask:
    """Loss, step, evaluation and scores of an encoder-decoder; `tokenizer` decodes what it generates."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def step(
        self,
        model,
        micro_batches: list[list[Seq2SeqExample]],
        *,
        pad_id: int,
        runtime: Runtime,
        optimizer,
        scheduler,
        max_grad_norm: float,
    ) -> tuple[float, int, int]:
        """One optimizer step; returns (mean loss per target token, target tokens, real tokens)."""
        targets = sum(e.n_targets for mb in micro_batches for e in mb)
        total, tokens = 0.0, 0
        for mb in micro_batches:
            batch = collate_seq2seq(mb, pad_id)
            tokens += sum(len(e) for e in mb)
            batch = {k: v.to(runtime.device, non_blocking=True) for k, v in batch.items()}
            with runtime.autocast():
                loss = target_loss_sum(model, batch, pad_id)
            (loss / targets).backward()
            total += float(loss.detach())
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return total / targets, targets, tokens

    @torch.no_grad()
    def loss(
        self, model, examples: Sequence[Seq2SeqExample], *, batch_size: int, pad_id: int, runtime: Runtime
    ) -> float:
        """Mean cross-entropy per target token over `examples`."""
        total, targets = 0.0, 0
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            batch = {k: v.to(runtime.device) for k, v in collate_seq2seq(chunk, pad_id).items()}
            with runtime.autocast():
                total += float(target_loss_sum(model, batch, pad_id))
            targets += sum(e.n_targets for e in chunk)
        return total / targets if targets else float("nan")

    @torch.no_grad()
    def generate(
        self, model, examples: Sequence[Seq2SeqExample], *, batch_size: int, pad_id: int, runtime: Runtime
    ) -> list[str]:
        """Greedy generations for `examples` in their order (batched in source-length order to pad little), each at
        most as long as the longest reference plus a margin: a model that never stops costs bounded time."""
        bound = min(max((e.n_targets for e in examples), default=1) + 8, MAX_NEW_TOKENS)
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
        out = [""] * len(examples)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate_seq2seq([examples[i] for i in idx], pad_id)
            with runtime.autocast():
                ids = model.generate(
                    input_ids=batch["input_ids"].to(runtime.device),
                    attention_mask=batch["attention_mask"].to(runtime.device),
                    max_new_tokens=bound,
                    do_sample=False,
                    num_beams=1,
                    use_cache=True,  # the training config turns the cache off; generating is quadratic without it
                )
            for i, text in zip(idx, self.tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True):
                out[i] = text.strip()
        return out

    def references(self, examples: Sequence[Seq2SeqExample]) -> list[str]:
        """The target texts as trained (cut to cutoff_len like the labels)."""
        return [
            t.strip() for t in self.tokenizer.batch_decode([list(e.labels) for e in examples], skip_special_tokens=True)
        ]

    def scores(
        self, model, examples: Sequence[Seq2SeqExample], *, batch_size: int, pad_id: int, runtime: Runtime
    ) -> dict:
        """loss, exact_match, chrf, rouge_l on `examples`, the number of examples and the first few generations."""
        was_training = model.training
        model.eval()
        try:
            loss = self.loss(model, examples, batch_size=batch_size, pad_id=pad_id, runtime=runtime)
            predictions = self.generate(model, examples, batch_size=batch_size, pad_id=pad_id, runtime=runtime)
        finally:
            if was_training:
                model.train()
        references = self.references(examples)
        summary = score_answers(predictions, references, SEQ2SEQ_METRICS).summary
        samples = [{"prediction": p, "reference": r} for p, r in zip(predictions[:5], references[:5], strict=True)]
        return {"loss": loss, **summary, "examples": len(examples), "samples": samples}

    def evaluate(
        self, model, examples: Sequence[Seq2SeqExample], *, batch_size: int, pad_id: int | None, runtime: Runtime
    ) -> dict[str, float]:
        """The eval record's values: eval_loss (per target token), eval_exact_match, eval_chrf, eval_rouge_l.
        `pad_id` None (the recipe's session passes its tokenizer's, which T5 and BART always have): the tokenizer's."""
        pad = self.tokenizer.pad_token_id if pad_id is None else pad_id
        s = self.scores(model, examples, batch_size=batch_size, pad_id=pad, runtime=runtime)
        return {"eval_loss": s["loss"], **{f"eval_{m}": s[m] for m in SEQ2SEQ_METRICS}}
