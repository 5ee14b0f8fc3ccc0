"""Multi-fidelity: asynchronous successive halving (ASHA, Li et al. 2020) over a study's trials.

Every trial starts towards its full budget; at each rung (1/eta^k of its epochs, k = K..1, the smallest
at least one epoch at the reference schedule) it records its validation top-1 and its train + val
energy so far (user attribute `rung_<r>`), reads the same record of every trial of the study that
reached that rung (all workers: the storage holds them) and is promoted when it is among the best
max(1, n // eta) of those n by non-dominated rank, then crowding distance (NSGA-II's order; ties:
higher accuracy, lower energy, earlier trial). Otherwise training stops there and the trial ends
PRUNED (`pruned=not_promoted`): Optuna's multi-objective studies cannot prune through `trial.report`,
so the study raises `optuna.TrialPruned` itself. Each decision is logged on the trial (user attributes
`rung`, `rung_<r>_decision`) and on its MLflow run (tag `rung_<r>`).

Waiting (`halving_wait`, default on in a finite space): the first trials at a rung have nothing to be
compared with, and "the best 1 of 1" would promote every early trial to its full budget, which in a
space of a few batch sizes spends most of the grid's energy. With waiting, a trial is promoted only when
it is among the best n // eta of the n at its rung; otherwise, while untried configurations remain
(more trials will reach the rung), it ends PRUNED `pruned=paused` with its checkpoint kept, and a later
trial continues it from that checkpoint in the same MLflow run once it is among the best (ASHA as Li
et al. describe it; greenstudy.study.waiting). Once no untried configuration is left (or the session
has begun its n_trials configurations), max(1, n // eta) are kept, so the best configuration reaches the
full budget.

A rung's accuracy is read part-way through the one-cycle schedule (the lr still high): it ranks
configurations, it is not the accuracy they end at. A rung at or after a trial's last epoch is no
rung: a trial that finished its schedule is never pruned (nor by the energy budget).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial

from greenstudy.pareto import pareto_front
from greenstudy.study.kinds import NOT_PROMOTED, OVER_BUDGET, PAUSED
from greenstudy.training.control import EpochReport, TrainingControl


def rung_fractions(eta: int, reference_epochs: int) -> list[float]:
    """Fractions of a trial's budget where rungs sit, smallest first: eta^-K ... eta^-1, with
    eta^K <= reference_epochs (the smallest rung is at least one epoch of the reference schedule)."""
    if eta < 2:
        return []
    k = 0
    while eta ** (k + 1) <= reference_epochs:
        k += 1
    return [eta ** -j for j in range(k, 0, -1)]


def rung_epochs(fractions: Sequence[float], epochs: int) -> dict[int, list[int]]:
    """epoch -> the rungs (0 = smallest) checked after it, for a trial of `epochs` epochs; rungs at or
    after the last epoch are left out (a finished schedule is never pruned)."""
    schedule: dict[int, list[int]] = {}
    for rung, fraction in enumerate(fractions):
        epoch = max(1, int(epochs * fraction + 0.5))
        if epoch < epochs:
            schedule.setdefault(epoch, []).append(rung)
    return schedule


def nondominated_ranks(points: Sequence[tuple[float, float]]) -> list[int]:
    """Rank of each (val_acc1, energy) point: 0 for the front, 1 for the front of the rest, ..."""
    ranks = [-1] * len(points)
    left = list(range(len(points)))
    rank = 0
    while left:
        front = pareto_front([(points[i][1], points[i][0]) for i in left])
        for j in front:
            ranks[left[j]] = rank
        left = [i for k, i in enumerate(left) if k not in set(front)]
        rank += 1
    return ranks


def crowding(points: Sequence[tuple[float, float]], members: Sequence[int]) -> dict[int, float]:
    """NSGA-II crowding distance of `members` (one rank) over both objectives; boundaries infinite."""
    distance = {i: 0.0 for i in members}
    for axis in (0, 1):
        ordered = sorted(members, key=lambda i: points[i][axis])
        span = points[ordered[-1]][axis] - points[ordered[0]][axis]
        distance[ordered[0]] = distance[ordered[-1]] = float("inf")
        for before, here, after in zip(ordered, ordered[1:], ordered[2:], strict=False):
            if span > 0:
                distance[here] += (points[after][axis] - points[before][axis]) / span
    return distance


def promotion_order(points: Sequence[tuple[float, float]], numbers: Sequence[int]) -> list[int]:
    """Indices of `points` = (val_acc1, energy), best first: rank, then crowding, then accuracy,
    energy and trial number."""
    ranks = nondominated_ranks(points)
    distance: dict[int, float] = {}
    for rank in set(ranks):
        distance.update(crowding(points, [i for i, r in enumerate(ranks) if r == rank]))
    return sorted(range(len(points)), key=lambda i: (ranks[i], -distance[i], -points[i][0], points[i][1], numbers[i]))


@dataclass(frozen=True)
class Decision:
    promoted: bool
    place: int  # 1-based
    of: int
    kept: int
    compared: tuple[int, ...]  # trial numbers at the rung, best first

    waits: bool = False  # not promoted (yet): paused until it is among the best

    def text(self, rung: int, epoch: int, epochs: int) -> str:
        verdict = "promoted" if self.promoted else "waits" if self.waits else "not promoted"
        return (f"rung {rung} (epoch {epoch} of {epochs}): {verdict}, place {self.place} of {self.of} "
                f"(best {self.kept} kept; trials best first: {', '.join(map(str, self.compared))})")


def decide(number: int, records: dict[int, tuple[float, float]], eta: int, can_wait: bool = False) -> Decision:
    """Whether trial `number` is promoted among `records` = {trial number: (val_acc1, energy)} at a rung:
    among the best n // eta when it `can_wait` for more trials to reach the rung (else it waits), else
    among the best max(1, n // eta) (else it is not promoted)."""
    numbers = sorted(records)
    order = [numbers[i] for i in promotion_order([records[n] for n in numbers], numbers)]
    kept = len(order) // eta if can_wait else max(1, len(order) // eta)
    place = order.index(number) + 1
    return Decision(place <= kept, place, len(order), kept, tuple(order), waits=can_wait and place > kept)


@dataclass
class StudyControl(TrainingControl):
    """A trial's control: the target, the energy budget and the rungs; never stops after the last epoch
    (a trial that finished its schedule spent its energy on a complete result)."""

    total_epochs: int = 0
    rungs: dict[int, list[int]] = field(default_factory=dict)
    at_rung: Callable[[int, EpochReport], tuple[str, str]] | None = None  # -> ("", "") promoted, else (kind, why)
    on_epoch: Callable[[EpochReport], None] | None = None  # every finished epoch (the study's running tally)
    stop_kind: str = ""

    def after_epoch(self, report: EpochReport) -> bool:
        self.last = report
        if self.on_epoch:
            self.on_epoch(report)
        if self.target_acc1 is not None and self.reached is None and report.val_acc1 >= self.target_acc1:
            self.reached = report
            if self.stop_at_target:
                return True
        if report.epoch >= self.total_epochs:
            return False
        if self.budget_kwh is not None and report.energy_kwh > self.budget_kwh:
            self.stop_kind = OVER_BUDGET
            self.stopped_early = (
                f"energy budget: {report.energy_kwh * 1000:.3f} Wh spent after epoch {report.epoch} "
                f"> budget {self.budget_kwh * 1000:.3f} Wh"
            )
            return True
        for rung in self.rungs.get(report.epoch, []) if self.at_rung else []:
            kind, reason = self.at_rung(rung, report)
            if kind:
                self.stop_kind, self.stopped_early = kind, reason
                self.paused = kind == PAUSED  # the checkpoint stays, for the trial that continues it
                return True
        return False


def rung_records(trials: Sequence[FrozenTrial], rung: int) -> dict[int, tuple[float, float]]:
    """{trial number: (val_acc1, energy_kwh)} of every trial that recorded `rung`."""
    key = f"rung_{rung}"
    return {t.number: (float(t.user_attrs[key]["val_acc1"]), float(t.user_attrs[key]["energy_kwh"]))
            for t in trials if key in t.user_attrs}


def judge_at_rung(trial: optuna.Trial, eta: int, epochs: int, rung: int, report: EpochReport,
                  can_wait: Callable[[], bool] = lambda: False) -> tuple[str, str]:
    """Record this trial at `rung` and decide against every trial of the study there: ("", "") promoted,
    else (NOT_PROMOTED or PAUSED, why)."""
    import mlflow

    from greenstudy.progress import say

    trial.set_user_attr(f"rung_{rung}", {"val_acc1": report.val_acc1, "energy_kwh": report.energy_kwh, "epoch": report.epoch})
    records = rung_records(trial.study.get_trials(deepcopy=False), rung)
    records[trial.number] = (report.val_acc1, report.energy_kwh)
    decision = decide(trial.number, records, eta, can_wait())
    text = decision.text(rung, report.epoch, epochs)
    trial.set_user_attr(f"rung_{rung}_decision", text)
    trial.set_user_attr("rung", rung + 1 if decision.promoted else rung)
    mlflow.set_tag(f"rung_{rung}", text)  # on the trial's own (active) child run
    say(f"trial #{trial.number}: {text}")
    if decision.promoted:
        return "", ""
    return (PAUSED if decision.waits else NOT_PROMOTED), text


def tally(trial: optuna.Trial, report: EpochReport, earlier_kwh: float = 0.0) -> None:
    """After every epoch, the trial's run and energy so far in the storage: a worker killed hard leaves a
    trial that the heartbeat marks FAIL, and the study's bill still holds what its finished epochs spent.
    A trial continuing a paused one bills only its own part (`earlier_kwh`: what the run had spent before)."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and "mlflow_run_id" not in trial.user_attrs:
        trial.set_user_attr("mlflow_run_id", active.info.run_id)
    trial.set_user_attr("energy_kwh", report.energy_kwh - earlier_kwh)
