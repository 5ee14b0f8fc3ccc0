"""Entry point `report`: argument parsing only; the work is greenstudy.report.build_report."""

from __future__ import annotations

import sys

from greenstudy.cli import one_line_parser, run_cli


def main(argv: list[str] | None = None) -> int:
    def job() -> int:
        from greenstudy.config import parse_bool
        from greenstudy.report import AGGREGATES, DEFAULT_EXPERIMENT, build_report, summary_lines

        parser = one_line_parser("Compare the variant runs of the `main` entry point: table, plots, report.html.")
        parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                            help="experiment to read; empty = where the runs are (the launching run's experiment "
                                 "under `mlflow run`, else every experiment holding greenstudy runs)")
        parser.add_argument("--parent-run-ids", default="none", help="comma-separated parent run ids (default: all)")
        parser.add_argument("--filter", default="", help="MLflow search filter, e.g. \"tags.model = 'resnet18'\"")
        parser.add_argument("--aggregate", default="latest", choices=AGGREGATES,
                            help="one table row per (model, variant, config): the latest run or the mean over runs")
        parser.add_argument("--include-trials", type=parse_bool, default=False, help="also compare Optuna trials (kind=trial)")
        parser.add_argument("--register", type=parse_bool, default=False,
                            help="register each model's front in the Model Registry, with aliases")
        parser.add_argument("--within-points", type=float, default=1.0,
                            help="accuracy points for the accurate-within-<N>pt alias")
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        result = build_report(args.experiment, args.parent_run_ids, args.filter, args.aggregate,
                              args.include_trials, args.register, args.within_points)
        print("\n".join(summary_lines(result, args.aggregate)))
        return 0

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
