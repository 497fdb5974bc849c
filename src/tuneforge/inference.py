"""Load base (+ adapter) for inference, generate text, and merge an adapter into its base."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import TuneforgeError
from .models.adapters import read_adapter_config
from .models.loader import load_tokenizer, quiet_transformers, resolve_model
from .runtime import default_device


def load_for_inference(
    model_path: str | None = None,
    adapter_dir: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
):
    """(model, tokenizer): the base model, with the adapter applied unmerged when given. A classifier's adapter
    (its tuneforge_adapter.json says task classification) gets its base as a sequence classifier over the
    adapter's labels; an image classifier's (task image_classification) its base as an image classifier, and its
    image processor in place of the tokenizer; a seq2seq adapter's (task seq2seq) its base as an encoder-decoder.

    Without `model_path`, the base recorded in the adapter's config is used (tuneforge records the model id the
    user trained on, so this works across machines).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from .adapter_card import read_card

    quiet_transformers()
    config = read_adapter_config(adapter_dir) if adapter_dir else None
    if model_path is None:
        if config is None or not adapter_dir:
            raise TuneforgeError("--model: give a base model (or an --adapter whose config names one)")
        resolved, model_path = adapter_base(adapter_dir, config)
    else:
        resolved = resolve_model(model_path, field="--model")
    dev = torch.device(default_device(device))
    card = read_card(adapter_dir) if adapter_dir else None
    if card is not None and card.task == "image_classification":
        # An image classifier: its image processor (saved with the adapter) instead of a tokenizer, its base with a
        # head over the adapter's labels (the saved head replaces it when the adapter loads).
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from .models.classifier import label_maps

        source = str(adapter_dir) if (Path(str(adapter_dir)) / "preprocessor_config.json").is_file() else None
        tokenizer = AutoImageProcessor.from_pretrained(
            source or resolved.load_from, local_files_only=bool(source) or resolved.is_local
        )
        id2label, label2id = label_maps(card.labels)
        model = AutoModelForImageClassification.from_pretrained(
            resolved.load_from,
            dtype=dtype,
            local_files_only=resolved.is_local,
            num_labels=len(id2label),
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=True,
        ).to(dev)
    else:
        # Local folders are read with local_files_only: no hub call (and no minute of retries offline) for them.
        tokenizer = (
            AutoTokenizer.from_pretrained(str(adapter_dir), local_files_only=True)
            if adapter_dir and (Path(adapter_dir) / "tokenizer_config.json").is_file()
            else load_tokenizer(resolved.load_from if resolved.is_local else model_path)
        )
        if card is not None and card.task == "classification":
            from .models.classifier import label_maps

            id2label, label2id = label_maps(card.labels)
            model = AutoModelForSequenceClassification.from_pretrained(
                resolved.load_from,
                dtype=dtype,
                local_files_only=resolved.is_local,
                num_labels=len(id2label),
                id2label=id2label,
                label2id=label2id,
                pad_token_id=tokenizer.pad_token_id,
            ).to(dev)
        elif card is not None and card.task == "seq2seq":
            from transformers import AutoModelForSeq2SeqLM

            model = AutoModelForSeq2SeqLM.from_pretrained(
                resolved.load_from, dtype=dtype, local_files_only=resolved.is_local
            ).to(dev)
        else:
            # transformers wraps .to() in a decorator that mypy reads as taking the model
            model = AutoModelForCausalLM.from_pretrained(
                resolved.load_from, dtype=dtype, local_files_only=resolved.is_local
            ).to(dev)  # type: ignore[arg-type]
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model, tokenizer


