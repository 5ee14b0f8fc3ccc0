"""The report of benchmarks/throughput.py: the grid's table, MFU against measured ceilings, compile break-evens."""

from __future__ import annotations

import argparse
import statistics

from _common import Result, load_average

from greenstudy.measure.precision import PrecisionChoice


def paired(result: Result, usual: Result) -> float:
    """Median over rounds of this configuration's images/s over the usual recipe's in the same round."""
    return statistics.median(mine / theirs for mine, theirs in zip(result.rounds, usual.rounds, strict=True))


def break_even_lines(results: dict[str, Result], runners: list, warmup_steps: int, batch_size: int) -> list[str]:
    """Per compiled configuration: its compile seconds (its warm-up time beyond its steps at the measured
    compiled speed, less the same first-call overhead of its eager twin) and the training images after which
    compiling has paid for itself against that twin."""
    lines = []
    for runner in runners[1:]:
        if not runner.compiled or runner.eager_twin not in results:
            continue
        mine, eager = results[runner.label], results[runner.eager_twin]
        if not (mine.images_per_second and eager.images_per_second):
            continue
        images = warmup_steps * batch_size
        first_call_s = max(0.0, eager.warmup_seconds - images / eager.images_per_second)
        compile_s = max(0.0, mine.warmup_seconds - images / mine.images_per_second - first_call_s)
        saved_per_image = 1 / eager.images_per_second - 1 / mine.images_per_second
        if saved_per_image <= 0:
            verdict = "never pays (compiled is not faster)"
        else:
            images = compile_s / saved_per_image
            verdict = f"pays after {images:,.0f} training images ({images / 45_000:.2f} CIFAR-100 epochs of 45,000)"
        lines.append(f"break-even: {runner.label}: compile {compile_s:.0f} s, {eager.images_per_second:.1f} -> "
                     f"{mine.images_per_second:.1f} img/s: {verdict}")
    return lines


def print_report(
    args: argparse.Namespace, results: dict[str, Result], runners: list, macs: int,
    ceilings: tuple[dict[str, float], dict[str, int], dict[str, float]], energy_method: str, hardware: str,
    choice: PrecisionChoice,
) -> None:
    peaks, peak_sizes, conv_peaks = ceilings
    usual, fp32 = results[runners[0].label], results[runners[1].label]
    ours = [results[r.label] for r in runners[1:]]
    best = max(ours, key=lambda r: r.images_per_second)
    flop_per_image = 3 * 2 * macs
    print()
    print(hardware)
    print("peak (n^2 matmul): " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s (n={peak_sizes[k]})" for k, v in peaks.items()))
    print("ceiling (3x3 conv, 256 ch, 16x16, channels_last): " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in conv_peaks.items()))
    print(f"forward MACs per image: {macs / 1e6:.1f} M -> {flop_per_image / 1e9:.2f} GFLOP per training image (3 x 2 x MACs)")
    print(f"energy: CodeCarbon ({energy_method})")
    if not choice.runs:
        print(f"skipped: mixed precision ({choice.reason.replace('amp_dtype=', '--amp-dtype ')})")
    print()
    rounds = {r.label: "/".join(f"{x:.0f}" for x in r.rounds) for r in [usual, *ours]}
    width = max(9, *(len(text) for text in rounds.values()))
    header = (f"{'configuration':<48} {'img/s':>8} {'per round':>{width}} {'Wh/1k img':>10} {'speed':>6} {'paired':>6} "
              f"{'energy':>7} {'MFU':>6}")
    print(header)
    print("-" * len(header))
    for result in [usual, *ours]:
        speed = result.images_per_second / usual.images_per_second
        energy = result.wh_per_1k / usual.wh_per_1k if usual.wh_per_1k else float("nan")
        mfu = flop_per_image * result.images_per_second / conv_peaks[result.precision]
        print(f"{result.label:<48} {result.images_per_second:>8.1f} {rounds[result.label]:>{width}} {result.wh_per_1k:>10.4f} "
              f"{speed:>6.2f} {paired(result, usual):>6.2f} {energy:>7.2f} {100 * mfu:>5.1f}%")
    print("(speed and energy relative to the usual recipe; paired = median over rounds of the speed ratio within a round, "
          "steadier than speed on a loaded machine; MFU = achieved training FLOP/s over the 3x3-conv ceiling of the "
          "precision its convolutions run in)")
    for line in break_even_lines(results, runners, args.warmup, args.batch_size):
        print(line)
    print()
    print(hardware)
    print(f"fp32 = {fp32.label}")
    print(f"best = {best.label}")
    print(f"fp32/usual = {fp32.images_per_second / usual.images_per_second:.2f}")
    print(f"best/usual = {best.images_per_second / usual.images_per_second:.2f}")
    print(f"paired fp32/usual = {paired(fp32, usual):.2f}, paired best/usual = {paired(best, usual):.2f} (median of per-round ratios)")
    if usual.wh_per_1k:
        print(f"energy per 1k images: fp32 {fp32.wh_per_1k / usual.wh_per_1k:.2f}x, "
              f"best {best.wh_per_1k / usual.wh_per_1k:.2f}x the usual recipe's")
    print(f"load average at the end: {load_average()}")
