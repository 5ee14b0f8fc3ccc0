"""Models trained from scratch: baseline (fp32) and amp (mixed precision where the hardware runs it natively)."""

from __future__ import annotations

import mlflow
import torch

from greenstudy.errors import VariantSkipped
from greenstudy.measure.ledger import Ledger
from greenstudy.measure.precision import Precision, choose_mixed_precision
from greenstudy.training import distributed
from greenstudy.training.fitting import fit
from greenstudy.training.models import build_model
from greenstudy.training.precision_probe import training_speeds
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
    tags = {"precision": precision.name, "precision_policy": precision.policy, **fitted.tags}
    record = VariantRecord(model, Ledger(ledger), job.control, history=fitted.history, tags=tags)
    return finish(job, record, precision, label)


def run_baseline(job: VariantJob) -> VariantRecord:
    """fp32 training from scratch."""
    return _train_fresh(job, Precision(), f"{job.bench.cfg.model}/baseline")


def run_amp(job: VariantJob) -> VariantRecord:
    """Mixed-precision training where the hardware runs it natively (see greenstudy.measure.precision). On a
    CPU, amp=auto first times fp32 against it on a few real steps: the run says what it costs (_speed_vs_fp32)."""
    cfg = job.bench.cfg
    choice = choose_mixed_precision(job.bench.hw, cfg.amp_dtype)
    if not choice.runs:
        raise VariantSkipped(choice.reason)
    tags = {}
    # not on resume (the earlier sitting measured it), not in a several-process job (its ranks wait in step)
    if job.bench.device.type == "cpu" and cfg.amp_dtype == "auto" and not job.resume and not distributed.current():
        tags = _speed_vs_fp32(job, choice.precision, f"{cfg.model}/amp")
        if mlflow.active_run():  # now, so a later sitting of an interrupted run still has them
            mlflow.set_tags(tags)
    record = _train_fresh(job, choice.precision, f"{cfg.model}/amp")
    record.tags.update({"precision_reason": choice.reason, **tags})
    return record


def _speed_vs_fp32(job: VariantJob, precision: Precision, label: str) -> dict[str, str]:
    """fp32 and `precision` timed on a few real training steps of a copy of the model (a measured setup phase);
    when mixed precision is the slower, the run says so (tag `amp_slower_than_fp32`, a warning line) instead of
    spending more in silence (the CPU bf16 policy, depthwise convolutions in fp32, is what made EfficientNet-B0's
    amp faster than fp32 there; README "Mixed precision and compiled training on the CPU")."""
    bench, cfg = job.bench, job.bench.cfg
    model = build_model(cfg.model, bench.data.num_classes, cfg.resolution).to(bench.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    with bench.meter.phase(job.ledger, f"{label}/precision-probe", "setup"):
        speeds = training_speeds(model, [Precision(), precision], bench.data, cfg.batch_size, cfg.channels_last)
    ratio = speeds[precision.name] / speeds["fp32"]
    tags = {"amp_probe_img_s": ", ".join(f"{name} {speed:.1f}" for name, speed in speeds.items()),
            "amp_speed_vs_fp32": f"{ratio:.3f}"}
    line = f"[{label}] training img/s measured here: {tags['amp_probe_img_s']} ({ratio:.2f}x fp32)"
    if ratio < 1:
        tags["amp_slower_than_fp32"] = f"{ratio:.3f}: {precision.name} trains {cfg.model} slower than fp32 on this machine"
        line += f"; warning: {tags['amp_slower_than_fp32']}, so it costs more energy per epoch"
    print(line, flush=True)
    return tags
