"""The `tune` entry point: a real Optuna study (SQLite storage) whose trials are real training runs
logged to a real MLflow store; values are read back with optuna.load_study and MlflowClient."""

from __future__ import annotations

import csv
import io
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from greenstudy.pareto import hypervolume_2d, pareto_front
from greenstudy.config import RunConfig
from greenstudy.errors import ConfigError
from greenstudy.study import (
    REFERENCE_ATTR,
    StudyConfig,
    batch_size_choices,
    create_or_load_study,

    open_storage,
    scaled_lr,
)
from tests.conftest import PYTHON, ROOT, entry_env
from tests.test_main_run import assert_contract

sys.path.insert(0, str(ROOT / "mlproject"))
import tune as tune_entry  # noqa: E402

TUNE = str(ROOT / "mlproject" / "tune.py")
STUDY = "tiny-study"
# A trial small enough for a shared 2-core CPU: EfficientNet-B0 fp32 (fastest here), 64 images, 1 epoch.
TUNE_TINY = [
    "--model", "efficientnet_b0", "--variant", "baseline", "--epochs", "1", "--train-subset", "64",
    "--val-size", "50", "--test-subset", "50", "--infer-batches", "1", "--measure-power-secs", "1",
    "--download", "false", "--batch-size", "32", "--max-batch-size", "32", "--lr-scaling", "tuned",
    "--population-size", "4", "--study-name", STUDY,
]


def run_tune(args: list[str], data_dir: Path, uri: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, TUNE, "--data-dir", str(data_dir), *args], cwd=cwd, env=entry_env(uri),
        capture_output=True, text=True, timeout=timeout, preexec_fn=one_core,
    )


def one_core() -> None:
    """Pin the entry script to one core, so greenstudy trains on one thread: on a shared 2-core machine
    two spinning OpenMP threads made the study 2-5x slower than one."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def session_trials(stdout: str) -> list[int]:
    """The trial numbers a worker reports for its own session."""
    match = re.search(r"this session: \d+ trials \(([\d, ]*)\)", stdout)
    assert match, stdout[-2000:]
    return [int(n) for n in match.group(1).split(",") if n.strip()]


# ---------------------------------------------------------------- pure functions


def test_hypervolume_of_a_known_front() -> None:
    # maximise accuracy, minimise energy; reference (0 %, 4 kWh)
    front = [(50.0, 1.0), (70.0, 2.0)]
    # union of [1,4]x[0,50] (150) and [2,4]x[0,70] (140) minus their overlap [2,4]x[0,50] (100)
    assert hypervolume_2d(front, (0.0, 4.0)) == pytest.approx(190.0)
    # a dominated point, a point beyond the energy reference and one at the accuracy reference add nothing
    assert hypervolume_2d([*front, (40.0, 3.0), (90.0, 5.0), (0.0, 0.5)], (0.0, 4.0)) == pytest.approx(190.0)
    assert hypervolume_2d([(30.0, 3.0)], (10.0, 4.0)) == pytest.approx(20.0)
    assert hypervolume_2d([], (0.0, 4.0)) == 0.0
    assert hypervolume_2d([(50.0, 1.0), (50.0, 1.0)], (0.0, 2.0)) == pytest.approx(50.0)


def test_hypervolume_matches_optuna_on_random_fronts() -> None:
    # Optuna's own WFG implementation (private, pinned version) as an independent oracle
    from optuna._hypervolume import compute_hypervolume

    rng = random.Random(0)
    for _ in range(50):
        points = [(rng.uniform(0, 100), rng.uniform(0, 1)) for _ in range(rng.randint(1, 12))]
        reference = (0.0, 1.5)
        losses = np.array([[-acc, energy] for acc, energy in points])
        expected = compute_hypervolume(losses, np.array([-reference[0], reference[1]]))
        assert hypervolume_2d(points, reference) == pytest.approx(expected, rel=1e-9)


def test_search_space_and_lr_scaling() -> None:
    assert batch_size_choices(4096) == [16, 32, 64, 128, 256, 512, 1024]
    assert batch_size_choices(100) == [16, 32, 64]
    assert batch_size_choices(16) == [16]
    assert scaled_lr(0.1, 256, 128, "linear") == pytest.approx(0.2)
    assert scaled_lr(0.1, 32, 128, "linear") == pytest.approx(0.025)
    assert scaled_lr(0.1, 512, 128, "sqrt") == pytest.approx(0.2)
    assert scaled_lr(0.3, 64, 128, "tuned") == pytest.approx(0.15)
    config = StudyConfig(run=RunConfig(model="efficientnet_b0", lr=0.2), variant="baseline", lr_scaling="tuned")
    assert config.study_name == "efficientnet_b0-baseline-cifar100"
    assert config.tuned_lr_range == pytest.approx((0.02, 2.0))
    assert config.run.variants == ("baseline",)


@pytest.mark.parametrize("changes, message", [
    ({"variant": "quantized"}, "cannot be tuned"),
    ({"sampler": "cmaes"}, "unknown sampler"),
    ({"lr_scaling": "cubic"}, "unknown lr_scaling"),
    ({"n_trials": 0}, "n_trials must be at least 1"),
    ({"max_batch_size": 8}, "max_batch_size must be at least 16"),
])
def test_study_config_rejects_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StudyConfig(**changes)


def test_resume_with_other_settings_is_rejected(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    first = StudyConfig(max_batch_size=64)
    create_or_load_study(storage, "s", first.settings())
    create_or_load_study(storage, "s", first.settings())  # same settings: resumes
    with pytest.raises(ConfigError, match=r"batch_size_choices=\[16, 32, 64\] \(asked \[16, 32, 64, 128\]\)"):
        create_or_load_study(storage, "s", StudyConfig(max_batch_size=128).settings())
    with pytest.raises(ConfigError, match="lr_scaling='linear'"):
        create_or_load_study(storage, "s", StudyConfig(max_batch_size=64, lr_scaling="sqrt").settings())


def test_mlproject_tune_defaults_match_the_script() -> None:
    """Every MLproject `tune` parameter reaches the script, and its defaults equal the script's own."""
    from mlflow.projects._project_spec import load_project

    entry = load_project(str(ROOT)).get_entry_point("tune")
    command = entry.compute_command({}, storage_dir=None)
    argv = command.split("mlproject/tune.py", 1)[1].split()
    argv = ["" if arg == "''" else arg for arg in argv]
    from_mlproject, from_script = tune_entry.parse(argv), tune_entry.parse([])
    assert from_mlproject == from_script
    declared = {f"--{name.replace('_', '-')}" for name in entry.parameters}
    assert declared == {arg for arg in argv if arg.startswith("--")}


