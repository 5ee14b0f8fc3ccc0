"""The training loop of a variant: epochs as measured phases (train, then validation), an optional
one-time compile/warm-up phase, a checkpoint after every finished epoch, progress lines, and the
energy-to-target / energy-budget control."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from greenstudy.config import RunConfig
from greenstudy.errors import ConfigError, TrainingDiverged
from greenstudy.measure.energy import EnergyMeter
from greenstudy.measure.ledger import Ledger, PhaseEnergy
from greenstudy.measure.precision import Precision
from greenstudy.progress import EpochProgress
from greenstudy.tracking import log_epoch
from greenstudy.training import distributed
from greenstudy.training.checkpoint import Checkpointer, fingerprint, restore_rng, rng_state
from greenstudy.training.compiling import decide_compile, warm_up_compiled
from greenstudy.training.control import EpochReport, TrainingControl
from greenstudy.training.data import CifarData, Normalizer
from greenstudy.training.steps import TrainSetup, evaluate, make_optimizer, make_scheduler, steps_per_epoch, train_one_epoch

# what a run has spent making its model so far: epochs, one-time setup (compile, prune) and cut-short work
CUMULATIVE_KINDS = ("train", "val", "setup", "interrupted")


@dataclass
class FitResult:
    """What training produced besides the model trained in place."""

    history: list[dict[str, float]] = field(default_factory=list)
    first_epoch: int = 1  # > 1 when this sitting resumed from a checkpoint
    tags: dict[str, str] = field(default_factory=dict)  # compiled or eager, and why


@dataclass
class FitOrder:
    """What rank 0 sends the other ranks of a several-device job for one `fit`: they train the same model
    (a CPU copy; DistributedDataParallel then broadcasts rank 0's weights) with the same settings."""

    cfg: RunConfig
    model: nn.Module
    precision: Precision
    epochs: int
    lr: float
    label: str
    resume: dict[str, object] | None = None


def _setup(cfg: RunConfig, data: CifarData, model: nn.Module, precision: Precision, epochs: int, lr: float,
           device: torch.device) -> TrainSetup:
    optimizer = make_optimizer(model, lr, cfg.weight_decay)
    total_steps = epochs * steps_per_epoch(len(data.train), cfg.batch_size)  # global batches: the same on N ranks
    return TrainSetup(
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, lr, total_steps),
        normalize=Normalizer(data.mean, data.std, device, cfg.channels_last),
        precision=precision,
        label_smoothing=cfg.label_smoothing,
        batch_size=cfg.batch_size,
        device=device,
        generator=torch.Generator(device=device).manual_seed(cfg.seed),
        scaler=torch.amp.GradScaler(device.type) if precision.needs_scaler else None,
        step_fn=distributed.wrap(model, device, cfg.sync_bn) if distributed.current() else None,
    )


def _save(checkpointer: Checkpointer, cfg: RunConfig, setup: TrainSetup, epoch: int,
          history: list[dict[str, float]], control: TrainingControl, stop: bool) -> None:
    checkpointer.save({
        "fingerprint": fingerprint(cfg), "epoch": epoch, "model": setup.model, "precision_policy": setup.precision.policy,
        "optimizer": setup.optimizer.state_dict(), "scheduler": setup.scheduler.state_dict(),
        "scaler": setup.scaler.state_dict() if setup.scaler else None, "rng": rng_state(setup.generator),
        "history": list(history), "reached": control.reached,
        "stopped": stop, "stopped_early": control.stopped_early,
    })


def fit(
    cfg: RunConfig, data: CifarData, meter: EnergyMeter, model: nn.Module, precision: Precision, epochs: int, lr: float,
    label: str, ledger: list[PhaseEnergy], control: TrainingControl, checkpointer: Checkpointer | None,
    resume: dict[str, object] | None = None, log: Callable[[dict[str, float], int], None] = log_epoch,
) -> FitResult:
    """Train `model` in place for `epochs` (fewer when `control` stops it), appending every phase to
    `ledger` and logging per-epoch metrics; `resume` is a loaded checkpoint to continue from. In a
    several-device job, rank 0 first sends the other ranks the order to train with it (see FitOrder)."""
    ranks = distributed.current()
    if ranks and ranks.leader:
        resume_rest = {k: v for k, v in resume.items() if k != "model"} if resume is not None else None
        distributed.send_order(FitOrder(cfg, copy.deepcopy(model).cpu(), precision, epochs, lr, label, resume_rest))
    try:
        result = _fit(cfg, data, meter, model, precision, epochs, lr, label, ledger, control, checkpointer, resume, log)
    except TrainingDiverged:  # seen by every rank at once (losses summed over ranks)
        distributed.order_done()
        raise
    except BaseException as exc:  # an agreed interrupt has already put the ranks back in step
        distributed.out_of_step(f"{label}: {type(exc).__name__}")
        raise
    finally:
        if ranks and cfg.sync_bn:
            distributed.unwrap(model)
    distributed.order_done()
    return result


