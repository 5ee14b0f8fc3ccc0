"""CIFAR data: find or fetch the official folders, load whole splits as uint8 tensors,
augment and normalise in batches on the training device (no per-image PIL path)."""

from __future__ import annotations

import os
import pickle
import socket
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from greenstudy.errors import DataError
from greenstudy.interrupts import stop_if_interrupted

SYNTHETIC_MARKER = "SYNTHETIC.txt"


@dataclass(frozen=True)
class DatasetSpec:
    """Where a CIFAR variant lives and how its pickles are keyed."""

    folder: str
    archive: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    meta_file: str
    names_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


SPECS = {
    "cifar100": DatasetSpec(
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_files=("test",),
        label_key="fine_labels",
        meta_file="meta",
        names_key="fine_label_names",
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
    "cifar10": DatasetSpec(
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key="labels",
        meta_file="batches.meta",
        names_key="label_names",
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
}


@dataclass
class Split:
    """Images (N,3,32,32) uint8 and labels (N,) int64, on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device, non_blocking=True), self.labels.to(device, non_blocking=True))

    def subset(self, count: int) -> Split:
        return Split(self.images[:count], self.labels[:count])

    def first(self, count: int) -> Split:
        """The first `count` images, the split repeated when it is smaller (a view when it is not)."""
        if count <= len(self):
            return self.subset(count)
        repeat = -(-count // max(len(self), 1))
        return Split(self.images.repeat(repeat, 1, 1, 1)[:count], self.labels.repeat(repeat)[:count])


@dataclass
class CifarData:
    """Train / validation / test splits plus what a run must say about them."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: list[str]
    source: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to(self, device: torch.device | str) -> CifarData:
        return CifarData(
            self.name, self.train.to(device), self.val.to(device), self.test.to(device),
            self.num_classes, self.class_names, self.source, self.mean, self.std,
        )


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "greenstudy"


def _network_reachable(url: str, timeout_s: float = 3.0) -> bool:
    host = url.split("/")[2]
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _writable(folder: Path) -> bool:
    """Writable by its permission bits too (root passes os.access even on a read-only share)."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & stat.S_IWUSR)


def _extract(archive: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"corrupt archive {archive}: {exc}") from exc


def locate_dataset(dataset: str, data_dir: str | Path, download: bool = True) -> Path:
    """Return the extracted CIFAR folder, extracting a local archive or downloading if needed."""
    spec = SPECS[dataset]
    root = Path(data_dir).expanduser()
    cached = _cache_dir() / spec.folder
    for candidate in (root / spec.folder, cached):
        if candidate.is_dir():
            return candidate
    archive = root / spec.archive
    if archive.is_file():
        target = root if _writable(root) else _cache_dir()
        _extract(archive, target)
        return target / spec.folder
    hint = f"put {spec.folder}/ or {spec.archive} in {root.resolve()} (or point data_dir / GREENSTUDY_DATA at them)"
    if not download:
        raise DataError(f"{dataset} not found and download=false: {hint}")
    if not _network_reachable(spec.url):
        raise DataError(f"{dataset} not found and no network to download it: {hint}")
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(spec.url, str(root), filename=spec.archive, md5=spec.md5)
    except Exception as exc:  # noqa: BLE001 - any download failure becomes one clear line
        raise DataError(f"download of {dataset} failed ({exc}): {hint}") from exc
    return root / spec.folder


def _load_pickle(path: Path) -> dict[str, object]:
    """Read an official CIFAR pickle (Python 2 style); keys come back as str."""
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    try:
        with path.open("rb") as handle:
            raw = pickle.load(handle, encoding="bytes")
    except Exception as exc:  # noqa: BLE001 - a broken pickle can raise almost anything
        raise DataError(f"corrupt data file {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(raw, dict):
        raise DataError(f"corrupt data file {path}: expected a dict, got {type(raw).__name__}")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in raw.items()}


def _read_split(folder: Path, files: tuple[str, ...], label_key: str) -> Split:
    images, labels = [], []
    for name in files:
        entry = _load_pickle(folder / name)
        try:
            data = np.asarray(entry["data"], dtype=np.uint8)
            label = np.asarray(entry[label_key], dtype=np.int64)
        except KeyError as exc:
            raise DataError(f"corrupt data file {folder / name}: no key {exc}") from exc
        if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != label.shape[0]:
            raise DataError(f"corrupt data file {folder / name}: data shape {data.shape}, {label.shape[0]} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(label)
    return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def load_cifar(
    dataset: str,
    data_dir: str | Path,
    download: bool = True,
    val_size: int = 5000,
    train_subset: int = 0,
    test_subset: int = 0,
    seed: int = 0,
) -> CifarData:
    """Load a CIFAR dataset into memory, holding `val_size` images out of train."""
    spec = SPECS[dataset]
    folder = locate_dataset(dataset, data_dir, download)
    train = _read_split(folder, spec.train_files, spec.label_key)
    test = _read_split(folder, spec.test_files, spec.label_key)
    meta = _load_pickle(folder / spec.meta_file)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(spec.names_key, [])]
    for split_name, split in (("train", train), ("test", test)):
        if len(split) and (split.labels.min() < 0 or split.labels.max() >= spec.num_classes):
            raise DataError(f"corrupt {split_name} labels in {folder}: outside 0..{spec.num_classes - 1}")
    if val_size >= len(train):
        raise DataError(f"val_size={val_size} leaves no training images (train has {len(train)})")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    if train_subset:
        train_idx = train_idx[:train_subset]
    val = Split(train.images[val_idx], train.labels[val_idx])
    train = Split(train.images[train_idx], train.labels[train_idx])
    if test_subset:
        test = test.subset(test_subset)
    synthetic = (folder / SYNTHETIC_MARKER).is_file()
    source = f"{'synthetic' if synthetic else 'real'}:{folder.resolve()}"
    return CifarData(dataset, train, val, test, spec.num_classes, names, source, spec.mean, spec.std)


def write_synthetic_cifar(
    root: str | Path, dataset: str = "cifar100", n_train: int = 2000, n_test: int = 500, seed: int = 0
) -> Path:
    """Write a small learnable CIFAR-format folder (class templates plus noise), marked synthetic."""
    spec = SPECS[dataset]
    folder = Path(root) / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(spec.num_classes, 3, 8, 8)).repeat(4, axis=2).repeat(4, axis=3)

    def make(count: int) -> dict[bytes, object]:
        labels = rng.integers(0, spec.num_classes, size=count)
        noise = rng.normal(0, 40, size=(count, 3, 32, 32))
        images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
        return {b"data": images.reshape(count, -1), spec.label_key.encode(): labels.tolist()}

    train_files = spec.train_files
    per_file = max(1, n_train // len(train_files))
    for name in train_files:
        with (folder / name).open("wb") as handle:
            pickle.dump(make(per_file), handle)
    with (folder / spec.test_files[0]).open("wb") as handle:
        pickle.dump(make(n_test), handle)
    names = [f"class_{i}".encode() for i in range(spec.num_classes)]
    with (folder / spec.meta_file).open("wb") as handle:
        pickle.dump({spec.names_key.encode(): names}, handle)
    (folder / SYNTHETIC_MARKER).write_text("Synthetic CIFAR-format data written by greenstudy, not real images.\n")
    return folder


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with `pad`-pixel zero padding and horizontal flip, for a whole uint8 batch at once."""
    n, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), device=device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=device, generator=generator)
    rows = dy[:, None] + torch.arange(height, device=device)[None, :]
    cols = dx[:, None] + torch.arange(width, device=device)[None, :]
    flip = torch.rand(n, device=device, generator=generator) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch_index = torch.arange(n, device=device)[:, None, None, None]
    channel_index = torch.arange(channels, device=device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]


class Normalizer:
    """uint8 -> normalised float, in the memory format the model wants."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, channels_last: bool):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = (images.float() - self.mean) / self.std
        return out.contiguous(memory_format=self.memory_format)


def train_batches(
    split: Split, batch_size: int, generator: torch.Generator, augment: bool = True,
    safe_point: Callable[[], None] = stop_if_interrupted,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled uint8 batches (augmented on the split's device); the last short batch is dropped
    unless the split is smaller than one batch. `safe_point` runs before each batch (several ranks: the
    agreed one, greenstudy.training.distributed)."""
    count = len(split)
    order = torch.randperm(count, device=split.images.device, generator=generator)
    stop = count - count % batch_size if count >= batch_size else count
    for start in range(0, stop, batch_size):
        safe_point()
        index = order[start : start + batch_size]
        images = split.images[index]
        if augment:
            images = random_crop_flip(images, generator)
        yield images, split.labels[index]


def eval_batches(
    split: Split, batch_size: int, safe_point: Callable[[], None] = stop_if_interrupted,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches in order, last one short."""
    for start in range(0, len(split), batch_size):
        safe_point()
        yield split.images[start : start + batch_size], split.labels[start : start + batch_size]
