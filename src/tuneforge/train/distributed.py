"""One training job on several processes or devices: the launch, the process group, and what differs from one process.

`launch` starts `nproc_per_node` worker processes with torchrun's launcher (`torch.distributed.launcher.api`,
c10d rendezvous, no automatic restarts: a failed run is continued with `--resume`). Each worker joins the process
group (NCCL on CUDA, one GPU per process; gloo on the CPU) and runs the same recipe as a single process
(`recipe.train_distributed`), with the differences kept here:

* Data: every micro-batch is cut from the single-process order with `batch_size * world_size` examples, and rank r
  takes the r-th `batch_size` of it (`Parallel.share`), so a 2-process run with batch_size B/2 sees exactly the
  batches of a 1-process run with batch_size B (what torch's DistributedSampler does for a plain shuffle, here for
  the length-grouped order as well).
* Loss: the recipe divides each micro-batch's summed token loss by the step's target tokens; the count is summed
  over all ranks first, and the ranks' gradients are then summed (not averaged), so the gradient is that of the
  mean over every target token of the step on every rank, as in one process.
* Model: `ddp` wraps the model in DistributedDataParallel (gradients of the LoRA weights all-reduced during the
  backward pass, with a summing communication hook); `fsdp` shards the frozen base with FSDP2 (`fully_shard` on
  every decoder layer and on the root) and leaves the LoRA weights out of the sharding (`ignored_params`): they
  are a fraction of a percent of the model, so keeping them whole on every rank costs nothing and lets the adapter,
  checkpoints and resume work unchanged; their gradients are all-reduced after the backward pass. A 4-bit (QLoRA)
  base is sharded too: its packed weights are stored in the compute dtype and each 4-bit layer finds its
  quantization state on its module once FSDP has gathered the weight (see "FSDP over a 4-bit base" below).
* Files: rank 0 alone writes the run folder (metrics, checkpoints, adapter, report, plot); the others read the
  checkpoint it wrote when resuming, so several machines need the output folder on storage they all share.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ..errors import TuneforgeError
from ..runtime import default_nproc_per_node, die_with_parent, local_device_type
from ..spec import JobSpec, parse_spec
from .checkpoint import latest_checkpoint
from .plan import work_dir_for

if TYPE_CHECKING:
    from ..data.example import Example
    from .recipe import RunResult

T = TypeVar("T")
FIELD = "training_config.distributed"
# Long enough for the slowest thing one rank does while the others wait in a collective: rank 0 writing a
# checkpoint of a large adapter, or the first evaluation of a large validation set.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    strategy: str  # "ddp" or "fsdp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> str:
        return f"cuda:{self.local_rank}" if local_device_type() == "cuda" else "cpu"

    def rank0_first(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only (a file-system change), then hand its result, or its TuneforgeError, to every
        rank: a refusal stops all ranks with the same message instead of leaving the others waiting."""
        import torch.distributed as dist

        payload: list[Any] = [None]
        if self.is_main:
            try:
                payload[0] = ("ok", fn())
            except TuneforgeError as exc:
                payload[0] = ("error", (str(exc), exc.field, exc.value))
        dist.broadcast_object_list(payload, src=0)
        kind, value = payload[0]
        if kind == "error":
            message, field, bad = value
            raise TuneforgeError(message, field=field, value=bad)
        return value


