"""Issue 20: fair budgets, successive halving, honest counts, and the study in optuna-dashboard.
Real Optuna (SQLite storages), real MLflow stores, real CodeCarbon; tiny synthetic data, 1-3 epochs."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from greenstudy import interrupts
from greenstudy.config import RunConfig
from greenstudy.study.budget import budget_steps, trial_epochs
from greenstudy.study.counts import continuation_pending, count_trials, counts_text
from greenstudy.study.fidelity import StudyControl, decide, rung_epochs, rung_fractions, rung_records, tally
from greenstudy.study.front import NOT_PROMOTED, OVER_BUDGET, PAUSED, TARGET_NOT_REACHED, study_energy_kwh
from greenstudy.study.kinds import CONTINUES
from greenstudy.study.params import StudyConfig
from greenstudy.study.sampling import make_sampler, untried
from greenstudy.study.tune import run_study
from greenstudy.study.waiting import earlier_sittings_kwh, next_to_continue
from greenstudy.training.control import EpochReport
from tests.conftest import PYTHON, ROOT, entry_env

TUNE = str(ROOT / "mlproject" / "tune.py")
BS = CategoricalDistribution([16, 32, 64])


@pytest.fixture(autouse=True)
def own_energy_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Other test sessions on this machine measure too: this file's runs take turns with each other only."""
    monkeypatch.setenv("GREENSTUDY_ENERGY_LOCK", str(tmp_path / "energy.lock"))


def config_for(data_dir: Path, tmp_path: Path, **study: object) -> StudyConfig:
    run = dict(model="efficientnet_b0", epochs=1, train_subset=64, val_size=50, test_subset=50, download=False,
               batch_size=32, data_dir=str(data_dir), experiment="fidelity-test")
    run.update(study.pop("run", {}))
    return StudyConfig(run=RunConfig(**run), variant="baseline", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                       study_name="s", sampler_seed=0, lr_scaling="linear", **study)


def frozen(number: int, batch_size: int, state: TrialState, values: list[float] | None = None, **attrs: object):
    trial = create_trial(state=state, values=values, params={"batch_size": batch_size}, distributions={"batch_size": BS},
                         user_attrs=attrs)
    trial.number = number
    return trial


# ---------------------------------------------------------------- pure parts


def test_budget_in_steps_gives_every_batch_size_the_same_steps() -> None:
    steps = StudyConfig(run=RunConfig(epochs=4, batch_size=32), variant="baseline")
    assert budget_steps(steps, 640) == 4 * 20
    assert [trial_epochs(steps, b, 640) for b in (16, 32, 64, 128)] == [2, 4, 8, 16]  # 80 steps each
    fixed = StudyConfig(run=RunConfig(epochs=4, batch_size=32), variant="baseline", budget="epochs")
    assert [trial_epochs(fixed, b, 640) for b in (16, 128)] == [4, 4]
    own = StudyConfig(run=RunConfig(epochs=4, batch_size=32), variant="baseline", budget_steps=10)
    assert trial_epochs(own, 16, 640) == 1 and trial_epochs(own, 128, 640) == 2


def test_rungs_and_promotion_by_rank_and_crowding() -> None:
    assert rung_fractions(3, 27) == pytest.approx([1 / 27, 1 / 9, 1 / 3])
    assert rung_fractions(3, 2) == [] and rung_fractions(0, 27) == []
    assert rung_epochs([1 / 9, 1 / 3], 9) == {1: [0], 3: [1]}
    assert rung_epochs([1 / 3], 1) == {}  # a rung at the last epoch is no rung
    # (val_acc1, energy): 0 and 1 on the front, 2 dominated by 1; with 3 trials and eta 3 only the best one is kept
    records = {0: (40.0, 1.0), 1: (50.0, 2.0), 2: (45.0, 3.0)}
    assert decide(2, records, 3).promoted is False and decide(2, records, 3).place == 3
    first = decide(0, {0: (1.0, 9.0)}, 3)
    assert first.promoted and first.kept == 1  # the first trial at a rung has no one to lose against
    six = {n: (float(n), 1.0) for n in range(6)}  # equal energy: each more accurate one dominates the rest
    assert [decide(n, six, 3).promoted for n in range(6)] == [False] * 4 + [True] * 2


