"""The `report` entry point on a real MLflow store. Runs logged through MlflowClient with the run contract's
tags and metrics (a `main` run with its four variants, one skipped; a `tune` study's trials; a failed, an
incomplete and a pre-contract child), plus the README's own sequence end to end with `mlflow run`
(tests/test_report_e2e below). Every check reads the report run's artifacts back through MlflowClient."""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import matplotlib.image
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from greenstudy.report.comparison import (
    RunPoint,
    classify,
    comparison_rows,
    cumulative_curve,
    front,
    phase_breakdown,
)
from greenstudy.report.entry import build_report, fetch_curves, report_for_experiment
from tests.conftest import PYTHON, ROOT, entry_env, tracking_store

EXPERIMENT = "greenstudy-report-test"
CONFIG = {"dataset": "cifar100", "epochs": "2", "batch_size": "64", "lr": "0.1", "train_subset": "256", "resolution": "32",
          "seed": "0"}


def contract(own: float, upstream: float = 0.0, acc: float = 10.0, **extra: float) -> dict[str, float]:
    """The final metrics of a child run: phases split 60/20/5/15 % into cpu 30 %, ram 70 %."""
    metrics = {"test_acc1": acc, "test_acc5": acc + 20, "energy_kwh": own, "own_energy_kwh": own,
               "upstream_energy_kwh": upstream, "lifecycle_energy_kwh": upstream + own, "emissions_kg": own * 0.4,
               "lifecycle_emissions_kg": (upstream + own) * 0.4, "infer_energy_wh_per_1k_images": 0.08,
               "infer_images_per_second": 150.0, "params": 11.2e6, "macs": 557e6, "model_size_mb": 42.7}
    for phase, share in (("train", 0.6), ("val", 0.2), ("setup", 0.05), ("test", 0.15)):
        metrics[f"{phase}_energy_kwh"] = own * share
        for component, part in (("cpu", 0.3), ("gpu", 0.0), ("ram", 0.7)):
            metrics[f"{phase}_{component}_energy_kwh"] = own * share * part
    return {**metrics, **extra}


def log_child(client: MlflowClient, experiment_id: str, parent_id: str, model: str, variant: str,
              metrics: dict[str, float], status: str = "FINISHED", tags: dict[str, str] | None = None,
              history: list[tuple[float, float]] | None = None, params: dict[str, str] | None = None) -> str:
    """A child run logged directly with the contract's tag names (kind=variant unless `tags` says otherwise)."""
    all_tags = {"mlflow.parentRunId": parent_id, "kind": "variant", "model": model, "variant": variant,
                "dataset": "cifar100", "cpu_model": "Logged-directly CPU", "gpu_model": "none", "device": "cpu",
                "cpu_capability": "AVX2", "energy_method": "logged-directly", **(tags or {})}
    all_tags = {k: v for k, v in all_tags.items() if v is not None}
    run_id = client.create_run(experiment_id, run_name=f"{model}-{variant}", tags=all_tags).info.run_id
    now = int(time.time() * 1000)
    batch = [Metric(name, value, now, 0) for name, value in metrics.items()]
    for step, (acc, kwh) in enumerate(history or [], start=1):
        batch += [Metric("val_acc1", acc, now, step), Metric("epoch_energy_kwh", kwh, now, step)]
    client.log_batch(run_id, metrics=batch, params=[Param(k, v) for k, v in {**CONFIG, **(params or {})}.items()])
    client.set_terminated(run_id, status)
    return run_id


