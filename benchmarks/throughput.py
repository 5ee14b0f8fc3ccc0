"""Training throughput and energy: the usual PyTorch recipe against our pipeline, in one process.

    .venv/bin/python benchmarks/throughput.py --model resnet18 [--steps 16 --warmup 2 --budget-min 8] [--amp-dtype bf16]

Configurations, all on the same data and model architecture, measured after warm-up over the same
number of steps, in alternating rounds (the order rotates each round) so machine noise hits all alike:
  usual  torchvision-style CIFAR-100 Dataset of PIL images + RandomCrop/Flip/ToTensor/Normalize +
         DataLoader(2 workers) + fp32 eager model + textbook SGD step with loss.item()
  ours   greenstudy.training.steps.train_one_epoch on the whole split held as uint8 on the device, augmented
         there; fp32 / mixed precision, channels_last or not, torch.compile where tried.
Mixed precision is measured only where the hardware runs it natively (greenstudy.measure.precision: bf16 on
Ampere+ GPUs and on CPUs with AVX-512 BF16 / AMX, fp16 + GradScaler on older GPUs); elsewhere it is
skipped with a line saying why, unless forced with --amp-dtype bf16|fp16 (emulated: slow). The
measured steps are cut to fit --budget-min, from the step times seen in the warm-up.
Prints the hardware (torch's CPU capability, cores, torch version) beside every table, images/s,
CodeCarbon energy per 1,000 training images, model FLOP utilisation against a matmul peak measured in
the same run, and the lines `fp32/usual = X.XX` and `best/usual = X.XX`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")
# Five models alternate in this one process; oneDNN's default primitive cache (1024) is too small for
# all of them, so each switch would rebuild kernels that a real single-model training keeps cached.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8192")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import (  # noqa: E402
    DEFAULT_DATA_DIR,
    Result,
    UsualRecipe,
    conv_peak_flops,
    energy_phase,
    find_data,
    hardware_line,
    load_average,
    machine_line,
    open_meter,
    peak_flops,
    synchronize,
)
from _throughput_report import paired, print_report  # noqa: E402, F401  (paired: re-exported for the tests)

from greenstudy.cli import one_line_parser, run_cli  # noqa: E402
from greenstudy.config import MODELS  # noqa: E402
from greenstudy.errors import ConfigError  # noqa: E402
from greenstudy.measure.precision import AMP_DTYPES, Precision, PrecisionChoice, choose_mixed_precision, describe  # noqa: E402
from greenstudy.training.data import CifarData, Normalizer, Split  # noqa: E402
from greenstudy.training.models import build_model, count_macs_params  # noqa: E402
from greenstudy.training.steps import (  # noqa: E402
    TrainSetup,
    make_optimizer,
    make_scheduler,
    resolve_device,
    set_cpu_threads,
    train_one_epoch,
)

LR = 0.05
LABEL_SMOOTHING = 0.1


class OurPipeline:
    """greenstudy's training loop on data held on the device, in one precision / memory format."""

    def __init__(
        self, model_name: str, data: CifarData, batch_size: int, device: torch.device, precision: Precision,
        channels_last: bool, compiled: bool, total_steps: int,
    ):
        torch.manual_seed(0)
        short = precision.name + (" dw-fp32" if precision.depthwise_fp32 else "")
        self.label = f"ours {short} ({'channels_last' if channels_last else 'contiguous'}" + (
            ", compiled)" if compiled else ")")
        self.precision = precision.name
        self.compiled, self.eager_twin = compiled, self.label.replace(", compiled)", ")")
        self.train = data.train
        self.batch_size = batch_size
        model = build_model(model_name, data.num_classes).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, LR, 5e-4)
        self.setup = TrainSetup(
            model=model, optimizer=optimizer, scheduler=make_scheduler(optimizer, LR, total_steps),
            normalize=Normalizer(data.mean, data.std, device, channels_last), precision=precision,
            label_smoothing=LABEL_SMOOTHING, batch_size=batch_size, device=device,
            generator=torch.Generator(device=device).manual_seed(0),
            scaler=torch.amp.GradScaler(device.type) if precision.needs_scaler else None,
            step_fn=torch.compile(model) if compiled else None,
        )
        self.picker = torch.Generator(device=device).manual_seed(1)

    def run(self, steps: int) -> tuple[int, float]:
        # `steps` batches' worth of the split, drawn before the clock starts; train_one_epoch then
        # shuffles, gathers, augments and normalises them on the device exactly as in a real epoch.
        pick = torch.randperm(len(self.train), device=self.train.images.device, generator=self.picker)
        pick = pick[: steps * self.batch_size]
        part = Split(self.train.images[pick], self.train.labels[pick])
        synchronize(self.setup.device)
        started = time.perf_counter()
        train_one_epoch(self.setup, part)
        synchronize(self.setup.device)
        return steps * self.batch_size, time.perf_counter() - started

    def close(self) -> None:
        pass


