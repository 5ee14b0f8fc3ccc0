"""Models trained from scratch: baseline (fp32) and amp (mixed precision where the hardware runs it natively)."""

from __future__ import annotations

import torch

from greenstudy.errors import VariantSkipped
from greenstudy.measure.ledger import Ledger
from greenstudy.measure.precision import Precision, choose_mixed_precision
from greenstudy.training.fitting import fit
from greenstudy.training.models import build_model
from greenstudy.variants.common import VariantJob, finish
from greenstudy.variants.record import VariantRecord


def _train_fresh(job: VariantJob, precision: Precision, label: str) -> VariantRecord:
    """Baseline and amp: a model trained from scratch (or from this run's checkpoint)."""
    cfg, bench = job.bench.cfg, job.bench
    ledger = job.ledger  # run.py filled it with the earlier sittings' phases, if any
    if job.resume:
        model = job.resume["model"]
    else:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, bench.data.num_classes, cfg.resolution)
    model.to(bench.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    fitted = fit(cfg, bench.data, bench.meter, model, precision, cfg.epochs, cfg.lr, label, ledger, job.control,
                 job.checkpointer, job.resume)
    record = VariantRecord(model, Ledger(ledger), job.control, history=fitted.history, tags={"precision": precision.name, **fitted.tags})
    return finish(job, record, precision, label)


def run_baseline(job: VariantJob) -> VariantRecord:
    """fp32 training from scratch."""
    return _train_fresh(job, Precision(), f"{job.bench.cfg.model}/baseline")


def run_amp(job: VariantJob) -> VariantRecord:
    """Mixed-precision training where the hardware runs it natively (see greenstudy.measure.precision)."""
    choice = choose_mixed_precision(job.bench.hw, job.bench.cfg.amp_dtype)
    if not choice.runs:
        raise VariantSkipped(choice.reason)
    record = _train_fresh(job, choice.precision, f"{job.bench.cfg.model}/amp")
    record.tags["precision_reason"] = choice.reason
    return record
