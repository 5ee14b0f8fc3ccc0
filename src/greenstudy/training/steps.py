"""Training, evaluation and the inference benchmark: small functions, data already on the device."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from greenstudy.errors import ConfigError, TrainingDiverged
from greenstudy.interrupts import stop_if_interrupted
from greenstudy.measure.precision import Precision
from greenstudy.progress import duration, say
from greenstudy.training import distributed
from greenstudy.training.data import Normalizer, Split, eval_batches, train_batches


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; a rank of a several-device job gets its own GPU (cuda:LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        from greenstudy.errors import ConfigError

        raise ConfigError("device=cuda but no CUDA device is visible: use device=cpu or auto")
    if name == "cuda" and distributed.launched():
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def configure_device(device: torch.device) -> dict[str, str]:
    """On CUDA: cuDNN autotuning on, TF32 off (so the fp32 baseline really is fp32); returns the tags
    that say so. No CUDA call on a CPU run."""
    if device.type != "cuda":
        return {}
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return {"tf32": "off", "cudnn_benchmark": "on"}


def set_cpu_threads() -> int:
    """Use every core this process may run on (shared out between the ranks of a job on this machine)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = max(1, cores // distributed.local_world_from_env())
    torch.set_num_threads(cores)
    return cores


@dataclass
class TrainSetup:
    """The pieces one training loop needs."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    normalize: Normalizer
    precision: Precision
    label_smoothing: float
    batch_size: int
    device: torch.device
    generator: torch.Generator
    scaler: torch.amp.GradScaler | None = None
    step_fn: Callable[..., torch.Tensor] | None = None
    augment: bool = True
    epoch_steps: int = 0  # optimizer steps of the last epoch (several ranks: each made this many, together)
    progress_label: str = ""  # set: a progress line every PROGRESS_EVERY_S seconds within an epoch

    def forward(self) -> Callable[..., torch.Tensor]:
        """The compiled or DistributedDataParallel module when there is one, else the model. Never `step_fn or
        model`: a compiled module's truth value is its len(), which raises for a model that has none."""
        return self.step_fn if self.step_fn is not None else self.model


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with Nesterov momentum 0.9."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, lr: float, total_steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """One-cycle: linear warm-up over the first 20 % of steps, cosine down to ~0."""
    total_steps = max(total_steps, 1)
    # OneCycleLR divides by (pct_start * total_steps - 1): at exactly 5 steps 0.2 would divide by zero
    pct_start = 0.2 if abs(0.2 * total_steps - 1) > 1e-9 else 0.25
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=total_steps, pct_start=pct_start, anneal_strategy="cos",
        div_factor=10.0, final_div_factor=100.0, cycle_momentum=False,
    )


def progress_every_s() -> float:
    """Seconds between progress lines within an epoch (`GREENSTUDY_PROGRESS_S`, default 60; 0 = none)."""
    raw = os.environ.get("GREENSTUDY_PROGRESS_S", "60")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"GREENSTUDY_PROGRESS_S must be a number of seconds >= 0, got {raw!r}")
    return value


def _say_progress(setup: TrainSetup, steps: int, total: int, seen: int, started: float) -> None:
    elapsed = time.perf_counter() - started
    rate = seen / max(elapsed, 1e-9)
    left = (total - steps) * setup.batch_size / max(rate, 1e-9)
    say(f"[{setup.progress_label}]   step {steps}/{total}  {rate:.0f} img/s  ~{duration(left)} left in this epoch")


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    return max(1, train_size // batch_size)


def train_one_epoch(setup: TrainSetup, train: Split) -> tuple[float, float]:
    """One pass over `train`; returns (mean loss, top-1 %). Loss and hits accumulate on the device
    and are read once at the end, so the step never waits on a host sync. Several ranks: every rank draws
    the same global batch (same generator) and trains on its shard; loss and hits are summed over ranks."""
    model = setup.model
    model.train()
    loss_sum = torch.zeros((), device=setup.device)
    hits = torch.zeros((), device=setup.device, dtype=torch.long)
    seen = steps = 0
    forward = setup.forward()
    ranks = distributed.current()
    safe_point = distributed.safe_point if ranks else stop_if_interrupted
    every_s = progress_every_s() if setup.progress_label else 0.0
    total, started = steps_per_epoch(len(train), setup.batch_size), time.perf_counter()
    said = started
    for images, labels in train_batches(train, setup.batch_size, setup.generator, setup.augment, safe_point):
        if ranks:
            images, labels = distributed.shard(images, labels)
        inputs = setup.normalize(images)
        with setup.precision.autocast(setup.device):
            logits = forward(inputs)
            loss = F.cross_entropy(logits, labels, label_smoothing=setup.label_smoothing)
        setup.optimizer.zero_grad(set_to_none=True)
        if setup.scaler is not None:
            setup.scaler.scale(loss).backward()
            setup.scaler.step(setup.optimizer)
            setup.scaler.update()
        else:
            loss.backward()
            setup.optimizer.step()
        setup.scheduler.step()
        loss_sum += loss.detach().float() * labels.shape[0]
        hits += (logits.detach().argmax(1) == labels).sum()
        seen += labels.shape[0]
        steps += 1
        if every_s and time.perf_counter() - said >= every_s:  # between steps, never inside one
            said = time.perf_counter()
            _say_progress(setup, steps, total, seen * (ranks.world if ranks else 1), started)
    setup.epoch_steps = steps
    total_loss, total_hits = loss_sum.item(), hits.item()
    if ranks:  # every rank raises together below, or none does
        total_loss, total_hits, seen = distributed.sum_over_ranks([total_loss, total_hits, seen])
    mean_loss = total_loss / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(f"training loss is {mean_loss}: lower lr (now {setup.optimizer.param_groups[0]['lr']:.3g}) or batch_size")
    return mean_loss, 100.0 * total_hits / max(seen, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, normalize: Normalizer, precision: Precision, device: torch.device,
    batch_size: int = 512, shared: bool = False,
) -> dict[str, float]:
    """Loss (plain cross-entropy, no label smoothing: the same for validation and test), top-1 and
    top-5 accuracy (percent) on a split. `shared` (several ranks, validation): each rank evaluates its
    shard of every batch, at agreed safe points, and the sums are added over ranks."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    top5 = torch.zeros((), device=device, dtype=torch.long)
    shared = shared and distributed.current() is not None
    for images, labels in eval_batches(split, batch_size, distributed.safe_point if shared else stop_if_interrupted):
        if shared:
            images, labels = distributed.shard(images, labels)
            if not len(labels):
                continue
        with precision.autocast(device):
            logits = model(normalize(images.to(device, non_blocking=True)))
        labels = labels.to(device, non_blocking=True)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        best = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += (best[:, 0] == labels).sum()
        top5 += (best == labels[:, None]).any(dim=1).sum()
    count = max(len(split), 1)
    sums = [loss_sum.item(), top1.item(), top5.item()]
    if shared:
        sums = distributed.sum_over_ranks(sums)
    return {"loss": sums[0] / count, "acc1": 100.0 * sums[1] / count, "acc5": 100.0 * sums[2] / count}


@torch.no_grad()
def inference_batch(split: Split, normalize: Normalizer, device: torch.device, batch_size: int) -> torch.Tensor:
    """One normalised batch of `batch_size` test images on `device` (repeated when the split is smaller)."""
    return normalize(split.first(batch_size).images.to(device))


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs ahead of Python), so a timer reads when it finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def run_inference_for(model: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, precision: Precision,
                      device: torch.device, seconds: float) -> int:
    """Eval-mode forward passes of `batch` until `seconds` have passed (at least one); returns the image
    count. The caller measures time and energy over this same call (see variants.infer)."""
    started = time.perf_counter()
    images = 0
    with precision.autocast(device):
        while images == 0 or time.perf_counter() - started < seconds:
            stop_if_interrupted()
            model(batch)
            images += batch.shape[0]  # on CUDA the work queues ahead; the measured phase synchronises at its end
    return images
