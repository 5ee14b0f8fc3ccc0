"""Entry point `main`: argument parsing only; the work is greenstudy.run.run_main."""

from __future__ import annotations

import argparse
import sys

from greenstudy.cli import one_line_parser, run_cli
from greenstudy.config import RunConfig, optional_float, parse_bool, parse_variants


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """The parameters of a training run (shared with the `tune` entry point)."""
    defaults = RunConfig.__dataclass_fields__
    add = parser.add_argument
    add("--model", default=defaults["model"].default)
    add("--dataset", default=defaults["dataset"].default)
    add("--data-dir", default=defaults["data_dir"].default)
    add("--download", type=parse_bool, default=True)
    add("--epochs", type=int, default=defaults["epochs"].default)
    add("--batch-size", type=int, default=defaults["batch_size"].default)
    add("--lr", type=float, default=defaults["lr"].default)
    add("--weight-decay", type=float, default=defaults["weight_decay"].default)
    add("--label-smoothing", type=float, default=defaults["label_smoothing"].default)
    add("--seed", type=int, default=0)
    add("--device", default="auto")
    add("--train-subset", type=int, default=0)
    add("--val-size", type=int, default=defaults["val_size"].default)
    add("--test-subset", type=int, default=0)
    add("--resolution", type=int, default=32)
    add("--country-iso-code", default="USA")
    add("--cpu-power-w", type=optional_float, default=None)
    add("--ram-power-w", type=optional_float, default=None)
    add("--measure-power-secs", type=float, default=defaults["measure_power_secs"].default)
    add("--channels-last", type=parse_bool, default=True)
    add("--compile", default="auto")
    add("--infer-batches", type=int, default=defaults["infer_batches"].default)
    add("--experiment", default="")


def parse(argv: list[str]) -> RunConfig:
    parser = one_line_parser("Train, measure and log every variant of one model.")
    add_training_args(parser)
    parser.add_argument("--variants", default="baseline,amp,pruned,quantized")
    parser.add_argument("--prune-ratio", type=float, default=0.5)
    parser.add_argument("--prune-importance", default="l2")
    parser.add_argument("--finetune-epochs", type=int, default=-1)
    parser.add_argument("--calib-batches", type=int, default=32)
    args = vars(parser.parse_args(argv))
    args["variants"] = parse_variants(args["variants"])
    return RunConfig(**args)


def main(argv: list[str] | None = None) -> int:
    def job() -> int:
        from greenstudy.run import run_main, summary_lines

        cfg = parse(sys.argv[1:] if argv is None else argv)
        outcome = run_main(cfg)
        print("\n".join(summary_lines(outcome)))
        return 1 if outcome.failed else 0

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
