"""One `main` run: a parent MLflow run for the model, one nested child run per variant."""

from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import torch

from greenstudy.config import RunConfig
from greenstudy.data import CifarData, load_cifar
from greenstudy.energy import EnergyMeter
from greenstudy.tracking import (
    ensure_tracking_reachable,
    log_final,
    log_torch_model,
    run_scope,
)
from greenstudy.train import resolve_device, seed_everything, set_cpu_threads
from greenstudy.variants import VARIANT_RUNNERS, Bench, execution_order

TABLE_COLUMNS = (
    "test_acc1", "energy_kwh", "emissions_kg", "infer_images_per_second", "infer_energy_wh_per_1k_images",
    "params", "macs", "model_size_mb",
)


@dataclass
class ChildOutcome:
    variant: str
    run_id: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    last_epoch: dict[str, float] = field(default_factory=dict)


@dataclass
class MainOutcome:
    experiment: str
    parent_run_id: str
    children: list[ChildOutcome]

    @property
    def failed(self) -> list[ChildOutcome]:
        return [child for child in self.children if child.status != "FINISHED"]


def prepare(cfg: RunConfig) -> tuple[torch.device, CifarData]:
    """Everything that can fail on bad input, done before any run starts."""
    ensure_tracking_reachable()
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        set_cpu_threads()
    seed_everything(cfg.seed)
    data = load_cifar(cfg.dataset, cfg.resolved_data_dir(), cfg.download, cfg.val_size, cfg.train_subset, cfg.test_subset, cfg.seed)
    return device, data


def base_tags(cfg: RunConfig, data: CifarData, device: torch.device, meter: EnergyMeter) -> dict[str, str]:
    """Tags every run of this invocation carries."""
    tags = {
        "model": cfg.model,
        "dataset": cfg.dataset,
        "data_source": data.source,
        "device": device.type,
        "energy_method": meter.energy_method(),
        "codecarbon_version": meter.codecarbon_version,
        "torch_version": torch.__version__,
        **meter.hardware(),
        **cfg.extra_tags,
    }
    if device.type == "cuda":
        tags["gpu_model"] = torch.cuda.get_device_name(device)
    return tags


def contract_params(cfg: RunConfig, variant: str, device: torch.device) -> dict[str, object]:
    return {
        "model": cfg.model, "variant": variant, "dataset": cfg.dataset, "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
        "label_smoothing": cfg.label_smoothing, "seed": cfg.seed, "device": device.type,
        "train_subset": cfg.train_subset, "country_iso_code": cfg.country_iso_code,
        "val_size": cfg.val_size, "test_subset": cfg.test_subset, "resolution": cfg.resolution,
        "channels_last": cfg.channels_last, "compile": cfg.compile,
        "cpu_power_w": cfg.cpu_power_w, "ram_power_w": cfg.ram_power_w,
    }


def run_variant(bench: Bench, variant: str, tags: dict[str, str]) -> ChildOutcome:
    """One variant as a nested child run; a failure marks the child FAILED and is returned, not raised
    (Ctrl-C is re-raised after the child is marked KILLED)."""
    cfg = bench.cfg
    child_tags = {**tags, "variant": variant}
    bench.last_epoch = {}
    first_phase = len(bench.meter.phases)
    run_id = ""
    try:
        with run_scope(f"{cfg.model}-{variant}", cfg.experiment_name, nested=True, tags=child_tags) as run:
            run_id = run.info.run_id
            mlflow.log_params(contract_params(cfg, variant, bench.device))
            if variant == "pruned":
                mlflow.log_params({"prune_ratio": cfg.prune_ratio, "prune_importance": cfg.prune_importance,
                                   "finetune_epochs": cfg.effective_finetune_epochs})
            if variant == "quantized":
                mlflow.log_param("calib_batches", cfg.calib_batches)
            result = VARIANT_RUNNERS[variant](bench)
            if variant == "baseline":
                bench.baseline_run_id = run_id
            log_final(result.metrics)
            mlflow.set_tags(result.tags)
            mlflow.log_dict(cfg.as_dict(), "config.json")
            with tempfile.TemporaryDirectory() as tmp:
                mlflow.log_artifact(str(bench.meter.write_csv(Path(tmp) / "codecarbon_phases.csv", since=first_phase)))
            log_torch_model(result.model, result.example)
            return ChildOutcome(variant, run_id, "FINISHED", result.metrics, last_epoch=dict(bench.last_epoch))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one variant failing must not stop the others
        # the child's own id (mlflow.last_active_run() would name the still-active parent)
        return ChildOutcome(variant, run_id, "FAILED", error=f"{type(exc).__name__}: {exc}")


