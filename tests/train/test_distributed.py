"""One job on two processes (torch.distributed on gloo, tiny model, fp32): DDP and FSDP2 follow the single-process
loss curve, write the same run folder, and a rank killed with SIGKILL stops the run cleanly and `--resume`
continues it. Plus the refusals that happen before any process starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tiny import make_tiny_spec, write_qa_data
from tuneforge.cli import main
from tuneforge.errors import TuneforgeError
from tuneforge.spec import SpecError, parse_spec
from tuneforge.train import distributed
from tuneforge.train.plan import make_plan, work_dir_for
from tuneforge.train.recipe import train

# 9 training rows in micro-batches of 4: two full ones, then one of a single row (rank 1's share is empty), and
# on into the next epochs.
STEPS = 7


def _spec(model_dir: Path, data: Path, **training):
    return make_tiny_spec(
        model_dir,
        data,
        **{
            "max_steps": STEPS,
            "eval_steps": 3,
            "save_steps": 2,
            "gradient_accumulation_steps": 1,
            "p": {"lora_dropout": 0.0},  # dropout masks come from each rank's RNG: no exact comparison with them
            **training,
        },
    )


def _losses(run: Path, kind: str = "train") -> list[float]:
    key = "loss" if kind == "train" else "eval_loss"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if r["type"] == kind]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_qa_data(tmp_path_factory.mktemp("ddata") / "qa.jsonl", n=11)  # 9 train, 2 validation rows


@pytest.fixture(scope="module")
def reference(tiny_model_dir, data, tmp_path_factory) -> Path:
    """One process, batch_size 4."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(_spec(tiny_model_dir, data, batch_size=4), out, quiet=True)
    return out


def _write_spec(spec, folder: Path) -> Path:
    path = folder / "spec.json"
    path.write_text(spec.to_json(redact=False))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_follow_the_single_process_curve(strategy, tiny_model_dir, data, reference, tmp_path):
    spec = _spec(tiny_model_dir, data, batch_size=2, distributed={"strategy": strategy})
    out = tmp_path / "run"
    assert main(["train", str(_write_spec(spec, tmp_path)), "-o", str(out), "-q", "--nproc", "2"]) == 0

    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert not work_dir_for(out).exists()
    ref, got = _losses(reference), _losses(out)
    assert len(got) == STEPS
    assert got[:5] == pytest.approx(ref[:5], rel=1e-3)  # the criterion
    assert got == pytest.approx(ref, rel=1e-3)  # and on, through the idle rank's step and into epoch 3
    assert _losses(out, "eval") == pytest.approx(_losses(reference, "eval"), rel=1e-3)
    report, ref_report = (json.loads((r / "report.json").read_text()) for r in (out, reference))
    assert report["steps"] == STEPS and report["tokens_seen"] == ref_report["tokens_seen"]
    assert report["target_tokens_seen"] == ref_report["target_tokens_seen"]
    resolved = json.loads((out / "spec.json").read_text())["training_config"]["distributed"]
    assert resolved["strategy"] == strategy and resolved["nproc_per_node"] == 2

    # The adapter is plain PEFT and holds the weights of the single-process run.
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "adapter")
    mine, theirs = (load_file(str(r / "adapter" / "adapter_model.safetensors")) for r in (out, reference))
    assert mine.keys() == theirs.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_fsdp_with_a_4bit_base_follows_the_single_process_qlora_curve(tiny_model_dir, data, tmp_path):
    """FSDP-QLoRA: the packed NF4 weights (stored as fp32, the compute dtype) are sharded across the two processes
    and gathered back for each layer's forward and backward, where bitsandbytes finds their quantization state."""
    qlora = {"use_quantization": True, "lora_dropout": 0.0}
    reference = tmp_path / "ref"
    train(_spec(tiny_model_dir, data, batch_size=4, max_steps=5, p=qlora), reference, quiet=True)
    spec = _spec(tiny_model_dir, data, batch_size=2, max_steps=5, p=qlora, distributed={"strategy": "fsdp"})
    out = tmp_path / "run"
    assert main(["train", str(_write_spec(spec, tmp_path)), "-o", str(out), "-q", "--nproc", "2"]) == 0

    ref, got = _losses(reference), _losses(out)
    assert len(got) == 5 and got == pytest.approx(ref, rel=1e-3)  # the criterion
    assert _losses(out, "eval") == pytest.approx(_losses(reference, "eval"), rel=1e-3)
    # A wrong 4-bit weight would show here as well: the loss curve of garbage weights is not this one.
    assert got[-1] < got[0]

    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    four_bit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=four_bit, device_map={"": "cpu"})
    PeftModel.from_pretrained(base, out / "adapter")  # plain PEFT on a plain (uint8-stored) 4-bit base
    mine, theirs = (load_file(str(r / "adapter" / "adapter_model.safetensors")) for r in (out, reference))
    assert mine.keys() == theirs.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-3, atol=1e-5)


