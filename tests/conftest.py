"""Shared fixtures: a tiny CIFAR-format folder and a real MLflow store in a temp dir."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest

from greenstudy.training.data import write_synthetic_cifar

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small learnable synthetic CIFAR-100 folder (600 train, 200 test images)."""
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar(root, "cifar100", n_train=600, n_test=200, seed=0)
    return root


@pytest.fixture()
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store for one test, set for this process and its children."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@contextmanager
def tracking_store(uri: str) -> Iterator[None]:
    """Point this process's MLflow (env and fluent API) at `uri`; everything is restored on exit."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # mlflow.set_experiment sets it; undone on exit
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)


def entry_env(tracking_uri: str) -> dict[str, str]:
    """Environment for running an entry script in a subprocess."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PYTHONPATH"] = str(ROOT / "src")
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):  # set by earlier tests in this process
        env.pop(leaked, None)
    return env


PYTHON = sys.executable

# Fast settings for a real end-to-end run on the tiny folder.
TINY_ARGS = [
    "--epochs", "1", "--batch-size", "64", "--val-size", "100", "--infer-seconds", "0.3",
    "--infer-b1-images", "20", "--infer-b1-repeats", "1",
    "--int8-max-loss", "100",  # on 100 validation images one image is a point: the recipe search has its own tests
    "--calib-batches", "2", "--download", "false",
]


def stop_process_group(server: subprocess.Popen) -> None:
    """SIGTERM to a server started in a new session (its own process group), SIGKILL to what is left."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):  # any child (e.g. MLflow's job runner) that outlived it
        os.killpg(server.pid, signal.SIGKILL)
