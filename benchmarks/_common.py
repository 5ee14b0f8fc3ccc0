"""Shared pieces of the benchmarks: the data, the usual PyTorch recipe written plainly, the device's
peak FLOP/s, and a line that says on what machine and under what load a figure was taken."""

from __future__ import annotations

import os
import pickle
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from greenstudy.data import SPECS, CifarData, load_cifar, locate_dataset, write_synthetic_cifar
from greenstudy.errors import DataError

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


# ---------------------------------------------------------------------------------------------
# Machine facts
# ---------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device: torch.device, dtype: torch.dtype, size: int = 4096, repeats: int = 3) -> float:
    """Best FLOP/s of a size x size matmul (2 n^3 FLOP) over `repeats` timed runs after one warm-up."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)
    synchronize(device)
    best = float("inf")
    inner = 10 if device.type == "cuda" else 1
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        synchronize(device)
        best = min(best, (time.perf_counter() - started) / inner)
    return 2 * size**3 / best


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


def machine_line(device: torch.device) -> str:
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"device: {device.type} ({what}); {cores} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; load average {load_average()}")
