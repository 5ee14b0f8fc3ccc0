"""Slow test on the real CIFAR-100 where ../shared/data provides it."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from greenstudy.measure.precision import choose_mixed_precision, describe
from greenstudy.runs.main_run import run_main
from greenstudy.runs.params import parse_main
from tests.conftest import SHARED_DATA

HAS_REAL_DATA = (SHARED_DATA / "cifar-100-python.tar.gz").is_file()
AMP_NATIVE = choose_mixed_precision(describe(torch.device("cpu"))).runs


@pytest.mark.slow
@pytest.mark.skipif(not HAS_REAL_DATA, reason="real CIFAR-100 not provided in ../shared/data")
def test_real_cifar100_learns(tracking_uri: str) -> None:
    """Two epochs of ResNet-18 on real images beat chance (1 %) by a wide margin: bf16 on 5,000 images
    where the CPU runs bf16 natively, fp32 on 3,000 elsewhere (emulated bf16 would take ~10x longer)."""
    variant, images, floor = ("amp", "5000", 4.0) if AMP_NATIVE else ("baseline", "3000", 3.0)
    cfg = parse_main(["--model", "resnet18", "--variants", variant, "--data-dir", str(SHARED_DATA), "--download", "false",
                      "--epochs", "2", "--train-subset", images, "--val-size", "1000", "--test-subset", "1000",
                      "--infer-seconds", "1", "--infer-b1-images", "100", "--infer-b1-repeats", "1", "--experiment", "real"])
    outcome = run_main(cfg)
    assert not outcome.failed
    run = MlflowClient(tracking_uri).get_run(outcome.children[0].run_id)
    assert run.data.tags["data_source"].startswith("real:")
    assert run.data.metrics["test_acc1"] > floor
