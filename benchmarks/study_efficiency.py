"""Does the multi-fidelity study find the full grid's front for less energy? (issues 10 and 20)

On real CIFAR-100 (a subset), run every batch size once to its full budget (sampler=grid, stop_beta=0,
halving_eta=0: the full grid), then, back to back on the same machine and settings, a multi-fidelity
study: successive halving (halving_eta, default 3: rungs at 1/9 and 1/3 of a 9-epoch budget), by default
with waiting (a trial not yet among the best at a rung pauses with its checkpoint and is continued once it
is: greenstudy.study.waiting; --halving-wait false for plain asynchronous halving), with the energy-aware
early stop (stop_beta=2), every batch size started once. Both use the same budget (default
`steps`: every trial the optimizer steps of `epochs` epochs at the reference batch size) and lr rule, and
the same Optuna storage and MLflow store. Both are measured against one hypervolume reference (val_acc1
0 %, 2 x the grid's largest trial energy):

    hypervolume fraction = X   (study / grid)
    energy fraction = Y        (study / grid: every trial's measured energy, pruned ones included)

Target (issue 20): X >= 0.95 at Y <= 0.4, at a budget where the grid's best trial reaches >= 20 %
validation top-1 (the tiny defaults below only check that the benchmark runs). Energy is what greenstudy measures: on a CPU without RAPL it
is CodeCarbon's load-scaled estimate, i.e. proportional to time, and a busy machine inflates it.

    .venv/bin/python benchmarks/study_efficiency.py [--data-dir ../shared/data] [--train-subset 2000] ...
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import mlflow
import optuna
from optuna.trial import FrozenTrial

from greenstudy.config import RunConfig, parse_bool
from greenstudy.study.counts import continued_numbers, count_trials, counts_text, kind_of
from greenstudy.study.front import front_trials, hypervolume, study_energy_kwh
from greenstudy.study.params import StudyConfig
from greenstudy.study.tune import run_study

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--data-dir", default=str(SHARED_DATA if SHARED_DATA.is_dir() else "data"))
    add("--model", default="efficientnet_b0")
    add("--variant", default="auto")
    add("--train-subset", type=int, default=2000)
    add("--val-size", type=int, default=500)
    add("--epochs", type=int, default=9, help="the reference batch size's schedule (rungs at 1/9 and 1/3 with eta 3)")
    add("--batch-size", type=int, default=128, help="reference batch size of the budget and the lr rule")
    add("--budget", default="steps", help="steps or epochs (greenstudy.study.budget)")
    add("--max-batch-size", type=int, default=256)
    add("--sampler", default="random")
    add("--n-trials", type=int, default=64, help="the multi-fidelity study stops once every batch size is tried")
    add("--stop-beta", type=float, default=2.0)
    add("--halving-eta", type=int, default=3)
    add("--halving-wait", type=parse_bool, default=True, help="paused trials wait at a rung and are continued")
    add("--seed", type=int, default=0, help="sampler seed of the study (the grid's order does not matter)")
    add("--out", default="", help="folder for mlflow.db and optuna.db (default: a temp dir); rerun with the same\n"
        "folder to go on with an interrupted measurement (each study goes on where it stopped)")
    add("--report-only", type=parse_bool, default=False, help="only read the studies in --out and print the result")
    return parser.parse_args(argv)


def study_config(args: argparse.Namespace, folder: Path, name: str, **study: object) -> StudyConfig:
    run = RunConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, train_subset=args.train_subset,
                    val_size=args.val_size, data_dir=args.data_dir, download=False, experiment="study-efficiency",
                    checkpoint_dir=str(folder / "checkpoints"))
    return StudyConfig(run=run, variant=args.variant, storage=f"sqlite:///{folder / 'optuna.db'}", study_name=name,
                       max_batch_size=args.max_batch_size, lr_scaling="linear", budget=args.budget, **study)


def measure(trials: list[FrozenTrial], reference: tuple[float, float]) -> tuple[float, float, int, int, str, float]:
    """(hypervolume, energy kWh, trials, front size, honest counts, best val_acc1) of one study."""
    front = front_trials(trials, "final")
    best = max((t.values[0] for t in front), default=float("nan"))
    return (hypervolume(front, "final", reference), study_energy_kwh(trials), len(trials), len(front),
            counts_text(count_trials(trials)), best)


def trial_rows(trials: list[FrozenTrial]) -> list[str]:
    """One line per trial: number, batch size, epochs trained, what happened, val_acc1, its own energy."""
    continued = continued_numbers(trials)
    rows = []
    for t in trials:
        attrs = t.user_attrs
        rungs = [attrs[k]["epoch"] for k in attrs if k.startswith("rung_") and isinstance(attrs[k], dict)]
        trained_to = attrs.get("epochs") if t.state == optuna.trial.TrialState.COMPLETE else max(rungs, default="?")
        how = kind_of(t, continued) + (f" (continues #{attrs['continues']})" if "continues" in attrs else "")
        acc = attrs.get("val_acc1", float("nan"))
        rows.append(f"  #{t.number:<3} batch {t.params.get('batch_size', '?'):>4}  to epoch {trained_to!s:>2}  {how:<34} "
                    f"val_acc1 {acc:6.2f} %  own energy {float(attrs.get('energy_kwh', 0.0)) * 1000:8.4f} Wh  "
                    f"{attrs.get('prune_reason') or attrs.get('fail_reason', '')}".rstrip())
    return rows


def wall_seconds(trials: list[FrozenTrial]) -> float:
    """From the study's first trial start to its last trial end (what the study took, read back)."""
    trials = [t for t in trials if t.datetime_complete]
    return (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds() if trials else 0.0


def main(argv: list[str]) -> int:
    args = parse(argv)
    folder = Path(args.out or tempfile.mkdtemp(prefix="greenstudy-study-efficiency-"))
    folder.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    grid = study_config(args, folder, "grid", sampler="grid", stop_beta=0.0, halving_eta=0, n_trials=64, sampler_seed=0)
    if not args.report_only:
        run_study(grid)
    trials = optuna.load_study(study_name="grid", storage=grid.storage).get_trials()
    reference = (0.0, 2.0 * max(t.values[1] for t in trials if t.values))
    study = study_config(args, folder, "study", sampler=args.sampler, stop_beta=args.stop_beta, n_trials=args.n_trials,
                         halving_eta=args.halving_eta, halving_wait=args.halving_wait, sampler_seed=args.seed,
                         hv_ref_energy_kwh=reference[1])
    if not args.report_only:
        run_study(study)

    studies = {name: optuna.load_study(study_name=name, storage=grid.storage).get_trials() for name in ("grid", "study")}
    rows = {name: measure(trials, reference) for name, trials in studies.items()}
    length = f"{args.epochs} epochs at batch {args.batch_size}" if args.budget == "steps" else f"{args.epochs} epochs each"
    print(f"settings: {args.model}, {args.train_subset} train / {args.val_size} val images, budget={args.budget} "
          f"({length}), batch sizes 16..{args.max_batch_size}; multi-fidelity study: "
          f"{args.sampler}, halving_eta={args.halving_eta}, halving_wait={args.halving_wait}, stop_beta={args.stop_beta}")
    print(f"reference point: val_acc1 0 %, {reference[1] * 1000:.4f} Wh; stores in {folder}")
    for name, (hv, energy, n, front, counts, best) in rows.items():
        print(f"{name:>5}: {n} trials ({counts}), front {front}, best val_acc1 {best:.2f} %, hypervolume {hv:.6g} %·kWh, "
              f"energy {energy * 1000:.4f} Wh, {wall_seconds(studies[name]):.0f} s first trial start to last end")
        print("\n".join(trial_rows(studies[name])))
    (hv_grid, e_grid, *_), (hv_study, e_study, *_) = rows["grid"], rows["study"]
    print(f"hypervolume fraction = {hv_study / hv_grid:.3f}" if hv_grid > 0 else "hypervolume fraction = n/a (grid front is empty)")
    print(f"energy fraction = {e_study / e_grid:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
