"""Entry point `tune`: argument parsing only; the work is greenstudy.study.run_study."""

from __future__ import annotations

import sys

from greenstudy.cli import one_line_parser, run_cli
from greenstudy.config import RunConfig, optional_float
from greenstudy.params import add_training_args


def parse(argv: list[str]):  # -> greenstudy.study.StudyConfig (imported lazily: optuna is slow to import)
    parser = one_line_parser(
        "Multi-objective Optuna study of batch size (and lr): maximise val_acc1, minimise training energy."
    )
    add_training_args(parser)
    add = parser.add_argument
    add("--variant", default="amp", help="training variant each trial runs: baseline or amp")
    add("--n-trials", type=int, default=20, help="new trials this invocation adds to the study")
    add("--timeout-s", type=optional_float, default=None, help="stop starting trials after this many seconds (0: none)")
    add("--study-name", default="", help="default <model>-<variant>-<dataset>")
    add("--storage", default="auto", help="SQLAlchemy URL; auto: sqlite optuna.db next to the MLflow store")
    add("--sampler", default="nsga2", help="nsga2, tpe or random")
    add("--sampler-seed", type=int, default=-1, help="seed of the sampler; -1: the training seed")
    add("--population-size", type=int, default=10, help="NSGA-II generation size")
    add("--lr-scaling", default="linear", help="linear, sqrt or tuned (lr relative to --lr at --batch-size)")
    add("--max-batch-size", type=int, default=1024, help="largest batch size in the search space")
    add("--hv-ref-energy-kwh", type=optional_float, default=None, help="hypervolume reference energy; 0: auto")
    args = vars(parser.parse_args(argv))
    study_args = {name: args.pop(name) for name in (
        "variant", "n_trials", "timeout_s", "study_name", "storage", "sampler", "sampler_seed",
        "population_size", "lr_scaling", "max_batch_size", "hv_ref_energy_kwh",
    )}
    if study_args["sampler_seed"] < 0:
        study_args["sampler_seed"] = None
    from greenstudy.study import StudyConfig

    return StudyConfig(run=RunConfig(**args), **study_args)


def main(argv: list[str] | None = None) -> int:
    def job() -> int:
        config = parse(sys.argv[1:] if argv is None else argv)
        from greenstudy.study import run_study

        outcome = run_study(config)
        print("\n".join(outcome.summary))
        return 0

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
