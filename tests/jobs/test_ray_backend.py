"""The Ray backend's pieces that need no cluster: what a job asks for, where it fits, the errors before connecting."""

from __future__ import annotations

import sys

import pytest

from tiny import make_tiny_spec, write_qa_data
from tuneforge.errors import TuneforgeError
from tuneforge.jobs.ray_backend import JobResources, connect, fits_somewhere, job_resources


def test_a_cpu_job_asks_for_the_estimators_memory_and_a_gpu_job_for_gpus(tmp_path, tiny_model_dir):
    spec = make_tiny_spec(tiny_model_dir, write_qa_data(tmp_path / "qa.jsonl"))
    cpu = job_resources(spec, cpus=2, gpus=0)
    assert cpu.cpus == 2 and cpu.gpus == 0 and cpu.memory and cpu.memory > 0
    bigger = job_resources(make_tiny_spec(tiny_model_dir, tmp_path / "qa.jsonl", batch_size=64), cpus=2, gpus=0)
    assert bigger.memory > cpu.memory  # activations grow with the batch
    gpu = job_resources(spec, cpus=1, gpus=1)
    assert gpu.gpus == 1 and gpu.memory is None and gpu.bundle() == {"CPU": 1, "GPU": 1}
    assert cpu.bundle() == {"CPU": 2, "memory": float(cpu.memory)}


def test_a_job_fits_when_one_node_holds_all_of_its_bundles():
    need = JobResources(cpus=1, gpus=1, memory=2**30, processes=2)
    small = {"CPU": 4, "GPU": 1, "memory": 8 * 2**30}
    big = {"CPU": 4, "GPU": 2, "memory": 8 * 2**30}
    assert not fits_somewhere(need, [small, small])  # two GPUs in all, but not on one node
    assert fits_somewhere(need, [small, big])
    assert not fits_somewhere(JobResources(cpus=1, gpus=0, memory=9 * 2**30), [big])
    assert need.describe() == "2 x (1 CPU, 1 GPU, 1.00 GiB memory)"


def test_a_multi_process_job_asks_for_one_bundle_per_process_held_by_its_one_task(tmp_path, tiny_model_dir):
    data = write_qa_data(tmp_path / "qa.jsonl")
    one = job_resources(make_tiny_spec(tiny_model_dir, data), cpus=1, gpus=0)
    ddp = job_resources(
        make_tiny_spec(tiny_model_dir, data, distributed={"strategy": "ddp", "nproc_per_node": 3}), cpus=1, gpus=0
    )
    assert one.processes == 1 and ddp.processes == 3
    # Per process: each DDP process holds the whole model, plus DDP's buckets for the (LoRA-sized) gradients.
    assert one.memory < ddp.memory < 1.01 * one.memory
    # The task holds the whole job (Ray makes every GPU of it visible to the launcher's processes).
    assert ddp.total() == {"CPU": 3.0, "memory": 3.0 * ddp.memory}
    gpu = job_resources(
        make_tiny_spec(tiny_model_dir, data, distributed={"strategy": "fsdp", "nproc_per_node": 2}), cpus=4, gpus=1
    )
    assert gpu.total() == {"CPU": 8.0, "GPU": 2.0} and gpu.describe() == "2 x (4 CPU, 1 GPU)"
    assert not fits_somewhere(gpu, [{"CPU": 16, "GPU": 1}, {"CPU": 16, "GPU": 1}])
    assert fits_somewhere(gpu, [{"CPU": 8, "GPU": 2}])
    # strategy ddp without nproc_per_node (one process per visible GPU, decided on the node): one bundle
    default = job_resources(make_tiny_spec(tiny_model_dir, data, distributed={"strategy": "ddp"}), cpus=1, gpus=1)
    assert default.processes == 1


def test_ray_not_installed_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees without the package
    with pytest.raises(TuneforgeError, match=r"worker --ray: Ray is not installed.*pip install 'tuneforge\[ray\]'"):
        connect("auto")


def test_nothing_listening_at_the_address_is_refused_before_ray_tries_for_minutes():
    pytest.importorskip("ray")
    for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
        with pytest.raises(TuneforgeError, match=r"no Ray cluster answers there \(Connection refused\)") as exc:
            connect(address)
        assert exc.value.field == "ray" and exc.value.value == address
