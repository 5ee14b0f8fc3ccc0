"""The `tune` entry point: real Optuna studies (SQLite storage) whose trials are real training runs
logged to a real MLflow store; values are read back with optuna.load_study and MlflowClient."""

from __future__ import annotations

import csv
import io
import os
import random
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from greenstudy.config import RunConfig
from greenstudy.errors import ConfigError
from greenstudy.pareto import hypervolume_2d
from greenstudy.study.front import (
    OVER_BUDGET,
    REFERENCE_ATTR,
    TARGET_NOT_REACHED,
    budget_reference_kwh,
    find_measured,
    front_trials,
    study_summary_lines,
)
from greenstudy.study.params import StudyConfig, batch_size_choices, default_sampler_seed, parse_tune, scaled_lr
from greenstudy.study.storage import create_or_load_study, open_storage
from greenstudy.study.tune import make_sampler, run_study
from greenstudy.training.data import write_synthetic_cifar
from tests.conftest import PYTHON, ROOT, entry_env

TUNE = str(ROOT / "mlproject" / "tune.py")
STUDY = "tiny-study"
# A trial small enough for a shared 2-core CPU: EfficientNet-B0 fp32 (fastest here), 64 images, 1 epoch.
TUNE_TINY = [
    "--model", "efficientnet_b0", "--variant", "baseline", "--epochs", "1", "--train-subset", "64",
    "--val-size", "50", "--test-subset", "50", "--download", "false", "--batch-size", "32",
    "--max-batch-size", "32", "--lr-scaling", "tuned", "--population-size", "4", "--study-name", STUDY,
    "--stop-beta", "0",  # every trial runs to its end: what a trial ends as does not depend on the machine's speed
]
BS = CategoricalDistribution([16, 32])
LR = FloatDistribution(0.01, 1.0, log=True)


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


def tiny_config(data_dir: Path, tmp_path: Path, **study: object) -> StudyConfig:
    """An in-process study on the tiny folder: EfficientNet-B0 fp32, 64 training images."""
    run = dict(model="efficientnet_b0", epochs=1, train_subset=64, val_size=50, test_subset=50, download=False,
               batch_size=32, data_dir=str(data_dir), experiment="tune-test")
    run.update(study.pop("run", {}))
    study.setdefault("budget", "epochs")  # these tests count epochs; tests/test_study_fidelity.py covers steps
    return StudyConfig(run=RunConfig(**run), variant="baseline", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                       study_name="s", sampler_seed=0, **study)


def trial(number: int, values: list[float] | None, state: TrialState = TrialState.COMPLETE, **attrs: object):
    params = {"batch_size": 16 * (number % 2 + 1), "base_lr": 0.1}
    frozen = create_trial(state=state, values=values, params=params, distributions={"batch_size": BS, "base_lr": LR},
                          user_attrs=attrs)
    frozen.number = number
    return frozen


# ---------------------------------------------------------------- pure parts


def test_search_space_and_lr_scaling() -> None:
    assert batch_size_choices(4096) == [16, 32, 64, 128, 256, 512, 1024]
    assert batch_size_choices(100) == [16, 32, 64]
    assert scaled_lr(0.1, 256, 128, "linear") == pytest.approx(0.2)
    assert scaled_lr(0.1, 512, 128, "sqrt") == pytest.approx(0.2)
    assert scaled_lr(0.3, 64, 128, "tuned") == pytest.approx(0.15)
    config = StudyConfig(run=RunConfig(model="efficientnet_b0", lr=0.2), variant="baseline", lr_scaling="tuned")
    assert config.study_name == "efficientnet_b0-baseline-cifar100"
    assert config.tuned_lr_range == pytest.approx((0.02, 2.0))
    assert config.run.variants == ("baseline",)
    auto = StudyConfig()
    assert auto.variant == "auto" and auto.study_name == ""  # named once the device decides the variant
    assert auto.resolved("amp").study_name == "resnet18-amp-cifar100"


@pytest.mark.parametrize("changes, message", [
    ({"variant": "quantized"}, "cannot be tuned"),
    ({"sampler": "cmaes"}, "unknown sampler"),
    ({"lr_scaling": "cubic"}, "unknown lr_scaling"),
    ({"objective": "fastest"}, "unknown objective"),
    ({"objective": "to_target"}, "objective=to_target needs target_acc1"),
    ({"sampler": "grid", "lr_scaling": "tuned"}, "sampler=grid enumerates batch sizes only"),
    ({"stop_beta": -1.0}, "stop_beta must be 0"),
    ({"n_trials": 0}, "n_trials must be at least 1"),
    ({"max_batch_size": 8}, "max_batch_size must be at least 16"),
])
def test_study_config_rejects_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StudyConfig(**changes)


