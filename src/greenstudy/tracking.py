"""MLflow: reachability check, parent/child runs, and the metric contract every run logs."""

from __future__ import annotations

import copy
import csv
import logging
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import RunStatus
from mlflow.models import infer_signature
from torch import nn

from greenstudy.errors import ConfigError, TrackingError, VariantSkipped
from greenstudy.store import prepare_store, sqlite_path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

CONTRACT_PARAMS = (
    "model", "variant", "dataset", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing",
    "seed", "device", "train_subset", "country_iso_code",
)
EPOCH_METRICS = (
    "train_loss", "train_acc1", "val_loss", "val_acc1", "epoch_seconds", "epoch_energy_kwh",
    "epoch_train_energy_kwh", "epoch_val_energy_kwh", "cumulative_energy_kwh",
)
FINAL_METRICS = (
    "test_acc1", "test_acc5", "test_loss", "energy_kwh", "own_energy_kwh", "upstream_energy_kwh", "lifecycle_energy_kwh",
    "emissions_kg", "lifecycle_emissions_kg", "train_energy_kwh", "val_energy_kwh", "setup_energy_kwh", "test_energy_kwh",
    "train_emissions_kg", "train_seconds", "infer_energy_wh_per_1k_images", "infer_images_per_second",
    "cpu_energy_kwh", "gpu_energy_kwh", "ram_energy_kwh", "params", "macs", "model_size_mb",
)
CONTRACT_TAGS = (
    "kind", "model", "variant", "dataset", "data_source", "device", "energy_method", "codecarbon_version",
    "cpu_model", "gpu_model", "cpu_capability", "precision",
)
PIP_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1"]
# MLflow's system metrics (CPU/GPU utilisation, memory, GPU power where NVML has it) on every training child:
# one psutil/NVML sample per interval in a background thread (benchmarks/overhead.py measures what it costs)
SYSTEM_METRICS_INTERVAL_ENV = "GREENSTUDY_SYSTEM_METRICS_INTERVAL_S"


def system_metrics_interval() -> float:
    """Seconds between MLflow system-metric samples (default 10); a bad value is one ConfigError line."""
    text = os.environ.get(SYSTEM_METRICS_INTERVAL_ENV, "10")
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ConfigError(f"{SYSTEM_METRICS_INTERVAL_ENV} must be a number of seconds above 0, got {text!r}")
    return seconds


def ensure_tracking_reachable(timeout_s: float = 5.0) -> str:
    """Fail within seconds, with one line, when the tracking URI is a server that does not answer; a
    SQLite store is created and migrated once, under its lock, before any run touches it (greenstudy.store)."""
    uri = mlflow.get_tracking_uri()
    if sqlite_path(uri) is not None:
        try:
            prepare_store(uri)
        except Exception as exc:  # MLflow/SQLAlchemy errors: a folder we cannot write, a broken database
            raise TrackingError(f"MLflow store {uri} cannot be opened: {str(exc).splitlines()[0]}") from exc
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}): start it or fix MLFLOW_TRACKING_URI") from exc
    return uri


@contextmanager
def run_scope(
    run_name: str, experiment: str, nested: bool = False, tags: dict[str, str] | None = None, run_id: str | None = None,
    system_metrics: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or attach to, under `mlflow run`; or reopen `run_id` in place) a run and always end it
    with an honest status: FINISHED on success, KILLED on Ctrl-C and for a skipped variant (reason in
    the `skipped` tag), FAILED on any other exception (with the error tagged). `system_metrics`: MLflow
    samples CPU/GPU utilisation and memory into the run's System metrics while it is open."""
    sampling = {"log_system_metrics": True} if system_metrics else {}
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(system_metrics_interval())
    if run_id:
        run = mlflow.start_run(run_id=run_id, nested=nested, **sampling)
    elif not nested and os.environ.get("MLFLOW_RUN_ID"):
        run = mlflow.start_run(**sampling)  # `mlflow run` created this run already; attach to it
    elif nested:  # in the parent's experiment, also when the parent was reopened by `resume`
        run = mlflow.start_run(run_name=run_name, nested=True, tags=tags, experiment_id=mlflow.active_run().info.experiment_id,
                               **sampling)
    else:
        mlflow.set_experiment(experiment)
        run = mlflow.start_run(run_name=run_name, tags=tags, **sampling)
    if tags and not nested:
        mlflow.set_tags(tags)
    try:
        yield run
    except VariantSkipped as skip:
        mlflow.set_tag("skipped", str(skip))
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except KeyboardInterrupt:
        mlflow.set_tag("error", "interrupted (KeyboardInterrupt)")
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as exc:
        mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def log_epoch(metrics: dict[str, float], epoch: int) -> None:
    """Per-epoch metrics, step = epoch (1-based)."""
    mlflow.log_metrics({name: float(value) for name, value in metrics.items()}, step=epoch)


def log_final(metrics: dict[str, float]) -> None:
    mlflow.log_metrics({name: float(value) for name, value in metrics.items()})


def log_torch_model(model: nn.Module, example: torch.Tensor, name: str = "model") -> None:
    """The model, from a CPU copy, as an MLflow pytorch model (pickle format: works for pruned and int8
    modules too), with a signature and a batch-2 float input example."""
    model = copy.deepcopy(model).cpu().eval()  # a CPU copy: loadable on a host without the run's GPU
    example = example[:2].float().cpu()
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # the pickle-format caution, once per model
    with torch.no_grad():
        output = model(example)
    signature = infer_signature(example.numpy(), output.float().numpy())
    with warnings.catch_warnings():  # torch.jit save/load deprecation notes for the int8 module
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript archive.*")
        mlflow.pytorch.log_model(
            model, name=name, signature=signature, input_example=np.asarray(example.numpy()),
            serialization_format="pickle", pip_requirements=PIP_REQUIREMENTS,
        )


def write_dict_csv(rows: Sequence[dict[str, object]], columns: Sequence[str], path: Path) -> Path:
    """Rows of dicts as a CSV table artifact with the given column order."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path
