"""The quantized variant: int8 post-training static quantization of the trained baseline, evaluated on the CPU."""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict

import torch
from torch import nn

from greenstudy.measure.ledger import Ledger
from greenstudy.measure.precision import Precision
from greenstudy.training.data import Normalizer, eval_batches
from greenstudy.training.steps import evaluate
from greenstudy.variants.common import VariantJob, finish, infer, require_upstream
from greenstudy.variants.int8_recipe import choose_recipe
from greenstudy.variants.record import VariantRecord


def run_quantized(job: VariantJob) -> VariantRecord:
    """int8 static quantization of the trained baseline with a recipe chosen on the validation split to stay
    within `int8_max_loss` points of fp32 (see int8_recipe), calibrated on `calib_batches` train batches;
    evaluated and benchmarked on the CPU, next to the fp32 baseline benchmarked the same way on the same CPU."""
    cfg, bench = job.bench.cfg, job.bench
    upstream = require_upstream(job, "quantized")
    label = f"{cfg.model}/quantized"
    cpu = torch.device("cpu")
    normalize = Normalizer(bench.data.mean, bench.data.std, cpu, channels_last=False)
    batches = zip(range(cfg.calib_batches), eval_batches(bench.cpu_data.train, cfg.batch_size), strict=False)
    calibration = [normalize(images) for _, (images, _labels) in batches]

    def val_acc1(model: nn.Module) -> float:
        return evaluate(model, bench.cpu_data.val, normalize, Precision(), cpu)["acc1"]

    ledger = job.ledger
    with bench.meter.phase(ledger, f"{label}/calibrate", "setup"):  # the recipe search is part of what int8 costs
        quantized, recipe = choose_recipe(upstream.model, calibration, val_acc1, cfg.int8_max_loss)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = torch.jit.trace(quantized, calibration[0][:2])  # a loadable, self-contained int8 module
    fp32 = copy.deepcopy(upstream.model).cpu().eval()
    tags = {"precision": "int8", "derived_from": upstream.run_id, "eval_device": "cpu",
            "quantization": f"fx-static-x86 per-channel weights, histogram activations, reduce_range={recipe.reduce_range}, "
                            "torch.jit.trace", "int8_keep_fp32": ",".join(recipe.keep_fp32) or "none"}
    record = VariantRecord(quantized, Ledger(ledger), job.control, upstream, tags=tags)
    record.artifacts["int8_recipe.json"] = {**asdict(recipe), "within_bound": recipe.within_bound}
    record = finish(job, record, Precision(), label, cpu, bench.cpu_data, channels_last=False, size_of=fp32)
    record.extra = {"fp32_val_acc1": recipe.fp32_val_acc1, "int8_val_acc1": recipe.int8_val_acc1,
                    "int8_val_loss_points": recipe.fp32_val_acc1 - recipe.int8_val_acc1,
                    "int8_fp32_blocks": float(len(recipe.keep_fp32))}
    if not job.lean:
        fp32_inference = infer(bench, fp32, Precision(), ledger, f"{label}/fp32-cpu-inference", cpu, bench.cpu_data)
        record.extra.update(fp32_inference.metrics("fp32_cpu_infer"))
        record.extra["int8_speedup"] = record.inference.images / record.inference.phase.seconds / (
            fp32_inference.images / fp32_inference.phase.seconds)
        record.tags["fp32_cpu_infer_layout"] = fp32_inference.layout
    return record