# --- before the launch -----------------------------------------------------------------------------------------------


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_launch(spec: JobSpec, nproc: int | None = None) -> JobSpec:
    """The spec as the workers run it: `nproc` (the CLI's --nproc) in `nproc_per_node`, the strategy chosen
    (ddp when --nproc asks for several processes of a spec without one), the default process count filled in; and
    everything that cannot run on this machine refused, before any process starts."""
    d = spec.training_config.distributed
    strategy = d.strategy
    if nproc is not None:
        if nproc < 1:
            raise TuneforgeError(f"--nproc {nproc}: must be at least 1", field="nproc", value=nproc)
        if strategy == "none" and nproc > 1:
            strategy = "ddp"
    device = local_device_type()
    per_node = nproc or d.nproc_per_node or default_nproc_per_node(device)
    if strategy == "none":  # one process (a spec without a strategy, --nproc 1 or none): nothing to launch
        return _with_distributed(spec, strategy="none", nproc_per_node=1)
    if not torch.distributed.is_available():
        raise TuneforgeError(
            f"{FIELD}.strategy {strategy!r}: this torch build has no torch.distributed support; install a torch "
            "build with it (the PyPI wheels for Linux, macOS and Windows have it) or set the strategy to 'none'",
            field=f"{FIELD}.strategy",
            value=strategy,
        )
    if strategy == "fsdp":
        try:
            from torch.distributed.fsdp import fully_shard  # noqa: F401  (FSDP2: torch >= 2.6)
        except ImportError:
            raise TuneforgeError(
                f"{FIELD}.strategy 'fsdp': torch {torch.__version__} has no FSDP2 (torch.distributed.fsdp."
                "fully_shard, torch >= 2.6); upgrade torch or use strategy 'ddp'",
                field=f"{FIELD}.strategy",
                value="fsdp",
            ) from None
    if device == "cuda":
        if not torch.distributed.is_nccl_available():
            raise TuneforgeError(
                f"{FIELD}.strategy {strategy!r}: this torch build has no NCCL, which multi-GPU training needs; "
                "install a CUDA build of torch with NCCL",
                field=f"{FIELD}.strategy",
                value=strategy,
            )
        gpus = torch.cuda.device_count()
        if per_node > gpus:
            raise TuneforgeError(
                f"{FIELD}.nproc_per_node: {per_node} processes asked for but this machine has {gpus} visible "
                f"GPU(s) (one process per GPU); use --nproc {gpus} or fewer, or make more GPUs visible "
                "(CUDA_VISIBLE_DEVICES)",
                field=f"{FIELD}.nproc_per_node",
                value=per_node,
            )
    else:
        # On the CPU each process computes with its own threads: more processes than cores only adds overhead
        # (and gloo's collectives would wait on descheduled ranks), so it is refused rather than run slowly.
        cpus = available_cpus()
        if per_node > cpus:
            raise TuneforgeError(
                f"{FIELD}.nproc_per_node: {per_node} processes asked for but only {cpus} CPU core(s) are available "
                f"to this process and no GPU is visible; use --nproc {cpus} or fewer",
                field=f"{FIELD}.nproc_per_node",
                value=per_node,
            )
    return _with_distributed(spec, strategy=strategy, nproc_per_node=per_node)


def _with_distributed(spec: JobSpec, **values: Any) -> JobSpec:
    """A copy of `spec` with these training_config.distributed values, validated again as a whole (a strategy that
    --nproc picked meets the spec's cross-checks, e.g. no fsdp with a 4-bit base); the caller's spec is unchanged."""
    data = spec.to_dict(redact=False)
    data["training_config"]["distributed"].update(values)
    return parse_spec(data)


# --- the launch -------------------------------------------------------------------------------------------------------


