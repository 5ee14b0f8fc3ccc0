"""Honest counts: what each trial of a study really was, counted apart.

- trained: COMPLETE after training (its values are its own measurement);
- reused: a repeat of a measured configuration, answered from it (ended PRUNED, `pruned=reused`, 0 kWh);
- pruned, by reason: `over_budget` (the energy-aware stop), `target_not_reached`, `not_promoted`
  (successive halving, greenstudy.study.fidelity);
- paused: waited at a rung (successive halving with waiting) and has not been continued; continued: a
  paused trial that a later trial (`continues`) took on from its checkpoint, so that one configuration's
  training is the chain of its trials;
- failed: training raised (NaN loss, out of memory, ...), user attribute `fail_reason`;
- interrupted: Ctrl-C/SIGTERM (user attribute `interrupted`), or a worker that died and whose trial
  the heartbeat marked FAIL (no `fail_reason`);
- running: still in progress (another worker, or a worker whose death the heartbeat has not seen yet);
- queued: a continuation of a paused trial, enqueued and not started yet.
"""

from __future__ import annotations

from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState

from greenstudy.study.kinds import CONTINUES, PAUSED, PRUNE_KINDS

KINDS = ("trained", "reused", "pruned", "paused", "continued", "failed", "interrupted", "running", "queued")


def continued_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Paused trials that a later trial continues (queued, running or ended; a failed continuation, or a
    duplicate one that ended as reused, does not)."""
    return {int(t.user_attrs[CONTINUES]) for t in trials
            if CONTINUES in t.user_attrs and t.state != TrialState.FAIL and "reused_from" not in t.user_attrs}


MAX_FAILED_CONTINUATIONS = 2  # then a paused trial is given up (a lost checkpoint, a settings mismatch ...)


def failed_continuations(trials: Sequence[FrozenTrial], number: int) -> int:
    return sum(t.user_attrs.get(CONTINUES) == number and t.state == TrialState.FAIL for t in trials)


def paused_not_continued(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Paused trials that no trial continues (given-up ones included)."""
    continued = continued_numbers(trials)
    return [t for t in trials
            if t.state == TrialState.PRUNED and t.user_attrs.get("pruned") == PAUSED and t.number not in continued]


def waiting_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Paused trials that no trial continues yet and whose continuation has not failed too often."""
    return [t for t in paused_not_continued(trials) if failed_continuations(trials, t.number) < MAX_FAILED_CONTINUATIONS]


def queued_continuation(trials: Sequence[FrozenTrial]) -> bool:
    """A continuation of a paused trial is enqueued and not started yet."""
    return any(t.state == TrialState.WAITING and CONTINUES in t.user_attrs for t in trials)


def continuation_pending(trials: Sequence[FrozenTrial]) -> bool:
    """A paused trial that may still be continued, or a continuation queued: the study (greenstudy.study.waiting)
    decides whether it goes on, not the finite-space sampler."""
    return bool(waiting_trials(trials)) or queued_continuation(trials)


def kind_of(trial: FrozenTrial, continued: set[int] = frozenset()) -> str:
    """trained, reused, pruned:<reason>, paused, continued (a paused trial in `continued`), failed,
    interrupted, running or queued (a continuation not started yet)."""
    attrs = trial.user_attrs
    if "reused_from" in attrs:
        return "reused"
    if trial.state == TrialState.COMPLETE:
        return "trained"
    if trial.state == TrialState.PRUNED and attrs.get("pruned") == PAUSED:
        return "continued" if trial.number in continued else "paused"
    if trial.state == TrialState.PRUNED:
        return f"pruned:{attrs.get('pruned', 'unknown')}"
    if trial.state == TrialState.FAIL:
        return "interrupted" if attrs.get("interrupted") or "fail_reason" not in attrs else "failed"
    return "queued" if trial.state == TrialState.WAITING else "running"


def count_trials(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """{trained, reused, pruned, pruned_<reason> (every reason, 0 included), paused, continued, failed,
    interrupted, running}."""
    continued = continued_numbers(trials)
    kinds = [kind_of(t, continued) for t in trials]
    counts = {kind: kinds.count(kind) for kind in KINDS}
    reasons = {k.split(":", 1)[1] for k in kinds if k.startswith("pruned:")} | set(PRUNE_KINDS)
    for reason in sorted(reasons):
        counts[f"pruned_{reason}"] = kinds.count(f"pruned:{reason}")
    counts["pruned"] = sum(k.startswith("pruned:") for k in kinds)
    return counts


def counts_text(counts: dict[str, int]) -> str:
    """`trained 3, reused 1, pruned 2 (over_budget 1, not_promoted 1), failed 0, interrupted 0`, with
    `paused 2, continued 1` after pruned where successive halving paused trials."""
    reasons = [f"{key[len('pruned_'):]} {n}" for key, n in counts.items() if key.startswith("pruned_") and n]
    pruned = f"pruned {counts['pruned']}" + (f" ({', '.join(reasons)})" if reasons else "")
    waited = (f", paused {counts.get('paused', 0)}, continued {counts.get('continued', 0)}"
              if counts.get("paused") or counts.get("continued") else "")
    running = f", running {counts['running']}" if counts.get("running") else ""
    running += f", queued {counts['queued']}" if counts.get("queued") else ""
    return (f"trained {counts['trained']}, reused {counts['reused']}, {pruned}{waited}, failed {counts['failed']}, "
            f"interrupted {counts['interrupted']}{running}")


def count_metrics(counts: dict[str, int]) -> dict[str, float]:
    """The parent run's `trials_<kind>` metrics (`trials_complete` = trained, kept for older readers)."""
    return {f"trials_{key}": float(n) for key, n in counts.items()} | {"trials_complete": float(counts["trained"])}
