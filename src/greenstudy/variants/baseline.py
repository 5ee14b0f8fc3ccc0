"""Models trained from scratch: baseline (fp32) and amp (mixed precision where the hardware runs it natively)."""

from __future__ import annotations

import torch

from greenstudy.errors import VariantSkipped
from greenstudy.measure.ledger import Ledger
from greenstudy.measure.precision import Precision, choose_mixed_precision, precision_from_name
from greenstudy.training.fitting import fit
from greenstudy.training.models import build_model
from greenstudy.training.precision_probe import CPU_BF16_PATHS, training_speeds
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
    """Mixed-precision training where the hardware runs it natively (see greenstudy.measure.precision). On a
    CPU with native bf16 and amp_dtype=auto, the faster of its two bf16 paths, measured (_fastest_cpu_bf16)."""
    cfg = job.bench.cfg
    choice = choose_mixed_precision(job.bench.hw, cfg.amp_dtype)
    if not choice.runs:
        raise VariantSkipped(choice.reason)
    precision, reason, tags = choice.precision, choice.reason, {}
    if job.resume and job.resume.get("precision"):  # the path the earlier sittings trained with
        precision = precision_from_name(str(job.resume["precision"]))
    elif job.bench.device.type == "cpu" and cfg.amp_dtype == "auto" and precision.dtype == torch.bfloat16:
        precision, tags = _fastest_cpu_bf16(job, f"{cfg.model}/amp")
        reason = f"{reason}; fastest bf16 path measured here: {precision.name}"
    record = _train_fresh(job, precision, f"{cfg.model}/amp")
    record.tags.update({"precision_reason": reason, **tags})
    return record


def _fastest_cpu_bf16(job: VariantJob, label: str) -> tuple[Precision, dict[str, str]]:
    """Time fp32 and both bf16 paths on a few real steps (a measured setup phase) and keep the faster bf16
    one; when even that is slower than fp32 the run says so (tag `amp_slower_than_fp32`) instead of hiding it."""
    bench, cfg = job.bench, job.bench.cfg
    model = build_model(cfg.model, bench.data.num_classes, cfg.resolution).to(bench.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    with bench.meter.phase(job.ledger, f"{label}/precision-probe", "setup"):
        speeds = training_speeds(model, [Precision(), *CPU_BF16_PATHS], bench.data, cfg.batch_size, cfg.channels_last)
    best = max(CPU_BF16_PATHS, key=lambda precision: speeds[precision.name])
    ratio = speeds[best.name] / speeds["fp32"]
    tags = {"amp_probe_img_s": ", ".join(f"{name} {speed:.1f}" for name, speed in speeds.items()),
            "amp_speed_vs_fp32": f"{ratio:.2f}"}
    say = f"[{label}] training img/s measured here: {tags['amp_probe_img_s']}: {best.name} ({ratio:.2f}x fp32)"
    if ratio < 1:
        tags["amp_slower_than_fp32"] = f"{ratio:.2f}: no bf16 path trains {cfg.model} faster than fp32 on this machine"
        say += f"; warning: {tags['amp_slower_than_fp32']}"
    print(say, flush=True)
    return best, tags
