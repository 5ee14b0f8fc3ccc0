"""Does compiled (inductor, frozen weights) inference pay on this machine? Eager against compiled, per precision.

    .venv/bin/python benchmarks/inference_paths.py --model efficientnet_b0 [--batch-size 256 --seconds 4 --rounds 3]

Every path times the same model (random weights: speed does not depend on them), the same batch, the same
threads, in channels_last, in alternating rounds of `--seconds` each (the order rotates every round), after one
untimed call (for compiled paths: the compile, timed and printed). fp32 and bf16 autocast go both ways; the
FX int8 model (greenstudy.variants.int8_recipe, all blocks int8) is timed eager, and compiled where inductor
takes it (its quantized kernels stay opaque calls; the code around them can fuse). Where torchao is importable,
the PT2E int8 model (X86InductorQuantizer, all of it int8) is timed compiled and frozen, the only way it is fast;
torchao is not a dependency of greenstudy: without it a line says the path was not timed. bf16 is timed only where the CPU runs
it natively (emulated bf16 is several times slower: a finding nobody needs re-measured). Prints img/s per
round, the median, ratios to fp32 eager, and the break-even of each compile (images after which it has paid).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8192")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch._inductor.config  # noqa: E402, F401  (torch._inductor.config.patch below)
from _common import hardware_line, load_average, machine_line  # noqa: E402

from greenstudy.cli import one_line_parser, run_cli  # noqa: E402
from greenstudy.config import MODELS  # noqa: E402
from greenstudy.errors import ConfigError  # noqa: E402
from greenstudy.measure.precision import Precision, describe  # noqa: E402
from greenstudy.training.models import build_model  # noqa: E402
from greenstudy.training.steps import run_inference_for  # noqa: E402
from greenstudy.variants.int8_recipe import quantize_fx, vnni_available  # noqa: E402

CPU = torch.device("cpu")


def paths(model_name: str, batch: torch.Tensor) -> dict[str, tuple[object, Precision, float]]:
    """label -> (callable, precision, seconds spent making it ready: compile or quantize, first call included)."""
    made: dict[str, tuple[object, Precision, float]] = {}
    precisions = [Precision()]
    if describe(CPU).cpu_bf16:
        precisions.append(Precision(torch.bfloat16))
    else:
        print(f"  skipped: bf16 (not native on this CPU, {describe(CPU).cpu_capability})", flush=True)
    for precision in precisions:
        model = build_model(model_name, 100).eval().to(memory_format=torch.channels_last)
        timed_round(model, precision, batch, 0.0)  # one untimed call: oneDNN builds its kernels
        made[f"{precision.name} eager"] = (model, precision, 0.0)
        with torch._inductor.config.patch(freezing=True):
            compiled = torch.compile(model)
            started = time.perf_counter()
            with torch.no_grad(), precision.autocast(CPU):
                compiled(batch)
        made[f"{precision.name} compiled+frozen"] = (compiled, precision, time.perf_counter() - started)
        print(f"  made {precision.name} compiled+frozen in {made[f'{precision.name} compiled+frozen'][2]:.0f} s", flush=True)
    model = build_model(model_name, 100).eval()
    started = time.perf_counter()
    int8 = quantize_fx(model, [batch[:64].contiguous()], reduce_range=not vnni_available())
    timed_round(int8, Precision(), batch, 0.0)
    made["int8 (FX) eager"] = (int8, Precision(), time.perf_counter() - started)
    try:  # inductor around FX's quantized kernels (opaque to it): the dequantize/SiLU/quantize chains can fuse
        with torch._inductor.config.patch(freezing=True):
            compiled_int8 = torch.compile(int8)
            started = time.perf_counter()
            timed_round(compiled_int8, Precision(), batch, 0.0)
        made["int8 (FX) compiled+frozen"] = (compiled_int8, Precision(), time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - a path that does not compile is a finding, printed
        print(f"  int8 (FX) compiled+frozen: failed ({first_line(exc)})", flush=True)
    if importlib.util.find_spec("torchao") is None:
        print("  int8 (PT2E) compiled+frozen: not timed (torchao not installed)", flush=True)
        return made
    try:
        made["int8 (PT2E) compiled+frozen"] = pt2e_int8(model_name, batch)
    except Exception as exc:  # noqa: BLE001 - a model PT2E cannot take (or a torchao whose API moved): printed
        print(f"  int8 (PT2E) compiled+frozen: failed ({first_line(exc)})", flush=True)
    return made


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message` (200 characters at most), also for an empty message."""
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def pt2e_int8(model_name: str, batch: torch.Tensor) -> tuple[object, Precision, float]:
    """torchao's PT2E int8 (X86InductorQuantizer defaults, calibrated on the batch), compiled with freezing:
    (callable, fp32, seconds to export + calibrate + convert + compile, first call included)."""
    import torchao
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    model = build_model(model_name, 100).eval().to(memory_format=torch.channels_last)
    started = time.perf_counter()  # from the built model, as for FX
    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    with torch.no_grad():  # exported at the timed batch size: export specialises the batch dimension
        prepared = prepare_pt2e(torch.export.export(model, (batch,)).module(), quantizer)
        prepared(batch)
        converted = convert_pt2e(prepared)
        with torch._inductor.config.patch(freezing=True):
            compiled = torch.compile(converted)
            timed_round(compiled, Precision(), batch, 0.0)
    print(f"  made int8 (PT2E) compiled+frozen in {time.perf_counter() - started:.0f} s (torchao {torchao.__version__})",
          flush=True)
    return compiled, Precision(), time.perf_counter() - started


