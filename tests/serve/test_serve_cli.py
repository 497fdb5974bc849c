"""`tuneforge serve` as a user runs it: a real process, the openai client against it, and its argument errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tuneforge.cli import main
from tuneforge.errors import TuneforgeError
from tuneforge.serve.app import parse_adapter_args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_command_answers_the_openai_client(tiny_model_dir, adapters, tmp_path):
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "tuneforge.cli",
        "serve",
        "--model",
        str(tiny_model_dir),
        "--model-name",
        "tiny",
        "--adapter",
        f"alpha={adapters['alpha']}",
        "--adapter",
        f"beta={adapters['beta']}",
        "--port",
        str(port),
        "--max-adapters",
        "1",
        "--api-key",
        "k1",
    ]
    with open(tmp_path / "serve.log", "w") as log:  # the server writes to its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TUNEFORGE_API_KEY": ""})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k1", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["tiny", "alpha", "beta"]
        msgs = [{"role": "user", "content": "hello"}]
        a = client.chat.completions.create(model="alpha", messages=msgs, temperature=0, max_tokens=8)
        b = client.chat.completions.create(model="beta", messages=msgs, temperature=0, max_tokens=8)
        again = client.chat.completions.create(model="alpha", messages=msgs, temperature=0, max_tokens=8)
        assert a.choices[0].message.content == again.choices[0].message.content != b.choices[0].message.content
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
        assert health["loaded_adapters"] == ["alpha"] and health["max_loaded_adapters"] == 1
    finally:
        proc.terminate()
        proc.wait(30)
    assert "OpenAI base URL: http://127.0.0.1:" in (tmp_path / "serve.log").read_text()


def test_serve_argument_errors(tiny_model_dir, tmp_path, capsys):
    assert main(["serve", "--adapter", f"a={tmp_path / 'missing'}"]) == 2
    assert "adapter 'a': adapter folder" in capsys.readouterr().err
    assert main(["serve", "--adapter", "a=x", "--adapter", "a=y"]) == 2
    assert "name 'a' is given twice" in capsys.readouterr().err
    assert main(["serve", "--max-adapters", "0", "--model", str(tmp_path / "nope")]) == 2
    assert "--max-adapters must be at least 1" in capsys.readouterr().err
    assert main(["serve", "--model", str(tiny_model_dir), "--dtype", "int3"]) == 2
    assert "--dtype: 'int3' is not one of auto, float32, bfloat16, float16" in capsys.readouterr().err
    assert main(["serve", "--model", str(tiny_model_dir), "--weights", "int4"]) == 2
    assert "tuneforge: error: --weights: 'int4' is not one of dense, int8" in capsys.readouterr().err
    assert main(["serve", "--model", str(tiny_model_dir), "--weights", "int8", "--dtype", "bfloat16"]) == 2
    assert "--weights int8 runs on CPU over float32 activations" in capsys.readouterr().err


def test_adapter_argument_forms(tmp_path):
    assert parse_adapter_args(["orders=runs/orders/adapter"]) == {"orders": "runs/orders/adapter"}
    assert parse_adapter_args([str(tmp_path / "orders" / "adapter")]) == {
        "orders": str(tmp_path / "orders" / "adapter")
    }
    with pytest.raises(TuneforgeError, match="expected NAME=DIR"):
        parse_adapter_args(["=x"])
