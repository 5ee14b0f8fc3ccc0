"""The `report` entry point on a real MLflow store: one real tiny `main` run (efficientnet_b0 baseline + amp)
plus runs logged directly (another model, a FAILED child, a child missing metrics); every check reads the
report run's artifacts back through MlflowClient."""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import subprocess
import time
from pathlib import Path

import matplotlib.image
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from greenstudy.pareto import hypervolume_2d, pareto_front
from greenstudy.report import (
    RunPoint,
    build_report,
    classify,
    comparison_rows,
    cumulative_curve,
    fetch_curves,

    phase_breakdown,
    report_for_experiment,
)
from tests.conftest import PYTHON, ROOT, TINY_ARGS, entry_env, tracking_store

EXPERIMENT = "greenstudy-report-test"
CONTRACT = {
    "test_acc1": 10.0, "energy_kwh": 2e-4, "emissions_kg": 7e-5, "infer_energy_wh_per_1k_images": 0.08,
    "infer_images_per_second": 150.0, "params": 11.2e6, "macs": 557e6, "model_size_mb": 42.7,
    "train_cpu_energy_kwh": 4e-5, "train_gpu_energy_kwh": 0.0, "train_ram_energy_kwh": 1.2e-4,
    "eval_cpu_energy_kwh": 1e-6, "eval_gpu_energy_kwh": 0.0, "eval_ram_energy_kwh": 3e-6,
    "inference_cpu_energy_kwh": 8e-6, "inference_gpu_energy_kwh": 0.0, "inference_ram_energy_kwh": 2.4e-5,
}


def log_child(client: MlflowClient, experiment_id: str, parent_id: str, model: str, variant: str,
              metrics: dict[str, float], status: str = "FINISHED", extra_tags: dict[str, str] | None = None,
              history: list[tuple[float, float]] | None = None) -> str:
    """A child run logged directly (same tags and metric names as greenstudy.run.run_variant)."""
    tags = {"mlflow.parentRunId": parent_id, "model": model, "variant": variant, "cpu_model": "Logged-directly CPU",
            "gpu_model": "none", "device": "cpu", "energy_method": "logged-directly", **(extra_tags or {})}
    run_id = client.create_run(experiment_id, run_name=f"{model}-{variant}", tags=tags).info.run_id
    now = int(time.time() * 1000)
    batch = [Metric(name, value, now, 0) for name, value in metrics.items()]
    for step, (acc, kwh) in enumerate(history or [], start=1):
        batch += [Metric("val_acc1", acc, now, step), Metric("epoch_energy_kwh", kwh, now, step)]
    client.log_batch(run_id, metrics=batch)
    client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir: Path) -> dict[str, object]:
    """A sqlite store with one real `main` run and runs logged directly, set as the tracking URI."""
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=str(tmp / "artifacts"))
    cmd = [PYTHON, str(ROOT / "mlproject" / "main.py"), "--model", "efficientnet_b0", "--variants", "baseline,amp",
           "--data-dir", str(tiny_data_dir), "--train-subset", "256", "--test-subset", "100",
           "--experiment", EXPERIMENT, *TINY_ARGS]
    done = subprocess.run(cmd, env=entry_env(uri), cwd=tmp, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]

    parent = client.create_run(experiment_id, run_name="resnet18", tags={"kind": "parent", "model": "resnet18"})
    pid = parent.info.run_id
    history = [(5.0, 1e-4), (9.0, 1e-4)]
    base = log_child(client, experiment_id, pid, "resnet18", "baseline", CONTRACT, history=history)
    derived = {"derived_from": base}
    ids = {
        "r18_baseline": base,
        "r18_pruned": log_child(client, experiment_id, pid, "resnet18", "pruned",
                                {**CONTRACT, "test_acc1": 8.0, "energy_kwh": 1e-4, "macs": 140e6, "model_size_mb": 11.0},
                                extra_tags=derived, history=[(8.0, 5e-5)]),
        "r18_quantized": log_child(client, experiment_id, pid, "resnet18", "quantized",
                                   {**CONTRACT, "test_acc1": 9.5, "energy_kwh": 3e-5, "model_size_mb": 11.0},
                                   extra_tags=derived, history=history),  # repeats its baseline's epochs
        "failed": log_child(client, experiment_id, pid, "resnet18", "quantized", {}, status="FAILED",
                            extra_tags={"error": "RuntimeError: quantization unsupported"}),
        "missing": log_child(client, experiment_id, pid, "resnet18", "amp", {"test_acc1": 3.0}),
    }
    client.set_terminated(pid, "FINISHED")
    with tracking_store(uri):
        yield {"uri": uri, "client": client, "experiment_id": experiment_id, "ids": ids, "tmp": tmp}