@pytest.fixture
def one_rank_group(tmp_path):
    """A process group of this process alone (gloo), for FSDP2 on one rank."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield distributed.Dist(rank=0, local_rank=0, world_size=1, local_world_size=1, strategy="fsdp")
    dist.destroy_process_group()


def _four_bit_lora(model_dir: Path, storage: torch.dtype):
    from tuneforge.models.loader import resolve_model
    from tuneforge.models.lora import LoraSettings, QuantSettings, apply_lora, load_base_model
    from tuneforge.runtime import pick_runtime

    runtime = pick_runtime("fp32", "cpu")
    base = load_base_model(resolve_model(str(model_dir)), runtime, quant=QuantSettings(storage_dtype=storage))
    model, _, _ = apply_lora(
        base, LoraSettings(r=4), model_id="tiny", quantized=True, gradient_checkpointing=False, seed=0
    )
    return model


def _loss(model, batch):
    out = model(input_ids=batch["input_ids"], labels=batch["input_ids"])
    return out.loss, int(batch["input_ids"].numel())


def test_fsdp_gathers_4bit_weights_byte_for_byte(tiny_model_dir, one_rank_group):
    model = _four_bit_lora(tiny_model_dir, torch.float32)
    batch = {"input_ids": torch.arange(24).reshape(2, 12) % 300}
    with torch.no_grad():
        expected = _loss(model, batch)[0]
    lora = {p for p in model.parameters() if p.requires_grad}
    root = distributed._shard(distributed._LossModule(model, _loss), model, lora, one_rank_group)

    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj.weight).__name__ == "DTensor"  # sharded, the Params4bit and its quant_state gone
    loss = root(batch)[0]
    assert loss.item() == expected.item()  # gathered and dequantized exactly as before the sharding
    loss.backward()
    # lora_B starts at zero, so only its gradients are non-zero; layer 0's pass back through layer 1's 4-bit weights.
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_fsdp_stops_when_the_gather_changes_4bit_weights(tiny_model_dir, one_rank_group, monkeypatch):
    """bitsandbytes #1945: FSDP2 on CUDA rewrites packed bytes that read as NaN in the float storage dtype. Here one
    byte of a loaded weight is changed after its fingerprint was taken, as such a gather would change it."""
    model = _four_bit_lora(tiny_model_dir, torch.float32)
    prepare = distributed._prepare_four_bit

    def prepare_then_corrupt(model, device):
        prints = prepare(model, device)
        weight = model.get_base_model().model.layers[1].mlp.up_proj.base_layer.weight
        weight.data.view(torch.uint8)[7] ^= 0x40
        return prints

    monkeypatch.setattr(distributed, "_prepare_four_bit", prepare_then_corrupt)
    lora = {p for p in model.parameters() if p.requires_grad}
    with pytest.raises(TuneforgeError) as info:
        distributed._shard(distributed._LossModule(model, _loss), model, lora, one_rank_group)
    message = str(info.value)
    assert "training_config.distributed.strategy 'fsdp': FSDP changed the 4-bit weights of" in message
    assert "base_model.model.model.layers.1.mlp.up_proj.base_layer" in message and "torch.float32" in message
    assert "use strategy 'ddp'" in message and info.value.field == "training_config.distributed.strategy"


def _worker_pids(launcher: int) -> list[int]:
    """The training processes the launcher spawned (multiprocessing's spawn_main, not its resource tracker), in
    start order: the launcher starts local rank 0, 1, ... one after the other, and the kernel hands out rising pids.
    (Their RANK is set inside the process after the start, so /proc's environ does not show it.)"""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(proc.name))
    return sorted(found)


@pytest.mark.slow
def test_sigkill_of_one_rank_stops_the_run_and_resume_continues(tiny_model_dir, data, tmp_path):
    long = {"max_steps": 60, "save_steps": 3, "eval_steps": 20}  # long enough to be killed mid-run
    reference = tmp_path / "reference"
    train(_spec(tiny_model_dir, data, batch_size=4, **long), reference, quiet=True)
    spec = _spec(tiny_model_dir, data, batch_size=2, distributed={"strategy": "ddp"}, **long)
    spec_file = _write_spec(spec, tmp_path)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli", "train", str(spec_file), "-o", str(out), "-q", "--nproc", "2"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    work = work_dir_for(out)
    deadline = time.time() + 240
    while not any(work.glob("checkpoint-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    workers = _worker_pids(proc.pid)
    assert len(workers) == 2, workers
    victim = workers[1]  # rank 1: rank 0 is the one writing the run folder
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    error = [line for line in stderr.splitlines() if line.startswith("tuneforge: error:")]
    assert len(error) == 1, stderr
    assert f"rank 1 (pid {victim}) was killed by SIGKILL" in error[0]
    assert "--resume" in error[0] and str(work) in error[0]
    assert not out.exists(), "a stopped run must not look finished"
    resumed_from = max(int(c.name.split("-")[1]) for c in work.glob("checkpoint-*"))
    assert resumed_from < 60

    assert main(["train", str(spec_file), "-o", str(out), "-q", "--nproc", "2", "--resume"]) == 0
    assert _losses(out) == pytest.approx(_losses(reference), rel=1e-3)
    assert _losses(out, "eval") == pytest.approx(_losses(reference, "eval"), rel=1e-3)


# --- refused before any process starts --------------------------------------------------------------------------


def _cli_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tuneforge: error: "), lines
    return lines[0]


def test_more_processes_than_cpu_cores_is_refused(tiny_model_dir, data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(distributed, "available_cpus", lambda: 2)
    spec_file = _write_spec(_spec(tiny_model_dir, data), tmp_path)
    error = _cli_error(capsys, ["train", str(spec_file), "-o", str(tmp_path / "run"), "--nproc", "3"])
    assert "nproc_per_node: 3 processes" in error and "only 2 CPU core(s)" in error and "--nproc 2" in error
    assert not (tmp_path / "run").exists() and not work_dir_for(tmp_path / "run").exists()


def test_more_processes_than_gpus_is_refused(tiny_model_dir, data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(distributed, "local_device_type", lambda: "cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    spec = _spec(tiny_model_dir, data, distributed={"strategy": "fsdp", "nproc_per_node": 4})
    error = _cli_error(capsys, ["train", str(_write_spec(spec, tmp_path)), "-o", str(tmp_path / "run")])
    assert "training_config.distributed.nproc_per_node: 4 processes" in error and "2 visible GPU(s)" in error


def test_fsdp_without_fsdp2_is_refused(tiny_model_dir, data, tmp_path, capsys, monkeypatch):
    import torch.distributed.fsdp

    monkeypatch.delattr(torch.distributed.fsdp, "fully_shard")
    spec = _spec(tiny_model_dir, data, distributed={"strategy": "fsdp"})
    error = _cli_error(capsys, ["train", str(_write_spec(spec, tmp_path)), "-o", str(tmp_path / "run")])
    assert "strategy 'fsdp'" in error and "fully_shard" in error and "'ddp'" in error


def test_no_torch_distributed_is_refused(tiny_model_dir, data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    spec_file = _write_spec(_spec(tiny_model_dir, data), tmp_path)
    error = _cli_error(capsys, ["train", str(spec_file), "-o", str(tmp_path / "run"), "--nproc", "2"])
    assert "strategy 'ddp'" in error and "no torch.distributed support" in error


def test_nproc_below_one_is_refused(tiny_model_dir, data, tmp_path, capsys):
    spec_file = _write_spec(_spec(tiny_model_dir, data), tmp_path)
    assert "--nproc 0: must be at least 1" in _cli_error(
        capsys, ["train", str(spec_file), "-o", str(tmp_path / "run"), "--nproc", "0"]
    )


def test_a_distributed_spec_is_not_trained_in_one_process(tiny_model_dir, data, tmp_path):
    with pytest.raises(TuneforgeError, match="tuneforge train SPEC --nproc N"):
        train(_spec(tiny_model_dir, data, distributed={"strategy": "ddp"}), tmp_path / "run")


def test_resolve_launch_picks_ddp_for_nproc_and_fills_the_count(tiny_model_dir, data, monkeypatch):
    monkeypatch.setattr(distributed, "available_cpus", lambda: 8)
    spec = _spec(tiny_model_dir, data)
    resolved = distributed.resolve_launch(spec, 2).training_config.distributed
    assert (resolved.strategy, resolved.nproc_per_node) == ("ddp", 2)
    assert spec.training_config.distributed.strategy == "none"  # the caller's spec is left as it was
    one = distributed.resolve_launch(spec, 1).training_config.distributed
    assert (one.strategy, one.nproc_per_node) == ("none", 1)
    fsdp = distributed.resolve_launch(_spec(tiny_model_dir, data, distributed={"strategy": "fsdp"}), None)
    assert fsdp.training_config.distributed.nproc_per_node == 1  # no GPU: one process unless told


# --- the spec -------------------------------------------------------------------------------------------------


def _payload(**distributed_fields) -> dict:
    return {
        "data_config": {"data_path": "d.jsonl"},
        "training_config": {"distributed": distributed_fields},
    }


@pytest.mark.parametrize(
    "payload, message",
    [
        (_payload(nproc_per_node=2), "need a strategy: set strategy to 'ddp'"),
        (_payload(strategy="ddp", nnodes=2), "nnodes=2 needs rdzv_endpoint"),
        (_payload(strategy="ddp", nnodes=2, rdzv_endpoint="node0"), "is not host:port"),
        (_payload(strategy="ddp", rdzv_endpoint="node0:29400"), "is for runs on several machines"),
        (_payload(strategy="mpi"), "training_config.distributed.strategy"),
        (_payload(strateg="ddp"), "unknown field (did you mean 'strategy'?)"),
        (
            {
                "data_config": {"data_path": "d.jsonl", "data_split_config": {"train": 0.8, "test": 0.2}},
                "training_config": {"distributed": {"strategy": "fsdp"}},
            },
            "fsdp' with test rows",
        ),
        (
            {
                "data_config": {"data_path": "d.jsonl"},
                "training_config": {"preference_method": "orpo", "distributed": {"strategy": "ddp"}},
            },
            "preference tuning (orpo) runs in one process",
        ),
    ],
)
def test_spec_refuses_inconsistent_distributed_settings(payload, message):
    with pytest.raises(SpecError) as info:
        parse_spec(payload)
    assert message in str(info.value)


def test_default_is_one_process_and_monsterapi_payloads_validate_unchanged():
    spec = parse_spec({"data_config": {"data_path": "d.jsonl"}, "training_config": {"num_train_epochs": 1}})
    d = spec.training_config.distributed
    assert (d.strategy, d.nproc_per_node, d.nnodes, d.rdzv_endpoint) == ("none", None, 1, None)
    ok = parse_spec(_payload(strategy="ddp", nnodes=2, rdzv_endpoint="10.0.0.1:29400", nproc_per_node=8))
    assert ok.training_config.distributed.rdzv_endpoint == "10.0.0.1:29400"


def test_plan_counts_a_micro_batch_across_all_processes():
    spec = parse_spec({"data_config": {"data_path": "d.jsonl"}, "training_config": {"batch_size": 2}})
    assert make_plan(spec, 65).steps_per_epoch == 33
    assert make_plan(spec, 65, world_size=2).steps_per_epoch == 17  # 16 micro-batches of 4, then one of 1