def test_a_budget_crossed_in_the_last_epoch_does_not_stop_the_trial() -> None:
    control = StudyControl(budget_kwh=1.0, total_epochs=2)
    assert control.after_epoch(EpochReport(1, 10.0, 2.0, 1.0)) is True and control.stop_kind == OVER_BUDGET
    last = StudyControl(budget_kwh=1.0, total_epochs=2)
    assert last.after_epoch(EpochReport(1, 10.0, 0.5, 1.0)) is False
    assert last.after_epoch(EpochReport(2, 20.0, 2.0, 2.0)) is False and last.stopped_early == "" and last.stop_kind == ""


def test_failed_interrupted_and_budget_stopped_configurations_are_untried(tmp_path: Path) -> None:
    """Today's code counted any finished trial as tried: a failed or interrupted batch size was never measured again."""
    config = StudyConfig(variant="baseline", max_batch_size=64)
    study = optuna.create_study(directions=["maximize", "minimize"], storage=f"sqlite:///{tmp_path / 'o.db'}")
    study.add_trial(frozen(0, 16, TrialState.FAIL, fail_reason="TrainingDiverged: nan", energy_kwh=0.1))
    study.add_trial(frozen(1, 32, TrialState.FAIL, interrupted=True, energy_kwh=0.2))
    study.add_trial(frozen(2, 64, TrialState.PRUNED, pruned=OVER_BUDGET, budget_kwh=0.25, energy_kwh=0.3))
    assert untried(study, config) == [16, 32, 64]  # no budget now (nothing completed): the budget stop is retried
    study.add_trial(frozen(3, 16, TrialState.COMPLETE, [30.0, 0.1], energy_kwh=0.1))
    assert untried(study, config) == [32]  # budget now 2 x 0.1 <= the 0.25 that stopped batch 64: no retry yet
    assert untried(study, dataclasses.replace(config, stop_beta=3.0)) == [32, 64]  # a larger budget: retried
    study.add_trial(frozen(4, 32, TrialState.PRUNED, pruned=TARGET_NOT_REACHED))
    study.add_trial(frozen(5, 64, TrialState.PRUNED, pruned=NOT_PROMOTED))
    assert untried(study, config) == []
    counts = count_trials(study.get_trials())
    assert counts_text(counts) == (
        "trained 1, reused 0, pruned 3 (not_promoted 1, over_budget 1, target_not_reached 1), failed 1, interrupted 1"
    )


def test_a_trial_whose_worker_died_is_billed_and_counted_interrupted(tmp_path: Path, tracking_uri: str) -> None:
    """Every finished epoch writes the energy so far: a trial the heartbeat marks FAIL keeps it in the bill."""
    study = optuna.create_study(directions=["maximize", "minimize"], storage=f"sqlite:///{tmp_path / 'o.db'}")
    dying = study.ask({"batch_size": BS})
    tally(dying, EpochReport(1, 10.0, 0.004, 3.0))
    tally(dying, EpochReport(2, 12.0, 0.009, 6.0))
    study.tell(dying, state=TrialState.FAIL)  # what the storage heartbeat does to a dead worker's trial
    [dead] = study.get_trials()
    assert study_energy_kwh([dead]) == pytest.approx(0.009)
    assert count_trials([dead])["interrupted"] == 1 and count_trials([dead])["failed"] == 0


@pytest.mark.parametrize("sampler", ["nsga2", "tpe", "random", "grid"])
def test_a_finite_space_samples_only_untried_configurations(sampler: str) -> None:
    """Today NSGA-II and TPE proposed repeats in a 6-point space, spending n_trials on copies."""
    config = StudyConfig(variant="baseline", sampler=sampler, max_batch_size=512, population_size=4)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(config, 0))
    study.optimize(lambda t: (float(t.suggest_categorical("batch_size", config.batch_choices)), 1.0), n_trials=20)
    assert sorted(t.params["batch_size"] for t in study.trials) == config.batch_choices  # each once, then it stops


