"""Command-line parameters of the entry points, with their defaults taken from `RunConfig` (the one
definition of each default; `MLproject` is checked against it by a test)."""

from __future__ import annotations

import argparse

from greenstudy.cli import one_line_parser
from greenstudy.config import RunConfig, optional_float, parse_bool, parse_variants

_DEFAULTS = RunConfig.__dataclass_fields__


def default(name: str) -> object:
    """The RunConfig default of `name`."""
    value = _DEFAULTS[name].default
    return ",".join(value) if name == "variants" else value


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """The parameters of a training run (shared by the `main` and `tune` entry points)."""
    add = parser.add_argument
    for name in ("model", "dataset", "data_dir", "device", "country_iso_code", "compile", "experiment", "amp_dtype",
                 "carbon_intensity_csv"):
        add(f"--{name.replace('_', '-')}", default=default(name))
    for name in ("epochs", "batch_size", "seed", "train_subset", "val_size", "test_subset", "resolution", "devices"):
        add(f"--{name.replace('_', '-')}", type=int, default=default(name))
    for name in ("lr", "weight_decay", "label_smoothing", "infer_seconds"):
        add(f"--{name.replace('_', '-')}", type=float, default=default(name))
    for name in ("download", "channels_last", "stop_at_target", "sync_bn"):
        add(f"--{name.replace('_', '-')}", type=parse_bool, default=default(name))
    for name in ("cpu_power_w", "ram_power_w", "target_acc1", "start_below_gco2"):
        add(f"--{name.replace('_', '-')}", type=optional_float, default=default(name))


def main_parser() -> argparse.ArgumentParser:
    """The `main` entry point's parser."""
    parser = one_line_parser("Train, measure and log every variant of one model.")
    add_training_args(parser)
    add = parser.add_argument
    add("--variants", default=default("variants"))
    add("--prune-ratio", type=float, default=default("prune_ratio"))
    add("--prune-importance", default=default("prune_importance"))
    add("--finetune-epochs", type=int, default=default("finetune_epochs"))
    add("--calib-batches", type=int, default=default("calib_batches"))
    add("--int8-max-loss", type=float, default=default("int8_max_loss"))
    add("--infer-b1-images", type=int, default=default("infer_b1_images"))
    add("--infer-b1-repeats", type=int, default=default("infer_b1_repeats"))
    add("--from-run", default=default("from_run"), help="run id of a finished baseline child to derive pruned/quantized from")
    add("--resume", default=default("resume"), help="parent run id of an interrupted `main` run to continue")
    add("--checkpoint-dir", default=default("checkpoint_dir"))
    return parser


def parse_main(argv: list[str]) -> RunConfig:
    args = vars(main_parser().parse_args(argv))
    args["variants"] = parse_variants(args["variants"])
    return RunConfig(**args)
