"""The four variants of a model: baseline (fp32), amp (mixed precision), pruned (torch-pruning),
quantized (int8 post-training static). Each takes a `VariantJob` and returns a `VariantRecord`;
none of them logs final metrics (run.py turns records into metrics in one place)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from greenstudy.checkpoint import Checkpointer
from greenstudy.config import RunConfig
from greenstudy.control import TrainingControl
from greenstudy.data import CifarData, Normalizer, eval_batches
from greenstudy.energy import EnergyMeter
from greenstudy.errors import VariantSkipped
from greenstudy.fitting import fit
from greenstudy.interrupts import stop_if_interrupted
from greenstudy.ledger import Ledger, PhaseEnergy
from greenstudy.models import build_model, classifier_layer, count_macs_params, model_size_mb
from greenstudy.precision import Hardware, Precision, choose_mixed_precision
from greenstudy.record import Inference, Upstream, VariantRecord
from greenstudy.train import evaluate, inference_batch, run_inference_for

INFER_BATCH_SIZE = 256
WARMUP_SECONDS = 1.0


@dataclass(frozen=True)
class Bench:
    """What every variant of one process shares; read-only once made."""

    cfg: RunConfig
    data: CifarData  # on the run's device
    cpu_data: CifarData
    device: torch.device
    meter: EnergyMeter
    hw: Hardware


@dataclass
class VariantJob:
    """One variant to run: the bench, its control, where it checkpoints, what it resumes, what it derives from."""

    bench: Bench
    control: TrainingControl
    checkpointer: Checkpointer | None = None
    resume: dict[str, object] | None = None
    upstream: Upstream | None = None
    lean: bool = False  # a study trial: no test evaluation, inference benchmark or model
    ledger: list[PhaseEnergy] = field(default_factory=list)  # every phase measured so far (kept if the run fails)


def _normalizer(bench: Bench, device: torch.device, channels_last: bool) -> Normalizer:
    return Normalizer(bench.data.mean, bench.data.std, device, channels_last)


def _example(bench: Bench) -> torch.Tensor:
    normalize = Normalizer(bench.data.mean, bench.data.std, torch.device("cpu"), channels_last=False)
    return normalize(bench.cpu_data.test.images[:2])


def infer(bench: Bench, model: nn.Module, precision: Precision, ledger: list[PhaseEnergy], name: str,
          device: torch.device, data: CifarData, channels_last: bool) -> Inference:
    """Untimed warm-up, then forward passes for `infer_seconds` inside one measured phase: energy and
    images/s come from the same window."""
    model.eval()
    batch = inference_batch(data.test, _normalizer(bench, device, channels_last), device, INFER_BATCH_SIZE)
    run_inference_for(model, batch, precision, device, min(WARMUP_SECONDS, bench.cfg.infer_seconds))
    with bench.meter.phase(ledger, name, "inference") as phase:
        images = run_inference_for(model, batch, precision, device, bench.cfg.infer_seconds)
    return Inference(images, phase)


def finish(job: VariantJob, record: VariantRecord, precision: Precision, label: str, device: torch.device | None = None,
           data: CifarData | None = None, channels_last: bool | None = None, size_of: nn.Module | None = None) -> VariantRecord:
    """Test evaluation and inference benchmark (skipped in lean trials), size and example."""
    bench = job.bench
    device = device or bench.device
    data = data or bench.data
    channels_last = bench.cfg.channels_last if channels_last is None else channels_last
    if not job.lean:
        normalize = _normalizer(bench, device, channels_last)
        with bench.meter.phase(record.ledger.phases, f"{label}/test", "test"):
            record.test = evaluate(record.model, data.test, normalize, precision, device)
        record.inference = infer(bench, record.model, precision, record.ledger.phases, f"{label}/inference", device, data, channels_last)
    macs, params = count_macs_params(size_of if size_of is not None else record.model)
    record.size = {"params": params, "macs": macs, "model_size_mb": model_size_mb(record.model)}
    record.example = _example(bench)
    return record


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
    record = VariantRecord(model, Ledger(ledger), job.control, history=fitted.history, tags={"precision": precision.name})
    return finish(job, record, precision, label)


def run_baseline(job: VariantJob) -> VariantRecord:
    """fp32 training from scratch."""
    return _train_fresh(job, Precision(), f"{job.bench.cfg.model}/baseline")


def run_amp(job: VariantJob) -> VariantRecord:
    """Mixed-precision training where the hardware runs it natively (see greenstudy.precision)."""
    choice = choose_mixed_precision(job.bench.hw, job.bench.cfg.amp_dtype)
    if not choice.runs:
        raise VariantSkipped(choice.reason)
    record = _train_fresh(job, choice.precision, f"{job.bench.cfg.model}/amp")
    record.tags["precision_reason"] = choice.reason
    return record


def _importance(name: str) -> object:
    import torch_pruning as tp

    if name == "random":
        return tp.importance.RandomImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if name == "l1" else 2)


def prune_channels(model: nn.Module, ratio: float, importance: str = "l2") -> nn.Module:
    """Structured channel pruning in place with torch-pruning's DepGraph MetaPruner; the classifier
    keeps all its outputs. Works through residual adds, depthwise convs and SE blocks."""
    import torch_pruning as tp

    device = next(model.parameters()).device
    model.eval()
    example = torch.zeros(1, 3, 32, 32, device=device)
    pruner = tp.pruner.MetaPruner(
        model, example, importance=_importance(importance), pruning_ratio=ratio,
        ignored_layers=[classifier_layer(model)],
    )
    pruner.step()
    return model


def _require_upstream(job: VariantJob, variant: str) -> Upstream:
    if job.upstream is None:
        raise RuntimeError(f"{variant} needs a trained baseline, and this run has none (the baseline variant failed?)")
    return job.upstream


def run_pruned(job: VariantJob) -> VariantRecord:
    """Prune the trained baseline's channels, then fine-tune for `finetune_epochs` at half the lr."""
    cfg, bench = job.bench.cfg, job.bench
    upstream = _require_upstream(job, "pruned")
    label = f"{cfg.model}/pruned"
    macs_before, params_before = count_macs_params(upstream.model)
    ledger = job.ledger  # run.py filled it with the earlier sittings' phases, if any
    if job.resume:
        model = job.resume["model"].to(bench.device)
    else:
        model = copy.deepcopy(upstream.model).to(bench.device, memory_format=torch.contiguous_format)
        with bench.meter.phase(ledger, f"{label}/prune", "setup"):
            prune_channels(model, cfg.prune_ratio, cfg.prune_importance)
    epochs = cfg.effective_finetune_epochs
    history: list[dict[str, float]] = []
    if epochs:
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        history = fit(cfg, bench.data, bench.meter, model, Precision(), epochs, cfg.lr * 0.5, label, ledger, job.control,
                      job.checkpointer, job.resume).history
    tags = {"precision": "fp32", "derived_from": upstream.run_id, "finetune_epochs": str(epochs)}
    record = VariantRecord(model, Ledger(ledger), job.control, upstream, history, tags=tags)
    record = finish(job, record, Precision(), label)
    record.extra = {"macs_before": macs_before, "params_before": params_before,
                    "macs_reduction": 1 - record.size["macs"] / macs_before}
    return record


