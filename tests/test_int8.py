"""int8 that keeps its accuracy: the recipe's blocks, its fp32 fallback loop, agreement with fp32 on a small
trained model, and `from_run` refusing a run that is not a trained baseline."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from torch import nn

from greenstudy.training.data import CifarData, Normalizer, eval_batches, load_cifar, write_synthetic_cifar
from greenstudy.training.models import build_model
from greenstudy.variants.int8_recipe import choose_recipe, keep_until_within, quantizable_groups
from tests.conftest import PYTHON, ROOT, entry_env

CPU = torch.device("cpu")


def test_blocks_of_both_models() -> None:
    resnet = quantizable_groups(build_model("resnet18", 100))
    assert resnet == ["conv1", *(f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)), "fc"]
    effnet = quantizable_groups(build_model("efficientnet_b0", 100))
    assert effnet[0] == "features.0" and effnet[-2:] == ["features.8", "classifier"]
    assert len(effnet) == 1 + 16 + 2  # the stem, 16 MBConv blocks, the head conv and the classifier


def test_fallback_keeps_adding_fp32_blocks_until_the_bound_holds() -> None:
    """A fake sensitivity: each block kept in fp32 gives back its own share of the loss."""
    share = {"a": 3.0, "b": 1.5, "c": 0.5, "d": 0.2}
    fp32, all_int8 = 80.0, 80.0 - sum(share.values())

    def accuracy_with(kept: tuple[str, ...]) -> float:
        return all_int8 + sum(share[g] for g in kept)

    tried: list[dict[str, object]] = []
    kept, accuracy = keep_until_within(["a", "b", "c", "d"], accuracy_with, fp32, 1.0, all_int8, tried)
    assert kept == ("a", "b") and accuracy == pytest.approx(79.3)  # 0.7 points lost: within 1.0, one block fewer would not be
    assert [t["keep_fp32"] for t in tried] == ["a", "a,b"]
    kept, _ = keep_until_within(["a", "b", "c", "d"], accuracy_with, fp32, 0.0, all_int8, [])
    assert kept == ("a", "b", "c", "d"), "a bound int8 cannot meet ends with every block in fp32"


def _train_small(model: nn.Module, data: CifarData, normalize: Normalizer, epochs: int) -> None:
    """A few Adam epochs, then batch-norm statistics recomputed over the training set (EfficientNet's slow
    BN momentum leaves them near their initial values after so few steps)."""
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for index in torch.randperm(len(data.train), generator=generator).split(50):
            loss = F.cross_entropy(model(normalize(data.train.images[index])), data.train.labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the pass below
    with torch.no_grad():
        for images, _ in eval_batches(data.train, 100):
            model(normalize(images))
    model.eval()


def test_int8_agrees_with_fp32_on_a_small_trained_model(tmp_path: Path) -> None:
    """EfficientNet-B0 (depthwise convs, SiLU, squeeze-and-excitation) trained briefly on a learnable
    10-class set: the recipe's int8 model gives the fp32 model's top-1 on >= 90 % of validation images."""
    write_synthetic_cifar(tmp_path, "cifar10", n_train=1000, n_test=100, seed=1)
    data = load_cifar("cifar10", str(tmp_path), False, 200, 0, 0, 0)
    normalize = Normalizer(data.mean, data.std, CPU, channels_last=False)
    torch.manual_seed(0)
    model = build_model("efficientnet_b0", data.num_classes)
    _train_small(model, data, normalize, epochs=2)
    calibration = [normalize(images) for _, (images, _) in zip(range(4), eval_batches(data.train, 64), strict=False)]

    def predictions(net: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([net(normalize(images)).argmax(1) for images, _ in eval_batches(data.val, 100)])

    def val_acc1(net: nn.Module) -> float:
        return float((predictions(net) == data.val.labels).float().mean() * 100)

    assert val_acc1(model) > 50  # learnt something: agreement is not between two guesses
    int8, recipe = choose_recipe(model, calibration, val_acc1, max_loss=1.0)
    assert recipe.within_bound and recipe.tried
    assert "quantized::" in str(torch.jit.trace(int8, calibration[0][:2]).inlined_graph)
    agree = (predictions(int8) == predictions(model)).float().mean().item()
    assert agree >= 0.9, (agree, recipe)


def test_from_run_refuses_a_run_that_is_not_a_trained_baseline(tiny_data_dir: Path, tracking_uri: str, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("from-run")
    parent = client.create_run(experiment, tags={"kind": "parent"}).info.run_id
    args = ["--model", "resnet18", "--variants", "quantized", "--data-dir", str(tiny_data_dir), "--download", "false",
            "--val-size", "100", "--experiment", "from-run"]
    for run_id, expected in ((parent, f"error: from_run: run {parent} is not a finished baseline run of `main`"),
                             ("0123456789abcdef", "error: from_run: no run '0123456789abcdef'")):
        done = subprocess.run([PYTHON, str(ROOT / "mlproject" / "main.py"), *args, "--from-run", run_id],
                              env=entry_env(tracking_uri), cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.strip().splitlines()[-1].startswith(expected), done.stderr[-500:]
    assert len(client.search_runs([experiment])) == 1, "nothing ran"