def mixed_choice(device: torch.device, amp_dtype: str) -> PrecisionChoice:
    """The mixed precision to measure: the hardware's native one (auto), a forced one, or none (off)."""
    if amp_dtype == "off":
        return PrecisionChoice(None, "--amp-dtype off")
    return choose_mixed_precision(describe(device), amp_dtype)


def candidates(device: torch.device, compile_mode: str, mixed: Precision | None) -> list[tuple[Precision, bool, bool]]:
    """(precision, channels_last, compiled) for every configuration of ours to try; the first is our fp32
    default (channels_last, eager on a CPU). Where the mixed precision keeps depthwise convolutions fp32 (bf16
    on a CPU), plain autocast is tried beside it. torch 2.14.1's oneDNN fp32 math mode (`torch.backends.mkldnn.conv.
    fp32_precision = "bf16"`) is not among them: it leaves CPU convolutions bit-identical to fp32 (README)."""
    default_compile = device.type == "cuda"
    compiles = {"true": [True, False], "false": [False], "auto": [True, False] if default_compile else [False]}[compile_mode]
    fp32 = Precision()
    combos = [(fp32, True, default_compile and compile_mode != "false")]
    mixed_ones = [] if mixed is None else [mixed] + ([Precision(mixed.dtype)] if mixed.depthwise_fp32 else [])
    for precision in [fp32, *mixed_ones]:
        for channels_last in (True, False):
            for compiled in compiles:
                if (precision, channels_last, compiled) not in combos:
                    combos.append((precision, channels_last, compiled))
    return combos