# ---------------------------------------------------------------- bad input through the entry script


@pytest.mark.parametrize("args, message", [
    (["--sampler", "cmaes"], "error: unknown sampler 'cmaes'"),
    (["--n-trials", "0"], "error: n_trials must be at least 1"),
    (["--variant", "pruned"], "error: variant 'pruned' cannot be tuned"),
    (["--storage", "nosuchdb://x"], "error: bad storage URL 'nosuchdb://x'"),
    (["--storage", "postgresql://tuner:secret@127.0.0.1:1/optuna"], "error: cannot open Optuna storage postgresql://tuner:***@127.0.0.1:1/optuna"),
    (["--max-batch-size", "1024"], "error: max_batch_size=1024 exceeds the 64 training images"),
])
def test_bad_input_is_one_line_within_seconds(
    args: list[str], message: str, tiny_data_dir: Path, tracking_uri: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    result = run_tune([*TUNE_TINY, *args], tiny_data_dir, tracking_uri, tmp_path, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "secret" not in result.stderr
    assert elapsed < 30, elapsed  # seconds, on a loaded 2-core machine (about 1 s when idle)
    assert not (tmp_path / "mlflow.db").exists()  # checked before the MLflow store was even opened


# ---------------------------------------------------------------- end to end


def test_study_end_to_end_resume_and_failure(tiny_data_dir: Path, tracking_uri: str, tmp_path: Path) -> None:
    # a 4-trial study with the default storage: optuna.db next to the MLflow store
    first = run_tune([*TUNE_TINY, "--n-trials", "4"], tiny_data_dir, tracking_uri, tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3] == session_trials(first.stdout)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert study.best_trials
    assert study.user_attrs["greenstudy_settings"]["batch_size_choices"] == [16, 32]

    client = MlflowClient(tracking_uri)
    parent_id = re.search(r"parent run id: (\w+)", first.stdout).group(1)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["kind"] == "study" and parent.data.tags["optuna_study"] == STUDY
    for trial in trials:
        child = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert_contract(client, child)
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        assert child.data.tags["trial_number"] == str(trial.number)
        assert child.data.tags["optuna_study"] == STUDY
        assert int(child.data.params["batch_size"]) == trial.params["batch_size"]
        assert float(child.data.params["lr"]) == pytest.approx(trial.user_attrs["lr"])
        assert float(child.data.params["lr"]) == pytest.approx(trial.params["base_lr"] * trial.params["batch_size"] / 32)
        assert child.data.metrics["val_acc1"] == pytest.approx(trial.values[0])
        assert child.data.metrics["train_energy_kwh"] == pytest.approx(trial.values[1])

    # the parent run holds the front: PNG, self-contained HTML, CSV, hypervolume and best_* metrics
    artifacts = {item.path for item in client.list_artifacts(parent_id)}
    assert {"pareto_front.png", "pareto_front.html", "pareto.csv"} <= artifacts
    folder = Path(client.download_artifacts(parent_id, "", str(tmp_path / "parent")))
    assert (folder / "pareto_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (folder / "pareto_front.html").read_text()
    assert "Plotly.newPlot" in html and '<script src="http' not in html and len(html) > 1_000_000
    rows = list(csv.DictReader(io.StringIO((folder / "pareto.csv").read_text())))
    assert sorted(int(r["trial"]) for r in rows) == sorted(t.number for t in study.best_trials)
    for row in rows:
        trial = trials[int(row["trial"])]
        assert row["run_id"] == trial.user_attrs["mlflow_run_id"]
        assert float(row["val_acc1"]) == pytest.approx(trial.values[0])
        assert float(row["train_energy_kwh"]) == pytest.approx(trial.values[1])
    reference = study.user_attrs[REFERENCE_ATTR]
    assert reference["val_acc1"] == 0.0
    assert reference["train_energy_kwh"] == pytest.approx(2 * trials[0].values[1])  # fixed after the first trial
    assert parent.data.tags["hypervolume_reference_energy_kwh"] == f"{reference['train_energy_kwh']:.6g}"
    history = client.get_metric_history(parent_id, "hypervolume")
    assert [p.step for p in history] == [1, 2, 3, 4]
    front = [(t.values[0], t.values[1]) for t in study.best_trials]
    assert history[-1].value == pytest.approx(hypervolume_2d(front, (0.0, reference["train_energy_kwh"])))
    metrics = parent.data.metrics
    assert metrics["best_acc_val_acc1"] == pytest.approx(max(t.values[0] for t in trials))
    assert metrics["best_energy_train_energy_kwh"] == pytest.approx(min(t.values[1] for t in trials))
    assert metrics["trials_complete"] == 4

    # `greenstudy study show` prints the same front
    show = subprocess.run(
        [PYTHON, "-m", "greenstudy", "study", "show", "--storage", storage, "--study-name", STUDY],
        env=entry_env(tracking_uri), capture_output=True, text=True, timeout=60,
    )
    assert show.returncode == 0, show.stderr
    assert "4 complete" in show.stdout
    for row in rows:
        assert row["run_id"] in show.stdout

    # resume: a trial forced to diverge (lr 5e5 -> NaN loss) fails, the study goes on to the next trial
    study.enqueue_trial({"batch_size": 16, "base_lr": 1e6})
    second = run_tune([*TUNE_TINY, "--n-trials", "2"], tiny_data_dir, tracking_uri, tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    assert session_trials(second.stdout) == [4, 5]
    trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4, 5]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4 + [TrialState.FAIL, TrialState.COMPLETE]
    failed = trials[4]
    assert "TrainingDiverged" in failed.user_attrs["fail_reason"]
    failed_run = client.get_run(failed.user_attrs["mlflow_run_id"])
    assert failed_run.info.status == "FAILED"
    assert "TrainingDiverged" in failed_run.data.tags["error"]
    second_parent = re.search(r"parent run id: (\w+)", second.stdout).group(1)
    assert second_parent != parent_id
    assert failed_run.data.tags["mlflow.parentRunId"] == second_parent
    history = client.get_metric_history(second_parent, "hypervolume")
    assert [p.step for p in history] == [5, 6]
    assert client.get_run(second_parent).data.metrics["trials_failed"] == 1
