"""The `tune` entry point's parameters: its parser (training parameters from `greenstudy.runs.params`,
defaults from `RunConfig`) and `StudyConfig`, the validated settings of one study invocation.
Kept free of Optuna and torch, so a bad parameter fails in a fraction of a second."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import socket
import time
from dataclasses import dataclass, field

from greenstudy.cli import one_line_parser
from greenstudy.config import RunConfig, optional_float, parse_bool
from greenstudy.errors import ConfigError
from greenstudy.runs.params import add_training_args

SAMPLERS = ("nsga2", "tpe", "random", "grid")
LR_SCALINGS = ("linear", "sqrt", "tuned")
TRAINING_VARIANTS = ("auto", "baseline", "amp")
OBJECTIVES = ("final", "to_target")
BUDGETS = ("steps", "epochs")
BATCH_SIZES = tuple(2**k for k in range(4, 11))  # 16 ... 1024
TUNED_LR_FACTOR = 10.0


@dataclass
class StudyConfig:
    """Everything one `tune` invocation needs; `run` holds the training params, whose `batch_size`
    and `lr` are the reference point of the lr scaling. `variant="auto"` is resolved on the device
    (`resolved`) before the study is named and opened."""

    run: RunConfig = field(default_factory=RunConfig)
    variant: str = "auto"
    objective: str = "final"
    stop_beta: float = 2.0
    trial_artifacts: bool = False
    n_trials: int = 20
    timeout_s: float | None = None
    study_name: str = ""
    storage: str = "auto"
    sampler: str = "nsga2"
    sampler_seed: int | None = None
    population_size: int = 10
    lr_scaling: str = "linear"
    max_batch_size: int = 1024
    hv_ref_energy_kwh: float | None = None
    budget: str = "steps"
    budget_steps: int = 0
    halving_eta: int = 3
    halving_wait: bool = True

    def __post_init__(self) -> None:
        self._validate()
        if not self.study_name and self.variant != "auto":
            self.study_name = f"{self.run.model}-{self.variant}-{self.run.dataset}"
        if self.variant != "auto":
            self.run = self.run.replace(variants=(self.variant,))

    def _validate(self) -> None:
        if self.variant not in TRAINING_VARIANTS:
            raise ConfigError(
                f"variant {self.variant!r} cannot be tuned: a trial trains from scratch, choose one of "
                f"{', '.join(TRAINING_VARIANTS)}"
            )
        for name, value, allowed in (("sampler", self.sampler, SAMPLERS), ("lr_scaling", self.lr_scaling, LR_SCALINGS),
                                     ("objective", self.objective, OBJECTIVES), ("budget", self.budget, BUDGETS)):
            if value not in allowed:
                raise ConfigError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")
        if self.objective == "to_target" and self.run.target_acc1 is None:
            raise ConfigError("objective=to_target needs target_acc1 (validation top-1 in percent)")
        if self.sampler == "grid" and self.lr_scaling == "tuned":
            raise ConfigError("sampler=grid enumerates batch sizes only: use lr_scaling=linear or sqrt (tuned lr is continuous)")
        if self.n_trials < 1:
            raise ConfigError(f"n_trials must be at least 1, got {self.n_trials}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be positive (or 0 for none), got {self.timeout_s}")
        if not (self.stop_beta >= 0 and math.isfinite(self.stop_beta)):
            raise ConfigError(f"stop_beta must be 0 (off) or positive, got {self.stop_beta}")
        if self.max_batch_size < BATCH_SIZES[0]:
            raise ConfigError(f"max_batch_size must be at least {BATCH_SIZES[0]}, got {self.max_batch_size}")
        if self.population_size < 2:
            raise ConfigError(f"population_size must be at least 2, got {self.population_size}")
        if self.budget_steps < 0 or (self.budget_steps and self.budget != "steps"):
            raise ConfigError(f"budget_steps must be 0 (auto) or positive, and only with budget=steps; got {self.budget_steps}")
        if self.halving_eta == 1 or self.halving_eta < 0:
            raise ConfigError(f"halving_eta must be 0 (off) or at least 2, got {self.halving_eta}")
        if self.hv_ref_energy_kwh is not None and not self.hv_ref_energy_kwh > 0:
            raise ConfigError(f"hv_ref_energy_kwh must be positive (or 0 for auto), got {self.hv_ref_energy_kwh}")

    def resolved(self, variant: str) -> StudyConfig:
        """This config with `variant` (baseline or amp) in place of auto."""
        return dataclasses.replace(self, variant=variant)

    @property
    def batch_choices(self) -> list[int]:
        return batch_size_choices(self.max_batch_size)

    @property
    def tuned_lr_range(self) -> tuple[float, float]:
        return self.run.lr / TUNED_LR_FACTOR, self.run.lr * TUNED_LR_FACTOR

    def settings(self) -> dict[str, object]:
        """What makes two trials comparable; stored in the study and checked on every resume."""
        settings: dict[str, object] = {
            "model": self.run.model, "variant": self.variant, "dataset": self.run.dataset,
            "epochs": self.run.epochs, "train_subset": self.run.train_subset, "val_size": self.run.val_size,
            "resolution": self.run.resolution, "seed": self.run.seed, "lr_scaling": self.lr_scaling,
            "reference_batch_size": self.run.batch_size, "batch_size_choices": self.batch_choices,
            "objective": self.objective, "target_acc1": self.run.target_acc1,
            "stop_at_target": self.run.stop_at_target or self.objective == "to_target",
            "budget": self.budget, "budget_steps": self.budget_steps, "halving_eta": self.halving_eta,
        }
        # what waiting really does here (greenstudy.study.waiting.waiting_enabled); a study made before it has
        # no such key and reads as False (greenstudy.study.storage.LEGACY_SETTINGS)
        settings["halving_wait"] = bool(self.halving_wait and self.halving_eta >= 2 and self.lr_scaling != "tuned")
        if self.lr_scaling == "tuned":
            settings["base_lr_range"] = list(self.tuned_lr_range)
        else:
            settings["base_lr"] = self.run.lr
        return settings


def batch_size_choices(max_batch_size: int) -> list[int]:
    """Powers of two from 16 up to min(1024, max_batch_size)."""
    return [b for b in BATCH_SIZES if b <= max_batch_size]


def scaled_lr(base_lr: float, batch_size: int, reference_batch_size: int, scaling: str) -> float:
    """The lr for `batch_size` given `base_lr` at `reference_batch_size` (see greenstudy.study.tune)."""
    ratio = batch_size / reference_batch_size
    if scaling == "sqrt":
        return base_lr * math.sqrt(ratio)
    return base_lr * ratio  # linear, and tuned (whose base is sampled)


def default_sampler_seed() -> int:
    """A seed that differs between workers and invocations: hash of host name, process id and time."""
    text = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 2**31


STUDY_ARGS = (
    "variant", "objective", "stop_beta", "trial_artifacts", "n_trials", "timeout_s", "study_name", "storage",
    "sampler", "sampler_seed", "population_size", "lr_scaling", "max_batch_size", "hv_ref_energy_kwh",
    "budget", "budget_steps", "halving_eta", "halving_wait",
)


def tune_parser() -> argparse.ArgumentParser:
    """The `tune` entry point's parser: training parameters plus the study's own."""
    parser = one_line_parser(
        "Optuna study of batch size (and lr): max val_acc1 and min training energy, or min energy to a target accuracy."
    )
    add_training_args(parser)
    add = parser.add_argument
    add("--variant", default="auto", help="auto (amp where the hardware runs it natively, else baseline), baseline or amp")
    add("--objective", default="final", help="final: max val_acc1, min train+val energy; to_target: min energy_to_target_kwh")
    add("--stop-beta", type=float, default=2.0, help="stop a trial past stop_beta x the reference energy; 0: off")
    add("--trial-artifacts", type=parse_bool, default=False, help="test eval, inference benchmark and model in every trial")
    add("--n-trials", type=int, default=20, help="new trials this invocation adds to the study")
    add("--timeout-s", type=optional_float, default=None, help="stop starting trials after this many seconds (0: none)")
    add("--study-name", default="", help="default <model>-<variant>-<dataset>")
    add("--storage", default="auto", help="SQLAlchemy URL; auto: sqlite optuna.db next to the MLflow store")
    add("--sampler", default="nsga2", help="nsga2, tpe, random or grid (every batch size once)")
    add("--sampler-seed", type=int, default=-1, help="seed of the sampler; -1: derived from host, pid and time")
    add("--population-size", type=int, default=10, help="NSGA-II generation size")
    add("--lr-scaling", default="linear", help="linear, sqrt or tuned (lr relative to --lr at --batch-size)")
    add("--max-batch-size", type=int, default=1024, help="largest batch size in the search space")
    add("--hv-ref-energy-kwh", type=optional_float, default=None, help="hypervolume reference energy; 0: auto")
    add("--budget", default="steps", help="steps: every trial the same optimizer steps; epochs: the same epochs")
    add("--budget-steps", type=int, default=0, help="optimizer steps per trial; 0: epochs x steps of an epoch at --batch-size")
    add("--halving-eta", type=int, default=3, help="successive halving: keep the best 1/eta at each rung; 0: off")
    add("--halving-wait", type=parse_bool, default=True,
        help="a trial not (yet) among the best at a rung waits with its checkpoint instead of ending (finite space)")
    add("--checkpoint-dir", default="checkpoints", help="where waiting trials keep their checkpoints")
    return parser


def parse_tune(argv: list[str]) -> StudyConfig:
    """argv -> a validated StudyConfig (ConfigError on a bad value)."""
    args = vars(tune_parser().parse_args(argv))
    study_args = {name: args.pop(name) for name in STUDY_ARGS}
    if study_args["sampler_seed"] < 0:
        study_args["sampler_seed"] = None
    return StudyConfig(run=RunConfig(**args), **study_args)