def timed_round(model: object, precision: Precision, batch: torch.Tensor, seconds: float) -> float:
    """Images/s of forward passes of `batch` over about `seconds` (at least one), greenstudy's own inference loop."""
    started = time.perf_counter()
    images = run_inference_for(model, batch, precision, CPU, seconds)
    return images / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = one_line_parser("Eager vs compiled+frozen inference, fp32 and (where native) bf16, FX int8 and (with torchao) PT2E int8.")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per path per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.model not in MODELS:
        raise ConfigError(f"unknown model {args.model!r}: choose one of {', '.join(MODELS)}")
    if args.batch_size < 1 or args.rounds < 1 or args.seconds <= 0:
        raise ConfigError("--batch-size and --rounds must be at least 1, --seconds above 0")
    torch.manual_seed(0)
    print(f"greenstudy inference paths: {args.model}, batch {args.batch_size}, {args.rounds} rounds of {args.seconds:g} s per path")
    print(machine_line(CPU))
    print(hardware_line(CPU))
    batch = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    made = paths(args.model, batch)
    rates: dict[str, list[float]] = {label: [] for label in made}
    labels = list(made)
    for index in range(args.rounds):
        for label in labels[index % len(labels):] + labels[: index % len(labels)]:
            model, precision, _ = made[label]
            rates[label].append(timed_round(model, precision, batch, args.seconds))
        print(f"  round {index + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()), flush=True)
    reference = statistics.median(rates["fp32 eager"])
    print(f"\n{'path':<24} {'img/s (median)':>14} {'per round':>20} {'x fp32 eager':>12}  ready in  break-even")
    for label, values in rates.items():
        median = statistics.median(values)
        _, precision, ready_s = made[label]
        twin_label = label.replace("compiled+frozen", "eager")
        twin = statistics.median(rates[twin_label]) if "compiled" in label and twin_label in rates else None
        if twin is None:
            even = "n/a (no eager twin)" if "compiled" in label else "-"
        elif median <= twin:
            even = "never (not faster than eager)"
        else:
            even = f"{ready_s / (1 / twin - 1 / median):,.0f} images"
        print(f"{label:<24} {median:>14.1f} {'/'.join(f'{v:.0f}' for v in values):>20} {median / reference:>12.2f}  "
              f"{ready_s:>6.1f} s  {even}")
    print(hardware_line(CPU))
    print(f"load average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
