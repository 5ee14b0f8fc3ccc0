"""Data-parallel training over several processes started by torchrun: who this process is, and the one
place that talks to the other ranks.

The model of the job (see README "Several devices"): rank 0 — the leader — does everything a one-device
run does (MLflow, energy measurement, test, inference, derived variants). Each time it trains (`fit`), it
sends the other ranks — the followers — an order; all ranks then train together, each on its shard of
every global batch (global batch = `batch_size`), gradients all-reduced by DistributedDataParallel.
Control messages (orders, interrupt and stop agreements, metric sums) go over a gloo group, so they work
the same on CPUs and GPUs. Every rank makes the same collective calls in the same order:
- a safe point (each batch) is agreed: a Ctrl-C/SIGTERM noted on any rank stops every rank there;
- the stop after an epoch (target, energy budget: rank 0 knows the energy) is rank 0's decision;
- a failure on rank 0 in the middle of training leaves the others out of step: no further training order
  is sent (the job ends; torchrun ends the others).
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from greenstudy import interrupts

LAUNCHED_ENV = "GREENSTUDY_DDP"  # set by greenstudy.training.launch for the processes torchrun starts
TIMEOUT_ENV = "GREENSTUDY_DDP_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 4 * 3600  # followers wait in a collective while rank 0 tests, benchmarks, logs alone


@dataclass
class Ranks:
    """This process's place in the job, and whether the followers are listening for the next order."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    control: object  # the gloo group for control messages
    listening: bool = True  # the followers wait for an order (not mid-training, not cut off by a failure)
    broken: str = ""  # why the followers are out of step, when they are

    @property
    def leader(self) -> bool:
        return self.rank == 0


_current: Ranks | None = None


def current() -> Ranks | None:
    """The running data-parallel job, or None (one device: nothing here is called)."""
    return _current


def is_leader() -> bool:
    return _current is None or _current.leader


def world_size() -> int:
    return 1 if _current is None else _current.world


def launched() -> bool:
    """Whether this process is a rank started by greenstudy's torchrun launch."""
    return os.environ.get(LAUNCHED_ENV) == "1" and "LOCAL_RANK" in os.environ


def local_world_from_env() -> int:
    """How many ranks of the job run on this machine (1 outside torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched() else 1


def start(device_type: str) -> Ranks:
    """Join the job's process group: NCCL for the gradients on CUDA (gloo on CPUs), gloo for control."""
    global _current
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=timeout)
    control = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else dist.group.WORLD
    _current = Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]),
                     int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())), control)
    return _current


def finish() -> None:
    """Leave the job. The leader tells listening followers to stop (they wait for it even after an agreed
    interrupt, so that rank 0 can mark its runs KILLED before torchrun sees any rank exit)."""
    global _current
    ranks, _current = _current, None
    if ranks is None:
        return
    if ranks.leader and ranks.listening:
        try:
            _broadcast(ranks, None)
        except Exception as exc:  # noqa: BLE001 - a rank already gone: torchrun ends the job either way
            print(f"(the other ranks did not hear the end of the job: {type(exc).__name__}: {exc})", file=sys.stderr)
    dist.destroy_process_group()


def _broadcast(ranks: Ranks, obj: object) -> object:
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=ranks.control)
    return box[0]


def send_order(order: object) -> None:
    """Rank 0: the followers train with it now (every rank then runs the same `fit`)."""
    ranks = _current
    if not ranks.listening:
        raise RuntimeError(f"the other ranks are out of step ({ranks.broken}): this job trains no more")
    _broadcast(ranks, order)
    ranks.listening = False


def receive_order() -> object:
    """A follower: the next order (None: the job is over)."""
    return _broadcast(_current, None)


def order_done() -> None:
    """Rank 0 finished an order in step with the followers: they listen again."""
    if _current is not None:
        _current.listening = True


def out_of_step(reason: str) -> None:
    """Rank 0 left an order mid-way alone (an error only it saw): the followers are stuck in it."""
    if _current is not None and not _current.listening:
        _current.broken = reason


def safe_point() -> None:
    """An agreed safe point: if a signal is pending on any rank, every rank raises KeyboardInterrupt here."""
    ranks = _current
    flag = torch.tensor([1 if interrupts.pending() else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=ranks.control)
    if flag.item():
        ranks.listening = True  # every rank leaves the order here: the followers listen again
        interrupts.stop_if_interrupted()  # this rank's own signal, if it had one
        raise KeyboardInterrupt("interrupted on another rank")


def leader_decides(value: bool) -> bool:
    """Rank 0's answer for every rank (e.g. stop after this epoch: only rank 0 knows the energy)."""
    return bool(_broadcast(_current, bool(value)))


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sums over every rank (float64, on the control group)."""
    total = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=_current.control)
    return total.tolist()


def shard(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of a global batch (contiguous; sizes differ by at most one)."""
    ranks = _current
    return images.tensor_split(ranks.world)[ranks.rank], labels.tensor_split(ranks.world)[ranks.rank]


def wrap(model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """The DistributedDataParallel module that trains `model` (in place: `model` keeps the weights);
    with `sync_bn`, batch norm layers become SyncBatchNorm (CUDA only) until `unwrap`."""
    if sync_bn:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # children replaced in place: `model` stays the object
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> None:
    """SyncBatchNorm layers back to BatchNorm2d (same weights and statistics), so that what follows —
    test, pruning, quantization, the logged model — sees the ordinary model."""
    for name, child in model.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            tensors = [*child.parameters(), *child.buffers()]
            plain = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats).to(tensors[0].device if tensors else "cpu")
            plain.load_state_dict(child.state_dict())
            plain.train(child.training)
            setattr(model, name, plain)
        else:
            unwrap(child)
