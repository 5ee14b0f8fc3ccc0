"""The other ranks of a several-device job (every rank but 0): the same data, then each training order
rank 0 sends, trained in step with it — measuring nothing, logging nothing, saving nothing.

Between orders a follower waits while rank 0 works alone (test, inference, pruning, quantization, MLflow).
An interrupt agreed at a safe point, or a loss that diverged (both seen by every rank at once), ends the
order on every rank; the follower then waits for rank 0's last word (so that rank 0 marks its runs first)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from greenstudy.config import RunConfig
from greenstudy.errors import TrainingDiverged
from greenstudy.measure.ledger import PhaseEnergy
from greenstudy.progress import say
from greenstudy.training import distributed
from greenstudy.training.control import TrainingControl
from greenstudy.training.data import load_cifar
from greenstudy.training.fitting import FitOrder, fit
from greenstudy.training.steps import resolve_device, seed_everything, set_cpu_threads


class NoMeter:
    """A follower's stand-in for EnergyMeter: the phases happen, nothing is measured (rank 0 measures
    the whole machine) and no CodeCarbon tracker exists."""

    @contextlib.contextmanager
    def phase(self, ledger: list[PhaseEnergy], name: str, kind: str, epoch: int = 0, devices: int = 1) -> Iterator[PhaseEnergy]:
        yield PhaseEnergy(name, kind, epoch, devices=devices)


def _no_log(metrics: dict[str, float], epoch: int) -> None:
    """Only rank 0 talks to MLflow."""


def follow(cfg: RunConfig) -> int:
    """A follower's whole job; returns its exit code (130 when it ended on an agreed interrupt)."""
    ranks = distributed.current()
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        set_cpu_threads()
    seed_everything(cfg.seed)
    data = load_cifar(cfg.dataset, cfg.resolved_data_dir(), False, cfg.val_size, cfg.train_subset, cfg.test_subset,
                      cfg.seed).to(device)
    say(f"rank {ranks.rank}/{ranks.world}: trains its shard of every batch on {device}; measures and logs nothing")
    interrupted = False
    while (order := distributed.receive_order()) is not None:
        interrupted = interrupted or _train(order, data, device)
    return 130 if interrupted else 0


def _train(order: FitOrder, data: object, device: object) -> bool:
    """One order; True when it ended on an agreed interrupt."""
    model = order.model.to(device)
    try:
        fit(order.cfg, data, NoMeter(), model, order.precision, order.epochs, order.lr, order.label, [],
            TrainingControl(), None, order.resume, log=_no_log)
    except KeyboardInterrupt:
        return True
    except TrainingDiverged:
        pass  # rank 0 saw the same loss and fails this variant; it may send another order
    return False
