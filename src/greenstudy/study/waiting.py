"""Successive halving with waiting: paused trials and the trials that continue them (greenstudy.study.fidelity).

A trial that waits at a rung ends PRUNED (`pruned=paused`, user attribute `rung` = the rung it waits at),
its child run FINISHED and its checkpoint kept. After every trial the study asks `queue_continuation`:
the paused trial that is now among the best at its rung (the deepest rung first, as ASHA promotes; then
the best place) gets a new trial enqueued with its parameters and `continues=<number>`. That trial
reopens the paused trial's MLflow run, loads its checkpoint and trains on from the next epoch, so one
configuration's training is the chain of its trials, one rung record on each. The continuing trial
bills only what it spends itself (`energy_kwh`); its objective values are the whole run's, every
sitting, since that is what the configuration cost. A continuation that cannot load its checkpoint (gone:
another machine's folder) or reopen its run fails; after MAX_FAILED_CONTINUATIONS failed continuations the
paused trial is given up (no longer continued, its checkpoint dropped).

Waiting needs a finite space (`lr_scaling` linear or sqrt): in a continuous one there is always an
untried configuration, and a paused trial could wait for ever.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from greenstudy.study.counts import paused_not_continued, queued_continuation, waiting_trials
from greenstudy.study.fidelity import decide, rung_records
from greenstudy.study.kinds import CONTINUES
from greenstudy.study.params import StudyConfig
from greenstudy.study.sampling import untried
from greenstudy.study.trial_end import TrialFailed, reuse


def waiting_enabled(config: StudyConfig) -> bool:
    """Whether trials may wait at a rung: halving on, `halving_wait` on and a finite space."""
    return config.halving_wait and config.halving_eta >= 2 and config.lr_scaling != "tuned"


def can_wait(study: optuna.Study, config: StudyConfig, closing: bool = False) -> bool:
    """Whether a trial at a rung may wait now: more trials will reach the rung (an untried configuration
    is left, and this session is not `closing`: it will still begin one, n_trials not reached)."""
    return waiting_enabled(config) and not closing and bool(untried(study, config))


def earlier_sittings_kwh(trials: Sequence[FrozenTrial], run_id: str, number: int) -> float:
    """What the trials before `number` billed on MLflow run `run_id` (the paused one and any failed or
    killed continuation): a continuation bills the run's total less this, so each sitting is billed once."""
    return sum(float(t.user_attrs.get("energy_kwh", 0.0)) for t in trials
               if t.number != number and t.user_attrs.get("mlflow_run_id") == run_id)


def next_to_continue(trials: Sequence[FrozenTrial], eta: int, may_wait: bool) -> FrozenTrial | None:
    """The paused trial to continue now, if one is among the best at its rung (greenstudy.study.fidelity.decide)."""
    best: tuple[tuple[int, int], FrozenTrial] | None = None
    for trial in waiting_trials(trials):
        rung = int(trial.user_attrs.get("rung", 0))
        records = rung_records(trials, rung)
        if trial.number not in records:
            continue
        decision = decide(trial.number, records, eta, may_wait)
        if decision.promoted and (best is None or (-rung, decision.place) < best[0]):
            best = ((-rung, decision.place), trial)
    return best[1] if best else None


def queue_continuation(study: optuna.Study, config: StudyConfig, closing: bool = False) -> bool:
    """Enqueue a trial that continues the paused trial now among the best (when the session is `closing`,
    the best max(1, n // eta): nothing more is waited for); True when one is queued (now or before: a
    queued continuation is not started yet)."""
    from greenstudy.progress import say

    if not waiting_enabled(config):
        return False
    trials = study.get_trials(deepcopy=False)
    if queued_continuation(trials):
        return True
    paused = next_to_continue(trials, config.halving_eta, can_wait(study, config, closing))
    if paused is None:
        return False
    study.enqueue_trial(paused.params, user_attrs={CONTINUES: paused.number})
    say(f"trial #{paused.number} ({paused.params}) is among the best at rung {paused.user_attrs.get('rung', 0)} "
        "now: the next trial continues it from its checkpoint")
    return True


