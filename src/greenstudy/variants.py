"""The four variants of a model: baseline (fp32), amp (mixed precision), pruned (torch-pruning),
quantized (int8 post-training static). Each returns a trained model and the run's metric contract."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import mlflow
import torch
from torch import nn

from greenstudy.config import RunConfig
from greenstudy.data import CifarData, Normalizer, eval_batches
from greenstudy.energy import EnergyMeter, PhaseEnergy, total
from greenstudy.models import build_model, classifier_layer, count_macs_params, model_size_mb
from greenstudy.precision import Precision, choose_mixed_precision, describe
from greenstudy.tracking import log_epoch
from greenstudy.train import (
    TrainSetup,
    evaluate,
    inference_benchmark,
    make_optimizer,
    make_scheduler,
    run_epoch,
    steps_per_epoch,
)

INFER_BATCH_SIZE = 256


@dataclass
class Bench:
    """What the variants of one parent run share: config, data on the device, the energy meter,
    and the trained baseline once there is one."""

    cfg: RunConfig
    data: CifarData
    cpu_data: CifarData
    device: torch.device
    meter: EnergyMeter
    baseline_model: nn.Module | None = None
    baseline_run_id: str | None = None
    last_epoch: dict[str, float] = field(default_factory=dict)
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)


@dataclass
class VariantResult:
    """A finished variant: its model, final metrics and variant-specific tags."""

    model: nn.Module
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)
    example: torch.Tensor | None = None


def _normalizer(bench: Bench, device: torch.device, channels_last: bool) -> Normalizer:
    return Normalizer(bench.data.mean, bench.data.std, device, channels_last)


def _compile_wanted(cfg: RunConfig, device: torch.device) -> bool:
    return cfg.compile == "true" or (cfg.compile == "auto" and device.type == "cuda")


def fit(bench: Bench, model: nn.Module, precision: Precision, epochs: int, lr: float, label: str) -> PhaseEnergy:
    """Train `model` in place for `epochs`, one energy phase per epoch; log per-epoch metrics."""
    cfg, device = bench.cfg, bench.device
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, lr, cfg.weight_decay)
    total_steps = epochs * steps_per_epoch(len(bench.data.train), cfg.batch_size)
    setup = TrainSetup(
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, lr, total_steps),
        normalize=_normalizer(bench, device, cfg.channels_last),
        precision=precision,
        label_smoothing=cfg.label_smoothing,
        batch_size=cfg.batch_size,
        device=device,
        generator=torch.Generator(device=device).manual_seed(cfg.seed),
        scaler=torch.amp.GradScaler(device.type) if precision.needs_scaler else None,
        step_fn=torch.compile(model) if _compile_wanted(cfg, device) else None,
    )
    phases = []
    bench.histories[label] = []
    for epoch in range(1, epochs + 1):
        with bench.meter.phase(f"{label}/train/epoch{epoch}") as phase:
            metrics = run_epoch(setup, bench.data.train, bench.data.val)
        metrics["epoch_energy_kwh"] = phase.energy_kwh
        log_epoch(metrics, epoch)
        bench.last_epoch = metrics
        bench.histories[label].append(metrics)
        phases.append(phase)
    return total(phases, f"{label}/train")


def measure(
    bench: Bench, model: nn.Module, precision: Precision, label: str, train: PhaseEnergy,
    device: torch.device | None = None, data: CifarData | None = None, channels_last: bool | None = None,
    macs_params: tuple[int, int] | None = None,
) -> dict[str, float]:
    """Test-set evaluation and the inference benchmark, each an energy phase; returns the contract."""
    device = device or bench.device
    data = data or bench.data
    channels_last = bench.cfg.channels_last if channels_last is None else channels_last
    normalize = _normalizer(bench, device, channels_last)
    with bench.meter.phase(f"{label}/eval") as eval_phase:
        test = evaluate(model, data.test, normalize, precision, device)
    with bench.meter.phase(f"{label}/inference") as infer_phase:
        images, seconds = inference_benchmark(
            model, data.test, normalize, precision, device, bench.cfg.infer_batches, INFER_BATCH_SIZE
        )
    everything = total([train, eval_phase, infer_phase])
    macs, params = macs_params or count_macs_params(model)
    metrics = {
        "test_acc1": test["acc1"],
        "test_acc5": test["acc5"],
        "test_loss": test["loss"],
        "train_energy_kwh": train.energy_kwh,
        "train_emissions_kg": train.emissions_kg,
        "train_seconds": train.seconds,
        "eval_energy_kwh": eval_phase.energy_kwh,
        "eval_seconds": eval_phase.seconds,
        "infer_energy_wh_per_1k_images": infer_phase.energy_kwh * 1000 * 1000 / images,
        "infer_images_per_second": images / seconds,
        "energy_kwh": everything.energy_kwh,
        "emissions_kg": everything.emissions_kg,
        "cpu_energy_kwh": everything.cpu_kwh,
        "gpu_energy_kwh": everything.gpu_kwh,
        "ram_energy_kwh": everything.ram_kwh,
        "params": params,
        "macs": macs,
        "model_size_mb": model_size_mb(model),
    }
    if everything.gpu_nvml_kwh is not None:
        metrics["gpu_energy_nvml_kwh"] = everything.gpu_nvml_kwh
    for phase in (train, eval_phase, infer_phase):
        short = phase.name.rsplit("/", 1)[-1]
        metrics[f"{short}_cpu_energy_kwh"] = phase.cpu_kwh
        metrics[f"{short}_gpu_energy_kwh"] = phase.gpu_kwh
        metrics[f"{short}_ram_energy_kwh"] = phase.ram_kwh
    return metrics


def _example(bench: Bench) -> torch.Tensor:
    normalize = Normalizer(bench.data.mean, bench.data.std, torch.device("cpu"), channels_last=False)
    return normalize(bench.cpu_data.test.images[:2])


def run_baseline(bench: Bench) -> VariantResult:
    """fp32 training from scratch."""
    cfg = bench.cfg
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, bench.data.num_classes, cfg.resolution)
    precision = Precision()
    train = fit(bench, model, precision, cfg.epochs, cfg.lr, "baseline")
    metrics = measure(bench, model, precision, "baseline", train)
    bench.baseline_model = model
    return VariantResult(model, metrics, {"precision": precision.name}, _example(bench))


def run_amp(bench: Bench) -> VariantResult:
    """Mixed-precision training: bf16 autocast where supported, else fp16 with a GradScaler."""
    cfg = bench.cfg
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, bench.data.num_classes, cfg.resolution)
    precision = choose_mixed_precision(describe(bench.device)).precision or Precision(torch.bfloat16)
    train = fit(bench, model, precision, cfg.epochs, cfg.lr, "amp")
    metrics = measure(bench, model, precision, "amp", train)
    return VariantResult(model, metrics, {"precision": precision.name}, _example(bench))


def _require_baseline(bench: Bench, variant: str) -> None:
    if bench.baseline_model is None:
        raise RuntimeError(f"{variant} needs a trained baseline, and this run has none (the baseline variant failed?)")


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


def run_pruned(bench: Bench) -> VariantResult:
    """Prune the trained baseline's channels, then fine-tune for `finetune_epochs` at half the lr."""
    cfg = bench.cfg
    _require_baseline(bench, "pruned")
    model = copy.deepcopy(bench.baseline_model).to(memory_format=torch.contiguous_format)
    macs_before, params_before = count_macs_params(model)
    with bench.meter.phase("pruned/prune") as prune_phase:
        prune_channels(model, cfg.prune_ratio, cfg.prune_importance)
    mlflow.log_metrics({"macs_before": macs_before, "params_before": params_before})
    epochs = cfg.effective_finetune_epochs
    train = prune_phase
    if epochs:
        train = total([prune_phase, fit(bench, model, Precision(), epochs, cfg.lr * 0.5, "pruned")], "pruned/train")
    metrics = measure(bench, model, Precision(), "pruned", train)
    metrics.update(
        macs_before=macs_before, params_before=params_before,
        macs_reduction=1 - metrics["macs"] / macs_before,
    )
    tags = {"precision": "fp32", "derived_from": bench.baseline_run_id or "", "finetune_epochs": str(epochs)}
    return VariantResult(model, metrics, tags, _example(bench))


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
                prepared(batch)
        return convert_fx(prepared)


