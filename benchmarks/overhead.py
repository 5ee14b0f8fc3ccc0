"""What our tracking costs: the same short training with and without MLflow + CodeCarbon, in one process.

    .venv/bin/python benchmarks/overhead.py --model efficientnet_b0 [--reps 4 --epochs 2 --train-images 2560]

`tracked` is the real code path of a variant's training: a child MLflow run (real SQLite store in a
temp dir, MLflow system metrics sampled as in every real child) with its params,
greenstudy.training.fitting.fit (a CodeCarbon phase for train and one for validation, one log_epoch per epoch),
the ledger's final metrics and energy_ledger.csv as an artifact. `plain` builds
the same TrainSetup and runs the same train_one_epoch + evaluate, with nothing tracked. Left out of both:
checkpoints (not tracking), the machine lock (waiting on other runs would be noise), model logging.
The two alternate (the order flips every repetition) and the overhead is the median of the paired
ratios tracked/plain - 1. The one-time costs per process (CodeCarbon start, creating the store) are
printed apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mlflow  # noqa: E402
import torch  # noqa: E402
from _common import DEFAULT_DATA_DIR, find_data, hardware_line, load_average, machine_line  # noqa: E402

from greenstudy.cli import one_line_parser, run_cli  # noqa: E402
from greenstudy.config import RunConfig  # noqa: E402
from greenstudy.errors import ConfigError  # noqa: E402
from greenstudy.measure.energy import EnergyMeter  # noqa: E402
from greenstudy.measure.ledger import Ledger, PhaseEnergy, energy_metrics, write_ledger_csv  # noqa: E402
from greenstudy.measure.precision import Precision  # noqa: E402
from greenstudy.runs.outcome import contract_params  # noqa: E402
from greenstudy.tracking import log_final, run_scope  # noqa: E402
from greenstudy.training.control import TrainingControl  # noqa: E402
from greenstudy.training.data import CifarData, Normalizer, Split  # noqa: E402
from greenstudy.training.fitting import fit  # noqa: E402
from greenstudy.training.models import build_model  # noqa: E402
from greenstudy.training.steps import (  # noqa: E402
    TrainSetup,
    evaluate,
    make_optimizer,
    make_scheduler,
    resolve_device,
    set_cpu_threads,
    steps_per_epoch,
    train_one_epoch,
)


def plain_training(cfg: RunConfig, data: CifarData, device: torch.device) -> float:
    """What fit() does (train then validate, each epoch), minus every tracking call; returns wall seconds."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    setup = TrainSetup(
        model=model, optimizer=optimizer,
        scheduler=make_scheduler(optimizer, cfg.lr, cfg.epochs * steps_per_epoch(len(data.train), cfg.batch_size)),
        normalize=Normalizer(data.mean, data.std, device, True), precision=Precision(),
        label_smoothing=cfg.label_smoothing, batch_size=cfg.batch_size, device=device,
        generator=torch.Generator(device=device).manual_seed(cfg.seed),
    )
    for _ in range(cfg.epochs):
        train_one_epoch(setup, data.train)
        evaluate(model, data.val, setup.normalize, setup.precision, device)
    return time.perf_counter() - started


