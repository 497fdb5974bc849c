"""What a LoRA adapter folder must hold, checked before anything is loaded (training warm starts, serving,
deployments, export): the PEFT `adapter_config.json` and the weights. No torch: the job service checks folders too.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import TuneforgeError


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


def check_adapter_folder(path: str | Path, *, field: str = "adapter") -> dict:
    """The adapter's config, after checking that `path` is a LoRA adapter folder with weights in it."""
    config = read_adapter_config(path, field=field)
    p = Path(path).expanduser()
    if not any((p / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise TuneforgeError(
            f"{field}: {str(p)!r} has an adapter_config.json but no adapter_model.safetensors",
            field=field,
            value=str(p),
        )
    if config.get("peft_type", "LORA") != "LORA":
        raise TuneforgeError(
            f"{field}: {str(p)!r} is a {config.get('peft_type')} adapter; only LoRA adapters are served",
            field=field,
            value=str(p),
        )
    return config