def test_a_trial_waits_at_a_rung_until_it_is_among_the_best() -> None:
    """Without waiting, "the best 1 of 1" promoted every first trial at a rung to its full budget."""
    alone = decide(0, {0: (1.0, 9.0)}, 3, can_wait=True)
    assert alone.waits and not alone.promoted and alone.kept == 0 and "waits, place 1 of 1" in alone.text(0, 1, 9)
    records = {0: (40.0, 1.0), 1: (50.0, 2.0), 2: (45.0, 3.0)}
    assert decide(1, records, 3, can_wait=True).promoted and decide(0, records, 3, can_wait=True).waits
    assert not decide(0, records, 3).waits  # nothing more to wait for: not promoted, for good

    def at(number: int, batch_size: int, rung: int, acc: float, kwh: float, **attrs: object):
        record = {f"rung_{r}": {"val_acc1": acc, "energy_kwh": kwh * (r + 1), "epoch": r + 1} for r in range(rung + 1)}
        return frozen(number, batch_size, TrialState.PRUNED, pruned=PAUSED, rung=rung, energy_kwh=kwh, **record, **attrs)

    trials = [at(0, 16, 0, 40.0, 1.0), at(1, 32, 0, 50.0, 2.0), at(2, 64, 0, 45.0, 3.0)]
    assert next_to_continue(trials, 3, may_wait=True).number == 1  # the best 1 of 3 at rung 0
    trials.append(frozen(3, 32, TrialState.PRUNED, pruned=PAUSED, continues=1, rung=1, energy_kwh=4.0,
                         rung_1={"val_acc1": 55.0, "energy_kwh": 6.0, "epoch": 3}))
    assert next_to_continue(trials, 3, may_wait=True) is None  # 1 is continued; 3 is alone at rung 1 and may wait
    assert next_to_continue(trials, 3, may_wait=False).number == 3  # nothing left to wait for: the deepest rung first
    trials.append(frozen(4, 32, TrialState.COMPLETE, [60.0, 12.0], continues=3, energy_kwh=6.0))
    assert next_to_continue(trials, 3, may_wait=False) is None  # 0 and 2 are not the best 1 of 3 at rung 0
    counts = count_trials(trials)
    assert (counts["trained"], counts["paused"], counts["continued"]) == (1, 2, 2)
    # a continuation killed hard after billing 5.0 on run "r": the next one bills the run's total less 1.0 + 5.0
    chain = [frozen(0, 16, TrialState.PRUNED, pruned=PAUSED, rung=0, energy_kwh=1.0, mlflow_run_id="r",
                    rung_0={"val_acc1": 9.0, "energy_kwh": 1.0, "epoch": 1}),
             frozen(1, 16, TrialState.FAIL, continues=0, energy_kwh=5.0, mlflow_run_id="r")]
    assert earlier_sittings_kwh(chain, "r", 2) == pytest.approx(6.0)
    assert next_to_continue(chain, 3, may_wait=False).number == 0  # one failed continuation: tried again
    assert continuation_pending(chain)
    chain.append(frozen(2, 16, TrialState.FAIL, continues=0, fail_reason="no checkpoint"))
    assert next_to_continue(chain, 3, may_wait=False) is None  # given up after two
    assert not continuation_pending(chain)  # so the finite-space sampler may end the study
    assert "pruned 0, paused 2, continued 2," in counts_text(counts)
    assert study_energy_kwh(trials) == pytest.approx(1.0 + 2.0 + 3.0 + 4.0 + 6.0)  # each trial bills its own part


