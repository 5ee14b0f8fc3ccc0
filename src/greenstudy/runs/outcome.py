"""What a `main` run hands back (per child and as a whole) and the parameters every child logs: shared by
the run and by resume, which reads earlier sittings back into these shapes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from greenstudy.config import RunConfig
from greenstudy.training.control import TrainingControl
from greenstudy.variants.record import VariantRecord

TABLE_COLUMNS = (
    "test_acc1", "energy_kwh", "lifecycle_energy_kwh", "emissions_kg", "infer_images_per_second",
    "infer_energy_wh_per_1k_images", "params", "macs", "model_size_mb",
)


@dataclass
class ChildOutcome:
    variant: str
    run_id: str
    status: str  # FINISHED, FAILED, KILLED or SKIPPED (an MLflow KILLED run tagged `skipped`)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    last_epoch: dict[str, float] = field(default_factory=dict)
    control: TrainingControl = field(default_factory=TrainingControl)
    record: VariantRecord | None = None


@dataclass
class MainOutcome:
    experiment: str
    parent_run_id: str
    children: list[ChildOutcome]
    energy_method: str = ""

    @property
    def failed(self) -> list[ChildOutcome]:
        return [child for child in self.children if child.status not in ("FINISHED", "SKIPPED")]


def contract_params(cfg: RunConfig, variant: str, device: torch.device) -> dict[str, object]:
    params = {
        "model": cfg.model, "variant": variant, "dataset": cfg.dataset, "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
        "label_smoothing": cfg.label_smoothing, "seed": cfg.seed, "device": device.type,
        "train_subset": cfg.train_subset, "country_iso_code": cfg.country_iso_code,
        "val_size": cfg.val_size, "test_subset": cfg.test_subset, "resolution": cfg.resolution,
        "channels_last": cfg.channels_last, "compile": cfg.compile, "amp_dtype": cfg.amp_dtype,
        "cpu_power_w": cfg.cpu_power_w, "ram_power_w": cfg.ram_power_w, "infer_seconds": cfg.infer_seconds,
        "infer_b1_images": cfg.infer_b1_images, "infer_b1_repeats": cfg.infer_b1_repeats,
        "target_acc1": cfg.target_acc1, "stop_at_target": cfg.stop_at_target,
        "carbon_intensity_csv": cfg.carbon_intensity_csv, "start_below_gco2": cfg.start_below_gco2,
    }
    if variant == "pruned":
        params.update(prune_ratio=cfg.prune_ratio, prune_importance=cfg.prune_importance,
                      finetune_epochs=cfg.effective_finetune_epochs)
    if variant == "quantized":
        params.update(calib_batches=cfg.calib_batches, int8_max_loss=cfg.int8_max_loss)
    return params
