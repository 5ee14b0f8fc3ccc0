"""What a finished variant hands back, and the one place that turns it into the run's final metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from greenstudy.measure.ledger import Ledger, PhaseEnergy, energy_metrics
from greenstudy.training.control import TrainingControl


@dataclass(frozen=True)
class Upstream:
    """The trained model a derived variant starts from, the run that made it and what that cost."""

    model: nn.Module
    run_id: str
    ledger: Ledger


@dataclass
class Inference:
    """A fixed-time inference benchmark: images processed in one measured phase (same window for
    energy and time)."""

    images: int
    phase: PhaseEnergy
    layout: str = "contiguous"  # the memory layout it was timed in (the model's fastest here)

    def metrics(self, prefix: str = "infer") -> dict[str, float]:
        return {
            f"{prefix}_images_per_second": self.images / self.phase.seconds,
            f"{prefix}_energy_wh_per_1k_images": self.phase.energy_kwh * 1000 * 1000 / self.images,
            f"{prefix}_seconds": self.phase.seconds,
        }


@dataclass
class Batch1Inference:
    """Inference the way the AI Energy Score measures it: one image per query, `images` queries in one
    measured phase (warm-up excluded), each query's latency timed inside the same window."""

    images: int
    phase: PhaseEnergy
    latencies_ms: list[float]

    def metrics(self) -> dict[str, float]:
        latencies = torch.tensor(self.latencies_ms, dtype=torch.float64)
        return {
            "infer_b1_wh_per_1k": self.phase.energy_kwh * 1000 * 1000 / self.images,
            "infer_b1_seconds": self.phase.seconds,
            "latency_p50_ms": float(latencies.quantile(0.5)),
            "latency_p95_ms": float(latencies.quantile(0.95)),
        }


@dataclass
class VariantRecord:
    """A finished variant: its model and everything measured about it."""

    model: nn.Module
    ledger: Ledger
    control: TrainingControl
    upstream: Upstream | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    test: dict[str, float] | None = None
    inference: Inference | None = None
    batch1: Batch1Inference | None = None
    size: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    example: torch.Tensor | None = None
    artifacts: dict[str, object] = field(default_factory=dict)  # file name -> JSON-able content


def record_metrics(record: VariantRecord) -> dict[str, float]:
    """Every final metric of a variant run: energy from the ledger, accuracy, inference, size."""
    metrics = energy_metrics(record.ledger, record.upstream.ledger if record.upstream else None)
    if record.test is not None:
        metrics.update({f"test_{name}": value for name, value in record.test.items()})
    if record.inference is not None:
        metrics.update(record.inference.metrics())
    if record.batch1 is not None:
        metrics.update(record.batch1.metrics())
    metrics.update(record.size)
    if record.history:  # only runs that train can reach a validation target
        metrics.update(record.control.target_metrics())
    metrics.update(record.extra)
    if record.history:
        metrics["epochs_run"] = float(len(record.history))
    return metrics