def launch(
    spec: JobSpec,
    output_dir: str | Path,
    *,
    nproc: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
) -> RunResult | None:
    """Train `spec` on several processes of this machine (and, with nnodes > 1, of the others that run the same
    call), like torchrun. Returns rank 0's RunResult, or None on a machine whose processes do not include rank 0
    (another machine of a multi-machine run wrote the run folder). Raises TuneforgeError for input that cannot run
    and when a process of the run failed or was killed (with how to continue: `--resume`)."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    spec = resolve_launch(spec, nproc)
    d = spec.training_config.distributed
    output_dir = Path(output_dir).expanduser().resolve()
    if d.strategy == "none":  # --nproc 1 of a single-process spec: nothing to launch
        from .recipe import train

        return train(spec, output_dir, resume=resume, overwrite=overwrite, quiet=quiet)
    assert d.nproc_per_node is not None  # resolve_launch fills it in
    config = LaunchConfig(
        min_nodes=d.nnodes,
        max_nodes=d.nnodes,
        nproc_per_node=d.nproc_per_node,
        # One machine: a private rendezvous on a free local port (torchrun --standalone). Several: every machine
        # meets at rdzv_endpoint under the same run id.
        run_id="tuneforge" if d.rdzv_endpoint else uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint=d.rdzv_endpoint or "localhost:0",
        rdzv_configs={"timeout": 900} if d.rdzv_endpoint else {},
        max_restarts=0,  # a restart is a resume, which the user (or the job queue) asks for explicitly
        monitor_interval=0.2,
        start_method="spawn",
        logs_specs=DefaultLogsSpecs(),
    )
    args = (spec.to_json(redact=False), str(output_dir), resume, overwrite, quiet, os.getpid())
    try:
        results = elastic_launch(config, _worker)(*args)
    except ChildFailedError as exc:
        raise _failure(exc, output_dir) from None
    except RendezvousError as exc:
        raise TuneforgeError(
            f"{FIELD}.rdzv_endpoint: the {d.nnodes} machines did not meet at {d.rdzv_endpoint!r} ({exc}); start "
            "`tuneforge train` with the same spec on every machine, with an address all of them can reach",
            field=f"{FIELD}.rdzv_endpoint",
            value=d.rdzv_endpoint,
        ) from None
    outcome = results.get(0)
    errors = [r for r in results.values() if isinstance(r, dict) and "error" in r]
    if errors:
        message, field, value = errors[0]["error"]
        raise TuneforgeError(message, field=field, value=value)
    return outcome


def _failure(exc: Any, output_dir: Path) -> TuneforgeError:
    """A process of the run failed (an exception in it is printed above by the process itself) or was killed: one
    message that says which, and how to continue."""
    # A killed process breaks its peers' next collective, so they fail too, possibly first: name the killed one.
    killed = [(rank, f) for rank, f in exc.failures.items() if f.exitcode < 0]
    rank, failure = min(killed, key=lambda rf: rf[1].timestamp) if killed else exc.get_first_failure()
    how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with code {failure.exitcode}"
    checkpoint = latest_checkpoint(work_dir_for(output_dir))
    if checkpoint is not None:
        then = f"its last checkpoint is {checkpoint}: run the same command with --resume to continue from there"
    else:
        then = "no checkpoint was written yet: run the same command again"
    return TuneforgeError(
        f"training stopped: process of rank {rank} (pid {failure.pid}) {how}, and the other processes were "
        f"stopped with it; {then}",
        field="training_config.distributed",
    )


def _worker(spec_json: str, output_dir: str, resume: bool, overwrite: bool, quiet: bool, launcher: int) -> Any:
    """One process of the run (module level: the launcher pickles it into spawned processes)."""
    import torch.distributed as dist

    # The launcher stops its processes when it is stopped (SIGTERM, Ctrl-C), but a SIGKILLed launcher (a job's
    # training process killed with its worker or its Ray task) cannot: without this its processes would train on.
    die_with_parent(launcher)

    from ..data import DataValidationError
    from .recipe import train_distributed

    # As the CLI does (cli.main): PEFT calls a transformers API that transformers deprecates.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    spec = parse_spec(json.loads(spec_json))
    ctx = Dist(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_world_size=int(os.environ["LOCAL_WORLD_SIZE"]),
        strategy=spec.training_config.distributed.strategy,
    )
    if local_device_type() == "cuda":
        torch.cuda.set_device(ctx.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
        # Each process computes with its share of the cores (resolve_launch allows one process per core at most).
        torch.set_num_threads(max(1, available_cpus() // ctx.local_world_size))
    dist.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)
    try:
        result = train_distributed(spec, output_dir, ctx, resume=resume, overwrite=overwrite, quiet=quiet)
    except TuneforgeError as exc:
        if ctx.is_main and isinstance(exc, DataValidationError):
            print(exc.report.to_text(), file=sys.stderr)  # as the single-process CLI prints it
        return {"error": (str(exc), exc.field, exc.value)}
    finally:
        dist.destroy_process_group()
    return result


# --- inside the run ---------------------------------------------------------------------------------------------------


class _LossModule(torch.nn.Module):
    """The root that DDP and FSDP wrap: its forward is the recipe's loss, so the loss's fast path (decoder and
    output head called directly, models/loss_path.py) runs inside the wrapper's forward, where DDP prepares its
    gradient reduction and FSDP gathers the root's parameters (embeddings, final norm, output head)."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable[..., tuple[torch.Tensor, int]]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return self.loss_fn(self.model, batch)


def _sum_hook(process_group, bucket):
    """DDP communication hook: all-reduce a gradient bucket as a sum (DDP's default divides by the world size, but
    each rank's loss is already divided by the whole step's target tokens). Unannotated: DDP checks a hook's
    annotations against its own classes, and this module's are strings (`from __future__ import annotations`)."""
    import torch.distributed as dist

    work = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


