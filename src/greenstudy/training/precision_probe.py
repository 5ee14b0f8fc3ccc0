"""Whether mixed precision trains a model faster than fp32 on this machine, measured: a few real training
steps of a copy of the model in each precision. It need not: on the 2-core AVX-512 BF16 EPYC, plain bf16
autocast trains EfficientNet-B0 at 0.62x fp32's speed (its depthwise convolutions' bf16 backward is the slow
kernel); with the CPU bf16 policy (depthwise convolutions fp32 in training, greenstudy.measure.depthwise_fp32)
it is 1.22x, and ResNet-18 2.0x (benchmarks/throughput.py, README "Mixed precision and compiled training on the CPU")."""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from greenstudy.measure.precision import Precision
from greenstudy.training.data import CifarData, Normalizer, Split
from greenstudy.training.steps import TrainSetup, make_optimizer, make_scheduler, synchronize, train_one_epoch


def training_speeds(model: nn.Module, candidates: list[Precision], data: CifarData, batch_size: int,
                    channels_last: bool, steps: int = 2) -> dict[str, float]:
    """Images/s of `steps` training steps (after one untimed warm-up step) of a copy of `model` in each
    candidate precision, on the same batches; `model` itself is not touched."""
    device = data.train.images.device
    batches = data.train.first((1 + steps) * batch_size)
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
        synchronize(device)
        started = time.perf_counter()
        train_one_epoch(setup, Split(batches.images[batch_size:], batches.labels[batch_size:]))
        synchronize(device)
        speeds[precision.name] = steps * batch_size / (time.perf_counter() - started)
    return speeds
