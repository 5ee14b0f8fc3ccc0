"""Entry point `main`: argument parsing only; the work is greenstudy.runs.main_run.run_main."""

from __future__ import annotations

import sys

from greenstudy.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    def job() -> int:
        from greenstudy.runs.main_run import run_main, summary_lines
        from greenstudy.runs.params import parse_main

        cfg = parse_main(sys.argv[1:] if argv is None else argv)
        outcome = run_main(cfg)
        print("\n".join(summary_lines(outcome)))
        return 1 if outcome.failed else 0

    return run_cli(job, defer_interrupts=True)


if __name__ == "__main__":
    sys.exit(main())
