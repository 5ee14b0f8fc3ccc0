"""Entry point `tune`: parse the parameters and run the study (greenstudy.study.params, greenstudy.study.tune)."""

from __future__ import annotations

import sys

from greenstudy.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    def job() -> int:
        from greenstudy.study.params import parse_tune

        config = parse_tune(sys.argv[1:] if argv is None else argv)
        from greenstudy.study.tune import run_study

        outcome = run_study(config)
        print("\n".join(outcome.summary))
        return 0

    return run_cli(job, defer_interrupts=True)


if __name__ == "__main__":
    sys.exit(main())