def adapter_base(adapter_dir: str | Path, config: dict):
    """(resolved base, its name) for an adapter: the base its config names, else the exact folder its
    tuneforge_adapter.json recorded (same machine), else a clear error saying what to do, before any load."""
    from .adapter_card import read_card
    from .models.loader import ResolvedModel

    named = config.get("base_model_name_or_path")
    if not named:
        raise TuneforgeError(
            f"--model: the adapter {str(adapter_dir)!r} does not name its base model; give --model", field="--model"
        )
    try:
        return resolve_model(named, field="--model"), named
    except TuneforgeError as err:
        card = read_card(adapter_dir)
        recorded = Path(card.base_model.get("path", "")) if card is not None else None
        if card is not None and recorded is not None and (recorded / "config.json").is_file():
            return ResolvedModel(
                model_id=card.base_model.get("model_id", named), load_from=str(recorded), is_local=True
            ), str(recorded)
        raise TuneforgeError(
            f"the adapter's base model {named!r} cannot be loaded here ({err}); give it with --model DIR (a Hugging "
            f"Face folder of that model; `tuneforge models export-base {named} DIR --adapter {adapter_dir}` writes one "
            "on a machine that has it)",
            field="--model",
            value=named,
        ) from None


def format_prompt(
    tokenizer,
    prompt: str,
    *,
    chat: bool | None = None,
    adapter_dir: str | Path | None = None,
    chat_template: str = "training",
) -> str:
    """`prompt` as one user message, rendered as the adapter was trained (its tuneforge_adapter.json, with
    `chat_template` "training") or with the model's chat template; unchanged with `chat=False`, or when there is
    neither a training prompt nor a chat template."""
    from .adapter_card import check_mode, read_card, render_chat

    check_mode(chat_template, "--chat-template")
    if chat is False:
        return prompt
    card = read_card(adapter_dir) if adapter_dir else None
    if card is not None and card.task == "seq2seq":
        return prompt  # the encoder reads the source text as it was trained: no template
    if card is not None and card.template_for(chat_template) is not None:
        return render_chat(tokenizer, [{"role": "user", "content": prompt}], card, chat_template)
    if chat or tokenizer.chat_template:
        return render_chat(tokenizer, [{"role": "user", "content": prompt}], card, chat_template)
    return prompt


@torch.no_grad()
def generate(
    model,
    tokenizer,
    text: str,
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> str:
    """Continue `text` (already formatted) and return only the new text."""
    if seed is not None:
        torch.manual_seed(seed)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=not text.startswith(tokenizer.bos_token or "\0"))
    enc = {k: v.to(model.device) for k, v in enc.items()}
    sampling = temperature > 0
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=top_p if sampling else None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    # A decoder-only model's output repeats the prompt; an encoder-decoder's (seq2seq) is only the decoder's text.
    new = out[0] if getattr(model.config, "is_encoder_decoder", False) else out[0, enc["input_ids"].shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True)


def merge_adapter(
    adapter_dir: str | Path,
    output_dir: str | Path,
    *,
    model_path: str | None = None,
    dtype: torch.dtype = torch.float32,
    chat_template: str = "training",
) -> Path:
    """Fold W + (alpha/r)·B·A into plain weights and save a model that transformers loads without PEFT.

    The base is loaded unquantized even for QLoRA adapters (merging into 4-bit weights would round the update
    away). `safe_merge` checks the merged weights for NaN/inf before keeping them. With `chat_template`
    "training", an adapter trained on a prompt template gets that prompt as the merged model's chat template, so
    chat front-ends (and the GGUF made from the folder) prompt it as it was trained.
    """
    from .adapter_card import check_mode, read_card

    check_mode(chat_template, "--chat-template")
    card = read_card(adapter_dir)
    output_dir = Path(output_dir).expanduser()
    if output_dir.exists() and any(output_dir.iterdir()):
        raise TuneforgeError(
            f"--output {str(output_dir)!r} exists and is not empty", field="output", value=str(output_dir)
        )
    model, tokenizer = load_for_inference(model_path, adapter_dir, dtype=dtype, device="cpu")
    merged = model.merge_and_unload(safe_merge=True)
    training_template = card.template_for(chat_template) if card is not None else None
    if training_template is not None:
        tokenizer.chat_template = training_template
    tmp = output_dir.with_name(output_dir.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if output_dir.exists():
        output_dir.rmdir()
    tmp.rename(output_dir)
    return output_dir