def test_the_sampler_does_not_end_a_study_whose_paused_trial_may_be_continued(tmp_path: Path) -> None:
    """The finite-space sampler stopped the study once every batch size was taken, so the continuation
    the study queued after its last new trial never ran (found in the full-CIFAR study); and it judged a
    failed continuation by the RUNNING state Optuna shows a sampler before it stores the end, so one
    failure ended the study instead of a second try."""
    config = StudyConfig(variant="baseline", max_batch_size=64)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(config, 0),
                                storage=f"sqlite:///{tmp_path / 'o.db'}")
    study.add_trial(frozen(0, 16, TrialState.PRUNED, pruned=PAUSED, rung=0))
    study.add_trial(frozen(1, 64, TrialState.COMPLETE, [1.0, 1.0]))

    def queue_continuations(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.number == 2 or trial.state == TrialState.FAIL:  # after the last new one, and again after a failure
            study.enqueue_trial({"batch_size": 16}, user_attrs={CONTINUES: 0})

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        batch_size = trial.suggest_categorical("batch_size", config.batch_choices)
        if trial.number == 3:
            raise RuntimeError("no checkpoint")  # the first continuation fails
        return float(batch_size), 1.0

    study.optimize(objective, n_trials=6, callbacks=[queue_continuations], catch=(RuntimeError,))
    trials = study.get_trials()
    assert [(t.number, t.params["batch_size"]) for t in trials] == [(0, 16), (1, 64), (2, 32), (3, 16), (4, 16)]
    assert trials[3].state == TrialState.FAIL and trials[4].user_attrs[CONTINUES] == 0  # tried again
    assert trials[4].state == TrialState.COMPLETE  # then it stops
    study.enqueue_trial({"batch_size": 64}, user_attrs={CONTINUES: 1})
    assert count_trials(study.get_trials())["queued"] == 1 and count_trials(study.get_trials())["running"] == 0


# ---------------------------------------------------------------- real trials


def children(client: MlflowClient, parent_id: str) -> list:
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def test_budget_crossed_in_the_last_epoch_completes_and_steps_set_the_epochs(
    tiny_data_dir: Path, tracking_uri: str, tmp_path: Path
) -> None:
    """Today the second trial crossed its (tiny) budget in its only epoch and ended PRUNED off the front."""
    config = config_for(tiny_data_dir, tmp_path, sampler="grid", max_batch_size=32, stop_beta=1e-6, n_trials=5)
    outcome = run_study(config)
    trials = optuna.load_study(study_name="s", storage=config.storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    second = trials[1]
    assert second.user_attrs["budget_kwh"] < second.values[1]  # it did cross the budget, at its last epoch
    epochs = {t.params["batch_size"]: t.user_attrs["epochs"] for t in trials}
    assert epochs == {16: 1, 32: 1}  # 64 images: 2 steps at the reference batch 32; batch 16 rounds 0.5 epoch up to 1
    client = MlflowClient(tracking_uri)
    for child in children(client, outcome.parent_run_id):
        assert "stopped_early" not in child.data.tags and child.data.params["epochs"] == "1"
    parent = client.get_run(outcome.parent_run_id).data
    assert parent.metrics["trials_trained"] == 2 and parent.metrics["trials_pruned"] == 0
    assert parent.metrics["pareto_size"] >= 1 and parent.params["budget"] == "steps" and parent.params["budget_steps"] == "2"


def test_interrupted_trial_is_billed_and_its_configuration_tried_again(
    tiny_data_dir: Path, tracking_uri: str, tmp_path: Path
) -> None:
    config = config_for(tiny_data_dir, tmp_path, run={"epochs": 2}, budget="epochs", max_batch_size=16, n_trials=1)
    client = MlflowClient(tracking_uri)

    def interrupt_once_training() -> None:  # Ctrl-C, as the signal handler notes it, once the trial's run exists
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            experiment = client.get_experiment_by_name("fidelity-test")
            if experiment and client.search_runs([experiment.experiment_id], "tags.kind = 'trial'"):
                interrupts._on_signal(2, None)
                return
            time.sleep(0.05)

    interrupts.reset()
    watcher = threading.Thread(target=interrupt_once_training, daemon=True)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_study(config)
    finally:
        watcher.join(5)
        interrupts.reset()
    study = optuna.load_study(study_name="s", storage=config.storage)
    [cut] = study.get_trials()
    assert cut.state == TrialState.FAIL and cut.user_attrs["interrupted"] is True
    cut_run = client.get_run(cut.user_attrs["mlflow_run_id"])
    assert cut_run.info.status == "KILLED"
    assert cut.user_attrs["energy_kwh"] == pytest.approx(cut_run.data.metrics["energy_kwh"]) and cut.user_attrs["energy_kwh"] > 0
    parent_id = cut_run.data.tags["mlflow.parentRunId"]
    parent = client.get_run(parent_id).data.metrics
    assert parent["study_energy_kwh"] == pytest.approx(cut.user_attrs["energy_kwh"])  # today: 0, the cut trial was missing
    assert parent["trials_interrupted"] == 1 and parent["trials_failed"] == 0

    again = run_study(config)  # the one batch size of the space is measured again, not skipped as "tried"
    assert again.trial_numbers == [1]
    assert study.get_trials()[1].state == TrialState.COMPLETE


def test_a_waiting_trial_is_continued_from_its_checkpoint_in_its_own_run(
    tiny_data_dir: Path, tracking_uri: str, tmp_path: Path
) -> None:
    """A trial paused at a rung keeps its checkpoint; the trial that continues it trains on from the next
    epoch in the same MLflow run, and the study bills every sitting once."""
    checkpoints = tmp_path / "checkpoints"
    config = config_for(tiny_data_dir, tmp_path, run={"epochs": 2, "checkpoint_dir": str(checkpoints)}, budget="epochs",
                        max_batch_size=32, halving_eta=2, stop_beta=0, n_trials=1)
    run_study(config)  # n_trials=1: alone at its rung (epoch 1 of 2) with one untried left, it waits; then the
    study = optuna.load_study(study_name="s", storage=config.storage)  # session closes and continues the best waiting
    paused, go_on = study.get_trials()
    assert paused.state == TrialState.PRUNED and paused.user_attrs["pruned"] == PAUSED
    assert "waits, place 1 of 1" in paused.user_attrs["rung_0_decision"]
    run_id = paused.user_attrs["mlflow_run_id"]
    client = MlflowClient(tracking_uri)
    assert go_on.user_attrs["continues"] == 0 and go_on.state == TrialState.COMPLETE
    assert go_on.user_attrs["mlflow_run_id"] == run_id and go_on.params == paused.params
    run = client.get_run(run_id)
    assert [m.step for m in client.get_metric_history(run_id, "val_acc1")] == [1, 2]  # epoch 2 only, from the checkpoint
    assert run.info.status == "FINISHED" and not {"optuna_state", "stopped_early"} & set(run.data.tags)
    assert run.data.tags["continued_by"] == "1"
    assert not (checkpoints / run_id).exists()  # finished: the checkpoint is dropped
    metrics = run.data.metrics
    assert go_on.values[1] == pytest.approx(metrics["train_energy_kwh"] + metrics["val_energy_kwh"])  # both sittings
    epochs = [m.value for m in client.get_metric_history(run_id, "epoch_energy_kwh")]
    assert len(epochs) == 2 and metrics["train_energy_kwh"] + metrics["val_energy_kwh"] == pytest.approx(sum(epochs))
    rounding = 1e-9 * metrics["energy_kwh"]  # go_on's part is a difference of two totals
    assert paused.user_attrs["energy_kwh"] >= epochs[0] - rounding and go_on.user_attrs["energy_kwh"] >= epochs[1] - rounding
    assert epochs[1] > 0
    assert paused.user_attrs["energy_kwh"] + go_on.user_attrs["energy_kwh"] == pytest.approx(metrics["energy_kwh"])
    trials = [paused, go_on]
    assert study_energy_kwh(trials) == pytest.approx(metrics["energy_kwh"])  # one run, every sitting billed once
    assert count_trials(trials)["continued"] == 1 and count_trials(trials)["paused"] == 0
    run_study(config)  # the next session: the other batch size, judged at the rung against the first one's record
    last = study.get_trials()[-1]
    assert len(study.get_trials()) == 3 and last.params != paused.params and "place" in last.user_attrs["rung_0_decision"]


def test_waiting_trains_only_the_best_configuration_to_its_full_budget(
    tiny_data_dir: Path, tracking_uri: str, tmp_path: Path
) -> None:
    """Three batch sizes, a rung at epoch 1 of 3, eta 3: without waiting the first trial ran all 3 epochs
    whatever it was worth; with it, the first two wait, and only the best at the rung goes on."""
    checkpoints = tmp_path / "checkpoints"
    config = config_for(tiny_data_dir, tmp_path, run={"epochs": 3, "checkpoint_dir": str(checkpoints)}, budget="epochs",
                        max_batch_size=64, halving_eta=3, stop_beta=0, n_trials=10)
    outcome = run_study(config)
    trials = optuna.load_study(study_name="s", storage=config.storage).get_trials()
    first_two = sorted(trials, key=lambda t: t.number)[:2]
    assert all("waits" in t.user_attrs["rung_0_decision"] for t in first_two)
    [complete] = [t for t in trials if t.state == TrialState.COMPLETE]
    at_rung = {t.params["batch_size"]: t.user_attrs["rung_0"]["val_acc1"] for t in trials if "rung_0" in t.user_attrs}
    assert len(at_rung) == 3 and at_rung[complete.params["batch_size"]] == max(at_rung.values())
    client = MlflowClient(tracking_uri)
    runs = {t.user_attrs["mlflow_run_id"] for t in trials}
    assert len(runs) == 3  # one run per configuration, a continued one included
    epochs = sorted(len(client.get_metric_history(r, "val_acc1")) for r in runs)
    assert epochs == [1, 1, 3]  # 5 of the grid's 9 epochs
    assert study_energy_kwh(trials) == pytest.approx(sum(client.get_run(r).data.metrics["energy_kwh"] for r in runs))
    assert not checkpoints.exists() or not any(checkpoints.iterdir())  # finished or released: none left behind
    parent = client.get_run(outcome.parent_run_id).data.metrics
    assert parent["trials_trained"] == 1 and parent["study_energy_kwh"] == pytest.approx(study_energy_kwh(trials))
    assert parent["trials_paused"] + parent["trials_continued"] + parent["trials_pruned_not_promoted"] == len(trials) - 1


def test_successive_halving_with_two_workers_on_one_storage(tiny_data_dir: Path, tracking_uri: str, tmp_path: Path) -> None:
    """Two entry-script workers on one SQLite study, waiting on (the default): rung 0 at epoch 1 of 3 (eta 3).
    Whatever the interleaving: every configuration is trained in one MLflow run, a paused trial is continued
    in its own run by either worker, the best at the rung reaches the full budget, every decision is logged
    and judged against the other worker's trials too, no checkpoint is left and every sitting is billed once."""
    args = ["--model", "efficientnet_b0", "--variant", "baseline", "--epochs", "3", "--train-subset", "64",
            "--val-size", "50", "--download", "false", "--batch-size", "32", "--max-batch-size", "64",
            "--lr-scaling", "linear", "--budget", "epochs", "--halving-eta", "3", "--stop-beta", "0",
            "--study-name", "asha", "--n-trials", "3", "--data-dir", str(tiny_data_dir)]
    env = {**entry_env(tracking_uri), "GREENSTUDY_ENERGY_LOCK": str(tmp_path / "energy.lock"), "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([PYTHON, TUNE, *args, "--sampler-seed", str(seed)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    outputs = [w.communicate(timeout=400) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="asha", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = study.get_trials()
    fresh = [t for t in trials if CONTINUES not in t.user_attrs]
    assert sorted(t.params["batch_size"] for t in fresh) == [16, 32, 64]  # no configuration twice, across workers
    by_worker = [{int(n) for n in out.split("this session: ")[1].split("(")[1].split(")")[0].split(",") if n.strip()}
                 for out, _ in outputs]
    assert by_worker[0] | by_worker[1] == {t.number for t in trials} and not by_worker[0] & by_worker[1]
    client = MlflowClient(tracking_uri)
    runs = {t.user_attrs["mlflow_run_id"] for t in trials if "reused_from" not in t.user_attrs}
    assert runs == {t.user_attrs["mlflow_run_id"] for t in fresh}  # a continuation trains on in its paused trial's run
    histories = {r: [p.step for p in client.get_metric_history(r, "val_acc1")] for r in runs}
    assert sorted(len(h) for h in histories.values()) in ([1, 1, 3], [1, 3, 3])  # the first at the rung waits
    assert all(h in ([1], [1, 2, 3]) for h in histories.values())  # one rung record each, no epoch twice
    for t in fresh:
        assert t.user_attrs["rung_0"]["epoch"] == 1
        assert client.get_run(t.user_attrs["mlflow_run_id"]).data.tags["rung_0"] == t.user_attrs["rung_0_decision"]
    assert all(histories[t.user_attrs["mlflow_run_id"]] == [1, 2, 3] for t in trials if t.state == TrialState.COMPLETE)
    best_at_rung = decide(fresh[0].number, rung_records(fresh, 0), 3).compared[0]  # ties broken as the study does
    assert histories[next(t for t in fresh if t.number == best_at_rung).user_attrs["mlflow_run_id"]] == [1, 2, 3]

    def judged_by(trial: optuna.trial.FrozenTrial) -> set[int]:
        return {int(n) for n in trial.user_attrs["rung_0_decision"].split("best first: ")[1].rstrip(")").split(", ")}

    last = max(fresh, key=lambda t: len(judged_by(t)))  # the last to reach the rung (the energy lock serialises)
    judged = judged_by(last)
    assert judged == {t.number for t in fresh}  # all three at the rung, whichever worker trained them
    owner = 0 if last.number in by_worker[0] else 1
    assert judged & by_worker[1 - owner]  # the other worker's trials took part in the decision
    assert not any((tmp_path / "checkpoints").glob("*/*"))  # continued to the end, or released
    counts = count_trials(trials)
    assert counts["failed"] == counts["interrupted"] == counts["running"] == counts["queued"] == 0
    assert counts["paused"] + counts["pruned_not_promoted"] == sum(len(h) == 1 for h in histories.values())
    energy = sum(client.get_run(r).data.metrics["energy_kwh"] for r in runs)
    assert study_energy_kwh(trials) == pytest.approx(energy, rel=1e-6)  # every sitting billed once, across workers
    for _, err in outputs:  # the progress line carries the study's honest counts
        assert "| study: trained " in err and "interrupted 0" in err


# ---------------------------------------------------------------- optuna-dashboard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optuna_dashboard_reads_the_study_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="dash", directions=["maximize", "minimize"], storage=url)
    study.add_trial(frozen(0, 16, TrialState.COMPLETE, [40.0, 0.2], energy_kwh=0.2))
    study.add_trial(frozen(1, 32, TrialState.PRUNED, pruned=NOT_PROMOTED, energy_kwh=0.05))
    study.add_trial(frozen(2, 16, TrialState.PRUNED, pruned="reused", reused_from=0, energy_kwh=0.0))
    port = free_port()
    server = subprocess.Popen([str(Path(PYTHON).parent / "optuna-dashboard"), url, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline, listing = time.monotonic() + 60, None
        while listing is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as reply:
                    listing = json.load(reply)
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()[-2000:]
                time.sleep(0.3)
        [summary] = listing["study_summaries"]
        assert summary["study_name"] == "dash"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=10) as reply:
            detail = json.load(reply)
        assert [(t["number"], t["state"]) for t in detail["trials"]] == [(0, "Complete"), (1, "Pruned"), (2, "Pruned")]
        attrs = {a["key"]: a["value"] for a in detail["trials"][2]["user_attrs"]}
        assert attrs["reused_from"] == "0"
        assert [t["number"] for t in detail["best_trials"]] == [0]  # the reused copy is no second best trial
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_results_show_the_honest_counts() -> None:
    from greenstudy.results.study import honest_counts

    new = {"trials_trained": 6, "trials_reused": 0, "trials_pruned": 5, "trials_pruned_not_promoted": 4,
           "trials_pruned_over_budget": 1, "trials_pruned_target_not_reached": 0, "trials_failed": 1, "trials_interrupted": 1}
    assert honest_counts(new) == "trained 6, reused 0, pruned 5 (not_promoted 4, over_budget 1), failed 1, interrupted 1"
    old = {"trials_complete": 11, "trials_reused": 5, "trials_pruned": 0, "trials_failed": 0}  # the published study's parent
    assert honest_counts(old).startswith("trained 6, reused 5, pruned 0, failed 0")
