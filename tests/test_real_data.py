"""Slow and GPU tests: real CIFAR-100 where ../shared/data provides it, CUDA where present."""

from __future__ import annotations

import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, SHARED_DATA

sys.path.insert(0, str(ROOT / "mlproject"))
import main as entry  # noqa: E402

HAS_REAL_DATA = (SHARED_DATA / "cifar-100-python.tar.gz").is_file()


def _child(client: MlflowClient, experiment: str, variant: str):  # noqa: ANN202
    exp = client.get_experiment_by_name(experiment)
    return next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("variant") == variant)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_REAL_DATA, reason="real CIFAR-100 not provided in ../shared/data")
def test_real_cifar100_learns(tracking_uri: str) -> None:
    """Two epochs of ResNet-18 (bf16) on 5,000 real images beat chance (1 %) by a wide margin."""
    code = entry.main(["--model", "resnet18", "--variants", "amp", "--data-dir", str(SHARED_DATA),
                       "--download", "false", "--epochs", "2", "--train-subset", "5000", "--val-size", "1000",
                       "--test-subset", "1000", "--infer-batches", "2", "--experiment", "real"])
    assert code == 0
    run = _child(MlflowClient(tracking_uri), "real", "amp")
    assert run.data.tags["data_source"].startswith("real:")
    assert run.data.metrics["test_acc1"] > 4.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_run_logs_nvml_energy(tiny_data_dir, tracking_uri: str) -> None:  # noqa: ANN001
    code = entry.main(["--model", "resnet18", "--variants", "baseline,amp", "--device", "cuda", "--data-dir",
                       str(tiny_data_dir), "--download", "false", "--epochs", "1", "--val-size", "100",
                       "--experiment", "gpu"])
    assert code == 0
    client = MlflowClient(tracking_uri)
    baseline = _child(client, "gpu", "baseline")
    assert baseline.data.tags["device"] == "cuda" and "gpu=nvml" in baseline.data.tags["energy_method"]
    assert baseline.data.metrics["gpu_energy_nvml_kwh"] > 0
    assert _child(client, "gpu", "amp").data.tags["precision"] in ("bf16", "fp16")