class Parallel:
    """What train_step and evaluate call in a distributed run instead of the plain loss: the wrapped model, the
    rank's share of a micro-batch, and sums across ranks."""

    def __init__(
        self,
        ctx: Dist,
        model: torch.nn.Module,
        loss_fn: Callable[..., tuple[torch.Tensor, int]],
        filler: Example,
    ):
        import torch.distributed as dist

        self.ctx = ctx
        self.filler = filler  # an example an idle rank runs at weight 0 (see share)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        if ctx.strategy == "fsdp":
            # The base was loaded into host memory (recipe.setup) and fully_shard moves each rank's shard of it to
            # the rank's device; the LoRA weights are left out of the sharding, so they are moved here.
            device = torch.device(ctx.device())
            for p in self.trainable:
                p.data = p.data.to(device)
        # Every rank starts from rank 0's LoRA weights (they are seeded alike; this makes it a fact).
        for p in self.trainable:
            dist.broadcast(p.data, src=0)
        root = _LossModule(model, loss_fn)
        self.root: torch.nn.Module
        if ctx.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            device = next(iter(self.trainable)).device
            self.root = DistributedDataParallel(
                root,
                device_ids=[device] if device.type == "cuda" else None,
                init_sync=False,  # the base was loaded alike on every rank and the LoRA weights broadcast above
                forward_sync_buffers=False,  # buffers (rotary tables) are constants: no collective in every forward
            )
            self.root.register_comm_hook(None, _sum_hook)
        else:
            self.root = _shard(root, model, set(self.trainable), ctx)

    def share(self, examples: list[T]) -> list[T]:
        """This rank's part of a global micro-batch: the r-th `len/world` slice (empty when the last micro-batch of
        an epoch has fewer examples than ranks)."""
        per_rank = -(-len(examples) // self.ctx.world_size)
        return examples[self.ctx.rank * per_rank : (self.ctx.rank + 1) * per_rank]

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return self.root(batch)

    @contextlib.contextmanager
    def accumulating(self, *, last: bool) -> Iterator[None]:
        """Around one micro-batch's forward and backward: DDP reduces gradients only in the step's last one."""
        no_sync = getattr(self.root, "no_sync", None)
        with no_sync() if (no_sync is not None and not last) else contextlib.nullcontext():
            yield

    def finish_backward(self) -> None:
        """FSDP: sum the LoRA gradients (left out of the sharding, so FSDP does not reduce them) across ranks, in
        one flat buffer. DDP has reduced them during the backward pass."""
        if self.ctx.strategy != "fsdp":
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.trainable]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(self.trainable, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n

    def sum(self, *values: float) -> list[float]:
        """Element-wise sums across ranks (float64: token counts stay exact)."""
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=next(iter(self.trainable)).device)
        dist.all_reduce(t)
        return t.tolist()


