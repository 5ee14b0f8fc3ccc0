"""Which configuration a trial gets: the samplers, and in a finite space (lr by a scaling rule, so a
batch size is the whole configuration) only configurations not tried yet.

Tried = measured for good: COMPLETE after training, or PRUNED because it missed the target or was not
promoted at a rung (the same configuration and seed would end the same way), or stopped by an energy
budget that has not grown since. Not tried, so sampled again: a FAIL (training raised, or the trial was
interrupted or its worker died), a budget stop whose budget is smaller than today's (or the budget is now
off), a reused copy (its original counts). A configuration another worker is training
right now is taken too, so two workers do not measure it twice at once."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from greenstudy.study.counts import continuation_pending
from greenstudy.study.front import budget_reference_kwh
from greenstudy.study.kinds import NOT_PROMOTED, OVER_BUDGET, PAUSED, TARGET_NOT_REACHED
from greenstudy.study.params import StudyConfig


def budget_now_kwh(trials: Sequence[FrozenTrial], config: StudyConfig) -> float | None:
    """The energy budget a trial starting now would get (greenstudy.study.tune); None when there is none."""
    reference = budget_reference_kwh(trials, config.objective)
    return None if config.stop_beta <= 0 or reference is None else config.stop_beta * reference


def is_tried(state: TrialState, user_attrs: dict[str, object], budget_now: float | None = None) -> bool:
    """Whether a trial ended as a measurement of its configuration (see the module's docstring)."""
    if "reused_from" in user_attrs:
        return False
    if state == TrialState.COMPLETE:
        return True
    if state == TrialState.PRUNED and user_attrs.get("pruned") == OVER_BUDGET:
        stopped_at = user_attrs.get("budget_kwh")
        return budget_now is not None and stopped_at is not None and budget_now <= float(stopped_at) * (1 + 1e-9)
    return state == TrialState.PRUNED and user_attrs.get("pruned") in (TARGET_NOT_REACHED, NOT_PROMOTED, PAUSED)


def taken_batch_sizes(trials: Sequence[FrozenTrial], config: StudyConfig, current: int | None = None) -> set[int]:
    """Batch sizes tried, or being trained now by a trial other than `current`."""
    budget_now = budget_now_kwh(trials, config)
    return {
        t.params["batch_size"] for t in trials
        if "batch_size" in t.params and t.number != current
        and (is_tried(t.state, t.user_attrs, budget_now) or t.state == TrialState.RUNNING)
    }


def untried(study: optuna.Study, config: StudyConfig) -> list[int] | None:
    """In a finite space: the batch sizes neither tried nor in progress; once none is left the study
    stops instead of proposing repeats. None for a continuous space (lr_scaling=tuned)."""
    if config.lr_scaling == "tuned":
        return None
    taken = taken_batch_sizes(study.get_trials(deepcopy=False), config)
    return [b for b in config.batch_choices if b not in taken]


class UntriedFirst(optuna.samplers.BaseSampler):
    """`base` proposes; a batch size already taken is replaced by the nearest untaken one (in log2),
    so that a finite space is measured once, configuration by configuration, whatever the sampler."""

    def __init__(self, base: optuna.samplers.BaseSampler, config: StudyConfig) -> None:
        self.base, self.config, self.choices = base, config, list(config.batch_choices)

    def _untaken(self, study: optuna.Study, trial: FrozenTrial, proposed: int) -> int:
        taken = taken_batch_sizes(study.get_trials(deepcopy=False), self.config, current=trial.number)
        left = [b for b in self.choices if b not in taken]
        if proposed not in taken or not left:
            return proposed
        return min(left, key=lambda b: (abs(math.log2(b) - math.log2(proposed)), b))

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict) -> dict:
        params = dict(self.base.sample_relative(study, trial, search_space))
        if "batch_size" in params:
            params["batch_size"] = self._untaken(study, trial, params["batch_size"])
        return params

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: object) -> object:
        value = self.base.sample_independent(study, trial, name, distribution)
        return self._untaken(study, trial, value) if name == "batch_size" else value

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)
        ended = copy.copy(trial)
        ended.state, ended.values = state, values  # Optuna stores the end after this call: the storage says RUNNING
        trials = [ended if t.number == trial.number else t for t in study.get_trials(deepcopy=False)]
        taken = taken_batch_sizes(trials, self.config)  # the ended trial with its end state among them
        if taken >= set(self.choices) and not continuation_pending(trials):
            with contextlib.suppress(RuntimeError):  # outside optimize (ask and tell) there is nothing to stop
                study.stop()  # as Optuna's GridSampler does once its grid is done

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def make_sampler(config: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    """nsga2 (default): NSGA-II, whose first generation of `population_size` trials is random; tpe:
    multi-objective TPE; random: baseline; grid: every batch size once, in random order (lr by its
    scaling rule; a failed one again). In a finite space each proposes untried batch sizes only."""
    if config.sampler == "nsga2":
        base: optuna.samplers.BaseSampler = optuna.samplers.NSGAIISampler(population_size=config.population_size, seed=seed)
    elif config.sampler == "tpe":
        base = optuna.samplers.TPESampler(seed=seed)
    else:  # random, grid
        base = optuna.samplers.RandomSampler(seed=seed)
    return base if config.lr_scaling == "tuned" else UntriedFirst(base, config)