RELEASED = "released:"  # the `checkpoint` tag of a paused trial whose checkpoint was dropped


def release_checkpoints(study: optuna.Study, config: StudyConfig, client: object) -> list[int]:
    """Once nothing can continue them (no untried configuration, no trial running or queued, none among
    the best), drop the checkpoints of the paused trials; returns their numbers."""
    trials = study.get_trials(deepcopy=False)
    busy = any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    if not waiting_enabled(config) or busy or untried(study, config) or next_to_continue(trials, config.halving_eta, False):
        return []
    released = []
    for trial in paused_not_continued(trials):  # given-up ones too
        run_id = trial.user_attrs.get("mlflow_run_id", "")
        if not run_id:
            continue
        with contextlib.suppress(Exception):  # tidying only: a deleted run or an unreachable store keeps its files
            tags = client.get_run(run_id).data.tags
            if not tags.get("checkpoint", "").startswith(RELEASED):
                checkpoint_folder(tags, run_id, config).remove()
                client.set_tag(run_id, "checkpoint", f"{RELEASED} the study ended without continuing this trial")
                released.append(trial.number)
    return released


def checkpoint_folder(tags: dict[str, str], run_id: str, config: StudyConfig) -> object:
    """The Checkpointer of run `run_id` (its `tags`): where the run says (tag `checkpoint`, an absolute
    path), else under this session's checkpoint_dir."""
    from greenstudy.training.checkpoint import Checkpointer

    tag = tags.get("checkpoint", "")
    return Checkpointer(Path(tag).parent if tag.endswith(".pt") else Path(config.run.checkpoint_dir).resolve() / run_id)


def continue_paused(trial: optuna.Trial, paused: FrozenTrial, earlier: Sequence[FrozenTrial], client: object,
                    config: StudyConfig) -> tuple[str, float]:
    """Before `trial` continues `paused`: (its MLflow run id, what the run's earlier trials billed).
    A duplicate continuation (another worker queued it too) ends as reused; a lost checkpoint or an
    unreadable run fails the trial (the study gives the paused trial up after MAX_FAILED_CONTINUATIONS)."""

    if any(t.user_attrs.get(CONTINUES) == paused.number and t.state != TrialState.FAIL and t.number < trial.number
           and "reused_from" not in t.user_attrs for t in earlier):
        reuse(trial, paused)
    run_id = paused.user_attrs["mlflow_run_id"]
    reason = ""
    try:
        tags = client.get_run(run_id).data.tags
        folder = checkpoint_folder(tags, run_id, config)
        if not folder.exists():
            reason = f"cannot continue trial {paused.number}: no checkpoint at {folder.path}"
    except Exception as exc:  # noqa: BLE001 - a deleted run or an unreachable store: this trial fails, the study goes on
        reason = f"cannot continue trial {paused.number}: run {run_id}: {exc}"
    if reason:
        trial.set_user_attr("fail_reason", reason)
        raise TrialFailed(reason)
    for tag in ("optuna_state", "prune_reason", "stopped_early"):  # it trains again: no longer pruned
        if tag in tags:
            client.delete_tag(run_id, tag)
    client.set_tag(run_id, "continued_by", ",".join(filter(None, (tags.get("continued_by"), str(trial.number)))))
    return run_id, earlier_sittings_kwh(earlier, run_id, trial.number)


def drop_checkpoint(client: object, run_id: str, config: StudyConfig) -> None:
    """Remove `run_id`'s checkpoint, if it has one (a failed trial's: its configuration starts afresh)."""
    with contextlib.suppress(Exception):  # tidying only: an unreadable run keeps its files, nothing is measured wrong
        checkpoint_folder(client.get_run(run_id).data.tags, run_id, config).remove()