def log_main_run(client: MlflowClient, experiment_id: str, model: str = "resnet18") -> dict[str, str]:
    """One `main` run: baseline, pruned and quantized finished, amp skipped (KILLED + tag skipped)."""
    pid = client.create_run(experiment_id, run_name=model, tags={"kind": "parent", "model": model}).info.run_id
    base = log_child(client, experiment_id, pid, model, "baseline", contract(2e-4, acc=20.0), history=[(5.0, 1e-4), (9.0, 1e-4)])
    derived = {"derived_from": base}
    ids = {
        "parent": pid, "baseline": base,
        "pruned": log_child(client, experiment_id, pid, model, "pruned", contract(1e-4, 2e-4, acc=18.0, macs=140e6),
                            tags=derived, history=[(8.0, 5e-5)]),
        "quantized": log_child(client, experiment_id, pid, model, "quantized",
                               contract(1e-5, 2e-4, acc=19.5, model_size_mb=11.0), tags={**derived, "precision": "int8"}),
        "amp": log_child(client, experiment_id, pid, model, "amp", {}, status="KILLED",
                         tags={"skipped": "no native bf16/fp16 on this CPU (AVX2)"}),
    }
    client.set_terminated(pid, "FINISHED")
    return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A sqlite store: a `main` run, a `tune` study with two trials, a failed, an incomplete and a
    pre-contract child; set as this process's tracking URI."""
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=str(tmp / "artifacts"))
    ids = log_main_run(client, experiment_id)
    study = client.create_run(experiment_id, run_name="study", tags={"kind": "study"}).info.run_id
    ids["trials"] = [log_child(client, experiment_id, study, "resnet18", "amp", contract(5e-4, acc=30.0 + i),
                               tags={"kind": "trial"}, params={"batch_size": "1024", "lr": str(0.2 * (i + 1))})
                     for i in range(2)]
    ids["failed"] = log_child(client, experiment_id, ids["parent"], "resnet18", "quantized", {}, status="FAILED",
                              tags={"error": "RuntimeError: quantization unsupported"})
    ids["missing"] = log_child(client, experiment_id, ids["parent"], "resnet18", "amp", {"test_acc1": 3.0})
    ids["legacy"] = log_child(client, experiment_id, ids["parent"], "resnet18", "baseline", contract(1e-4),
                              tags={"kind": None})
    with tracking_store(uri):
        yield {"uri": uri, "client": client, "experiment_id": experiment_id, "ids": ids, "tmp": tmp}


def _read_csv(client: MlflowClient, run_id: str, name: str, dst: Path) -> list[dict[str, str]]:
    path = client.download_artifacts(run_id, name, str(dst))
    return list(csv.DictReader(io.StringIO(Path(path).read_text())))


def test_report_compares_only_the_main_variants(store: dict[str, object], tmp_path: Path) -> None:
    client: MlflowClient = store["client"]
    ids = store["ids"]
    result = build_report(EXPERIMENT)
    report = client.get_run(result.run_id)
    assert report.data.tags["kind"] == "report" and report.data.tags["report_empty"] == "false"
    assert report.info.experiment_id == store["experiment_id"] and report.info.status == "FINISHED"

    rows = _read_csv(client, result.run_id, "comparison.csv", tmp_path)
    assert [(r["variant"], r["run_id"]) for r in rows] == [(v, ids[v]) for v in ("baseline", "pruned", "quantized")]
    by_variant = {r["variant"]: r for r in rows}
    quantized, base = by_variant["quantized"], by_variant["baseline"]
    logged = client.get_run(ids["quantized"]).data.metrics
    for name in ("own_energy_kwh", "upstream_energy_kwh", "lifecycle_energy_kwh", "test_acc1", "model_size_mb"):
        assert float(quantized[name]) == logged[name], name
    assert quantized["energy_basis"] == "lifecycle"
    # ratios on lifecycle energy: the quantized model costs its baseline's training plus its own calibration
    assert float(quantized["energy_vs_baseline"]) == pytest.approx((2e-4 + 1e-5) / 2e-4)
    assert float(quantized["own_energy_vs_baseline"]) == pytest.approx(1e-5 / 2e-4)
    assert float(base["energy_vs_baseline"]) == 1.0 and float(by_variant["pruned"]["macs_vs_baseline"]) == pytest.approx(140 / 557)
    assert float(by_variant["pruned"]["test_acc1_delta_vs_baseline"]) == pytest.approx(-2.0)

    skipped = {row["run_id"]: row for row in _read_csv(client, result.run_id, "skipped.csv", tmp_path)}
    assert set(skipped) == {ids["amp"], ids["failed"], ids["missing"], ids["legacy"]}  # trials: not even listed
    assert skipped[ids["amp"]]["reason"] == "skipped: no native bf16/fp16 on this CPU (AVX2)"
    assert skipped[ids["amp"]]["status"] == "KILLED"
    assert skipped[ids["failed"]]["reason"] == "status FAILED: RuntimeError: quantization unsupported"
    assert skipped[ids["missing"]]["reason"].startswith("missing metrics: energy_kwh, emissions_kg")
    assert skipped[ids["legacy"]]["reason"].startswith("no kind tag")

    metrics = report.data.metrics
    assert metrics["points_plotted"] == 3 == metrics["runs_reported"] == metrics["html_points_plotted"]
    assert metrics["breakdown_runs_plotted"] == 3 and metrics["runs_skipped"] == 4
    assert metrics["curves_plotted"] == 3  # quantized: its baseline's epochs

    page = Path(client.download_artifacts(result.run_id, "report.html", str(tmp_path))).read_text()
    assert page.count("data:image/png;base64,") == 4 and "lifecycle_energy_kwh" in page  # + emissions_by_region.png
    assert all(ids[v] in page for v in ("baseline", "pruned", "quantized")) and ids["trials"][0] not in page
    assert "Logged-directly CPU" in page and "AVX2" in page
    interactive = Path(client.download_artifacts(result.run_id, "accuracy_vs_energy.html", str(tmp_path))).read_text()
    assert "<script src=" not in interactive and all(ids[v] in interactive for v in ("baseline", "quantized"))
    for name in ("accuracy_vs_energy.png", "energy_breakdown.png", "learning_curves.png"):
        image = matplotlib.image.imread(client.download_artifacts(result.run_id, name, str(tmp_path)))
        assert image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 0.01, name
    table = Path(client.download_artifacts(result.run_id, "comparison.md", str(tmp_path))).read_text()
    assert "| resnet18 | quantized |" in table and "lifecycle energy" in table.lower()
    assert "never averaged" in table
    assert result.report_location.endswith("/report.html") and Path(result.report_location).is_file()


