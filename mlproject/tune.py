"""Entry point `tune`: parse the parameters and run the study (greenstudy.study.params, greenstudy.study.tune).
With `devices` > 1 the command starts the same entry under torchrun (greenstudy.training.launch): rank 0
runs the study, the other ranks train each trial with it (greenstudy.training.follower)."""

from __future__ import annotations

import sys

from greenstudy.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def job() -> int:
        from greenstudy.study.params import parse_tune
        from greenstudy.training import launch

        config = parse_tune(argv)
        if launch.wanted(config.run):
            return launch.relaunch(__file__, argv, config.run)
        from greenstudy.study.tune import run_study
        from greenstudy.training.follower import follow

        with launch.job_ranks(config.run) as ranks:
            if ranks is not None and not ranks.leader:
                return follow(config.run)
            outcome = run_study(config)
        print("\n".join(outcome.summary))
        return 0

    from greenstudy.training.launch import report_exit

    return report_exit(run_cli(job, defer_interrupts=True))


if __name__ == "__main__":
    sys.exit(main())
