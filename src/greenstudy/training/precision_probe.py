"""Whether mixed precision trains a model faster than fp32 on this machine, measured: a few real training
steps of a copy of the model in each precision. Often it is not: on the 2-core AVX-512 BF16 EPYC, ResNet-18
trains 2.1x faster in bf16 autocast than fp32, EfficientNet-B0 0.71x (eager; compiled both, 0.56x), its
unfused casts around every BN/SiLU/squeeze-and-excitation op costing more than its convolutions save
(benchmarks/throughput.py, README "Mixed precision on the CPU")."""

from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

from greenstudy.measure.precision import Precision
from greenstudy.training.data import CifarData, Normalizer, Split
from greenstudy.training.steps import TrainSetup, make_optimizer, make_scheduler, train_one_epoch


def probe_split(train: Split, images: int) -> Split:
    """The first `images` training images (repeated when the split is smaller)."""
    repeat = math.ceil(images / max(len(train), 1))
    return Split(train.images.repeat(repeat, 1, 1, 1)[:images], train.labels.repeat(repeat)[:images])


def training_speeds(model: nn.Module, candidates: list[Precision], data: CifarData, batch_size: int,
                    channels_last: bool, steps: int = 2) -> dict[str, float]:
    """Images/s of `steps` training steps (after one untimed warm-up step) of a copy of `model` in each
    candidate precision, on the same batches; `model` itself is not touched."""
    device = data.train.images.device
    batches = probe_split(data.train, (1 + steps) * batch_size)
    speeds = {}
    for precision in candidates:
        twin = copy.deepcopy(model)
        optimizer = make_optimizer(twin, 0.01, 0.0)
        setup = TrainSetup(
            model=twin, optimizer=optimizer, scheduler=make_scheduler(optimizer, 0.01, 1 + steps),
            normalize=Normalizer(data.mean, data.std, device, channels_last), precision=precision,
            label_smoothing=0.0, batch_size=batch_size, device=device, generator=torch.Generator(device=device).manual_seed(0),
        )
        train_one_epoch(setup, Split(batches.images[:batch_size], batches.labels[:batch_size]))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        train_one_epoch(setup, Split(batches.images[batch_size:], batches.labels[batch_size:]))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        speeds[precision.name] = steps * batch_size / (time.perf_counter() - started)
    return speeds