def test_trials_only_when_asked_and_never_mixed_with_the_variants(store: dict[str, object], tmp_path: Path) -> None:
    client: MlflowClient = store["client"]
    ids = store["ids"]
    result = build_report(EXPERIMENT, include_trials=True)
    rows = _read_csv(client, result.run_id, "comparison.csv", tmp_path)
    amp = [r for r in rows if r["variant"] == "amp"]
    assert sorted(r["run_id"] for r in amp) == sorted(ids["trials"])  # different lr: one row each
    assert {r["config"] for r in amp} == {"batch_size=1024 lr=0.2", "batch_size=1024 lr=0.4"}
    assert all(r["energy_vs_baseline"] == "" for r in amp)  # no baseline trained with batch 1024
    assert client.get_run(result.run_id).data.params["include_trials"] == "true"


def test_report_restricted_by_parent_and_filter(store: dict[str, object], tmp_path: Path) -> None:
    client: MlflowClient = store["client"]
    ids = store["ids"]
    run_id, location = report_for_experiment(EXPERIMENT, parent_run_ids=ids["parent"])
    rows = _read_csv(client, run_id, "comparison.csv", tmp_path)
    assert {r["run_id"] for r in rows} == {ids["baseline"], ids["pruned"], ids["quantized"]}
    assert location.endswith("/report.html") and run_id in location
    result = build_report(EXPERIMENT, filter_string="tags.variant = 'pruned'")
    assert [p.run_id for p in result.points] == [ids["pruned"]]
    assert client.get_run(result.run_id).data.params["filter"] == "tags.variant = 'pruned'"


def test_learning_curves_from_metric_history(store: dict[str, object]) -> None:
    client: MlflowClient = store["client"]
    ids = store["ids"]
    points, _ = classify(client.search_runs([store["experiment_id"]]))
    curves = {c.run_id: c for c in fetch_curves(client, points)}
    assert set(curves) == {ids["baseline"], ids["pruned"], ids["quantized"]}
    base = curves[ids["baseline"]]
    assert base.energy_kwh == pytest.approx([1e-4, 2e-4]) and base.val_acc1 == [5.0, 9.0] and not base.source
    pruned = curves[ids["pruned"]]
    assert pruned.derived and pruned.energy_kwh == pytest.approx([2e-4, 2e-4 + 5e-5]) and pruned.val_acc1 == [9.0, 8.0]
    quantized = curves[ids["quantized"]]  # no epochs of its own: its baseline's, from derived_from
    assert quantized.source == ids["baseline"] and quantized.energy_kwh == base.energy_kwh and quantized.val_acc1 == base.val_acc1