def test_budget_reference_is_the_front_and_ignores_pruned_and_reused_trials() -> None:
    final = [
        trial(0, [60.0, 1.0]), trial(1, [70.0, 2.0]),
        trial(2, [65.0, 3.0]),  # dominated by trial 1: not the front's most expensive
        trial(3, [90.0, 9.0], reused_from=1),  # a repeat, not a measurement
        trial(4, None, TrialState.PRUNED, energy_kwh=50.0), trial(5, None, TrialState.FAIL),
    ]
    assert [t.number for t in front_trials(final, "final")] == [0, 1]
    assert budget_reference_kwh(final, "final") == pytest.approx(2.0)
    to_target = [trial(0, [3.0]), trial(1, [1.5]), trial(2, None, TrialState.PRUNED, pruned=TARGET_NOT_REACHED)]
    assert budget_reference_kwh(to_target, "to_target") == pytest.approx(1.5)
    assert budget_reference_kwh(final[4:], "final") is None


def test_a_measured_configuration_is_found_but_not_a_budget_stop() -> None:
    over = trial(0, None, TrialState.PRUNED, pruned=OVER_BUDGET)
    missed = trial(1, None, TrialState.PRUNED, pruned=TARGET_NOT_REACHED)
    done = trial(3, [50.0, 1.0])
    assert find_measured([over], over.params) is None  # a larger budget later may let it finish
    assert find_measured([over, missed], missed.params) is missed  # the same seed misses the target again
    assert find_measured([over, done], done.params) is done
    assert find_measured([done], {**done.params, "base_lr": 0.2}) is None


def test_workers_with_default_settings_propose_different_first_trials() -> None:
    config = StudyConfig(variant="baseline", lr_scaling="tuned")
    seeds = {default_sampler_seed() for _ in range(3)}
    assert len(seeds) == 3
    first = []
    for seed in seeds:
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(config, seed))
        proposed = study.ask({"batch_size": CategoricalDistribution(config.batch_choices), "base_lr": FloatDistribution(0.01, 1, log=True)})
        first.append((proposed.params["batch_size"], proposed.params["base_lr"]))
    assert len(set(first)) == 3


def test_grid_sampler_runs_every_batch_size_once() -> None:
    config = StudyConfig(variant="baseline", sampler="grid", max_batch_size=64)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(config, 0))
    study.optimize(lambda t: (t.suggest_categorical("batch_size", config.batch_choices), 1.0), n_trials=10)
    assert sorted(t.params["batch_size"] for t in study.trials) == [16, 32, 64]


def test_hypervolume_matches_optuna_on_random_fronts() -> None:
    from optuna._hypervolume import compute_hypervolume  # Optuna's own WFG, an independent oracle

    rng = random.Random(0)
    for _ in range(50):
        points = [(rng.uniform(0, 100), rng.uniform(0, 1)) for _ in range(rng.randint(1, 12))]
        losses = np.array([[-acc, energy] for acc, energy in points])
        assert hypervolume_2d(points, (0.0, 1.5)) == pytest.approx(compute_hypervolume(losses, np.array([0.0, 1.5])), rel=1e-9)


