"""The four variants of one model on the same data in one process, as one table of ratios to baseline.

    .venv/bin/python benchmarks/variants.py --model resnet18 --train-subset 2000 --epochs 2 --test-subset 1000

Runs greenstudy.runs.main_run.run_main (the real thing: a parent MLflow run with one child per variant, in a
SQLite store in a temp dir unless --tracking-uri is given) and prints, per variant: top-1 accuracy and
its delta to baseline, own energy (train + val + setup + test, not inference) and its ratio, lifecycle
energy (own + the baseline's for pruned/quantized), inference images/s and energy per 1,000 images and
their ratios, model size and its ratio, MACs. All figures are the ones the child runs logged. A variant
the hardware does not run natively (amp on an AVX2-only CPU) is listed as SKIPPED with its reason.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mlflow  # noqa: E402
from _common import DEFAULT_DATA_DIR, hardware_line, load_average, machine_line  # noqa: E402

from greenstudy.cli import one_line_parser, run_cli  # noqa: E402
from greenstudy.config import RunConfig, parse_variants  # noqa: E402
from greenstudy.runs.main_run import run_main  # noqa: E402
from greenstudy.runs.outcome import ChildOutcome  # noqa: E402
from greenstudy.training.steps import resolve_device  # noqa: E402


def parse(argv: list[str]) -> tuple[RunConfig, str]:
    parser = one_line_parser("All four variants of one model, one table of ratios against baseline.")
    add = parser.add_argument
    add("--model", default="resnet18")
    add("--data-dir", default=DEFAULT_DATA_DIR)
    add("--device", default="auto")
    add("--epochs", type=int, default=2)
    add("--train-subset", type=int, default=2000)
    add("--val-size", type=int, default=500)
    add("--test-subset", type=int, default=1000)
    add("--batch-size", type=int, default=128)
    add("--infer-seconds", type=float, default=5.0, help="inference benchmark window per variant")
    add("--calib-batches", type=int, default=8)
    add("--infer-b1-images", type=int, default=200, help="batch-1 queries per repeat (AI Energy Score style)")
    add("--infer-b1-repeats", type=int, default=1)
    add("--finetune-epochs", type=int, default=-1)
    add("--variants", default="baseline,amp,pruned,quantized")
    add("--amp-dtype", default="auto", help="auto (native only), bf16 or fp16 (forced, even emulated)")
    add("--tracking-uri", default="", help="MLflow store to keep the runs in (default: a temp SQLite store)")
    args = vars(parser.parse_args(argv))
    args["variants"] = parse_variants(args["variants"])
    args["download"] = False
    args["experiment"] = "greenstudy-variants-benchmark"
    uri = args.pop("tracking_uri")
    return RunConfig(**args), uri


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}x"


def _row(child: ChildOutcome, base: dict[str, float]) -> str:
    m = child.metrics
    delta = m["test_acc1"] - base["test_acc1"] if base else float("nan")
    return (
        f"{child.variant:<10} {child.status:<8} {m['test_acc1']:>7.2f} {delta:>+6.2f} {m['energy_kwh'] * 1000:>8.3f} "
        f"{_ratio(m['energy_kwh'], base.get('energy_kwh')):>6} {m['lifecycle_energy_kwh'] * 1000:>9.3f} "
        f"{m['infer_images_per_second']:>11.0f} {_ratio(m['infer_images_per_second'], base.get('infer_images_per_second')):>6} "
        f"{m['infer_energy_wh_per_1k_images']:>11.4f} "
        f"{_ratio(m['infer_energy_wh_per_1k_images'], base.get('infer_energy_wh_per_1k_images')):>6} "
        f"{m['model_size_mb']:>7.2f} {_ratio(m['model_size_mb'], base.get('model_size_mb')):>6} {m['macs'] / 1e6:>7.1f}"
    )


def table(children: list[ChildOutcome]) -> list[str]:
    """One row per variant; ratios against the baseline child; a skipped or failed variant shows its reason."""
    base = next((c.metrics for c in children if c.variant == "baseline" and c.status == "FINISHED"), {})
    header = (f"{'variant':<10} {'status':<8} {'acc1 %':>7} {'d acc':>6} {'own Wh':>8} {'x':>6} {'life Wh':>9} "
              f"{'infer img/s':>11} {'x':>6} {'infer Wh/1k':>11} {'x':>6} {'size MB':>7} {'x':>6} {'MACs M':>7}")
    lines = [header, "-" * len(header)]
    for child in children:
        lines.append(_row(child, base) if child.status == "FINISHED" else f"{child.variant:<10} {child.status:<8} {child.error}")
    quantized = next((c.metrics for c in children if c.variant == "quantized" and c.status == "FINISHED"), None)
    if quantized and "fp32_cpu_infer_images_per_second" in quantized:
        lines.append(
            f"quantized vs its fp32 reference timed the same way (same CPU, process, threads, batch, window, each "
            f"in its own fastest layout): inference {quantized['int8_speedup']:.2f}x images/s, "
            f"{quantized['infer_energy_wh_per_1k_images'] / quantized['fp32_cpu_infer_energy_wh_per_1k_images']:.2f}x "
            "energy per 1k images"
        )
    for child in children:
        if child.status == "FINISHED" and "latency_p50_ms" in child.metrics:
            m = child.metrics
            lines.append(f"{child.variant:<10} batch 1: {m['infer_b1_wh_per_1k']:.4f} Wh per 1k queries, "
                         f"latency p50 {m['latency_p50_ms']:.2f} ms, p95 {m['latency_p95_ms']:.2f} ms")
    lines.append("(own Wh = the child's energy_kwh: train + val + setup (compile, prune, calibrate) + test, not inference; "
                 "life Wh = lifecycle_energy_kwh: own + the baseline's for pruned and quantized)")
    return lines


def main(argv: list[str] | None = None) -> int:
    cfg, uri = parse(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as store:
        mlflow.set_tracking_uri(uri or f"sqlite:///{Path(store) / 'mlflow.db'}")
        os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
        print(f"greenstudy variants benchmark: {cfg.model}, {cfg.epochs} epochs on {cfg.train_subset or 'all'} training "
              f"images, test on {cfg.test_subset or 'all'}, batch {cfg.batch_size}, variants {','.join(cfg.variants)}")
        device = resolve_device(cfg.device)
        print(machine_line(device))
        print(hardware_line(device))
        outcome = run_main(cfg.replace(checkpoint_dir=str(Path(store) / "checkpoints")))
        print(f"data: {mlflow.get_run(outcome.parent_run_id).data.tags.get('data_source')}")
        print()
        print(hardware_line(device))
        print("\n".join(table(outcome.children)))
        print(f"load average at the end: {load_average()}")
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