def _shard(root: _LossModule, model: torch.nn.Module, lora: set[torch.nn.Parameter], ctx: Dist) -> torch.nn.Module:
    """FSDP2 over the frozen base: one unit per decoder layer (transformers' `_no_split_modules`, the blocks
    accelerate's FSDP wraps), then the root, which gathers the rest (embeddings, final norm, output head)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    get_base = getattr(model, "get_base_model", None)  # PEFT's wrapper: its base has the transformers attributes
    base = get_base() if callable(get_base) else model
    block_names = set(getattr(base, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise TuneforgeError(
            f"{FIELD}.strategy 'fsdp': {type(base).__name__} does not name its decoder blocks (_no_split_modules), "
            "so tuneforge cannot tell what to shard; use strategy 'ddp'",
            field=f"{FIELD}.strategy",
            value="fsdp",
        )
    device_type = "cuda" if local_device_type() == "cuda" else "cpu"
    device = torch.device(ctx.device())
    storage = next((p.dtype for p in model.parameters() if type(p).__name__ == "Params4bit"), None)
    four_bit = _prepare_four_bit(model, device) if storage is not None else {}
    mesh = init_device_mesh(device_type, (ctx.world_size,))
    for block in blocks:
        fully_shard(block, mesh=mesh, ignored_params=lora)
    # reshard_after_forward=True on the root too (FSDP2 keeps a root gathered after forward by default): rank 0
    # alone saves adapters (a state_dict call, which reshards), and every rank must then gather the same units in
    # the next forward pass.
    fully_shard(root, mesh=mesh, ignored_params=lora, reshard_after_forward=True)
    if storage is not None:
        _check_four_bit_gather(root, blocks, four_bit, device, storage)
    return root


# --- FSDP over a 4-bit (QLoRA) base -----------------------------------------------------------------------------------
#
# bitsandbytes keeps a 4-bit layer's weight as a Params4bit: the packed 4-bit values (stored as the compute dtype under
# FSDP, QuantSettings.storage_dtype, so FSDP shards them like any other weight) plus a quant_state (per-block absmax,
# the NF4 code book) that lives on the tensor object. FSDP2 shards the packed values and, before each forward and
# backward, gathers them into a plain tensor: the Params4bit object and its quant_state are gone. Linear4bit.forward
# re-attaches the state it finds on the module (`module.quant_state`, bitsandbytes' own FSDP hook), so every 4-bit
# layer gets it here, whole on every rank (it is ~3% of the packed weights with double quantization), on the
# device the layer computes on. Whether the gathered bytes are the loaded bytes depends on the platform: FSDP2 on
# CUDA has been seen to rewrite packed bytes that read as NaN in the float storage dtype (bitsandbytes issue #1945),
# which turns weights into other weights without any error. So the gather is checked once, byte for byte (by
# fingerprint), before training, and a mismatch stops the run.


def _prepare_four_bit(model: torch.nn.Module, device: torch.device) -> dict[str, tuple[int, int]]:
    """Attach each 4-bit layer's quant_state to its module (on `device`); the fingerprints of their packed weights,
    by module name."""
    from bitsandbytes.nn import Linear4bit

    prints = {}
    for name, module in model.named_modules():
        if isinstance(module, Linear4bit):
            state = module.weight.quant_state  # type: ignore[attr-defined]  # a Params4bit attribute
            state.to(device)  # in place; fully_shard moves the packed weights, not the state beside them
            module.quant_state = state
            prints[name] = _fingerprint(module.weight)
    return prints


def _fingerprint(t: torch.Tensor) -> tuple[int, int]:
    """The sum of a tensor's bytes and their position-weighted sum: any rewritten byte changes it. In slices, so
    a large weight costs a bounded amount of scratch memory."""
    data = t.detach().reshape(-1).view(torch.uint8)
    total = weighted = 0
    for piece in data.split(1 << 24):
        values = piece.to(torch.int64)
        total += int(values.sum())
        weighted += int((values * torch.arange(1, len(values) + 1, device=values.device)).sum())
    return total, weighted


def _check_four_bit_gather(
    root: torch.nn.Module,
    blocks: list[torch.nn.Module],
    expected: dict[str, tuple[int, int]],
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    """Gather every FSDP unit once (the root first: it must be the first one initialized) and compare each 4-bit
    layer's gathered weight with the one loaded; a difference on any rank stops every rank with the same error."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    modules = dict(root.named_modules())
    changed, checked = [], set()
    for unit in [root, *blocks]:
        assert isinstance(unit, FSDPModule)
        unit.unshard()
        for name, fingerprint in expected.items():
            weight = modules[f"model.{name}"].weight
            if name not in checked and not isinstance(weight, DTensor):
                checked.add(name)
                if _fingerprint(weight) != fingerprint:
                    changed.append(name)
        unit.reshard()
    assert checked == set(expected), f"4-bit layers outside every FSDP unit: {set(expected) - checked}"
    count = torch.tensor([len(changed)], device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    if count.item():
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise TuneforgeError(
            f"{FIELD}.strategy 'fsdp': FSDP changed the 4-bit weights of {shown or 'a 4-bit layer on another rank'} "
            f"when it gathered them (packed 4-bit values stored as {dtype} are rewritten on this platform, "
            "bitsandbytes issue #1945), so QLoRA would train on corrupted weights; use strategy 'ddp' (the 4-bit "
            "base whole on each device) or use_quantization false",
            field=f"{FIELD}.strategy",
            value="fsdp",
        )
