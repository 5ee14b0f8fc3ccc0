"""The pruned variant: structured channel pruning of the trained baseline (torch-pruning), then fine-tuning."""

from __future__ import annotations

import copy

import torch
from torch import nn

from greenstudy.measure.ledger import Ledger
from greenstudy.measure.precision import Precision
from greenstudy.training.fitting import fit
from greenstudy.training.models import classifier_layer, count_macs_params
from greenstudy.variants.common import VariantJob, finish, require_upstream
from greenstudy.variants.record import VariantRecord


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


def run_pruned(job: VariantJob) -> VariantRecord:
    """Prune the trained baseline's channels, then fine-tune for `finetune_epochs` at half the lr."""
    cfg, bench = job.bench.cfg, job.bench
    upstream = require_upstream(job, "pruned")
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
    fit_tags: dict[str, str] = {}
    if epochs:
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        fitted = fit(cfg, bench.data, bench.meter, model, Precision(), epochs, cfg.lr * 0.5, label, ledger, job.control,
                     job.checkpointer, job.resume)
        history, fit_tags = fitted.history, fitted.tags
    tags = {"precision": "fp32", "derived_from": upstream.run_id, "finetune_epochs": str(epochs), **fit_tags}
    record = VariantRecord(model, Ledger(ledger), job.control, upstream, history, tags=tags)
    record = finish(job, record, Precision(), label)
    record.extra = {"macs_before": macs_before, "params_before": params_before,
                    "macs_reduction": 1 - record.size["macs"] / macs_before}
    return record
