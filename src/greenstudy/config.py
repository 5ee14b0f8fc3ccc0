"""The run configuration: every parameter of the `main` entry point, typed and validated."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from greenstudy.errors import ConfigError

MODELS = ("resnet18", "efficientnet_b0")
DATASETS = ("cifar100", "cifar10")
DEVICES = ("auto", "cpu", "cuda")
VARIANTS = ("baseline", "amp", "pruned", "quantized")
AMP_DTYPES = ("auto", "bf16", "fp16")
DEFAULT_DATA_DIR = "data"


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")
    return value


def parse_variants(text: str) -> tuple[str, ...]:
    """Parse a comma-separated variant list, keeping order and rejecting unknown names."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise ConfigError(f"variants is empty: give any of {', '.join(VARIANTS)}")
    for name in names:
        _choice("variant", name, VARIANTS)
    if len(set(names)) != len(names):
        raise ConfigError(f"variants lists a name twice: {text!r}")
    return names


def parse_bool(text: str | bool) -> bool:
    """Parse true/false the way MLflow params arrive (strings)."""
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"expected true or false, got {text!r}")


def optional_float(text: str | float | None) -> float | None:
    """An empty string, 'none' or 0 mean 'not set'."""
    if text is None or str(text).strip().lower() in ("", "none", "null", "0", "0.0"):
        return None
    return float(text)


@dataclass
class RunConfig:
    """Everything one `main` run needs; defaults are the MLproject defaults."""

    model: str = "resnet18"
    dataset: str = "cifar100"
    data_dir: str = DEFAULT_DATA_DIR
    download: bool = True
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    device: str = "auto"
    train_subset: int = 0
    val_size: int = 5000
    test_subset: int = 0
    resolution: int = 32
    country_iso_code: str = "USA"
    cpu_power_w: float | None = None
    ram_power_w: float | None = None
    carbon_intensity_csv: str = ""
    start_below_gco2: float | None = None
    variants: tuple[str, ...] = VARIANTS
    prune_ratio: float = 0.5
    prune_importance: str = "l2"
    finetune_epochs: int = -1
    calib_batches: int = 32
    int8_max_loss: float = 1.0  # validation top-1 points int8 may lose against its fp32 model
    from_run: str = ""  # a finished baseline child run to derive pruned/quantized from, instead of training one
    infer_seconds: float = 10.0
    infer_b1_images: int = 1000  # batch-1 inference (AI Energy Score style): queries per repeat
    infer_b1_repeats: int = 10  # 0 = no batch-1 inference
    amp_dtype: str = "auto"
    target_acc1: float | None = None
    stop_at_target: bool = False
    resume: str = ""
    checkpoint_dir: str = "checkpoints"
    channels_last: bool = True
    compile: str = "auto"
    devices: int = 1
    sync_bn: bool = False
    experiment: str = ""
    extra_tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError with one clear line for the first bad value."""
        _choice("model", self.model, MODELS)
        _choice("dataset", self.dataset, DATASETS)
        _choice("device", self.device, DEVICES)
        _choice("prune_importance", self.prune_importance, ("l1", "l2", "random"))
        _choice("compile", self.compile, ("auto", "true", "false"))
        positive = {
            "batch_size": self.batch_size,
            "resolution": self.resolution,
            "calib_batches": self.calib_batches,
            "infer_b1_images": self.infer_b1_images,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        non_negative = {
            "train_subset": self.train_subset,
            "val_size": self.val_size,
            "test_subset": self.test_subset,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{name} must be 0 or more, got {value}")
        if self.devices < 1:
            raise ConfigError(f"devices must be at least 1, got {self.devices}")
        if self.sync_bn and self.devices < 2:
            raise ConfigError("sync_bn=true needs devices of 2 or more (it synchronises batch norm across devices)")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.resolution < 32:
            raise ConfigError(f"resolution must be 32 or more, got {self.resolution}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be 0 or more, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.infer_b1_repeats < 0:
            raise ConfigError(f"infer_b1_repeats must be 0 or more, got {self.infer_b1_repeats}")
        if self.int8_max_loss < 0:
            raise ConfigError(f"int8_max_loss must be 0 or more, got {self.int8_max_loss}")
        if self.from_run and (self.resume or not set(self.variants) <= {"pruned", "quantized"}):
            raise ConfigError("from_run builds pruned and/or quantized from an existing baseline: pass variants=pruned,quantized "
                              "(or one of them), without resume")
        if not 0 < self.prune_ratio < 1:
            raise ConfigError(f"prune_ratio must be in (0, 1), got {self.prune_ratio}")
        _choice("amp_dtype", self.amp_dtype, AMP_DTYPES)
        if not self.infer_seconds > 0:
            raise ConfigError(f"infer_seconds must be positive, got {self.infer_seconds}")
        if self.target_acc1 is not None and not 0 < self.target_acc1 <= 100:
            raise ConfigError(f"target_acc1 is a validation top-1 in percent, in (0, 100], got {self.target_acc1}")
        if self.stop_at_target and self.target_acc1 is None:
            raise ConfigError("stop_at_target=true needs target_acc1")
        for name in ("cpu_power_w", "ram_power_w"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.start_below_gco2 is not None and not self.start_below_gco2 > 0:
            raise ConfigError(f"start_below_gco2 must be positive (gCO2eq/kWh), got {self.start_below_gco2}")
        if self.start_below_gco2 is not None and not self.carbon_intensity_csv:
            raise ConfigError("start_below_gco2 needs carbon_intensity_csv (a series with the forecast hours)")
        code = self.country_iso_code
        if len(code) != 3 or not code.isalpha() or not code.isupper():
            raise ConfigError(f"country_iso_code must be 3 capital letters (ISO 3166-1 alpha-3), got {code!r}")

    @property
    def effective_finetune_epochs(self) -> int:
        """Fine-tuning epochs of the pruned variant: a quarter of `epochs` unless set."""
        if self.finetune_epochs >= 0:
            return self.finetune_epochs
        return max(1, self.epochs // 4)

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"greenstudy-{self.dataset}"

    def resolved_data_dir(self) -> str:
        """`data_dir`, unless it is the default and GREENSTUDY_DATA names another folder."""
        if self.data_dir == DEFAULT_DATA_DIR and os.environ.get("GREENSTUDY_DATA"):
            return os.environ["GREENSTUDY_DATA"]
        return self.data_dir

    def replace(self, **changes: object) -> RunConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["variants"] = ",".join(self.variants)
        return data
