"""The quantized variant: int8 post-training static quantization of the trained baseline, evaluated on the CPU."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from greenstudy.interrupts import stop_if_interrupted
from greenstudy.measure.ledger import Ledger
from greenstudy.measure.precision import Precision
from greenstudy.training.data import Normalizer, eval_batches
from greenstudy.variants.common import VariantJob, finish, infer, require_upstream
from greenstudy.variants.record import VariantRecord


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
    upstream = require_upstream(job, "quantized")
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
