"""Shared pieces of the benchmarks: the data, the usual PyTorch recipe written plainly, the device's
peak FLOP/s, and a line that says on what machine and under what load a figure was taken."""

from __future__ import annotations

import os
import pickle
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from greenstudy.errors import DataError
from greenstudy.measure.energy import EnergyMeter
from greenstudy.measure.ledger import PhaseEnergy
from greenstudy.measure.precision import cpu_capability, describe
from greenstudy.training.data import SPECS, CifarData, load_cifar, locate_dataset, write_synthetic_cifar
from greenstudy.training.models import build_model
from greenstudy.training.steps import synchronize

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATA_DIR = str(SHARED_DATA if SHARED_DATA.is_dir() else "data")


def find_data(data_dir: str, synthetic_train: int = 4096) -> tuple[CifarData, Path]:
    """Real CIFAR-100 from `data_dir` when it is there (extracting the archive if needed), else a
    synthetic CIFAR-format folder in a temp dir (the returned data's `source` says which)."""
    try:
        folder = locate_dataset("cifar100", data_dir, download=False)
        return load_cifar("cifar100", data_dir, download=False, val_size=0), folder
    except DataError:
        root = Path(tempfile.mkdtemp(prefix="greenstudy-bench-"))
        folder = write_synthetic_cifar(root, "cifar100", n_train=synthetic_train, n_test=512, seed=0)
        return load_cifar("cifar100", root, download=False, val_size=0), folder


# ---------------------------------------------------------------------------------------------
# The usual recipe, as a user writes it: a CIFAR-100 Dataset of PIL images, torchvision
# transforms, a DataLoader, an fp32 eager model, the textbook SGD step.
# ---------------------------------------------------------------------------------------------

MEAN = SPECS["cifar100"].mean
STD = SPECS["cifar100"].std


class PickledCifar100(Dataset):
    """torchvision.datasets.CIFAR100 without its md5 check (which rejects copies that differ from
    the official files): the same pickles, the same HWC uint8 array, one PIL image per item."""

    def __init__(self, folder: str | Path, train: bool = True, transform: object = None):
        with open(Path(folder) / ("train" if train else "test"), "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        entry = {key.decode() if isinstance(key, bytes) else key: value for key, value in entry.items()}
        self.data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self.targets = list(entry["fine_labels"])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[object, int]:
        image = Image.fromarray(self.data[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def usual_transform(augment: bool = True) -> transforms.Compose:
    """RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, per PIL image."""
    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def usual_loader(folder: str | Path, batch_size: int, num_workers: int = 2, shuffle: bool = True) -> DataLoader:
    """The tutorial DataLoader (two workers); pinned memory when there is a GPU to copy to."""
    dataset = PickledCifar100(folder, train=True, transform=usual_transform())
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
        pin_memory=torch.cuda.is_available(), drop_last=True, persistent_workers=num_workers > 0,
    )


def usual_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)


def usual_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, criterion: torch.nn.Module,
    inputs: torch.Tensor, targets: torch.Tensor, device: torch.device,
) -> float:
    """The textbook step: copy the batch, zero grads, forward, loss, backward, step, `.item()`."""
    inputs, targets = inputs.to(device), targets.to(device)
    optimizer.zero_grad()
    outputs = model(inputs)
    loss = criterion(outputs, targets)
    loss.backward()
    optimizer.step()
    return loss.item()


@dataclass
class Result:
    """What one configuration measured, summed over rounds."""

    label: str
    precision: str
    images: int = 0
    seconds: float = 0.0
    energy_kwh: float = 0.0
    warmup_seconds: float = 0.0
    rounds: list[float] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def wh_per_1k(self) -> float:
        return self.energy_kwh * 1e6 / self.images if self.images else 0.0


class UsualRecipe:
    """The usual recipe, as plainly as a user writes it."""

    label = "usual (PIL + DataLoader, fp32 eager)"
    precision = "fp32"

    def __init__(
        self, model_name: str, folder: Path, batch_size: int, workers: int, device: torch.device, lr: float, label_smoothing: float,
    ):
        torch.manual_seed(0)
        self.device = device
        self.model = build_model(model_name, 100).to(device)
        self.model.train()
        self.optimizer = usual_optimizer(self.model, lr)
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.loader = usual_loader(folder, batch_size, workers)
        self.batches: Iterator = iter(self.loader)

    def _next(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)

    def run(self, steps: int) -> tuple[int, float]:
        images = 0
        started = time.perf_counter()
        for _ in range(steps):
            inputs, targets = self._next()
            usual_step(self.model, self.optimizer, self.criterion, inputs, targets, self.device)
            images += targets.shape[0]
        synchronize(self.device)
        return images, time.perf_counter() - started

    def close(self) -> None:
        del self.batches