def _children(client: MlflowClient, experiment_id: str) -> list:
    return [r for r in client.search_runs([experiment_id]) if "variant" in r.data.tags]


def _read_csv(client: MlflowClient, run_id: str, name: str, dst: Path) -> list[dict[str, str]]:
    path = client.download_artifacts(run_id, name, str(dst))
    return list(csv.DictReader(io.StringIO(Path(path).read_text())))


def test_report_on_real_and_logged_runs(store: dict[str, object], tmp_path: Path) -> None:
    client: MlflowClient = store["client"]
    ids: dict[str, str] = store["ids"]
    result = build_report(EXPERIMENT)
    report = client.get_run(result.run_id)
    assert report.data.tags["kind"] == "report" and report.data.tags["report_empty"] == "false"
    assert report.info.experiment_id == store["experiment_id"] and report.info.status == "FINISHED"

    children = _children(client, store["experiment_id"])
    finished = {r.info.run_id: r for r in children if r.info.run_id not in (ids["failed"], ids["missing"])}
    assert len(finished) == 5  # efficientnet_b0 baseline + amp (real); resnet18 baseline, pruned, quantized (logged)
    rows = _read_csv(client, result.run_id, "comparison.csv", tmp_path)
    assert {row["run_id"] for row in rows} == set(finished)
    assert [(r["model"], r["variant"]) for r in rows] == [
        ("efficientnet_b0", "baseline"), ("efficientnet_b0", "amp"),
        ("resnet18", "baseline"), ("resnet18", "pruned"), ("resnet18", "quantized")]
    for row in rows:
        logged = finished[row["run_id"]].data.metrics
        for name in ("test_acc1", "energy_kwh", "emissions_kg", "infer_images_per_second", "params", "model_size_mb"):
            assert float(row[name]) == logged[name], (row["variant"], name)
    by_variant = {(r["model"], r["variant"]): r for r in rows}
    amp, base = by_variant[("efficientnet_b0", "amp")], by_variant[("efficientnet_b0", "baseline")]
    assert float(base["energy_kwh_vs_baseline"]) == 1.0
    assert math.isclose(float(amp["energy_kwh_vs_baseline"]), float(amp["energy_kwh"]) / float(base["energy_kwh"]))
    pruned = by_variant[("resnet18", "pruned")]
    assert float(pruned["macs_vs_baseline"]) == pytest.approx(140 / 557)
    assert float(pruned["test_acc1_delta_vs_baseline"]) == pytest.approx(-2.0)

    skipped = {row["run_id"]: row for row in _read_csv(client, result.run_id, "skipped.csv", tmp_path)}
    assert set(skipped) == {ids["failed"], ids["missing"]}
    assert skipped[ids["failed"]]["reason"] == "status FAILED: RuntimeError: quantization unsupported"
    assert skipped[ids["missing"]]["reason"].startswith("missing metrics: energy_kwh, emissions_kg")

    metrics = report.data.metrics
    assert metrics["points_plotted"] == len(finished) == metrics["runs_reported"]
    assert metrics["html_points_plotted"] == len(finished) and metrics["breakdown_runs_plotted"] == len(finished)
    assert metrics["curves_plotted"] == 4  # all but the quantized run, whose epochs are its baseline's
    assert metrics["runs_skipped"] == 2

    page = Path(client.download_artifacts(result.run_id, "report.html", str(tmp_path))).read_text()
    assert page.count("data:image/png;base64,") == 3
    for run_id in finished:
        assert run_id in page
    real = finished[by_variant[("efficientnet_b0", "baseline")]["run_id"]].data.tags
    assert real["energy_method"] in page and real["cpu_model"] in page and "Logged-directly CPU" in page
    interactive = Path(client.download_artifacts(result.run_id, "accuracy_vs_energy.html", str(tmp_path))).read_text()
    assert "<script src=" not in interactive and "plotly" in interactive.lower()
    assert all(run_id in interactive for run_id in finished)
    for name in ("accuracy_vs_energy.png", "energy_breakdown.png", "learning_curves.png"):
        image = matplotlib.image.imread(client.download_artifacts(result.run_id, name, str(tmp_path)))
        assert image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 0.01, name
    assert "| efficientnet_b0 | amp |" in Path(client.download_artifacts(result.run_id, "comparison.md", str(tmp_path))).read_text()
    assert result.report_location.endswith("/report.html") and Path(result.report_location).is_file()


