"""How a trial ends besides COMPLETE: a reused configuration, an interrupted one, and what each spent.

A reused trial (a configuration some earlier trial measured for good) trains nothing and ends PRUNED
(`pruned=reused`, `reused_from`, the original's values in `reused_values`): PRUNED, so that Optuna's
`best_trials` and the samplers never see the copy as a second measurement. An interrupted trial keeps
what its child run measured up to the cut (`energy_kwh`, `interrupted`, `mlflow_run_id`) before Optuna
marks it FAIL, so the study's energy bill includes it."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from greenstudy.study.kinds import REUSED


class TrialFailed(Exception):
    """The trial's training failed; Optuna records it as FAIL and the study goes on (greenstudy.study.tune)."""


def reuse(trial: optuna.Trial, measured: FrozenTrial) -> None:
    """End `trial` PRUNED as a copy of `measured`; nothing is retrained, 0 kWh."""
    trial.set_user_attr("reused_from", measured.number)
    trial.set_user_attr("energy_kwh", 0.0)
    trial.set_user_attr("pruned", REUSED)
    for key in ("val_acc1", "seconds_to_target", "epochs_to_target", "mlflow_run_id", "lr", "epochs", "optimizer_steps"):
        if key in measured.user_attrs:
            trial.set_user_attr("reused_run_id" if key == "mlflow_run_id" else key, measured.user_attrs[key])
    if measured.state == TrialState.COMPLETE:
        trial.set_user_attr("reused_values", list(measured.values))
        reason = f"reused from trial {measured.number} (same configuration: not retrained)"
    else:
        reason = f"as trial {measured.number}: {measured.user_attrs.get('prune_reason', '')}"
    trial.set_user_attr("prune_reason", reason)
    raise optuna.TrialPruned(reason)


def logged_energy_kwh(run_id: str, client: object) -> float:
    """What a child run logged it spent: `energy_kwh` (a failed or interrupted run logs the partial one
    over the phases it measured), else its last `cumulative_energy_kwh`, else 0."""
    if not run_id:
        return 0.0
    logged = client.get_run(run_id).data.metrics
    return float(logged.get("energy_kwh", logged.get("cumulative_energy_kwh", 0.0)))


def child_energy_kwh(child: object, client: object) -> float:
    """What the trial's child measured, whatever its end."""
    if "energy_kwh" in child.metrics:
        return float(child.metrics["energy_kwh"])
    return logged_energy_kwh(child.run_id, client)


def record_interrupt(trial: optuna.Trial, interrupt: BaseException, client: object, earlier_kwh: float = 0.0) -> None:
    """Before Optuna marks an interrupted trial FAIL: its run, what it spent (a continuing trial: less what
    its run had spent before it, `earlier_kwh`), and that it was cut."""
    child = getattr(interrupt, "child", None)
    run_id = getattr(child, "run_id", "") or ""
    trial.set_user_attr("interrupted", True)
    trial.set_user_attr("mlflow_run_id", run_id)
    try:
        trial.set_user_attr("energy_kwh", max(0.0, logged_energy_kwh(run_id, client) - earlier_kwh))
    except Exception:  # noqa: BLE001 - the store unreachable mid-interrupt: the run still holds the figure
        trial.set_user_attr("energy_kwh", 0.0)


def free_accelerator_memory() -> None:
    """After an out-of-memory failure, let the next trial start clean."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