def check_same_precision(resume: dict[str, object], precision: Precision) -> None:
    """A resumed run trains on in the numerics it began with: a checkpoint from before the CPU bf16 policy
    (plain autocast) is refused under it, and the other way round."""
    trained = str(resume.get("precision_policy", precision.name))  # checkpoints before the policy: plain autocast
    if trained != precision.policy:
        raise ConfigError(f"resume: the checkpoint trained in {trained}, this code trains in {precision.policy}: "
                          "start a new run (one run, one numerics)")


def _fit(
    cfg: RunConfig, data: CifarData, meter: EnergyMeter, model: nn.Module, precision: Precision, epochs: int, lr: float,
    label: str, ledger: list[PhaseEnergy], control: TrainingControl, checkpointer: Checkpointer | None,
    resume: dict[str, object] | None, log: Callable[[dict[str, float], int], None],
) -> FitResult:
    device = data.train.images.device
    setup = _setup(cfg, data, model, precision, epochs, lr, device)
    ranks = distributed.current()
    setup.progress_label = label if not ranks or ranks.rank == 0 else ""
    result = FitResult()
    if resume is not None:
        check_same_precision(resume, precision)
        setup.optimizer.load_state_dict(resume["optimizer"])
        setup.scheduler.load_state_dict(resume["scheduler"])
        if setup.scaler is not None and resume["scaler"] is not None:
            setup.scaler.load_state_dict(resume["scaler"])
        restore_rng(resume["rng"], setup.generator)
        result.history = list(resume["history"])
        result.first_epoch = int(resume["epoch"]) + 1
        control.reached = resume["reached"]
    if resume is not None and resume.get("stopped"):  # the control had already ended training: nothing to compile
        control.stopped_early = str(resume.get("stopped_early", ""))
        return result
    images_left = max(0, epochs - result.first_epoch + 1) * steps_per_epoch(len(data.train), cfg.batch_size) * cfg.batch_size
    decision = decide_compile(cfg, device, precision.name, images_left)
    result.tags = {"compile": "eager", "compile_reason": decision.reason}
    if decision.compile and images_left > 0:
        with meter.phase(ledger, f"{label}/compile", "setup", devices=distributed.world_size()):
            failure = warm_up_compiled(setup, data)
            if distributed.current():  # every rank's compile ends inside this phase, not in epoch 1
                distributed.sum_over_ranks([0.0])
        if failure:
            result.tags["compile_reason"] = f"{decision.reason}; compile failed, eager instead: {failure}"
        else:
            result.tags["compile"] = "compiled"
    progress = EpochProgress(label, epochs, result.first_epoch) if distributed.is_leader() else None
    _epochs(cfg, data, meter, setup, epochs, label, ledger, control, checkpointer, result, progress, log)
    return result


def _epochs(cfg: RunConfig, data: CifarData, meter: EnergyMeter, setup: TrainSetup, epochs: int, label: str,
            ledger: list[PhaseEnergy], control: TrainingControl, checkpointer: Checkpointer | None, result: FitResult,
            progress: EpochProgress | None, log: Callable[[dict[str, float], int], None]) -> None:
    model, precision, device = setup.model, setup.precision, setup.device
    ranks = distributed.current()
    devices = distributed.world_size()
    for epoch in range(result.first_epoch, epochs + 1):
        with meter.phase(ledger, f"{label}/train/epoch{epoch}", "train", epoch, devices=devices) as train_phase:
            train_loss, train_acc1 = train_one_epoch(setup, data.train)
        with meter.phase(ledger, f"{label}/val/epoch{epoch}", "val", epoch, devices=devices) as val_phase:
            if ranks:  # each rank its shard of every batch, through the plain module (no DDP buffer broadcasts)
                val = evaluate(model, data.val, setup.normalize, precision, device, shared=True)
            else:
                val = evaluate(setup.forward(), data.val, setup.normalize, precision, device)
        so_far = Ledger(ledger)
        cumulative = so_far.energy(*CUMULATIVE_KINDS)
        metrics = {
            "train_loss": train_loss, "train_acc1": train_acc1, "val_loss": val["loss"], "val_acc1": val["acc1"],
            "epoch_seconds": train_phase.seconds + val_phase.seconds,
            "epoch_energy_kwh": train_phase.energy_kwh + val_phase.energy_kwh,
            "epoch_train_energy_kwh": train_phase.energy_kwh, "epoch_val_energy_kwh": val_phase.energy_kwh,
            "cumulative_energy_kwh": cumulative,  # = the epochs' epoch_energy_kwh + these two, every sitting
            "cumulative_setup_energy_kwh": so_far.energy("setup"),
            "cumulative_interrupted_energy_kwh": so_far.energy("interrupted"),
            "train_steps": setup.epoch_steps,  # optimizer steps (of the global batch) in this epoch
        }
        result.history.append(metrics)
        stop = control.after_epoch(EpochReport(epoch, val["acc1"], cumulative, so_far.seconds(*CUMULATIVE_KINDS)))
        if ranks:  # only rank 0 measures the energy a budget stop needs
            stop = distributed.leader_decides(stop)
        if checkpointer is not None:  # before logging: every logged epoch is in the checkpoint
            _save(checkpointer, cfg, setup, epoch, result.history, control, stop and not control.paused)
        log(metrics, epoch)
        if progress is not None:
            progress.epoch(epoch, metrics, cumulative)
        if stop:
            break