def test_report_restricted_by_parent_and_filter(store: dict[str, object], tmp_path: Path) -> None:
    client: MlflowClient = store["client"]
    ids: dict[str, str] = store["ids"]
    parent = client.get_run(ids["r18_baseline"]).data.tags["mlflow.parentRunId"]
    run_id, location = report_for_experiment(EXPERIMENT, parent_run_ids=parent)
    rows = _read_csv(client, run_id, "comparison.csv", tmp_path)
    assert {r["run_id"] for r in rows} == {ids["r18_baseline"], ids["r18_pruned"], ids["r18_quantized"]}
    assert location.endswith("/report.html") and run_id in location

    result = build_report(EXPERIMENT, filter_string="tags.model = 'efficientnet_b0'")
    assert {p.model for p in result.points} == {"efficientnet_b0"} and len(result.points) == 2
    assert client.get_run(result.run_id).data.params["filter"] == "tags.model = 'efficientnet_b0'"


def test_learning_curves_from_metric_history(store: dict[str, object]) -> None:
    client: MlflowClient = store["client"]
    ids: dict[str, str] = store["ids"]
    points, _ = classify(client.search_runs([store["experiment_id"]]))
    curves = {c.run_id: c for c in fetch_curves(client, points)}
    assert ids["r18_quantized"] not in curves and len(curves) == 4
    assert curves[ids["r18_baseline"]].energy_kwh == pytest.approx([1e-4, 2e-4]) and curves[ids["r18_baseline"]].val_acc1 == [5.0, 9.0]
    pruned = curves[ids["r18_pruned"]]
    assert pruned.derived and pruned.energy_kwh == pytest.approx([2e-4, 2e-4 + 5e-5])  # starts where its baseline ended
    assert pruned.val_acc1 == [9.0, 8.0]
    real = [p for p in points if p.model == "efficientnet_b0"]
    for point in real:
        history = client.get_metric_history(point.run_id, "epoch_energy_kwh")
        assert curves[point.run_id].energy_kwh == pytest.approx([history[0].value])


def test_empty_and_all_failed_experiments_still_get_a_report_run(store: dict[str, object], tmp_path: Path) -> None:
    client: MlflowClient = store["client"]
    empty_id = client.create_experiment("empty-report-test", artifact_location=str(store["tmp"] / "empty"))
    result = build_report("empty-report-test")
    assert result.empty and not result.skipped
    run = client.get_run(result.run_id)
    assert run.data.tags["report_empty"] == "true" and run.info.experiment_id == empty_id
    assert run.data.metrics["points_plotted"] == 0 and run.data.metrics["runs_reported"] == 0
    assert _read_csv(client, result.run_id, "comparison.csv", tmp_path) == []
    assert "no variant runs" in Path(client.download_artifacts(result.run_id, "report.html", str(tmp_path))).read_text()

    failed_id = client.create_experiment("failed-report-test", artifact_location=str(store["tmp"] / "failed"))
    parent = client.create_run(failed_id, run_name="p", tags={"kind": "parent"}).info.run_id
    bad = log_child(client, failed_id, parent, "resnet18", "baseline", {}, status="KILLED")
    result = build_report("failed-report-test")
    assert result.empty and [s.run_id for s in result.skipped] == [bad]
    assert [r["run_id"] for r in _read_csv(client, result.run_id, "skipped.csv", tmp_path)] == [bad]