def quantize_int8(model: nn.Module, calibration: list[torch.Tensor]) -> nn.Module:
    """Post-training static int8 quantization for x86 CPUs, FX graph mode.

    Why FX and not PT2E: with torch 2.14.1, torchao's PT2E `X86InductorQuantizer` fails on
    torchvision's ResNet-18 ("Input partition has more than one output node": BasicBlock reuses
    one ReLU module), and its int8 model is only fast after torch.compile with freezing. FX
    (`prepare_fx`/`convert_fx`, x86 qconfig) quantizes both models and runs eager int8 kernels.
    FX is deprecated upstream; its DeprecationWarning is silenced here only."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    model = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao")
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example_inputs=(calibration[0],))
        with torch.no_grad():
            for batch in calibration:
                stop_if_interrupted()
                prepared(batch)
        return convert_fx(prepared)


def run_quantized(job: VariantJob) -> VariantRecord:
    """int8 static quantization of the trained baseline, calibrated on `calib_batches` train batches;
    evaluated and benchmarked on the CPU, next to the fp32 baseline benchmarked on the same CPU."""
    cfg, bench = job.bench.cfg, job.bench
    upstream = _require_upstream(job, "quantized")
    label = f"{cfg.model}/quantized"
    cpu = torch.device("cpu")
    normalize = Normalizer(bench.data.mean, bench.data.std, cpu, channels_last=False)
    batches = zip(range(cfg.calib_batches), eval_batches(bench.cpu_data.train, cfg.batch_size), strict=False)
    calibration = [normalize(images) for _, (images, _labels) in batches]
    ledger = job.ledger
    with bench.meter.phase(ledger, f"{label}/calibrate", "setup"):
        quantized = quantize_int8(upstream.model, calibration)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = torch.jit.trace(quantized, calibration[0][:2])  # a loadable, self-contained int8 module
    fp32 = copy.deepcopy(upstream.model).cpu().to(memory_format=torch.contiguous_format).eval()
    tags = {"precision": "int8", "derived_from": upstream.run_id, "quantization": "fx-static-x86, torch.jit.trace",
            "eval_device": "cpu"}
    record = VariantRecord(quantized, Ledger(ledger), job.control, upstream, tags=tags)
    record = finish(job, record, Precision(), label, cpu, bench.cpu_data, channels_last=False, size_of=fp32)
    if not job.lean:
        fp32_inference = infer(bench, fp32, Precision(), ledger, f"{label}/fp32-cpu-inference", cpu, bench.cpu_data, False)
        record.extra = fp32_inference.metrics("fp32_cpu_infer")
    return record


VARIANT_RUNNERS: dict[str, Callable[[VariantJob], VariantRecord]] = {
    "baseline": run_baseline,
    "amp": run_amp,
    "pruned": run_pruned,
    "quantized": run_quantized,
}
DERIVED = ("pruned", "quantized")


def execution_order(variants: tuple[str, ...]) -> list[str]:
    """Requested variants, with the baseline first whenever pruned or quantized need it."""
    if any(v in DERIVED for v in variants):
        return ["baseline"] + [v for v in variants if v != "baseline"]
    return list(variants)
