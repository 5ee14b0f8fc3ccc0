"""`make demo`: the main job end to end through `mlflow run . --env-manager local`, on offline data.

Real CIFAR-100 is used when an archive or folder is found (../shared/data beside the project, or
GREENSTUDY_DATA); otherwise a small synthetic CIFAR-format set is written and the run says so loudly.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from greenstudy.measure.precision import cpu_capability
from greenstudy.progress import duration
from greenstudy.store import prepare_store
from greenstudy.training.data import SPECS, write_synthetic_cifar

# Sized to end within ~5 minutes on a 2-core AVX2 CPU (fp32 ResNet-18 trains ~25 img/s there).
DEMO_PARAMS = {
    "model": "resnet18",
    "epochs": "2",
    "train_subset": "1000",
    "val_size": "500",
    "test_subset": "1000",
    "infer_seconds": "3",
    "infer_b1_images": "200",  # batch-1 queries per repeat (1,000 by default)
    "infer_b1_repeats": "1",
    "calib_batches": "4",
}


def find_data(shared_data: Path | None) -> tuple[str, bool]:
    """(data_dir, is_real): the real CIFAR-100 where present, else a synthetic folder we write."""
    spec = SPECS["cifar100"]
    candidates = [Path(p) for p in (os.environ.get("GREENSTUDY_DATA"), shared_data, "data") if p]
    for folder in candidates:
        if (folder / spec.folder).is_dir() or (folder / spec.archive).is_file():
            return str(folder.resolve()), True
    synthetic = Path("data/synthetic").resolve()
    if not (synthetic / spec.folder).is_dir():
        write_synthetic_cifar(synthetic, "cifar100", n_train=3000, n_test=2000)
    return str(synthetic), False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared-data", type=Path, default=None)
    parser.add_argument("--experiment", default="greenstudy-cifar100")
    args = parser.parse_args(argv)
    data_dir, real = find_data(args.shared_data)
    if not real:
        print("=" * 72, "\nNO REAL CIFAR-100 FOUND: the demo runs on SYNTHETIC data (tag data_source=synthetic:...).")
        print("Accuracies below say nothing about CIFAR-100. Put cifar-100-python.tar.gz in data/ for real numbers.")
        print("=" * 72)
    params = {**DEMO_PARAMS, "data_dir": data_dir, "download": "false"}
    command = ["mlflow", "run", ".", "--env-manager", "local", "--experiment-name", args.experiment]
    for name, value in params.items():
        command += ["-P", f"{name}={value}"]
    print(prepare_store(mlflow.get_tracking_uri(), (args.experiment,)).line())  # once, before `mlflow run` touches it
    print("running:", " ".join(command), flush=True)
    started = time.perf_counter()
    code = subprocess.call(command)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(args.experiment)
    parents = client.search_runs(
        [experiment.experiment_id], "tags.kind = 'parent'", order_by=["attributes.start_time DESC"], max_results=1
    ) if experiment else []
    if not parents:
        print("error: the demo run left no parent run in MLflow", file=sys.stderr)
        return code or 1
    _print_summary(client, parents[0], args.experiment)
    _print_report(args.experiment)
    print(f"\nbrowse the runs: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}")
    print(f"demo total time: {duration(time.perf_counter() - started)} (CPU capability {cpu_capability()})")
    return code


def _print_summary(client: MlflowClient, parent: mlflow.entities.Run, experiment: str) -> None:
    print(f"\nexperiment: {experiment}\nparent run id: {parent.info.run_id} ({parent.info.status})")
    print(f"data_source: {parent.data.tags.get('data_source')}\nenergy_method: {parent.data.tags.get('energy_method')}")
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    for child in children:
        m, variant = child.data.metrics, child.data.tags.get("variant", "?")
        if child.info.status != "FINISHED":
            reason = child.data.tags.get("skipped") or child.data.tags.get("error", "")
            state = "SKIPPED" if "skipped" in child.data.tags else child.info.status
            print(f"  {variant:<10} {child.info.run_id} {state}: {reason}")
            continue
        print(
            f"  {variant:<10} {child.info.run_id}  test_acc1={m.get('test_acc1', float('nan')):.2f}%  "
            f"energy={m.get('energy_kwh', 0) * 1000:.3f} Wh own, {m.get('lifecycle_energy_kwh', 0) * 1000:.3f} Wh lifecycle  "
            f"infer={m.get('infer_images_per_second', 0):.0f} img/s"
        )


def _print_report(experiment: str) -> None:
    """Write the comparison report for this experiment, when the report module is available."""
    try:
        from greenstudy.report.entry import report_for_experiment
    except ImportError:
        return
    report_run_id, location = report_for_experiment(experiment)
    print(f"report run id: {report_run_id}\nreport: {location}")


if __name__ == "__main__":
    sys.exit(main())
