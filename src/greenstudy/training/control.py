"""What may end a training run before its last epoch: reaching a target accuracy, or an energy budget.

`fit` calls `TrainingControl.after_epoch` once per finished epoch (train + validation) with the run's
cumulative energy and time; the control records when the target was first reached and answers
whether to stop. The energy-aware stop (Zeus-style: stop once the cost passes beta x a reference)
is decided by whoever sets `budget_kwh` — the study, from its completed trials.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EpochReport:
    """One finished epoch as the control sees it; energy and seconds are cumulative training +
    validation of this run so far (one-time warm-up/compile excluded: it is its own phase)."""

    epoch: int
    val_acc1: float
    energy_kwh: float
    seconds: float


@dataclass
class TrainingControl:
    """Energy-to-target bookkeeping and early stops for one training run."""

    target_acc1: float | None = None
    stop_at_target: bool = False
    budget_kwh: float | None = None
    reached: EpochReport | None = None
    last: EpochReport | None = None
    stopped_early: str = ""
    paused: bool = False  # stopped to be continued later: the checkpoint is kept and not marked stopped

    def after_epoch(self, report: EpochReport) -> bool:
        """Record `report`; True when training should stop now."""
        self.last = report
        if self.target_acc1 is not None and self.reached is None and report.val_acc1 >= self.target_acc1:
            self.reached = report
            if self.stop_at_target:
                return True
        if self.budget_kwh is not None and report.energy_kwh > self.budget_kwh:
            self.stopped_early = (
                f"energy budget: {report.energy_kwh * 1000:.3f} Wh spent after epoch {report.epoch} "
                f"> budget {self.budget_kwh * 1000:.3f} Wh"
            )
            return True
        return False

    def target_metrics(self) -> dict[str, float]:
        """epochs/seconds/energy to target and target_reached (0/1); empty without a target.
        Not reached: only target_reached=0 (no made-up numbers)."""
        if self.target_acc1 is None:
            return {}
        if self.reached is None:
            return {"target_reached": 0.0}
        return {
            "target_reached": 1.0,
            "epochs_to_target": float(self.reached.epoch),
            "seconds_to_target": self.reached.seconds,
            "energy_to_target_kwh": self.reached.energy_kwh,
        }