# ---------------------------------------------------------------------------------------------
# CodeCarbon through greenstudy.measure.energy
# ---------------------------------------------------------------------------------------------


def open_meter(device: torch.device) -> EnergyMeter:
    """A started EnergyMeter for `device` (CodeCarbon's ~1.6 s start happens here, outside any phase).
    The benchmarks do not take greenstudy's machine lock: their figures are ratios measured side by side."""
    meter = EnergyMeter(device)
    meter.start()
    return meter


@contextmanager
def energy_phase(meter: EnergyMeter, name: str) -> Iterator[PhaseEnergy]:
    """One measured block of training; the yielded phase's `energy_kwh` is filled in when the block ends."""
    with meter.phase([], name, "train") as phase:
        yield phase


# ---------------------------------------------------------------------------------------------
# Machine facts
# ---------------------------------------------------------------------------------------------


def peak_flops(device: torch.device, dtype: torch.dtype, size: int = 4096, repeats: int = 3, budget_s: float = 20.0) -> tuple[float, int]:
    """Best FLOP/s of an n x n matmul (2 n^3 FLOP) over `repeats` timed runs after one warm-up, and the n used.

    n is `size` unless that would take more than `budget_s` in all: a 512^2 probe (best of 3) estimates
    the speed first (an emulated dtype, e.g. bf16 on an AVX2-only CPU, runs ~70x slower than fp32), then
    n halves until the estimate fits."""
    probe = min(512, size)
    a = torch.randn(probe, probe, device=device).to(dtype)
    torch.mm(a, a)
    probe_seconds = float("inf")
    for _ in range(3):
        synchronize(device)
        started = time.perf_counter()
        torch.mm(a, a)
        synchronize(device)
        probe_seconds = min(probe_seconds, time.perf_counter() - started)
    probe_rate = 2 * probe**3 / max(probe_seconds, 1e-9)
    inner = 10 if device.type == "cuda" else 1
    while size > probe and (repeats * inner + 1) * 2 * size**3 / probe_rate > budget_s:
        size //= 2
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        synchronize(device)
        best = min(best, (time.perf_counter() - started) / inner)
    return 2 * size**3 / best, size


def conv_peak_flops(device: torch.device, dtype: torch.dtype, repeats: int = 3, budget_s: float = 20.0) -> float:
    """Best FLOP/s of a large 3x3 convolution (channels_last, 256 -> 256 channels on 16x16, the shape class of
    ResNet-18's later stages; 2 x MACs FLOP) over `repeats` timed runs after one warm-up: the ceiling a CNN
    training step can approach in `dtype` here, which a square matmul is not (Winograd paths beat it). The
    batch shrinks from 32 until the runs fit `budget_s` (an emulated dtype is many times slower)."""
    weight = torch.randn(256, 256, 3, 3, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    batch = 32
    while True:
        x = torch.randn(batch, 256, 16, 16, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
        synchronize(device)
        started = time.perf_counter()
        torch.nn.functional.conv2d(x, weight, padding=1)  # warm-up: oneDNN picks and caches its kernel
        synchronize(device)
        if batch == 1 or (repeats + 1) * (time.perf_counter() - started) <= budget_s:
            break
        batch //= 2
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.nn.functional.conv2d(x, weight, padding=1)
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * batch * 256 * 256 * 9 * 16 * 16 / best


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def hardware_line(device: torch.device) -> str:
    """What every figure depends on: the CPU's capability as torch sees it (and its native bf16/fp16),
    the GPU and its compute capability when used, the core count and the torch version."""
    hw = describe(device)
    native = ", ".join(f"{name} {'native' if ok else 'NOT native'}" for name, ok in (("bf16", hw.cpu_bf16), ("fp16", hw.cpu_fp16)))
    gpu = ""
    if device.type == "cuda" and hw.cuda_capability:
        gpu = f"gpu {torch.cuda.get_device_name(device)} (sm_{hw.cuda_capability[0]}{hw.cuda_capability[1]}); "
    return f"hardware: {gpu}cpu capability {hw.cpu_capability} ({native}); {cores()} cores; torch {torch.__version__}"


def machine_line(device: torch.device) -> str:
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return (f"device: {device.type} ({what}, cpu capability {cpu_capability()}); {cores()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; load average {load_average()}")
