"""Entry point `report`: argument parsing only; the work is greenstudy.report.entry.build_report."""

from __future__ import annotations

import sys

from greenstudy.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    def job() -> int:
        from greenstudy.report.entry import build_report, report_parser, summary_lines

        args = report_parser().parse_args(sys.argv[1:] if argv is None else argv)
        result = build_report(args.experiment, args.parent_run_ids, args.filter, args.aggregate,
                              args.include_trials, args.register, args.within_points, args.regions,
                              args.carbon_intensity_csv)
        print("\n".join(summary_lines(result, args.aggregate)))
        return 0

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