def parse(argv: list[str]) -> argparse.Namespace:
    parser = one_line_parser("Images/s and energy per 1,000 training images: usual recipe vs our pipeline.")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16, help="measured steps per configuration (all rounds), at most")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps per configuration first")
    parser.add_argument("--rounds", type=int, default=0,
                        help="alternating rounds the steps are split into (default: 4 steps per round)")
    parser.add_argument("--budget-min", type=float, default=8.0,
                        help="wall-clock budget for the whole benchmark; measured steps are cut to fit it")
    parser.add_argument("--amp-dtype", default="auto", help="mixed precision: auto (native only), bf16, fp16 (forced, "
                        "even emulated), off")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the usual recipe")
    parser.add_argument("--settle-s", type=float, default=0.5,
                        help="untimed pause after each configuration's round (lets DataLoader prefetching finish)")
    parser.add_argument("--compile", default="auto", help="try torch.compile: auto (CUDA only), true, false")
    parser.add_argument("--only", default="", help="comma-separated labels to keep (e.g. 'fp32 (channels_last)')")
    parser.add_argument("--peak-size", type=int, default=4096, help="largest matmul size for the peak FLOP/s")
    args = parser.parse_args(argv)
    if args.model not in MODELS:
        raise ConfigError(f"unknown model {args.model!r}: choose one of {', '.join(MODELS)}")
    if args.compile not in ("auto", "true", "false"):
        raise ConfigError(f"--compile must be auto, true or false, got {args.compile!r}")
    if args.amp_dtype not in (*AMP_DTYPES, "off"):
        raise ConfigError(f"--amp-dtype must be one of {', '.join((*AMP_DTYPES, 'off'))}, got {args.amp_dtype!r}")
    args.rounds = args.rounds or max(1, args.steps // 4)
    for name in ("batch_size", "steps", "rounds", "peak_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.workers < 0 or args.budget_min <= 0:
        raise ConfigError("--warmup and --workers must be 0 or more, --budget-min above 0")
    if args.steps < args.rounds:
        raise ConfigError(f"--steps ({args.steps}) must be at least --rounds ({args.rounds})")
    return args


def round_steps(steps: int, rounds: int) -> list[int]:
    """`steps` split into `rounds` near-equal parts."""
    return [steps // rounds + (1 if r < steps % rounds else 0) for r in range(rounds)]


def fit_budget(steps: int, rounds: int, step_seconds: float, pause_s: float, left_s: float) -> tuple[int, int]:
    """The most measured steps (<= `steps`, >= 1) whose rounds fit `left_s`: each step of every configuration
    costs `step_seconds` in all, each round `pause_s` of settling; rounds shrink with the steps."""
    while steps > 1 and steps * step_seconds + min(rounds, steps) * pause_s > left_s:
        steps -= 1
    return steps, min(rounds, steps)


def warm_up(runners: list, results: dict[str, Result], steps: int) -> float:
    """Run `steps` unmeasured steps of each configuration, one at a time; returns the summed seconds of
    one step of every configuration (each one's last warm-up step: first-call costs left out when steps > 1)."""
    per_step = 0.0
    for runner in runners:
        print(f"  warming up {runner.label} ({steps} steps) ...", flush=True)
        started, last = time.perf_counter(), 0.0
        for _ in range(steps):
            _, last = runner.run(1)
        results[runner.label].warmup_seconds = time.perf_counter() - started
        per_step += last
        print(f"  warmed up {runner.label}: {results[runner.label].warmup_seconds:.1f} s (last step {last:.2f} s)", flush=True)
    return per_step


def measure(args: argparse.Namespace, runners: list, results: dict[str, Result], deadline: float) -> str:
    """The alternating rounds, each configuration in its own CodeCarbon phase; returns the energy method.
    A round that would end past `deadline` (perf_counter time; judged by the last round) is not started."""
    meter = open_meter(runners[0].device)  # CodeCarbon's ~1.6 s start stays out of the first phase
    last_round = 0.0
    for index, steps in enumerate(round_steps(args.steps, args.rounds)):
        if index and time.perf_counter() + last_round > deadline:
            print(f"budget: the machine got slower; stopping after {index} of {args.rounds} rounds "
                  f"(every configuration measured in each)", flush=True)
            args.rounds = index
            break
        round_began = time.perf_counter()
        order = runners[index % len(runners):] + runners[: index % len(runners)]
        for runner in order:
            result = results[runner.label]
            with energy_phase(meter, f"{runner.label}/round{index}") as phase:
                images, seconds = runner.run(steps)
            result.images += images
            result.seconds += seconds
            result.energy_kwh += phase.energy_kwh
            result.rounds.append(images / seconds)
            # The usual recipe's DataLoader workers refill their prefetch queue after its round; let them
            # finish outside every timed window so that work does not land in the next configuration's
            # round (it is then free for the usual recipe: a bias in its favour, never against it).
            time.sleep(args.settle_s)
        last_round = time.perf_counter() - round_began
        speeds = ", ".join(f"{r.label} {results[r.label].rounds[-1]:.1f}" for r in runners)
        print(f"  round {index + 1}/{args.rounds} ({steps} steps each), img/s: {speeds} (load {load_average()})", flush=True)
    energy_method = meter.energy_method()
    meter.stop()
    return energy_method


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    began = time.perf_counter()
    device = resolve_device(args.device)
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        set_cpu_threads()
    data, folder = find_data(args.data_dir)
    data = data.to(device)
    print(f"greenstudy throughput benchmark: {args.model}, batch {args.batch_size}, up to {args.steps} measured steps "
          f"per configuration in {args.rounds} alternating rounds after {args.warmup} warm-up steps, "
          f"budget {args.budget_min:g} min")
    kind = "SYNTHETIC (no real CIFAR-100 found)" if data.source.startswith("synthetic") else "real CIFAR-100"
    print(f"data: {kind}, {data.source} ({len(data.train)} training images)")
    print(machine_line(device) + f" (torch default was {threads_before})")
    hardware = hardware_line(device)
    print(hardware)
    choice = mixed_choice(device, args.amp_dtype)
    native = mixed_choice(device, "auto").precision
    if choice.runs:
        print(f"mixed precision: {choice.precision.name} ({choice.reason})")
        if choice.precision != native:
            print(f"warning: {choice.precision.name} is not native here: emulated, expect it several times slower than fp32")
    else:
        print(f"skipped: mixed precision (bf16/fp16) not measured: {choice.reason.replace('amp_dtype=', '--amp-dtype ')}")

    peaks, peak_sizes, conv_peaks = {}, {}, {}
    for precision in [Precision()] + ([choice.precision] if choice.runs else []):
        dtype = precision.dtype or torch.float32
        peaks[precision.name], peak_sizes[precision.name] = peak_flops(device, dtype, args.peak_size)
        conv_peaks[precision.name] = conv_peak_flops(device, dtype)
        print(f"  peak {precision.name}: {peaks[precision.name] / 1e9:.1f} GFLOP/s ({peak_sizes[precision.name]}^2 matmul), "
              f"{conv_peaks[precision.name] / 1e9:.1f} GFLOP/s (3x3 conv)", flush=True)
    peak_seconds = time.perf_counter() - began

    runners: list[UsualRecipe | OurPipeline] = [UsualRecipe(args.model, folder, args.batch_size, args.workers, device, LR, LABEL_SMOOTHING)]
    for precision, channels_last, compiled in candidates(device, args.compile, choice.precision):
        runners.append(OurPipeline(args.model, data, args.batch_size, device, precision, channels_last, compiled,
                                   args.warmup + args.steps))
    if args.only:
        keep = [part.strip() for part in args.only.split(",") if part.strip()]
        runners = [r for r in runners if r is runners[0] or r is runners[1] or any(k in r.label for k in keep)]
    macs, _ = count_macs_params(build_model(args.model, 100).to(device))

    results = {runner.label: Result(runner.label, runner.precision) for runner in runners}
    step_seconds = warm_up(runners, results, args.warmup)  # first-call costs (workers, allocator, compilation) stay out
    deadline = began + args.budget_min * 60 - peak_seconds  # the peaks are measured again at the end
    if step_seconds:
        left = deadline - time.perf_counter()
        steps, rounds = fit_budget(args.steps, args.rounds, step_seconds, args.settle_s * len(runners), left)
        if steps < args.steps:
            print(f"budget: {args.steps} steps per configuration would take ~{args.steps * step_seconds / 60:.1f} min; "
                  f"measuring {steps} in {rounds} rounds to stay within {args.budget_min:g} min")
        args.steps, args.rounds = steps, rounds
    print(f"measuring {args.steps} steps per configuration in {args.rounds} alternating rounds "
          f"(~{args.steps * step_seconds / 60:.1f} min)", flush=True)
    energy_method = measure(args, runners, results, deadline)
    for runner in runners:
        runner.close()
    for name in peaks:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        peaks[name] = max(peaks[name], peak_flops(device, dtype, peak_sizes[name])[0])
        conv_peaks[name] = max(conv_peaks[name], conv_peak_flops(device, dtype))

    print_report(args, results, runners, macs, (peaks, peak_sizes, conv_peaks), energy_method, hardware, choice)
    print(f"total time: {(time.perf_counter() - began) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
