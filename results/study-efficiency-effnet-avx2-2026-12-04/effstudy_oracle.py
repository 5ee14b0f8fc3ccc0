"""Issue 20: what any search that finishes some of the grid's configurations could reach (stop 31).

For every set of one or two finished grid trials: its hypervolume fraction (same reference as
benchmarks/study_efficiency.py: val_acc1 0 %, 2 x the grid's largest trial energy) and the least energy
fraction of a multi-fidelity search that finishes them (every other configuration's first epoch, from the
grid's own per-epoch energy, plus the finished trials' whole runs).

    .venv/bin/python results/study-efficiency-effnet-avx2-2026-12-04/effstudy_oracle.py <study_efficiency --out folder>
"""

from __future__ import annotations

import itertools
import sys

import optuna

from greenstudy.study.front import front_trials, hypervolume, study_energy_kwh


def main(folder: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = [t for t in optuna.load_study(study_name="grid", storage=f"sqlite:///{folder}/optuna.db").get_trials() if t.values]
    reference = (0.0, 2.0 * max(t.values[1] for t in grid))
    hv_grid = hypervolume(front_trials(grid, "final"), "final", reference)
    energy_grid = study_energy_kwh(grid)
    first_epoch = {t.number: t.values[1] / t.user_attrs.get("epochs", 9) for t in grid}
    print(f"grid: hypervolume {hv_grid:.6g}, energy {energy_grid * 1000:.3f} Wh; reference {reference[1] * 1000:.3f} Wh")
    for t in sorted(grid, key=lambda t: t.params["batch_size"]):
        print(f"  batch {t.params['batch_size']:>3}: val_acc1 {t.values[0]:.2f} %, objective energy {t.values[1] * 1000:.3f} Wh")
    for size in (1, 2):
        for finished in itertools.combinations(grid, size):
            hv = hypervolume(front_trials(list(finished), "final"), "final", reference)
            rungs = sum(first_epoch[t.number] for t in grid if t not in finished)
            energy = (sum(t.values[1] for t in finished) + rungs) / energy_grid
            names = "+".join(str(t.params["batch_size"]) for t in finished)
            print(f"  finish {names:>8}: hypervolume fraction {hv / hv_grid:.3f}, energy fraction >= {energy:.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
