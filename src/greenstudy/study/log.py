"""What the study's parent run shows after every trial, and the one progress line per trial.

Parent metrics (step = finished trials of the whole study): the honest counts of greenstudy.study.counts
(trials_trained / _reused / _pruned / _pruned_<reason> / _failed / _interrupted / _running, and
trials_complete = trials_trained), `study_energy_kwh` (every trial of *this worker's session*: complete, pruned and failed, as
measured; reused trials cost 0), `all_trials_energy_kwh` (every trial of the study, all sessions and
workers), `hypervolume`, `hypervolume_per_kwh` (= hypervolume / all_trials_energy_kwh: what the front
cost; equal to hypervolume / study_energy_kwh for a single-session study), `pareto_size`, best_*.
Artifacts: the front as CSV and pictures (greenstudy.study.plots)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from greenstudy.study.budget import budget_steps
from greenstudy.study.counts import count_metrics, count_trials, counts_text
from greenstudy.study.fidelity import rung_fractions
from greenstudy.study.front import (
    ENERGY_METRIC,
    energy_of,
    front_columns,
    front_rows,
    front_trials,
    hypervolume,
    measured_trials,
    objective_of,
    reference_point,
    study_energy_kwh,
    trial_energy_kwh,
)
from greenstudy.study.params import StudyConfig


def progress_line(trial: FrozenTrial, k: int, n: int, directions: Sequence[object], counts: dict[str, int] | None = None) -> str:
    """`trial k/N (#number) bs=.. lr=.. -> val_acc1 ..%, .. Wh, STATE (.. s)`, then the study's honest counts;
    k counts the trials of this session that trained (reused copies do not count in n_trials)."""
    lr = trial.user_attrs.get("lr")
    acc = trial.user_attrs.get("val_acc1")
    if len(directions) == 2 and trial.state == TrialState.COMPLETE:
        acc = trial.values[0]
    shown_acc = "-" if acc is None else f"{acc:.2f}%"
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    state = trial.state.name
    if "reused_from" in trial.user_attrs:
        state += f", reused from trial {trial.user_attrs['reused_from']}"
    elif trial.state == TrialState.PRUNED:
        state += f": {trial.user_attrs.get('prune_reason', '')}"
    elif trial.state == TrialState.FAIL:
        state += ", interrupted" if trial.user_attrs.get("interrupted") else f": {trial.user_attrs.get('fail_reason', '')}"
    steps = f" {trial.user_attrs['epochs']} ep/{trial.user_attrs['optimizer_steps']} steps" if "optimizer_steps" in trial.user_attrs else ""
    return (
        f"trial {k}/{n} (#{trial.number}) bs={trial.params.get('batch_size')} lr={'-' if lr is None else format(lr, '.4g')}{steps}"
        f" -> val_acc1 {shown_acc}, {trial_energy_kwh(trial) * 1000:.3f} Wh, {state} ({seconds:.1f} s)"
        + (f" | study: {counts_text(counts)}" if counts else "")
    )


@dataclass
class FrontLogger:
    """Logs the study's front and energy bill to the active (parent) MLflow run; an Optuna callback."""

    requested_reference_kwh: float | None
    session: list[FrozenTrial]
    logged_finished: int = -1

    def session_energy_kwh(self) -> float:
        return study_energy_kwh(self.session)

    def __call__(self, study: optuna.Study, trial: FrozenTrial | None = None) -> None:
        finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        if finished == self.logged_finished:
            return
        self.logged_finished = finished
        log_front(study, finished, self.session_energy_kwh(), self.requested_reference_kwh)


def log_front(study: optuna.Study, step: int, session_energy_kwh: float, requested_reference_kwh: float | None = None) -> None:
    """Counts, energies, hypervolume, best_* metrics, pareto.csv and the pictures, on the active run."""
    import mlflow

    from greenstudy.study.plots import plot_study
    from greenstudy.tracking import write_dict_csv  # imports torch: kept out of `study show`

    trials = study.get_trials(deepcopy=False)
    objective = objective_of(study)
    all_energy = study_energy_kwh(trials)
    mlflow.log_metrics({
        **count_metrics(count_trials(trials)),
        "study_energy_kwh": session_energy_kwh,
        "all_trials_energy_kwh": all_energy,
    }, step=step)
    measured = measured_trials(trials)
    if not measured:
        return
    ref = reference_point(study, requested_reference_kwh)
    assert ref is not None
    front = front_trials(trials, objective)
    hv = hypervolume(front, objective, ref)
    mlflow.set_tags({
        "hypervolume_reference": f"val_acc1={ref[0]:g}, {ENERGY_METRIC[objective]}={ref[1]:.6g}",
        "hypervolume_reference_val_acc1": f"{ref[0]:g}",
        "hypervolume_reference_energy_kwh": f"{ref[1]:.6g}",
    })
    least_energy = min(measured, key=lambda t: energy_of(t, objective))
    best = {"hypervolume": hv, "hypervolume_per_kwh": hv / all_energy if all_energy > 0 else 0.0, "pareto_size": len(front),
            **_best_metrics("best_energy", least_energy, objective)}
    if objective == "final":
        best.update(_best_metrics("best_acc", max(measured, key=lambda t: (t.values[0], -t.values[1])), objective))
    mlflow.log_metrics(best, step=step)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_dict_csv(front_rows(trials, objective), front_columns(objective), folder / "pareto.csv")
        plot_study(study, folder)
        mlflow.log_artifacts(tmp)


def _best_metrics(prefix: str, trial: FrozenTrial, objective: str) -> dict[str, float]:
    metrics = {
        f"{prefix}_{ENERGY_METRIC[objective]}": energy_of(trial, objective),
        f"{prefix}_batch_size": trial.params["batch_size"], f"{prefix}_lr": trial.user_attrs.get("lr", float("nan")),
        f"{prefix}_trial": trial.number,
    }
    if objective == "final":
        metrics[f"{prefix}_val_acc1"] = trial.values[0]
    return metrics


def study_params(config: StudyConfig, shown_storage: str, sampler_seed: int, train_size: int) -> dict[str, object]:
    """The study parent run's params."""
    cfg = config.run
    return {
        "study_name": config.study_name, "storage": shown_storage, "sampler": config.sampler,
        "sampler_seed": sampler_seed, "n_trials": config.n_trials, "timeout_s": config.timeout_s or 0,
        "variant": config.variant, "model": cfg.model, "dataset": cfg.dataset, "epochs": cfg.epochs,
        "objective": config.objective, "target_acc1": cfg.target_acc1, "stop_beta": config.stop_beta,
        "trial_artifacts": config.trial_artifacts, "lr_scaling": config.lr_scaling, "max_batch_size": config.max_batch_size,
        "batch_size_choices": ",".join(map(str, config.batch_choices)), "reference_batch_size": cfg.batch_size,
        "base_lr": cfg.lr, "population_size": config.population_size, "hv_ref_energy_kwh": config.hv_ref_energy_kwh or "auto",
        "budget": config.budget, "budget_steps": budget_steps(config, train_size) if config.budget == "steps" else 0,
        "halving_eta": config.halving_eta, "halving_wait": config.halving_wait,
        "rung_fractions": ",".join(f"{f:.4g}" for f in rung_fractions(config.halving_eta, cfg.epochs)) or "none",
    }