def tracked_training(cfg: RunConfig, data: CifarData, device: torch.device, meter: EnergyMeter, rep: int) -> tuple[float, float]:
    """The same training as a tracked MLflow child run (greenstudy.training.fitting.fit: one CodeCarbon phase for
    train and one for validation per epoch, per-epoch metrics; then the ledger's final metrics and its CSV);
    returns (wall seconds, seconds inside the measured train/val phases)."""
    started = time.perf_counter()
    ledger: list[PhaseEnergy] = []
    with run_scope(f"overhead-{rep}", cfg.experiment_name, nested=True, tags={"variant": "baseline", "kind": "variant"},
                   system_metrics=True):
        mlflow.log_params(contract_params(cfg, "baseline", device))
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.num_classes).to(device).to(memory_format=torch.channels_last)
        fit(cfg, data, meter, model, Precision(), cfg.epochs, cfg.lr, f"{cfg.model}/overhead{rep}", ledger, TrainingControl(), None)
        log_final(energy_metrics(Ledger(ledger)))
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(write_ledger_csv(Path(tmp) / "energy_ledger.csv", Ledger(ledger))))
    return time.perf_counter() - started, sum(phase.seconds for phase in ledger)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = one_line_parser("Training time with and without MLflow + CodeCarbon tracking.")
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-images", type=int, default=2560)
    parser.add_argument("--val-images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--reps", type=int, default=4, help="pairs (plain, tracked) to run")
    args = parser.parse_args(argv)
    for name in ("train_images", "val_images", "epochs", "batch_size", "reps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    cfg = RunConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=0.05, device=args.device,
                    compile="false", experiment="greenstudy-overhead")
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        set_cpu_threads()
    full, _ = find_data(args.data_dir)
    if len(full.train) < args.train_images + args.val_images:
        raise ConfigError(f"only {len(full.train)} training images: lower --train-images / --val-images")
    images, labels = full.train.images, full.train.labels
    data = CifarData(
        full.name, Split(images[: args.train_images], labels[: args.train_images]),
        Split(images[args.train_images : args.train_images + args.val_images],
              labels[args.train_images : args.train_images + args.val_images]),
        full.test.subset(1), full.num_classes, full.class_names, full.source, full.mean, full.std,
    ).to(device)
    print(f"greenstudy tracking overhead: {args.model}, {args.epochs} epochs x {args.train_images} images "
          f"(+{args.val_images} validation), batch {args.batch_size}, {args.reps} alternating pairs")
    print(f"data: {full.source}")
    print(machine_line(device))
    print(hardware_line(device))

    with tempfile.TemporaryDirectory() as store:
        mlflow.set_tracking_uri(f"sqlite:///{Path(store) / 'mlflow.db'}")
        started = time.perf_counter()
        meter = EnergyMeter(device)
        meter.start()
        codecarbon_start = time.perf_counter() - started
        started = time.perf_counter()
        plain_training(cfg.replace(epochs=1), data, device)  # warm-up (allocator, first-call costs)
        warm = time.perf_counter() - started
        started = time.perf_counter()
        with run_scope("overhead", cfg.experiment_name, tags={"kind": "parent"}):
            store_init = time.perf_counter() - started
            started = time.perf_counter()
            tracked_training(cfg, data, device, meter, -1)  # warm-up: first-call imports and caches of the tracking path
            first_tracked = time.perf_counter() - started
            plain_s, tracked_s, inside_s = [], [], []
            for rep in range(args.reps):
                for which in (("plain", "tracked") if rep % 2 == 0 else ("tracked", "plain")):
                    if which == "plain":
                        plain_s.append(plain_training(cfg, data, device))
                    else:
                        wall, inside = tracked_training(cfg, data, device, meter, rep)
                        tracked_s.append(wall)
                        inside_s.append(inside)
                print(f"  pair {rep + 1}/{args.reps}: plain {plain_s[-1]:.2f} s, tracked {tracked_s[-1]:.2f} s "
                      f"(load {load_average()})", flush=True)
        meter.stop()
        finished = mlflow.search_runs(experiment_names=[cfg.experiment_name], filter_string="attributes.status = 'FINISHED'")

    ratios = [t / p - 1 for t, p in zip(tracked_s, plain_s, strict=True)]
    bookkeeping = [(t - i) / i for t, i in zip(tracked_s, inside_s, strict=True)]
    print()
    print(f"one-time per process: CodeCarbon start {codecarbon_start:.2f} s, MLflow store + parent run "
          f"{store_init:.2f} s (warm-up: plain {warm:.1f} s, tracked {first_tracked:.1f} s)")
    print(f"tracked runs FINISHED in the store: {len(finished) - 2} of {args.reps} (plus the parent and the warm-up)")
    print(f"median plain {statistics.median(plain_s):.2f} s, median tracked {statistics.median(tracked_s):.2f} s")
    print("paired ratios tracked/plain - 1: " + ", ".join(f"{100 * r:+.1f} %" for r in ratios))
    print(f"time in tracking calls (tracked wall - its train/val phases): median {100 * statistics.median(bookkeeping):.2f} % of training")
    print(hardware_line(device))
    print(f"overhead = {100 * statistics.median(ratios):.1f} %")
    print(f"load average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
