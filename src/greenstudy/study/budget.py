"""How long a trial trains: the study's budget, the same for every batch size in one of two units.

- `budget=steps` (default): every trial gets the same number of optimizer steps, `budget_steps`, or
  when 0 `epochs` x the steps of one epoch at the reference `batch_size`. A larger batch then sees
  more images for more energy: the energy objective pays for them, and no batch size is judged on a
  schedule too short to take the steps its learning needs.
- `budget=epochs`: every trial trains `epochs` passes over the training split (the same images, and
  about the same arithmetic, whatever the batch size); a batch of 512 then takes 1/32 of the steps a
  batch of 16 takes, so at a short schedule the study ranks step counts rather than batch sizes.

Whole epochs, because the one-cycle schedule, the per-epoch measurement and the rungs are per epoch:
a trial's epochs are `round(steps / steps_per_epoch(batch))`, at least 1, and the steps it really
takes are logged beside them (user attributes `epochs`, `optimizer_steps`)."""

from __future__ import annotations

import math

from greenstudy.study.params import StudyConfig


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    """Optimizer steps of one epoch: the last short batch is dropped (greenstudy.training.data)."""
    return max(1, train_size // batch_size)


def budget_steps(config: StudyConfig, train_size: int) -> int:
    """The steps every trial gets under `budget=steps`."""
    return config.budget_steps or config.run.epochs * steps_per_epoch(train_size, config.run.batch_size)


def trial_epochs(config: StudyConfig, batch_size: int, train_size: int) -> int:
    """The epochs a trial of `batch_size` trains (its one-cycle schedule's length)."""
    if config.budget == "epochs":
        return config.run.epochs
    return max(1, math.floor(budget_steps(config, train_size) / steps_per_epoch(train_size, batch_size) + 0.5))


def optimizer_steps(epochs: int, batch_size: int, train_size: int) -> int:
    """The steps `epochs` epochs of `batch_size` take."""
    return epochs * steps_per_epoch(train_size, batch_size)
