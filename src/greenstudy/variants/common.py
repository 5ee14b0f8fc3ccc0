"""What every variant shares: the bench of one process, the job of one variant, and its finish
(test evaluation, inference benchmark, size). None of them logs final metrics (runs turn records into
metrics in one place)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from greenstudy.config import RunConfig
from greenstudy.interrupts import stop_if_interrupted
from greenstudy.measure.energy import EnergyMeter
from greenstudy.measure.ledger import PhaseEnergy
from greenstudy.measure.precision import Hardware, Precision
from greenstudy.training.checkpoint import Checkpointer
from greenstudy.training.control import TrainingControl
from greenstudy.training.data import CifarData, Normalizer
from greenstudy.training.models import count_macs_params, model_size_mb
from greenstudy.training.steps import evaluate, inference_batch, run_inference_for, synchronize
from greenstudy.variants.record import Batch1Inference, Inference, Upstream, VariantRecord

INFER_BATCH_SIZE = 256
WARMUP_SECONDS = 1.0
PROBE_SECONDS = 0.5  # per layout, to choose the faster one
B1_WARMUP_QUERIES = 20


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


def normalizer(bench: Bench, device: torch.device, channels_last: bool) -> Normalizer:
    return Normalizer(bench.data.mean, bench.data.std, device, channels_last)


def example_input(bench: Bench) -> torch.Tensor:
    normalize = Normalizer(bench.data.mean, bench.data.std, torch.device("cpu"), channels_last=False)
    return normalize(bench.cpu_data.test.images[:2])


def fastest_layout(bench: Bench, model: nn.Module, precision: Precision, device: torch.device, data: CifarData) -> bool:
    """channels_last or not, whichever runs this model faster here: every variant (and the int8 model's fp32
    reference) is timed in its own best layout, by this one rule, at the same batch size and threads."""
    probe = min(PROBE_SECONDS, bench.cfg.infer_seconds)
    speed = {}
    for channels_last in (True, False):
        if not isinstance(model, torch.jit.ScriptModule):  # a traced int8 module keeps its own weight layout
            model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        batch = inference_batch(data.test, normalizer(bench, device, channels_last), device, INFER_BATCH_SIZE)
        run_inference_for(model, batch, precision, device, probe / 2)  # warm-up of this layout
        synchronize(device)
        started = time.perf_counter()
        images = run_inference_for(model, batch, precision, device, probe)
        synchronize(device)  # on CUDA the work queues ahead: time it finished, not queued
        speed[channels_last] = images / (time.perf_counter() - started)
    best = max(speed, key=speed.get)
    if not isinstance(model, torch.jit.ScriptModule):
        model.to(memory_format=torch.channels_last if best else torch.contiguous_format)
    return best


def infer(bench: Bench, model: nn.Module, precision: Precision, ledger: list[PhaseEnergy], name: str,
          device: torch.device, data: CifarData) -> Inference:
    """The model's fastest layout (see fastest_layout), an untimed warm-up, then forward passes of batch
    INFER_BATCH_SIZE for `infer_seconds` inside one measured phase: energy and images/s from the same window."""
    model.eval()
    channels_last = fastest_layout(bench, model, precision, device, data)
    batch = inference_batch(data.test, normalizer(bench, device, channels_last), device, INFER_BATCH_SIZE)
    run_inference_for(model, batch, precision, device, min(WARMUP_SECONDS, bench.cfg.infer_seconds))
    with bench.meter.phase(ledger, name, "inference") as phase:
        images = run_inference_for(model, batch, precision, device, bench.cfg.infer_seconds)
    return Inference(images, phase, "channels_last" if channels_last else "contiguous")


@torch.no_grad()
def infer_batch1(bench: Bench, model: nn.Module, precision: Precision, ledger: list[PhaseEnergy], name: str,
                 device: torch.device, data: CifarData, channels_last: bool) -> Batch1Inference:
    """`infer_b1_images` test images one at a time, `infer_b1_repeats` times, in one measured phase after an
    untimed warm-up: energy per query and latency percentiles from the same window (synchronised per query
    on CUDA, so a latency is the query's own)."""
    cfg = bench.cfg
    queries = inference_batch(data.test, normalizer(bench, device, channels_last), device, cfg.infer_b1_images)
    latencies: list[float] = []
    with precision.autocast(device):
        for query in queries[:B1_WARMUP_QUERIES].split(1):
            model(query)
        with bench.meter.phase(ledger, name, "inference") as phase:
            for _ in range(cfg.infer_b1_repeats):
                for query in queries.split(1):
                    stop_if_interrupted()
                    started = time.perf_counter()
                    model(query)
                    synchronize(device)
                    latencies.append((time.perf_counter() - started) * 1000)
    return Batch1Inference(len(latencies), phase, latencies)


def finish(job: VariantJob, record: VariantRecord, precision: Precision, label: str, device: torch.device | None = None,
           data: CifarData | None = None, channels_last: bool | None = None, size_of: nn.Module | None = None) -> VariantRecord:
    """Test evaluation and inference benchmark (skipped in lean trials and in a trial paused at a rung,
    whose model is half-trained), size and example."""
    bench = job.bench
    device = device or bench.device
    data = data or bench.data
    channels_last = bench.cfg.channels_last if channels_last is None else channels_last
    if not job.lean and not job.control.paused:
        normalize = normalizer(bench, device, channels_last)
        with bench.meter.phase(record.ledger.phases, f"{label}/test", "test"):
            record.test = evaluate(record.model, data.test, normalize, precision, device)
        record.inference = infer(bench, record.model, precision, record.ledger.phases, f"{label}/inference", device, data)
        record.tags["infer_layout"] = record.inference.layout
        if bench.cfg.infer_b1_repeats:
            record.batch1 = infer_batch1(bench, record.model, precision, record.ledger.phases, f"{label}/inference-b1", device,
                                         data, record.inference.layout == "channels_last")
    macs, params = count_macs_params(size_of if size_of is not None else record.model)
    record.size = {"params": params, "macs": macs, "model_size_mb": model_size_mb(record.model)}
    record.example = example_input(bench)
    return record


def require_upstream(job: VariantJob, variant: str) -> Upstream:
    if job.upstream is None:
        raise RuntimeError(f"{variant} needs a trained baseline, and this run has none (the baseline variant failed?)")
    return job.upstream
