"""Honest counts: what each trial of a study really was, counted apart.

- trained: COMPLETE after training (its values are its own measurement);
- reused: a repeat of a measured configuration, answered from it (ended PRUNED, `pruned=reused`, 0 kWh);
- pruned, by reason: `over_budget` (the energy-aware stop), `target_not_reached`, `not_promoted`
  (successive halving, greenstudy.study.fidelity);
- failed: training raised (NaN loss, out of memory, ...), user attribute `fail_reason`;
- interrupted: Ctrl-C/SIGTERM (user attribute `interrupted`), or a worker that died and whose trial
  the heartbeat marked FAIL (no `fail_reason`);
- running: still in progress (another worker, or a worker whose death the heartbeat has not seen yet).
"""

from __future__ import annotations

from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState

from greenstudy.study.kinds import PRUNE_KINDS

KINDS = ("trained", "reused", "pruned", "failed", "interrupted", "running")


def kind_of(trial: FrozenTrial) -> str:
    """trained, reused, pruned:<reason>, failed, interrupted or running."""
    attrs = trial.user_attrs
    if "reused_from" in attrs:
        return "reused"
    if trial.state == TrialState.COMPLETE:
        return "trained"
    if trial.state == TrialState.PRUNED:
        return f"pruned:{attrs.get('pruned', 'unknown')}"
    if trial.state == TrialState.FAIL:
        return "interrupted" if attrs.get("interrupted") or "fail_reason" not in attrs else "failed"
    return "running"


def count_trials(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """{trained, reused, pruned, pruned_<reason> (every reason, 0 included), failed, interrupted, running}."""
    kinds = [kind_of(t) for t in trials]
    counts = {kind: kinds.count(kind) for kind in KINDS}
    reasons = {k.split(":", 1)[1] for k in kinds if k.startswith("pruned:")} | set(PRUNE_KINDS)
    for reason in sorted(reasons):
        counts[f"pruned_{reason}"] = kinds.count(f"pruned:{reason}")
    counts["pruned"] = sum(k.startswith("pruned:") for k in kinds)
    return counts


def counts_text(counts: dict[str, int]) -> str:
    """`trained 3, reused 1, pruned 2 (over_budget 1, not_promoted 1), failed 0, interrupted 0`."""
    reasons = [f"{key[len('pruned_'):]} {n}" for key, n in counts.items() if key.startswith("pruned_") and n]
    pruned = f"pruned {counts['pruned']}" + (f" ({', '.join(reasons)})" if reasons else "")
    running = f", running {counts['running']}" if counts.get("running") else ""
    return (f"trained {counts['trained']}, reused {counts['reused']}, {pruned}, failed {counts['failed']}, "
            f"interrupted {counts['interrupted']}{running}")


def count_metrics(counts: dict[str, int]) -> dict[str, float]:
    """The parent run's `trials_<kind>` metrics (`trials_complete` = trained, kept for older readers)."""
    return {f"trials_{key}": float(n) for key, n in counts.items()} | {"trials_complete": float(counts["trained"])}
