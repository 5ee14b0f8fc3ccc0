"""Our training pipeline computes what the usual PyTorch recipe computes (same loss, same update),
its on-device augmentation is a true random crop + flip, and its step never reads back to the host."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, Subset

from greenstudy.training.data import Normalizer, Split, load_cifar, random_crop_flip, train_batches
from greenstudy.training.models import build_model
from greenstudy.training.steps import (
    Precision,
    TrainSetup,
    make_optimizer,
    make_scheduler,
    train_one_epoch,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import MEAN, STD, PickledCifar100, usual_optimizer, usual_step, usual_transform  # noqa: E402

CPU = torch.device("cpu")
BATCH = 24


def _our_setup(model: nn.Module, data, lr: float, channels_last: bool = True, augment: bool = False) -> TrainSetup:
    optimizer = make_optimizer(model, lr, 5e-4)
    return TrainSetup(
        model=model, optimizer=optimizer, scheduler=make_scheduler(optimizer, lr, 10),
        normalize=Normalizer(data.mean, data.std, CPU, channels_last), precision=Precision(),
        label_smoothing=0.1, batch_size=BATCH, device=CPU, generator=torch.Generator().manual_seed(7), augment=augment,
    )


@pytest.mark.parametrize("model_name", ["resnet18", "efficientnet_b0"])
def test_first_batch_loss_and_update_match_the_usual_recipe(tiny_data_dir: Path, model_name: str) -> None:
    """Same weights, same images (no augmentation): the usual PIL/DataLoader fp32 step and our
    uint8-on-device channels_last step give the same first-batch loss and the same updated weights."""
    data = load_cifar("cifar100", tiny_data_dir, download=False, val_size=0)
    ours_split = data.train.subset(BATCH)
    usual_set = PickledCifar100(tiny_data_dir / "cifar-100-python", train=True, transform=usual_transform(augment=False))
    # load_cifar shuffles the pickle: find each of our images in the usual dataset by its pixels
    raw = torch.from_numpy(usual_set.data).permute(0, 3, 1, 2)
    where = [int((raw == image).flatten(1).all(1).nonzero()[0]) for image in ours_split.images]
    assert [usual_set.targets[i] for i in where] == ours_split.labels.tolist()
    # train_one_epoch shuffles the batch with its generator; the usual side reads in that same order
    order = torch.randperm(BATCH, generator=torch.Generator().manual_seed(7)).tolist()
    loader = DataLoader(Subset(usual_set, [where[i] for i in order]), batch_size=BATCH, shuffle=False)

    torch.manual_seed(0)
    usual_model = build_model(model_name, 100)
    initial = copy.deepcopy(usual_model)
    our_model = copy.deepcopy(usual_model).to(memory_format=torch.channels_last)
    setup = _our_setup(our_model, data, lr=0.05)
    first_lr = setup.optimizer.param_groups[0]["lr"]  # one-cycle starts at lr / 10
    inputs, targets = next(iter(loader))

    torch.manual_seed(123)  # EfficientNet's dropout / stochastic depth draw the same masks on both sides
    usual_loss = usual_step(usual_model, usual_optimizer(usual_model, first_lr), nn.CrossEntropyLoss(label_smoothing=0.1),
                            inputs, targets, CPU)
    torch.manual_seed(123)
    our_loss, _ = train_one_epoch(setup, ours_split)

    assert our_loss == pytest.approx(usual_loss, rel=1e-5)
    assert abs(usual_loss - 4.6) < 1.0  # a real cross-entropy over 100 classes, not a degenerate value
    moved = 0.0
    for (name, ours), usual, before in zip(our_model.named_parameters(), usual_model.parameters(), initial.parameters(),
                                           strict=True):
        torch.testing.assert_close(ours, usual, rtol=1e-4, atol=1e-5, msg=f"{name} differs after one step")
        moved += (usual - before).abs().sum().item()
    assert moved > 1e-3, "the step changed the weights"


def test_normalizer_equals_to_tensor_then_normalize(tiny_data_dir: Path) -> None:
    usual_set = PickledCifar100(tiny_data_dir / "cifar-100-python", transform=usual_transform(augment=False))
    usual = torch.stack([usual_set[i][0] for i in range(16)])
    images = torch.from_numpy(usual_set.data[:16]).permute(0, 3, 1, 2)
    ours = Normalizer(MEAN, STD, CPU, channels_last=True)(images)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours, usual, rtol=1e-5, atol=1e-5)


def _find_window(padded: torch.Tensor, out: torch.Tensor) -> list[tuple[int, int, bool]]:
    """Every (dy, dx, flipped) for which `out` is that 32x32 window of `padded`."""
    found = []
    for dy in range(9):
        for dx in range(9):
            window = padded[:, dy : dy + 32, dx : dx + 32]
            if torch.equal(window, out):
                found.append((dy, dx, False))
            if torch.equal(window.flip(-1), out):
                found.append((dy, dx, True))
    return found


def test_random_crop_flip_gives_shifted_windows_flipped_about_half_the_time() -> None:
    count = 400
    images = torch.randint(1, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = random_crop_flip(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = F.pad(images, (4, 4, 4, 4))
    matches = [_find_window(padded[i], out[i]) for i in range(count)]
    assert all(len(m) == 1 for m in matches), "each output is exactly one shifted (maybe flipped) window"
    flips = sum(m[0][2] for m in matches)
    assert 0.4 * count < flips < 0.6 * count
    assert {m[0][0] for m in matches} == set(range(9)) and {m[0][1] for m in matches} == set(range(9))
    assert (out == 0).any(), "some crops reach into the zero padding"
    again = random_crop_flip(images, torch.Generator().manual_seed(1))
    assert torch.equal(out, again), "same seed, same augmentation"
    assert not torch.equal(out, random_crop_flip(images, torch.Generator().manual_seed(2)))


def test_train_batches_cover_the_split_once_and_keep_labels() -> None:
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 32, 32).contiguous()
    split = Split(images, torch.arange(100))
    batches = list(train_batches(split, 32, torch.Generator().manual_seed(0), augment=False))
    assert [len(labels) for _, labels in batches] == [32, 32, 32]  # the short last batch is dropped
    seen = torch.cat([labels for _, labels in batches])
    assert len(set(seen.tolist())) == 96
    for batch, labels in batches:
        assert torch.equal(batch[:, 0, 0, 0].long(), labels)


class _HostReads(TorchFunctionMode):
    """Records every tensor call that copies a value back to the host (a sync on a GPU)."""

    READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu", "__array__"}

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = getattr(func, "__name__", "")
        if name in self.READS:
            self.reads[name] += 1
        return func(*args, **(kwargs or {}))


def test_training_steps_do_not_read_back_to_the_host(tiny_data_dir: Path) -> None:
    """Three steps, augmentation on: the only host reads are the two at the end of the epoch."""
    data = load_cifar("cifar100", tiny_data_dir, download=False, val_size=0)
    torch.manual_seed(0)
    setup = _our_setup(build_model("efficientnet_b0", 100).to(memory_format=torch.channels_last), data, 0.05, augment=True)
    recorder = _HostReads()
    with recorder:
        train_one_epoch(setup, data.train.subset(3 * BATCH))
    assert recorder.reads == Counter({"item": 2})


def test_overhead_benchmark_tracks_real_runs_and_prints_the_overhead(tiny_data_dir: Path) -> None:
    """A tiny real run of benchmarks/overhead.py: its tracked trainings land FINISHED in a real store."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--data-dir", str(tiny_data_dir),
         "--train-images", "64", "--val-images", "32", "--epochs", "1", "--reps", "1", "--batch-size", "32"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "tracked runs FINISHED in the store: 1 of 1 (plus the parent and the warm-up)" in lines
    overhead = [line for line in lines if line.startswith("overhead = ")]
    assert len(overhead) == 1 and overhead[0].endswith(" %")
    float(overhead[0].removeprefix("overhead = ").removesuffix(" %"))


@pytest.mark.parametrize("total", [1, 2, 4, 5, 6, 10, 37])
def test_one_cycle_schedule_works_for_any_number_of_steps(total: int) -> None:
    """OneCycleLR divides by (pct_start * total - 1); 5 steps once crashed with ZeroDivisionError."""
    optimizer = make_optimizer(nn.Linear(2, 2), 0.1, 0.0)
    scheduler = make_scheduler(optimizer, 0.1, total)
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(total - 1):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert all(0 < rate <= 0.1 + 1e-12 for rate in rates)
    if total >= 5:  # a warm-up from lr / 10, a peak near lr, an end near lr / 1000
        assert rates[0] == pytest.approx(0.01) and max(rates) > 0.08 and rates[-1] < 0.01
