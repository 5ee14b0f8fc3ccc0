"""Many at once, end to end: `mlflow run` commands started together on a store that does not exist yet,
and a report started while a `main` run is still in its first epoch. Real MLflow, CodeCarbon, torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from greenstudy.measure.ledger import read_ledger_csv
from tests.conftest import PYTHON, ROOT, entry_env

MLFLOW = shutil.which("mlflow", path=str(Path(PYTHON).parent)) or "mlflow"
FAST = {"variants": "baseline", "epochs": "1", "batch_size": "64", "train_subset": "256", "val_size": "100",
        "test_subset": "100", "infer_seconds": "0.3", "infer_b1_images": "10", "infer_b1_repeats": "1", "download": "false"}


def _mlflow_run(data_dir: Path, env: dict[str, str], model: str, experiment: str) -> subprocess.Popen:
    command = [MLFLOW, "run", str(ROOT), "--env-manager", "local", "--experiment-name", experiment]
    for name, value in {**FAST, "model": model, "data_dir": str(data_dir)}.items():
        command += ["-P", f"{name}={value}"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _isolated_env(tmp_path: Path, uri: str) -> dict[str, str]:
    env = entry_env(uri)
    env["PATH"] = f"{Path(PYTHON).parent}:{env['PATH']}"
    env["GREENSTUDY_ENERGY_LOCK"] = str(tmp_path / "energy.lock")  # this test's runs take turns with each other only
    return env


def _measured_spans(client: MlflowClient, run_id: str) -> list[tuple[float, float]]:
    """(start, end) in epoch seconds of every phase the run measured, from its energy ledger."""
    own, _ = read_ledger_csv(client.download_artifacts(run_id, "energy_ledger.csv"))
    return [(phase.started_at, phase.started_at + phase.seconds) for phase in own.phases]


def test_two_mlflow_runs_started_together_on_a_new_store_both_finish(tiny_data_dir: Path, tmp_path: Path) -> None:
    """Two `mlflow run` commands (ResNet-18 and EfficientNet-B0) started at the same moment against a
    SQLite store that does not exist yet: the store is created once, both end FINISHED in one experiment,
    and the measurement lock made them measure in turn (no measured phases overlap; the later one said it
    waited)."""
    db = tmp_path / "new" / "mlflow.db"
    uri = f"sqlite:///{db}"
    env = _isolated_env(tmp_path, uri)
    assert not db.exists()
    procs = [_mlflow_run(tiny_data_dir, env, model, "pair") for model in ("resnet18", "efficientnet_b0")]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
    assert "duplicate column" not in "".join(outputs) and "Traceback" not in "".join(outputs)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("pair")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "parent"]
    children = [r for r in runs if r.data.tags.get("kind") == "variant"]
    assert sorted(r.data.params["model"] for r in parents) == ["efficientnet_b0", "resnet18"]
    assert [r.info.status for r in parents + children] == ["FINISHED"] * 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {r.info.run_id for r in parents}
    assert [e.name for e in client.search_experiments()].count("pair") == 1
    first, second = (_measured_spans(client, r.info.run_id) for r in children)
    assert first and second
    for a_start, a_end in first:
        for b_start, b_end in second:
            assert a_end <= b_start + 0.05 or b_end <= a_start + 0.05, "two runs measured at the same time"
    assert any("energy: waiting for" in out for out in outputs), outputs[0][-2000:]
    assert (db.parent / "mlflow.db.lock").exists(), "the store was created under its lock"


def _wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"main ended (exit {proc.returncode}) before {what}: {proc.communicate()[0][-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_report_while_main_is_in_its_first_epoch(tiny_data_dir: Path, tmp_path: Path) -> None:
    """`report` started while a `main` run trains its first epoch: the running child is listed as in
    progress (not compared, not failing the report); once the run has finished, a second report compares it."""
    from greenstudy.report.entry import build_report, summary_lines
    from tests.conftest import tracking_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = _isolated_env(tmp_path, uri)
    command = [PYTHON, str(ROOT / "mlproject" / "main.py"), "--model", "resnet18", "--variants", "baseline",
               "--data-dir", str(tiny_data_dir), "--experiment", "live", "--train-subset", "256", "--epochs", "1",
               "--batch-size", "32", "--test-subset", "100", "--val-size", "100", "--infer-seconds", "0.3",
               "--infer-b1-images", "10", "--infer-b1-repeats", "1", "--download", "false"]
    main = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with tracking_store(uri):
            client = MlflowClient(uri)

            def training_child() -> str | None:
                experiment = client.get_experiment_by_name("live")
                runs = client.search_runs([experiment.experiment_id], "tags.kind = 'variant'") if experiment else []
                return runs[0].info.run_id if runs and "val_acc1" not in runs[0].data.metrics else None

            child_id = _wait_for(training_child, 120, "the baseline child started its first epoch", main)
            during = build_report("live")  # read the runs while the child trains its first (and only) epoch
            assert during.empty and during.rows == []
            assert [(s.run_id, s.status) for s in during.in_progress] == [(child_id, "RUNNING")]
            assert during.in_progress[0].reason.startswith("in progress")
            lines = summary_lines(during)
            assert any(line.startswith(f"  in progress {child_id}") for line in lines), lines
            assert not any(line.startswith("  skipped") for line in lines), lines
            report_run = client.get_run(during.run_id)
            assert report_run.info.status == "FINISHED"
            assert report_run.data.tags["runs_in_progress"] == child_id
            assert report_run.data.metrics["runs_in_progress"] == 1
            html = Path(client.download_artifacts(during.run_id, "report.html", str(tmp_path))).read_text()
            assert "In progress" in html and child_id in html
            out, _ = main.communicate(timeout=300)
            assert main.returncode == 0, out[-3000:]
            after = build_report("live")
            assert [p.run_id for p in after.points] == [child_id] and not after.in_progress
    finally:
        if main.poll() is None:
            main.kill()
            main.wait()
    assert os.path.exists(tmp_path / "mlflow.db.lock")