def test_resume_with_other_settings_is_rejected(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    first = StudyConfig(variant="baseline", max_batch_size=64)
    directions = ("maximize", "minimize")
    create_or_load_study(storage, "s", first.settings(), directions)
    create_or_load_study(storage, "s", first.settings(), directions)  # same settings: resumes
    with pytest.raises(ConfigError, match=r"batch_size_choices=\[16, 32, 64\] \(asked \[16, 32, 64, 128\]\)"):
        create_or_load_study(storage, "s", StudyConfig(variant="baseline", max_batch_size=128).settings(), directions)
    with pytest.raises(ConfigError, match="directions"):
        create_or_load_study(storage, "s", first.settings(), ("minimize",))


def test_mlproject_tune_defaults_match_the_parser() -> None:
    """Every MLproject `tune` parameter reaches the script, and its defaults equal the parser's own."""
    from mlflow.projects._project_spec import load_project

    entry = load_project(str(ROOT)).get_entry_point("tune")
    command = entry.compute_command({}, storage_dir=None)
    argv = command.split("mlproject/tune.py", 1)[1].split()
    argv = ["" if arg == "''" else arg for arg in argv]
    assert parse_tune(argv) == parse_tune([])
    declared = {f"--{name.replace('_', '-')}" for name in entry.parameters}
    assert declared == {arg for arg in argv if arg.startswith("--")}


def test_study_show_prints_pruned_trials_and_the_energy(tmp_path: Path, tracking_uri: str) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = create_or_load_study(open_storage(url), "s", {"objective": "final"}, ("maximize", "minimize"))
    study.add_trial(trial(0, [55.0, 0.002], energy_kwh=0.0025, mlflow_run_id="run0"))
    study.add_trial(trial(1, None, TrialState.PRUNED, energy_kwh=0.004, pruned=OVER_BUDGET, prune_reason="stopped early, over budget"))
    study.add_trial(trial(2, None, TrialState.FAIL, energy_kwh=0.001, fail_reason="TrainingDiverged: nan"))
    study.set_user_attr(REFERENCE_ATTR, {"val_acc1": 0.0, "energy_kwh": 0.004})
    assert any("study energy: 7.5000 Wh" in line for line in study_summary_lines(study))
    show = subprocess.run([PYTHON, "-m", "greenstudy", "study", "show", "--storage", url], env=entry_env(tracking_uri),
                          capture_output=True, text=True, timeout=60)
    assert show.returncode == 0, show.stderr
    assert "trials: 3: trained 1, reused 0, pruned 1 (over_budget 1), failed 1, interrupted 0" in show.stdout
    assert "trial 1 bs=32: PRUNED, stopped early, over budget; spent 4.0000 Wh" in show.stdout
    assert "trial 2 bs=16: FAILED, TrainingDiverged: nan; spent 1.0000 Wh" in show.stdout
    assert "study energy: 7.5000 Wh over all 3 trials" in show.stdout
    assert f"hypervolume: {55.0 * 0.002:.6g}" in show.stdout and "run0" in show.stdout


# ---------------------------------------------------------------- real trials, in process


def children_of(client: MlflowClient, parent_id: str) -> list:
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def assert_lean(client: MlflowClient, child) -> None:
    """A trial's child run: train/val energies, no test evaluation, no inference benchmark, no model."""
    metrics = child.data.metrics
    assert child.data.tags["kind"] == "trial"
    assert metrics["train_energy_kwh"] > 0 and metrics["val_energy_kwh"] > 0 and metrics["energy_kwh"] > 0
    assert not {"test_acc1", "infer_images_per_second", "infer_energy_wh_per_1k_images"} & set(metrics)
    models = client.search_logged_models([child.info.experiment_id], filter_string=f"source_run_id = '{child.info.run_id}'")
    assert len(models) == 0


def test_energy_aware_stop_prunes_and_the_grid_measures_each_batch_size_once(
    tiny_data_dir: Path, tracking_uri: str, tmp_path: Path
) -> None:
    config = tiny_config(tiny_data_dir, tmp_path, run={"epochs": 2}, sampler="grid", lr_scaling="linear",
                         max_batch_size=32, stop_beta=1e-6, n_trials=5)
    outcome = run_study(config)
    study = optuna.load_study(study_name="s", storage=config.storage)
    trials = study.get_trials()
    assert sorted(t.params["batch_size"] for t in trials) == [16, 32]  # grid: each once although n_trials=5
    first, second = trials
    assert first.state == TrialState.COMPLETE and "budget_kwh" not in first.user_attrs  # nothing completed before it
    assert second.state == TrialState.PRUNED and second.user_attrs["pruned"] == OVER_BUDGET
    assert second.user_attrs["budget_kwh"] == pytest.approx(1e-6 * first.values[1])

    client = MlflowClient(tracking_uri)
    stopped = client.get_run(second.user_attrs["mlflow_run_id"])
    assert stopped.info.status == "FINISHED"
    assert "energy budget" in stopped.data.tags["stopped_early"]
    assert stopped.data.tags["optuna_state"] == "PRUNED"
    assert [p.step for p in client.get_metric_history(stopped.info.run_id, "val_acc1")] == [1]  # stopped after epoch 1
    assert stopped.data.metrics["energy_kwh"] == pytest.approx(second.user_attrs["energy_kwh"])
    complete = client.get_run(first.user_attrs["mlflow_run_id"])
    assert first.values[0] == pytest.approx(complete.data.metrics["val_acc1"])
    assert first.values[1] == pytest.approx(complete.data.metrics["train_energy_kwh"] + complete.data.metrics["val_energy_kwh"])

    children = children_of(client, outcome.parent_run_id)
    assert len(children) == 2
    for child in children:
        assert_lean(client, child)
    parent = client.get_run(outcome.parent_run_id).data
    assert parent.metrics["study_energy_kwh"] == pytest.approx(sum(c.data.metrics["energy_kwh"] for c in children))
    assert parent.metrics["trials_pruned"] == 1 and parent.metrics["pareto_size"] == 1
    reference = study.user_attrs[REFERENCE_ATTR]["energy_kwh"]
    assert reference == pytest.approx(2 * first.values[1])
    hv = hypervolume_2d([(first.values[0], first.values[1])], (0.0, reference))  # the pruned trial adds nothing
    assert parent.metrics["hypervolume"] == pytest.approx(hv)
    assert parent.metrics["hypervolume_per_kwh"] == pytest.approx(hv / parent.metrics["study_energy_kwh"])
    assert int(parent.params["sampler_seed"]) == 0 and parent.tags["objective"] == "final"
    pareto = Path(client.download_artifacts(outcome.parent_run_id, "pareto.csv", str(tmp_path)))
    rows = list(csv.DictReader(io.StringIO(pareto.read_text())))
    assert [int(r["trial"]) for r in rows] == [first.number]
    assert study.user_attrs["objective_definition"].endswith("(= train_energy_kwh + val_energy_kwh of the trial's child run)")


def test_unreachable_target_prunes_not_fails_and_is_not_retrained(tiny_data_dir: Path, tracking_uri: str, tmp_path: Path) -> None:
    config = tiny_config(tiny_data_dir, tmp_path, run={"target_acc1": 99.0}, objective="to_target", sampler="random",
                         lr_scaling="linear", max_batch_size=16, n_trials=3)  # a space of one configuration
    outcome = run_study(config)
    study = optuna.load_study(study_name="s", storage=config.storage)
    [missed] = study.get_trials()  # tried once, then the study stops: nothing left to try
    assert outcome.trial_numbers == [0]
    assert missed.state == TrialState.PRUNED and missed.user_attrs["pruned"] == TARGET_NOT_REACHED
    assert "< target 99 %" in missed.user_attrs["prune_reason"]

    client = MlflowClient(tracking_uri)
    [child] = children_of(client, outcome.parent_run_id)
    assert child.info.run_id == missed.user_attrs["mlflow_run_id"]
    assert child.info.status == "FINISHED" and child.data.tags["optuna_state"] == "PRUNED"
    assert child.data.metrics["target_reached"] == 0 and "energy_to_target_kwh" not in child.data.metrics
    assert_lean(client, child)
    parent = client.get_run(outcome.parent_run_id).data
    assert parent.metrics["trials_pruned"] == 1 and parent.metrics["trials_failed"] == 0
    assert parent.metrics["study_energy_kwh"] == pytest.approx(child.data.metrics["energy_kwh"])
    assert "hypervolume" not in parent.metrics  # nothing reached the target: no front
    assert parent.tags["objective"] == "to_target"

    study.enqueue_trial({"batch_size": 16})  # a resume proposing it again trains nothing
    again = run_study(config)
    assert again.trial_numbers == [] and len(study.get_trials()) == 2
    assert children_of(client, again.parent_run_id) == []


def test_to_target_minimises_the_energy_to_the_target(tmp_path: Path, tracking_uri: str) -> None:
    # 10 classes: one epoch puts at least 1 % of the validation images right, so the target is reached at epoch 1
    data_dir = tmp_path / "cifar10"
    write_synthetic_cifar(data_dir, "cifar10", n_train=300, n_test=100, seed=0)
    config = tiny_config(data_dir, tmp_path, run={"dataset": "cifar10", "epochs": 2, "target_acc1": 1.0},
                         objective="to_target", sampler="random", lr_scaling="linear", max_batch_size=16, n_trials=1)
    outcome = run_study(config)
    study = optuna.load_study(study_name="s", storage=config.storage)
    [reached] = study.get_trials()
    assert reached.state == TrialState.COMPLETE and reached.user_attrs["epochs_to_target"] == 1

    client = MlflowClient(tracking_uri)
    child = client.get_run(reached.user_attrs["mlflow_run_id"])
    history = client.get_metric_history(child.info.run_id, "cumulative_energy_kwh")
    assert [p.step for p in history] == [1]  # stopped at the target, one epoch before the schedule's end
    assert reached.values[0] == pytest.approx(child.data.metrics["energy_to_target_kwh"])
    assert reached.values[0] == pytest.approx(history[0].value)
    assert child.data.metrics["target_reached"] == 1
    parent = client.get_run(outcome.parent_run_id)
    reference = study.user_attrs[REFERENCE_ATTR]["energy_kwh"]
    assert parent.data.metrics["hypervolume"] == pytest.approx(reference - reached.values[0])  # 1-D: kWh saved below the reference
    assert parent.data.metrics["best_energy_energy_to_target_kwh"] == pytest.approx(reached.values[0])
    artifacts = {item.path for item in client.list_artifacts(outcome.parent_run_id)}
    assert {"energy_to_target.png", "energy_to_target.html", "pareto.csv"} <= artifacts


# ---------------------------------------------------------------- the entry script


@pytest.mark.parametrize("args, message", [
    (["--sampler", "cmaes"], "error: unknown sampler 'cmaes'"),
    (["--variant", "pruned"], "error: variant 'pruned' cannot be tuned"),
    (["--objective", "to_target"], "error: objective=to_target needs target_acc1"),
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
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "secret" not in result.stderr
    assert elapsed < 30, elapsed  # seconds, on a loaded 2-core machine
    if "max_batch_size" not in message:
        assert not (tmp_path / "mlflow.db").exists()  # checked before the MLflow store was even opened
    else:  # checked once the data is loaded: prepare() has made the store ready (greenstudy.store), but no run exists
        client = MlflowClient(tracking_uri)
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_entry_point_resume_reuse_and_failure(tiny_data_dir: Path, tracking_uri: str, tmp_path: Path) -> None:
    # two trials with the default storage (optuna.db next to the MLflow store) and the default sampler seed
    first = run_tune([*TUNE_TINY, "--n-trials", "2"], tiny_data_dir, tracking_uri, tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    assert session_trials(first.stdout) == [0, 1]
    assert re.search(r"trial 1/2 \(#0\) bs=\d+ lr=\S+ 1 ep/\d+ steps -> val_acc1 [\d.]+%, [\d.]+ Wh, COMPLETE \([\d.]+ s\) "
                     r"\| study: trained 1, reused 0, pruned 0, failed 0, interrupted 0", first.stderr)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name=STUDY, storage=storage)
    measured = study.trials[0]
    # resume: a repeat of trial 0 (not retrained, not counted in n_trials=1) and a trial forced to diverge
    # (FAIL; the study goes on)
    study.enqueue_trial(measured.params)
    study.enqueue_trial({"batch_size": 16, "base_lr": 1e6})
    second = run_tune([*TUNE_TINY, "--n-trials", "1"], tiny_data_dir, tracking_uri, tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    assert session_trials(second.stdout) == [2, 3]
    reloaded = optuna.load_study(study_name=STUDY, storage=storage)
    trials = reloaded.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED, TrialState.FAIL]
    repeat, failed = trials[2], trials[3]
    assert repeat.user_attrs["reused_from"] == 0 and repeat.user_attrs["reused_values"] == measured.values
    assert repeat.user_attrs["pruned"] == "reused"
    assert repeat.number not in {t.number for t in reloaded.best_trials}  # a copy is no second measurement
    assert "TrainingDiverged" in failed.user_attrs["fail_reason"]

    client = MlflowClient(tracking_uri)
    first_parent = re.search(r"parent run id: (\w+)", first.stdout).group(1)
    second_parent = re.search(r"parent run id: (\w+)", second.stdout).group(1)
    assert int(client.get_run(first_parent).data.params["sampler_seed"]) != int(client.get_run(second_parent).data.params["sampler_seed"])
    assert [c.info.run_id for c in children_of(client, second_parent)] == [failed.user_attrs["mlflow_run_id"]]
    failed_run = client.get_run(failed.user_attrs["mlflow_run_id"])
    assert failed_run.info.status == "FAILED" and "TrainingDiverged" in failed_run.data.tags["error"]
    parent = client.get_run(second_parent).data
    assert parent.metrics["trials_failed"] == 1 and parent.metrics["trials_reused"] == 1
    assert parent.metrics["study_energy_kwh"] == pytest.approx(failed.user_attrs["energy_kwh"])
    assert [p.step for p in client.get_metric_history(second_parent, "hypervolume")] == [3, 4]

    show = subprocess.run([PYTHON, "-m", "greenstudy", "study", "show", "--storage", storage, "--study-name", STUDY],
                          env=entry_env(tracking_uri), capture_output=True, text=True, timeout=60)
    assert show.returncode == 0, show.stderr
    assert "trials: 4: trained 2, reused 1, pruned 0, failed 1, interrupted 0" in show.stdout
    assert "trial 2 bs=" in show.stdout and "REUSED from trial 0" in show.stdout
    for t in front_trials(trials, "final"):
        assert t.user_attrs["mlflow_run_id"] in show.stdout
