"""Entry point `main`: argument parsing only; the work is greenstudy.runs.main_run.run_main. With
`devices` > 1 the command starts the same entry under torchrun (greenstudy.training.launch): rank 0 runs
`run_main`, the other ranks follow its training orders (greenstudy.training.follower)."""

from __future__ import annotations

import sys

from greenstudy.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def job() -> int:
        from greenstudy.runs.params import parse_main
        from greenstudy.training import launch

        cfg = parse_main(argv)
        if launch.wanted(cfg):  # the command that starts torchrun needs no MLflow
            return launch.relaunch(__file__, argv, cfg)
        from greenstudy.runs.main_run import run_main, summary_lines
        from greenstudy.training.follower import follow

        with launch.job_ranks(cfg) as ranks:
            if ranks is not None and not ranks.leader:
                return follow(cfg)
            outcome = run_main(cfg)
        print("\n".join(summary_lines(outcome)))
        return 1 if outcome.failed else 0

    from greenstudy.training.launch import report_exit

    return report_exit(run_cli(job, defer_interrupts=True))


if __name__ == "__main__":
    sys.exit(main())