def write_variants_table(children: list[ChildOutcome], path: Path) -> Path:
    """One row per child: the headline columns plus status and run id."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("variant", "status", "run_id", *TABLE_COLUMNS))
        for child in children:
            writer.writerow((child.variant, child.status, child.run_id, *(child.metrics.get(c, "") for c in TABLE_COLUMNS)))
    return path


def run_main(cfg: RunConfig) -> MainOutcome:
    """Train, measure and log every requested variant of one model."""
    device, data = prepare(cfg)
    cpu_data = data
    data = data.to(device)
    meter = EnergyMeter(cfg.country_iso_code, cfg.cpu_power_w, cfg.ram_power_w, cfg.measure_power_secs)
    tags = base_tags(cfg, data, device, meter)
    bench = Bench(cfg, data, cpu_data, device, meter)
    children: list[ChildOutcome] = []
    with run_scope(cfg.model, cfg.experiment_name, tags={**tags, "kind": "parent"}) as parent:
        existing = mlflow.get_run(parent.info.run_id).data.params
        wanted = {"model": cfg.model, "variants": ",".join(cfg.variants), "dataset": cfg.dataset}
        mlflow.log_params({k: v for k, v in wanted.items() if k not in existing})
        try:
            for variant in execution_order(cfg.variants):
                child = run_variant(bench, variant, tags)
                children.append(child)
                if child.status != "FINISHED":
                    print(f"variant {variant} FAILED: {child.error}")
        finally:
            _log_parent_summary(children)
            meter.stop()
        if children and all(child.status != "FINISHED" for child in children):
            raise RuntimeError("every variant failed: " + "; ".join(f"{c.variant}: {c.error}" for c in children))
    return MainOutcome(cfg.experiment_name, parent.info.run_id, children)


def _log_parent_summary(children: list[ChildOutcome]) -> None:
    if not children:
        return
    finished = [child for child in children if child.status == "FINISHED"]
    mlflow.log_metrics({
        "energy_kwh": sum(c.metrics.get("energy_kwh", 0.0) for c in finished),
        "emissions_kg": sum(c.metrics.get("emissions_kg", 0.0) for c in finished),
        "variants_finished": len(finished),
        "variants_failed": len(children) - len(finished),
    })
    failed = [child.variant for child in children if child.status != "FINISHED"]
    if failed:
        mlflow.set_tag("failed_variants", ",".join(failed))
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(write_variants_table(children, Path(tmp) / "variants.csv")))


def summary_lines(outcome: MainOutcome) -> list[str]:
    """What a person reads at the end of a run."""
    uri = mlflow.get_tracking_uri()
    lines = [f"experiment: {outcome.experiment}", f"parent run id: {outcome.parent_run_id}"]
    for child in outcome.children:
        m = child.metrics
        if child.status == "FINISHED":
            lines.append(
                f"  {child.variant:<10} run {child.run_id}  test_acc1={m['test_acc1']:.2f}%  "
                f"energy={m['energy_kwh'] * 1000:.3f} Wh  emissions={m['emissions_kg'] * 1000:.3f} g CO2eq  "
                f"infer={m['infer_images_per_second']:.0f} img/s  size={m['model_size_mb']:.1f} MB"
            )
        else:
            lines.append(f"  {child.variant:<10} run {child.run_id}  FAILED: {child.error}")
    lines.append(f"browse: mlflow ui --backend-store-uri {uri}")
    return lines
