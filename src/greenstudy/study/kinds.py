"""Why a trial ended PRUNED (user attribute `pruned`), in one place for the front, the counts and the samplers."""

from __future__ import annotations

TARGET_NOT_REACHED = "target_not_reached"  # to_target: the schedule ended below the target
OVER_BUDGET = "over_budget"  # the energy-aware stop, before the last epoch
NOT_PROMOTED = "not_promoted"  # successive halving: not among the best at a rung (greenstudy.study.fidelity)
PAUSED = "paused"  # waits at a rung with its checkpoint, until a later trial continues it (greenstudy.study.waiting)
CONTINUES = "continues"  # user attribute of a trial that continues paused trial <number> from its checkpoint
REUSED = "reused"  # a configuration measured before: PRUNED so that it is in no best_trials (greenstudy.study.trial_end)
PRUNE_KINDS = (OVER_BUDGET, TARGET_NOT_REACHED, NOT_PROMOTED)
