"""Load base (+ adapter) for inference, generate text, and merge an adapter into its base."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import TuneforgeError


def read_adapter_config(adapter_dir: str | Path, *, field: str = "adapter") -> dict:
    path = Path(adapter_dir).expanduser()
    config = path / "adapter_config.json"
    if not path.is_dir():
        raise TuneforgeError(f"{field}: adapter folder {str(path)!r} does not exist", field=field, value=str(path))
    if not config.is_file():
        raise TuneforgeError(
            f"{field}: {str(path)!r} is not a PEFT adapter folder (no adapter_config.json); a finished run keeps it "
            "in <output>/adapter",
            field=field,
            value=str(path),
        )
    return json.loads(config.read_text())


def load_for_inference(model_path: str | None = None, adapter_dir: str | Path | None = None, *,
                       dtype: torch.dtype = torch.float32, device: str | None = None):
    """(model, tokenizer): the base model, with the adapter applied unmerged when given.

    Without `model_path`, the base recorded in the adapter's config is used (tuneforge records the model id the
    user trained on, so this works across machines).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .models.loader import load_tokenizer, quiet_transformers, resolve_model

    quiet_transformers()
    config = read_adapter_config(adapter_dir) if adapter_dir else None
    if model_path is None:
        if config is None:
            raise TuneforgeError("--model: give a base model (or an --adapter whose config names one)")
        model_path = config["base_model_name_or_path"]
    resolved = resolve_model(model_path, field="--model")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = AutoModelForCausalLM.from_pretrained(resolved.load_from, dtype=dtype).to(dev)  # type: ignore[arg-type]  # transformers wraps .to() in a decorator that mypy reads as taking the model
    tokenizer = (
        AutoTokenizer.from_pretrained(str(adapter_dir))
        if adapter_dir and (Path(adapter_dir) / "tokenizer_config.json").is_file()
        else load_tokenizer(model_path)
    )
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model, tokenizer


def format_prompt(tokenizer, prompt: str, *, chat: bool | None = None) -> str:
    """Apply the chat template when the tokenizer has one (and `chat` is not False)."""
    use_chat = bool(tokenizer.chat_template) if chat is None else chat
    if use_chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


@torch.no_grad()
def generate(model, tokenizer, text: str, *, max_new_tokens: int = 128, temperature: float = 0.0,
             top_p: float = 1.0, seed: int | None = None) -> str:
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
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def merge_adapter(adapter_dir: str | Path, output_dir: str | Path, *, model_path: str | None = None,
                  dtype: torch.dtype = torch.float32) -> Path:
    """Fold W + (alpha/r)·B·A into plain weights and save a model that transformers loads without PEFT.

    The base is loaded unquantized even for QLoRA adapters (merging into 4-bit weights would round the update
    away). `safe_merge` checks the merged weights for NaN/inf before keeping them.
    """
    output_dir = Path(output_dir).expanduser()
    if output_dir.exists() and any(output_dir.iterdir()):
        raise TuneforgeError(f"--output {str(output_dir)!r} exists and is not empty", field="output",
                             value=str(output_dir))
    model, tokenizer = load_for_inference(model_path, adapter_dir, dtype=dtype, device="cpu")
    merged = model.merge_and_unload(safe_merge=True)
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
