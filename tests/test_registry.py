"""The report's decision in the Model Registry (greenstudy.report.registry) on a real SQLite store: a tiny real
`main` run (baseline + quantized), registered through the `report` entry point; aliases read back with
MlflowClient, moved on re-runs without duplicate versions, and the aliased fp32 and int8 models loaded
through `models:/...@alias` and run on the CPU."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from greenstudy.report.comparison import RunPoint
from greenstudy.report.entry import build_report
from greenstudy.report.registry import LEAST_ENERGY, MOST_ACCURATE, choose_aliases, within_alias
from tests.conftest import PYTHON, ROOT, TINY_ARGS, entry_env, tracking_store

EXPERIMENT = "greenstudy-registry-test"
NAME = "greenstudy-resnet18-cifar100"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir: Path) -> dict[str, object]:
    """A sqlite store holding one real tiny `main` run with a baseline and a quantized child."""
    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment(EXPERIMENT, artifact_location=str(tmp / "artifacts"))
    cmd = [PYTHON, str(ROOT / "mlproject" / "main.py"), "--model", "resnet18", "--variants", "baseline,quantized",
           "--data-dir", str(tiny_data_dir), "--train-subset", "256", "--test-subset", "100", "--experiment", EXPERIMENT,
           *TINY_ARGS]
    # a measurement lock of its own: this test checks the registry, not energy figures, and must not queue
    # behind unrelated measured runs on a shared machine
    env = {**entry_env(uri), "OMP_NUM_THREADS": "1", "GREENSTUDY_ENERGY_LOCK": str(tmp / "energy.lock")}
    done = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    tune = [PYTHON, str(ROOT / "mlproject" / "tune.py"), "--model", "resnet18", "--variant", "baseline", "--n-trials", "1",
            "--epochs", "1", "--train-subset", "64", "--val-size", "50", "--test-subset", "50", "--batch-size", "32",
            "--max-batch-size", "32", "--lr-scaling", "tuned", "--stop-beta", "0", "--infer-seconds", "0.3",
            "--download", "false", "--data-dir", str(tiny_data_dir), "--experiment", EXPERIMENT]
    done = subprocess.run(tune, env=env, cwd=tmp, capture_output=True, text=True,
                          timeout=400)  # a `tune` study beside the `main` run: its trial must not be compared
    assert done.returncode == 0, done.stderr[-3000:]
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    for run in client.search_runs([experiment_id], "tags.kind = 'variant'"):
        client.log_metric(run.info.run_id, "test_acc1", PINNED_ACC1[run.data.tags["variant"]])
    children = {r.data.tags["variant"]: r for r in client.search_runs([experiment_id], "tags.kind = 'variant'")}
    assert sorted(children) == ["baseline", "quantized"]
    trials = [r.info.run_id for r in client.search_runs([experiment_id], "tags.kind = 'trial'")]
    assert len(trials) == 1
    with tracking_store(uri):
        yield {"uri": uri, "client": client, "children": children, "trials": trials, "tmp": tmp}


def _versions(client: MlflowClient) -> dict[str, list[str]]:
    """run id -> its versions of NAME."""
    found: dict[str, list[str]] = {}
    for version in client.search_model_versions(f"name = '{NAME}'"):
        found.setdefault(version.run_id, []).append(version.version)
    return found


def _alias_run(client: MlflowClient, alias: str) -> str:
    return client.get_model_version_by_alias(NAME, alias).run_id


PINNED_ACC1 = {"baseline": 40.0, "quantized": 40.5}  # fixed test_acc1 logged over the measured ones


def _expected(children: dict[str, object]) -> dict[str, str]:
    """The decisions for PINNED_ACC1, written down by hand: int8 is half a point better but costs more
    (its baseline's training plus calibration), so both are on the front; the most accurate is int8 and
    the least-energy model within 1 point of it is the baseline."""
    point = {v: (r.data.metrics["lifecycle_energy_kwh"], r.data.metrics["test_acc1"]) for v, r in children.items()}
    assert {v: acc for v, (_, acc) in point.items()} == PINNED_ACC1
    assert point["quantized"][0] > point["baseline"][0]  # the int8 model costs its baseline's training plus calibration
    ids = {v: r.info.run_id for v, r in children.items()}
    return {"front": sorted([ids["baseline"], ids["quantized"]]), MOST_ACCURATE: ids["quantized"],
            LEAST_ENERGY: ids["baseline"], "accurate-within-1pt": ids["baseline"]}


def test_register_move_aliases_and_load(store: dict[str, object], tmp_path: Path) -> None:
    client: MlflowClient = store["client"]
    children = store["children"]
    ids = {v: r.info.run_id for v, r in children.items()}
    done = subprocess.run([PYTHON, str(ROOT / "mlproject" / "report.py"), "--experiment", EXPERIMENT, "--register", "true"],
                          env=entry_env(store["uri"]), cwd=store["tmp"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"registered: {NAME} v1 = baseline run {ids['baseline']}" in done.stdout
    expected = _expected(children)
    report_id = done.stdout.split("report run ", 1)[1].split()[0]
    compared = {row.split(",")[4] for row in Path(client.download_artifacts(report_id, "comparison.csv", str(tmp_path)))
                .read_text().splitlines()[1:]}
    assert compared == set(ids.values()) and store["trials"][0] not in done.stdout  # the study's trial: not compared
    assert sorted(_versions(client)) == expected["front"]
    for alias in (MOST_ACCURATE, LEAST_ENERGY, "accurate-within-1pt"):
        assert _alias_run(client, alias) == expected[alias], alias
    base_version = client.get_model_version_by_alias(NAME, LEAST_ENERGY)
    logged = children["baseline"].data.metrics
    assert base_version.tags["variant"] == "baseline" and base_version.tags["energy_basis"] == "lifecycle"
    assert float(base_version.tags["test_acc1"]) == pytest.approx(logged["test_acc1"], rel=1e-5)
    assert float(base_version.tags["lifecycle_energy_kwh"]) == pytest.approx(logged["lifecycle_energy_kwh"], rel=1e-5)
    assert float(base_version.tags["own_energy_kwh"]) == pytest.approx(logged["own_energy_kwh"], rel=1e-5)

    # Move the decision without another training run: the int8 model now reads 5 points above its baseline.
    client.log_metric(ids["quantized"], "test_acc1", logged["test_acc1"] + 5.0)
    for _ in range(2):  # twice: the second pass must change nothing
        result = build_report(EXPERIMENT, register=True)
        assert _alias_run(client, MOST_ACCURATE) == ids["quantized"] == _alias_run(client, "accurate-within-1pt")
        assert _alias_run(client, LEAST_ENERGY) == ids["baseline"]
        assert {run: len(v) for run, v in _versions(client).items()} == {ids["baseline"]: 1, ids["quantized"]: 1}
        assert {r.run_id for r in result.registered} == set(ids.values())
    quant_version = client.get_model_version_by_alias(NAME, MOST_ACCURATE)
    assert quant_version.tags["variant"] == "quantized" and quant_version.tags["precision"] == "int8"
    assert float(quant_version.tags["test_acc1"]) == pytest.approx(logged["test_acc1"] + 5.0, rel=1e-5)
    assert float(quant_version.tags["upstream_energy_kwh"]) > 0

    build_report(EXPERIMENT, register=True, within_points=10.0)  # a wider threshold: a new alias, the old one gone
    aliases = client.get_registered_model(NAME).aliases
    assert aliases["accurate-within-10pt"] == base_version.version and "accurate-within-1pt" not in aliases
    assert sum(len(v) for v in _versions(client).values()) == 2
    registry_csv = Path(client.download_artifacts(result.run_id, "registry.csv", str(tmp_path))).read_text()
    assert NAME in registry_csv and ids["quantized"] in registry_csv

    batch = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    fp32 = mlflow.pyfunc.load_model(f"models:/{NAME}@{LEAST_ENERGY}")
    assert np.asarray(fp32.predict(batch)).shape == (3, 100)
    int8_pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@{MOST_ACCURATE}")
    assert np.asarray(int8_pyfunc.predict(batch)).shape == (3, 100)
    int8 = mlflow.pytorch.load_model(f"models:/{NAME}@{MOST_ACCURATE}", map_location="cpu")
    assert "quantized::" in str(int8.inlined_graph)  # really the int8 model (a traced TorchScript module)
    with torch.no_grad():
        assert int8(torch.from_numpy(batch)).shape == (3, 100)


def _point(run_id: str, acc: float, lifecycle_kwh: float) -> RunPoint:
    metrics = {"test_acc1": acc, "energy_kwh": lifecycle_kwh / 2, "lifecycle_energy_kwh": lifecycle_kwh}
    return RunPoint(run_id, run_id, "resnet18", run_id, 0, metrics, {"dataset": "cifar100"})


def test_choose_aliases_on_the_front() -> None:
    points = [_point("baseline", 70.0, 10.0), _point("amp", 70.5, 6.0), _point("pruned", 68.9, 8.0),
              _point("quantized", 69.6, 10.5), _point("dominated", 60.0, 12.0)]
    chosen = {alias: p.run_id for alias, p in choose_aliases(points, 1.0).items()}
    assert chosen == {MOST_ACCURATE: "amp", LEAST_ENERGY: "amp", "accurate-within-1pt": "amp"}
    points.append(_point("big", 75.0, 30.0))
    chosen = {alias: p.run_id for alias, p in choose_aliases(points, 1.0).items()}
    assert chosen == {MOST_ACCURATE: "big", LEAST_ENERGY: "amp", "accurate-within-1pt": "big"}
    assert choose_aliases(points, 5.0)[within_alias(5.0)].run_id == "amp"  # 70.5 >= 75 - 5
    assert within_alias(1.0) == "accurate-within-1pt" and within_alias(0.5) == "accurate-within-0p5pt"
    assert choose_aliases([], 1.0) == {}