def test_default_experiment_is_where_the_runs_are(store: dict[str, object], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    client: MlflowClient = store["client"]
    other = client.create_experiment("other-greenstudy", artifact_location=str(store["tmp"] / "other"))
    other_ids = log_main_run(client, other, model="efficientnet_b0")
    client.create_experiment("no-greenstudy-runs", artifact_location=str(store["tmp"] / "none"))
    result = build_report()  # run directly: every experiment holding a kind=parent run
    assert {p.model for p in result.points} == {"resnet18", "efficientnet_b0"}
    assert f"'{EXPERIMENT}'" in result.experiment and "'other-greenstudy'" in result.experiment
    assert "no-greenstudy-runs" not in result.experiment
    assert client.get_run(result.run_id).info.experiment_id == other  # where the latest parent run is

    launcher = client.create_run(other, run_name="as-if-mlflow-run").info.run_id  # what `mlflow run -e report` makes
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)
    result = build_report()
    assert result.run_id == launcher and result.experiment == f"'other-greenstudy' (id {other})"
    assert {p.run_id for p in result.points} == {other_ids[v] for v in ("baseline", "pruned", "quantized")}
    assert client.get_run(launcher).data.tags["experiments_read"] == result.experiment


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
    ok = subprocess.run([PYTHON, script, "--experiment", EXPERIMENT, "--filter", "tags.variant != 'pruned'"],
                        env=env, cwd=store["tmp"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "| resnet18 | quantized |" in ok.stdout and "| resnet18 | pruned |" not in ok.stdout
    assert f"read experiment(s): '{EXPERIMENT}'" in ok.stdout
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
        (["--experiment", EXPERIMENT, "--within-points", "-1"], "error: within_points must be a finite number >= 0"),
        (["--experiment", EXPERIMENT, "--register", "maybe"], "error: expected true or false"),
    ):
        capsys.readouterr()
        assert entry.main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(expected), err
    with pytest.raises(SystemExit) as exit_info:
        entry.main(["--experiment", EXPERIMENT, "--aggregate", "median"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("error: argument --aggregate")
    assert len(client.search_runs([store["experiment_id"]])) == before  # bad input creates no run


def test_no_greenstudy_runs_anywhere_is_one_error_line(tracking_uri: str) -> None:
    done = subprocess.run([PYTHON, str(ROOT / "mlproject" / "report.py")], env=entry_env(tracking_uri),
                          capture_output=True, text=True, timeout=120)
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]  # (MLflow logs its DB set-up)
    assert done.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: no experiment in"), done.stderr


# ---------------------------------------------------------------- pure functions


def _point(variant: str, start: int, params: dict[str, str] | None = None, **metrics: float) -> RunPoint:
    return RunPoint(f"{variant}-{start}", "", "resnet18", variant, start, {**contract(2.0), **metrics},
                    {"device": "cpu"}, {**CONFIG, **(params or {})})


def test_rows_latest_or_mean_never_average_different_hyper_parameters() -> None:
    points = [_point("baseline", 1, test_acc1=10.0, lifecycle_energy_kwh=2.0),
              _point("baseline", 2, {"seed": "1"}, test_acc1=20.0, lifecycle_energy_kwh=4.0),
              _point("baseline", 3, {"lr": "0.4"}, test_acc1=50.0, lifecycle_energy_kwh=8.0),
              _point("amp", 4, test_acc1=18.0, lifecycle_energy_kwh=1.5)]
    latest = comparison_rows(points)
    assert [(r["variant"], r["config"], r["n_runs"]) for r in latest] == [
        ("baseline", "lr=0.1", 2), ("baseline", "lr=0.4", 1), ("amp", "lr=0.1", 1)]
    assert latest[0]["test_acc1"] == 20.0 and latest[2]["energy_vs_baseline"] == 1.5 / 4.0
    mean = comparison_rows(points, "mean")
    assert mean[0]["test_acc1"] == 15.0 and mean[1]["test_acc1"] == 50.0  # two seeds averaged, lr=0.4 apart
    assert mean[2]["energy_vs_baseline"] == 1.5 / 3.0 and mean[2]["test_acc1_delta_vs_baseline"] == 3.0


def test_lifecycle_energy_with_fallback_front_and_breakdown() -> None:
    old = _point("quantized", 1, test_acc1=9.0)
    for name in ("lifecycle_energy_kwh", "own_energy_kwh", "upstream_energy_kwh", "lifecycle_emissions_kg"):
        old.metrics.pop(name)
    old.metrics["energy_kwh"] = 0.5
    new = _point("quantized", 2, test_acc1=9.5, energy_kwh=0.5, own_energy_kwh=0.5, upstream_energy_kwh=2.0,
                 lifecycle_energy_kwh=2.5)
    base = _point("baseline", 3, test_acc1=10.0, lifecycle_energy_kwh=2.0)
    rows = {r["run_id"]: r for r in comparison_rows([old, base], "latest") + comparison_rows([new], "latest")}
    assert rows[old.run_id]["energy_basis"].startswith("own") and rows[old.run_id]["lifecycle_energy_kwh"] == 0.5
    assert rows[old.run_id]["upstream_energy_kwh"] == "" and rows[new.run_id]["upstream_energy_kwh"] == 2.0
    # on lifecycle energy the new quantized run (2.5 kWh, 9.5 %) is dominated by the baseline (2.0, 10.0)
    assert [p.run_id for p in front([new, base])] == [base.run_id]
    assert phase_breakdown(base)["setup"] == pytest.approx({"cpu": 2.0 * 0.05 * 0.3, "gpu": 0.0, "ram": 2.0 * 0.05 * 0.7})
    assert math.fsum(sum(v.values()) for v in phase_breakdown(base).values()) == pytest.approx(2.0)
    assert cumulative_curve({1: 5.0, 2: 9.0, 3: 11.0}, {1: 1.0, 2: 2.0}, offset_kwh=10.0) == ([11.0, 13.0], [5.0, 9.0])


# ---------------------------------------------------------------- the README's sequence, end to end


def test_readme_sequence_main_then_report(tiny_data_dir: Path, tracking_uri: str, tmp_path: Path) -> None:
    """`mlflow run . --env-manager local -P model=resnet18 ...` then `mlflow run . --env-manager local -e report`:
    no experiment named anywhere, the runs land in Default, and the report finds them there."""
    mlflow_bin = shutil.which("mlflow", path=str(Path(PYTHON).parent)) or "mlflow"
    env = {**entry_env(tracking_uri), "PATH": f"{Path(PYTHON).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "GREENSTUDY_ENERGY_LOCK": str(tmp_path / "energy.lock")}  # checks the report, not energy: no queueing
    params = {"model": "resnet18", "variants": "baseline,quantized", "data_dir": str(tiny_data_dir), "download": "false",
              "epochs": "1", "batch_size": "64", "train_subset": "256", "val_size": "100", "test_subset": "100",
              "infer_seconds": "0.3", "infer_b1_repeats": "0"}
    main = [mlflow_bin, "run", str(ROOT), "--env-manager", "local"] + [a for k, v in params.items() for a in ("-P", f"{k}={v}")]
    done = subprocess.run(main, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([mlflow_bin, "run", str(ROOT), "--env-manager", "local", "-e", "report"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "read experiment(s): 'Default' (id 0)" in done.stdout
    client = MlflowClient(tracking_uri)
    report = client.search_runs(["0"], "tags.kind = 'report'")
    assert len(report) == 1 and report[0].info.status == "FINISHED"
    children = {r.data.tags["variant"]: r.info.run_id for r in client.search_runs(["0"], "tags.kind = 'variant'")}
    rows = _read_csv(client, report[0].info.run_id, "comparison.csv", tmp_path)
    assert {(r["variant"], r["run_id"]) for r in rows} == set(children.items()) and set(children) == {"baseline", "quantized"}
    quantized = next(r for r in rows if r["variant"] == "quantized")
    assert quantized["energy_basis"] == "lifecycle" and float(quantized["upstream_energy_kwh"]) > 0


def test_mlproject_report_section_matches_the_parser() -> None:
    """Every `report` parameter reaches the script, with the parser's own default."""
    import yaml

    from greenstudy.report.entry import report_parser

    section = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["report"]
    defaults = {a.dest: a.default for a in report_parser()._actions if a.dest != "help"}
    assert set(section["parameters"]) == set(defaults)
    for name, spec in section["parameters"].items():
        assert f"--{name.replace('_', '-')} {{{name}}}" in section["command"], name
        parsed = getattr(report_parser().parse_args([f"--{name.replace('_', '-')}", str(spec["default"])]), name)
        assert parsed == defaults[name], name
