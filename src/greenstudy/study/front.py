"""What a study's trials add up to, read off Optuna's frozen trials (no MLflow, no torch): the Pareto
front (selected on `val_acc1`, never the test set; through `greenstudy.pareto`, the only Pareto code),
its hypervolume against a reference fixed in the study, the energy-aware stop's reference, the look-up
of an already measured configuration, the study's energy bill and the text `study show` prints.

Objectives
  final:     values = (val_acc1 of the last epoch, train_val_energy_kwh), maximise / minimise.
  to_target: values = (energy_to_target_kwh,), minimise; the front is the cheapest trial(s) and the
             hypervolume the 1-D one (reference energy - best energy, in kWh x 1).
Reused trials (user attr `reused_from`) repeat another trial's values: they are left out of the front.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from greenstudy.pareto import hypervolume_2d, pareto_front
from greenstudy.study.counts import count_trials, counts_text
from greenstudy.study.kinds import NOT_PROMOTED, OVER_BUDGET, PAUSED, TARGET_NOT_REACHED  # noqa: F401 - re-exported
from greenstudy.study.storage import SETTINGS_ATTR

REFERENCE_ATTR = "hypervolume_reference"
ENERGY_METRIC = {"final": "train_val_energy_kwh", "to_target": "energy_to_target_kwh"}
DIRECTIONS = {"final": ("maximize", "minimize"), "to_target": ("minimize",)}
OBJECTIVE_TEXT = {
    "final": "maximise val_acc1 (last epoch, validation split), minimise train_val_energy_kwh "
             "(= train_energy_kwh + val_energy_kwh of the trial's child run)",
    "to_target": "minimise energy_to_target_kwh (train + validation energy up to the first epoch at target_acc1)",
}


def objective_of(study: optuna.Study) -> str:
    """final (two objectives) or to_target (one)."""
    return "final" if len(study.directions) == 2 else "to_target"


def energy_of(trial: FrozenTrial, objective: str) -> float:
    """The trial's energy objective (kWh)."""
    return trial.values[1] if objective == "final" else trial.values[0]


def accuracy_of(trial: FrozenTrial, objective: str) -> float:
    """The accuracy the front is selected on: val_acc1 for `final`; one constant for `to_target`
    (the target fixes the accuracy, the front is the least energy)."""
    return trial.values[0] if objective == "final" else 1.0


def measured_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """COMPLETE trials that trained (not reused): the only ones on the front and in the hypervolume."""
    return [t for t in trials if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs]


def front_trials(trials: Sequence[FrozenTrial], objective: str) -> list[FrozenTrial]:
    """The non-dominated measured trials, least energy first."""
    candidates = measured_trials(trials)
    points = [(energy_of(t, objective), accuracy_of(t, objective)) for t in candidates]
    return [candidates[i] for i in pareto_front(points)]


def budget_reference_kwh(trials: Sequence[FrozenTrial], objective: str) -> float | None:
    """The energy-aware stop's reference: `to_target`, the best energy to target; `final`, the energy
    of the most expensive trial on the current front. None before any trial completed."""
    front = front_trials(trials, objective)
    if not front:
        return None
    energies = [energy_of(t, objective) for t in front]
    return min(energies) if objective == "to_target" else max(energies)


def find_measured(trials: Sequence[FrozenTrial], params: dict[str, object]) -> FrozenTrial | None:
    """A finished trial that already measured `params`: COMPLETE, or PRUNED because the target was not
    reached, it was not promoted at a rung (the same configuration and seed would end the same way) or it
    waits at a rung (a trial that continues it is queued by the study, greenstudy.study.waiting).
    Budget-stopped, failed and interrupted trials do not count: they are measured again."""
    for trial in trials:
        if trial.params != params or "reused_from" in trial.user_attrs:
            continue
        if trial.state == TrialState.COMPLETE:
            return trial
        if trial.state == TrialState.PRUNED and trial.user_attrs.get("pruned") in (TARGET_NOT_REACHED, NOT_PROMOTED, PAUSED):
            return trial
    return None


def trial_energy_kwh(trial: FrozenTrial) -> float:
    """What the trial measured, whatever its end (0 for a reused trial, which trained nothing)."""
    return float(trial.user_attrs.get("energy_kwh", 0.0))


def study_energy_kwh(trials: Sequence[FrozenTrial]) -> float:
    """The energy bill of `trials`: complete, pruned and failed alike."""
    return sum(trial_energy_kwh(t) for t in trials)


def reference_point(study: optuna.Study, requested_energy_kwh: float | None = None) -> tuple[float, float] | None:
    """(accuracy, energy) reference of the hypervolume, fixed in the study the first time it is needed
    (2 x the largest measured energy unless requested); None while no trial has completed."""
    stored = study.user_attrs.get(REFERENCE_ATTR)
    if stored is not None:
        return float(stored["val_acc1"]), float(stored["energy_kwh"])
    if requested_energy_kwh is None:
        objective = objective_of(study)
        energies = [energy_of(t, objective) for t in measured_trials(study.get_trials(deepcopy=False))]
        if not energies:
            return None
        requested_energy_kwh = 2.0 * max(energies)
    study.set_user_attr(REFERENCE_ATTR, {"val_acc1": 0.0, "energy_kwh": requested_energy_kwh})
    return 0.0, requested_energy_kwh


