"""Proof per encoder-decoder architecture (data_config.task: seq2seq): a tiny random T5, gated T5 (Flan-T5's MLP) and
BART trains with LoRA in both stacks (the loss on the target tokens only), moves nothing but LoRA weights, round-trips
through plain PEFT with identical logits and generations, and merges into plain transformers weights with the same
logits. Loaded and wrapped by tuneforge's own components, as the recipe does.
"""

from __future__ import annotations

import json

import pytest
import torch

from tiny import TINY_SEQ2SEQ_CONFIGS, save_tiny_seq2seq
from tuneforge.adapter_card import seq2seq_card
from tuneforge.data.seq2seq import Seq2SeqExample
from tuneforge.errors import TuneforgeError
from tuneforge.inference import load_for_inference
from tuneforge.models.catalog import SEQ2SEQ_ARCHITECTURES, SEQ2SEQ_CATALOG, get_entry
from tuneforge.models.classifier import check_task
from tuneforge.models.loader import resolve_model
from tuneforge.models.lora import LoraSettings, apply_lora, load_base_model
from tuneforge.models.memory import ModelShape
from tuneforge.runtime import pick_runtime
from tuneforge.train.seq2seq import collate_seq2seq, decoder_inputs, target_loss_sum

LORA = LoraSettings(r=4, alpha=8)
TARGETS = {
    "t5": ["q", "k", "v", "o", "wi", "wo"],
    "t5:gated": ["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


def _examples() -> list[Seq2SeqExample]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n in (9, 12, 7, 12):  # ragged: padding on both sides must not count
        src = torch.randint(3, 380, (n,), generator=g).tolist()
        out.append(Seq2SeqExample(tuple(src), (*reversed(src[: n // 2]), 2)))  # the first half reversed, then EOS
    return out


EXAMPLES = _examples()
BATCH = collate_seq2seq(EXAMPLES, pad_id=0)


def _loss(model) -> float:
    with torch.no_grad():
        return float(target_loss_sum(model, BATCH, 0)) / sum(e.n_targets for e in EXAMPLES)


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    start = model.config.decoder_start_token_id
    dec = decoder_inputs(BATCH["labels"], start_id=start, pad_id=0)
    return model(input_ids=BATCH["input_ids"], attention_mask=BATCH["attention_mask"], decoder_input_ids=dec).logits


@torch.no_grad()
def _generate(model) -> list[list[int]]:
    ids = model.generate(
        input_ids=BATCH["input_ids"], attention_mask=BATCH["attention_mask"], max_new_tokens=8, do_sample=False
    )
    return ids.tolist()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_decoder_inputs_shift_the_targets_right_and_pad_the_ignored_positions():
    labels = torch.tensor([[5, 6, 2, -100], [7, 2, -100, -100]])
    assert decoder_inputs(labels, start_id=9, pad_id=0).tolist() == [[9, 5, 6, 2], [9, 7, 2, 0]]
    assert BATCH["labels"][2].tolist()[-1] == -100 and BATCH["attention_mask"][2].sum() == 7


@pytest.mark.parametrize("arch", list(TINY_SEQ2SEQ_CONFIGS))
def test_seq2seq_lora_trains_round_trips_and_merges(arch, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    folder = save_tiny_seq2seq(tmp_path / "base", arch)
    resolved = resolve_model(str(folder))
    base = load_base_model(resolved, pick_runtime("fp32"), seq2seq=True)
    model, targets, how = apply_lora(
        base, LORA, model_id=resolved.model_id, quantized=False, gradient_checkpointing=False, seed=0, seq2seq=True
    )
    assert targets == TARGETS[arch], how
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # both stacks, self- and cross-attention: LoRA reaches the encoder and the decoder
    assert any(".encoder." in n for n in trainable) and any(".decoder." in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    model.eval()
    loss_before = _loss(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(20):
        (target_loss_sum(model, BATCH, 0) / sum(e.n_targets for e in EXAMPLES)).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    loss_after = _loss(model)
    assert loss_after < 0.5 * loss_before, (loss_before, loss_after)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]) != (name in trainable), name  # what trains moved, nothing else

    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM"
    logits, generated = _logits(model), _generate(model)

    # Plain PEFT on a freshly loaded base: the same logits and the same greedy generations.
    reloaded = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(folder), adapter).eval()
    assert torch.allclose(_logits(reloaded), logits, atol=1e-5, rtol=1e-5)
    assert _generate(reloaded) == generated
    with reloaded.disable_adapter():
        assert _relative(_logits(reloaded), logits) > 1e-3
    merged = reloaded.merge_and_unload(safe_merge=True)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert _relative(_logits(merged), logits) < 1e-4

    # tuneforge's own loader reads the task from the card and rebuilds the same model.
    seq2seq_card(text_column="source", target_column="target", max_length=64).write(adapter)
    loaded, _ = load_for_inference(str(folder), adapter, device="cpu")
    assert torch.allclose(_logits(loaded), logits, atol=1e-5, rtol=1e-5)


def test_task_and_model_must_agree():
    from transformers import AutoConfig

    t5 = AutoConfig.for_model("t5")
    check_task(t5, "seq2seq", "t5-small")
    with pytest.raises(TuneforgeError, match=r"'t5-small' \(t5\) is an encoder-decoder model.*task to 'seq2seq'"):
        check_task(t5, "causal_lm", "t5-small")
    with pytest.raises(TuneforgeError, match=r"'tiny' \(llama\) is not an encoder-decoder model.*T5, Flan-T5, BART"):
        check_task(AutoConfig.for_model("llama"), "seq2seq", "tiny")


def test_seq2seq_architectures_are_the_tested_ones():
    assert {a.split(":")[0] for a in TINY_SEQ2SEQ_CONFIGS} == SEQ2SEQ_ARCHITECTURES
    assert {e.architecture for e in SEQ2SEQ_CATALOG} <= SEQ2SEQ_ARCHITECTURES


@pytest.mark.parametrize("entry", SEQ2SEQ_CATALOG, ids=lambda e: e.alias)
def test_seq2seq_catalog_sizes_match_the_published_counts(entry):
    shape = ModelShape.from_config(entry.transformers_config(), extrapolate=True)
    assert shape.params == pytest.approx(entry.params_b * 1e9, rel=0.03)
    assert entry.tasks == ("seq2seq",) and get_entry(entry.alias) is entry
    assert list(shape.default_targets) == entry.target_modules


def test_models_lists_seq2seq_models(capsys):
    from tuneforge.cli import main

    assert main(["models", "--json", "--task", "seq2seq"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["alias"] for r in rows} == {"flan-t5-small", "flan-t5-base", "t5-small", "bart-base"}
    assert all(r["tasks"] == ["seq2seq"] for r in rows)
    assert main(["models", "--json", "--family", "t5"]) == 0  # default: models that generate text as causal LMs
    assert json.loads(capsys.readouterr().out) == []
