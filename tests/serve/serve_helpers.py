"""Helpers for the serving tests: LoRA adapters with crafted (random, nonzero) weights, and a real uvicorn server
on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import torch


def craft_adapter(base_dir: Path, out: Path, seed: int, *, scale: float = 1.0) -> Path:
    """A LoRA adapter whose A and B are both random (PEFT's `init_lora_weights=False`), so it changes the
    outputs deterministically from the first token, as a trained adapter would. No training needed."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    if scale != 1.0:
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.mul_(scale)
    peft_model.save_pretrained(out)
    return out


class LiveServer:
    """uvicorn running `app` in a thread, on a port the OS picked (the socket is bound before the server starts,
    so there is no race for the port)."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def craft_smollm2_adapter(out: Path, seed: int = 0, *, std: float = 0.02) -> Path:
    """A LoRA adapter (r 8, all projections) for the real default model with random nonzero B, recorded against
    the hub id as a trained tuneforge adapter is."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.models.loader import SMOLLM2_ID, resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model(SMOLLM2_ID).load_from, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, std)
    peft_model.peft_config["default"].base_model_name_or_path = SMOLLM2_ID
    peft_model.save_pretrained(out)
    return out


# A JSON schema small enough for constrained decoding on a tiny model (tests of response_format and the sampler)
PET = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["cat", "dog"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "name": {"type": "string", "maxLength": 6},
    },
    "required": ["kind", "age", "name"],
    "additionalProperties": False,
}