def hypervolume(front: Sequence[FrozenTrial], objective: str, reference: tuple[float, float]) -> float:
    """The area (final: %·kWh) or length (to_target: kWh) the front dominates up to `reference`."""
    return hypervolume_2d([(accuracy_of(t, objective), energy_of(t, objective)) for t in front], reference)


def front_rows(trials: Sequence[FrozenTrial], objective: str) -> list[dict[str, object]]:
    """The front as rows (pareto.csv, `study show`), least energy first."""
    return [
        {
            "trial": t.number, "batch_size": t.params.get("batch_size"), "lr": t.user_attrs.get("lr"),
            "val_acc1": t.values[0] if objective == "final" else t.user_attrs.get("val_acc1"),
            ENERGY_METRIC[objective]: energy_of(t, objective), "run_id": t.user_attrs.get("mlflow_run_id", ""),
        }
        for t in front_trials(trials, objective)
    ]


def front_columns(objective: str) -> tuple[str, ...]:
    return ("trial", "batch_size", "lr", "val_acc1", ENERGY_METRIC[objective], "run_id")


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_front(rows: list[dict[str, object]], objective: str) -> list[str]:
    """The front as aligned text lines (energy in Wh for readability)."""
    if not rows:
        return ["(no completed trials yet)"]
    energy = ENERGY_METRIC[objective]
    lines = [f"{'trial':>5}  {'batch':>5}  {'lr':>9}  {'val_acc1 %':>10}  {energy.replace('_kwh', ' Wh'):>22}  run id"]
    for row in rows:
        lines.append(
            f"{row['trial']:>5}  {row['batch_size']!s:>5}  {_fmt(row['lr'], '.4g'):>9}  {_fmt(row['val_acc1'], '.2f'):>10}  "
            f"{row[energy] * 1000:>22.4f}  {row['run_id']}"
        )
    return lines


def other_trial_lines(trials: Sequence[FrozenTrial]) -> list[str]:
    """One line per pruned, failed or reused trial: why, and what it spent."""
    lines = []
    for t in trials:
        spent = f"{trial_energy_kwh(t) * 1000:.4f} Wh"
        bs = t.params.get("batch_size")
        if "reused_from" in t.user_attrs:
            lines.append(f"  trial {t.number} bs={bs}: REUSED from trial {t.user_attrs['reused_from']} (not retrained, 0 Wh)")
        elif t.user_attrs.get("interrupted") or (t.state == TrialState.FAIL and "fail_reason" not in t.user_attrs):
            lines.append(f"  trial {t.number} bs={bs}: INTERRUPTED; spent {spent}")
        elif t.state == TrialState.PRUNED:
            lines.append(f"  trial {t.number} bs={bs}: PRUNED, {t.user_attrs.get('prune_reason', '?')}; spent {spent}")
        elif t.state == TrialState.FAIL:
            lines.append(f"  trial {t.number} bs={bs}: FAILED, {t.user_attrs.get('fail_reason', '?')}; spent {spent}")
    return lines


def study_summary_lines(study: optuna.Study) -> list[str]:
    """What `greenstudy study show` prints: honest counts (greenstudy.study.counts), objective, settings, energy, pruned and failed
    trials, reference, hypervolume, the front."""
    trials = study.get_trials(deepcopy=False)
    objective = objective_of(study)
    lines = [
        f"study: {study.study_name}  objective={objective}: {OBJECTIVE_TEXT[objective]}",
        f"trials: {len(trials)}: {counts_text(count_trials(trials))}" if trials else "trials: none",
        f"study energy: {study_energy_kwh(trials) * 1000:.4f} Wh over all {len(trials)} trials "
        "(trained, pruned, failed and interrupted; reused ones cost 0)",
    ]
    settings = study.user_attrs.get(SETTINGS_ATTR)
    if settings:
        lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    others = other_trial_lines(trials)
    if others:
        lines += ["pruned, failed and reused trials:", *others]
    rows = front_rows(trials, objective)
    stored = study.user_attrs.get(REFERENCE_ATTR)
    if stored and rows:
        ref = (float(stored["val_acc1"]), float(stored["energy_kwh"]))
        hv = hypervolume(front_trials(trials, objective), objective, ref)
        unit = "%·kWh" if objective == "final" else "kWh"
        lines.append(f"hypervolume: {hv:.6g} ({unit}, reference val_acc1={ref[0]:g} %, energy={ref[1]:.6g} kWh)")
    lines.append(f"Pareto front ({len(rows)} trials, selected on val_acc1):" if objective == "final"
                 else f"least energy to target ({len(rows)} trials):")
    return lines + format_front(rows, objective)
