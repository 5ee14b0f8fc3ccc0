"""Entry point `report`: argument parsing only; the work is greenstudy.report.build_report."""

from __future__ import annotations

import sys

from greenstudy.cli import one_line_parser, run_cli


def main(argv: list[str] | None = None) -> int:
    def job() -> int:
        from greenstudy.report import AGGREGATES, DEFAULT_EXPERIMENT, build_report, summary_lines

        parser = one_line_parser("Compare every variant run of an experiment: table, plots, report.html.")
        parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
        parser.add_argument("--parent-run-ids", default="none", help="comma-separated parent run ids (default: all)")
        parser.add_argument("--filter", default="", help="MLflow search filter, e.g. \"tags.model = 'resnet18'\"")
        parser.add_argument("--aggregate", default="latest", choices=AGGREGATES,
                            help="one table row per (model, variant): the latest run or the mean over runs")
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        result = build_report(args.experiment, args.parent_run_ids, args.filter, args.aggregate)
        print("\n".join(summary_lines(result, args.aggregate)))
        return 0

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