def test_entry_point_prints_table_and_rejects_bad_input(store: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    script = str(ROOT / "mlproject" / "report.py")
    env = entry_env(store["uri"])
    ok = subprocess.run([PYTHON, script, "--experiment", EXPERIMENT, "--filter", "tags.model = 'resnet18'"],
                        env=env, cwd=store["tmp"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "| resnet18 | pruned |" in ok.stdout and "efficientnet_b0" not in ok.stdout
    assert "skipped" in ok.stdout and store["ids"]["failed"] in ok.stdout and "report.html" in ok.stdout

    client: MlflowClient = store["client"]
    before = len(client.search_runs([store["experiment_id"]]))
    spec = importlib.util.spec_from_file_location("report_entry", script)
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    for args, expected in (
        (["--experiment", "no-such-experiment"], "error: experiment 'no-such-experiment' not found"),
        (["--experiment", EXPERIMENT, "--filter", "metrics.energy_kwh >> 1"], "error: MLflow rejected filter"),
        (["--experiment", EXPERIMENT, "--parent-run-ids", "0123abc"], "error: parent run '0123abc' not found"),
    ):
        capsys.readouterr()
        assert entry.main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(expected), err
    with pytest.raises(SystemExit) as exit_info:
        entry.main(["--experiment", EXPERIMENT, "--aggregate", "median"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("error: argument --aggregate")
    assert len(client.search_runs([store["experiment_id"]])) == before  # bad input creates no run


def _point(model: str, variant: str, start: int, **metrics: float) -> RunPoint:
    return RunPoint(f"{model}-{variant}-{start}", "", model, variant, start, {**CONTRACT, **metrics}, {})


def test_rows_latest_or_mean_and_baseline_ratios() -> None:
    points = [_point("resnet18", "baseline", 1, test_acc1=10.0, energy_kwh=2.0),
              _point("resnet18", "baseline", 2, test_acc1=20.0, energy_kwh=4.0),
              _point("resnet18", "amp", 3, test_acc1=18.0, energy_kwh=1.0),
              _point("efficientnet_b0", "quantized", 4, model_size_mb=5.0)]
    latest = {(r["model"], r["variant"]): r for r in comparison_rows(points)}
    assert latest[("resnet18", "baseline")]["test_acc1"] == 20.0 and latest[("resnet18", "baseline")]["n_runs"] == 2
    assert latest[("resnet18", "amp")]["energy_kwh_vs_baseline"] == 0.25
    assert latest[("resnet18", "amp")]["test_acc1_delta_vs_baseline"] == -2.0
    assert latest[("efficientnet_b0", "quantized")]["model_size_vs_baseline"] == ""  # no baseline of that model
    mean = {(r["model"], r["variant"]): r for r in comparison_rows(points, "mean")}
    assert mean[("resnet18", "baseline")]["test_acc1"] == 15.0 and mean[("resnet18", "amp")]["energy_kwh_vs_baseline"] == 1 / 3


def test_pareto_front_breakdown_and_curves() -> None:
    # (energy, accuracy): index 1 is dominated by 0, index 3 by 2; 4 duplicates 0 and is kept with it
    assert pareto_front([(1.0, 50.0), (2.0, 40.0), (3.0, 60.0), (3.5, 60.0), (1.0, 50.0)]) == [0, 4, 2]
    assert pareto_front([]) == []
    quantized = _point("resnet18", "quantized", 1, calibrate_cpu_energy_kwh=1e-6, calibrate_ram_energy_kwh=5e-6)
    quantized.metrics.pop("train_cpu_energy_kwh"), quantized.metrics.pop("train_ram_energy_kwh")
    breakdown = phase_breakdown(quantized)
    assert breakdown["train"] == {"cpu": 1e-6, "gpu": 0.0, "ram": 5e-6}
    assert breakdown["inference"]["ram"] == CONTRACT["inference_ram_energy_kwh"]
    assert cumulative_curve({1: 5.0, 2: 9.0, 3: 11.0}, {1: 1.0, 2: 2.0}, offset_kwh=10.0) == ([11.0, 13.0], [5.0, 9.0])