def run_quantized(bench: Bench) -> VariantResult:
    """int8 static quantization of the trained baseline, calibrated on `calib_batches` train
    batches; evaluated and benchmarked on the CPU next to the fp32 baseline on the same CPU."""
    cfg = bench.cfg
    _require_baseline(bench, "quantized")
    cpu = torch.device("cpu")
    normalize = Normalizer(bench.data.mean, bench.data.std, cpu, channels_last=False)
    calibration = [
        normalize(images)
        for _, (images, _labels) in zip(range(cfg.calib_batches), eval_batches(bench.cpu_data.train, cfg.batch_size), strict=False)
    ]
    for epoch, metrics in enumerate(bench.histories.get("baseline", []), start=1):
        log_epoch(metrics, epoch)  # its training is the baseline's
    with bench.meter.phase("quantized/calibrate") as calib_phase:
        quantized = quantize_int8(bench.baseline_model, calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.jit.trace(quantized, calibration[0][:2])  # a loadable, self-contained int8 module
    fp32 = copy.deepcopy(bench.baseline_model).cpu().to(memory_format=torch.contiguous_format)
    metrics = measure(
        bench, quantized, Precision(), "quantized", calib_phase, cpu, bench.cpu_data,
        channels_last=False, macs_params=count_macs_params(fp32),
    )
    with bench.meter.phase("quantized/fp32-cpu-inference") as fp32_phase:
        images, seconds = inference_benchmark(fp32, bench.cpu_data.test, normalize, Precision(), cpu, cfg.infer_batches, INFER_BATCH_SIZE)
    metrics["fp32_cpu_infer_images_per_second"] = images / seconds
    metrics["fp32_cpu_infer_energy_wh_per_1k_images"] = fp32_phase.energy_kwh * 1e6 / images
    tags = {
        "precision": "int8", "derived_from": bench.baseline_run_id or "",
        "quantization": "fx-static-x86, torch.jit.trace", "eval_device": "cpu",
    }
    return VariantResult(quantized, metrics, tags, _example(bench))


VARIANT_RUNNERS: dict[str, Callable[[Bench], VariantResult]] = {
    "baseline": run_baseline,
    "amp": run_amp,
    "pruned": run_pruned,
    "quantized": run_quantized,
}


def execution_order(variants: tuple[str, ...]) -> list[str]:
    """Requested variants, with the baseline first whenever pruned or quantized need it."""
    needs_baseline = any(v in ("pruned", "quantized") for v in variants)
    if needs_baseline:
        return ["baseline"] + [v for v in variants if v != "baseline"]
    return list(variants)
