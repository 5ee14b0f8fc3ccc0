"""benchmarks/throughput.py measures only the precisions the hardware runs natively, says what it skipped and
why, fits its measured steps to a time budget, and prints the hardware beside its figures; benchmarks/variants.py
lists a skipped variant with its reason."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import torch

from greenstudy.measure.precision import Hardware, choose_mixed_precision, cpu_capability, describe
from greenstudy.runs.outcome import ChildOutcome

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _throughput_report  # noqa: E402
import throughput  # noqa: E402
import variants as variants_benchmark  # noqa: E402

TINY = ["--model", "efficientnet_b0", "--device", "cpu", "--batch-size", "8", "--warmup", "1", "--workers", "0", "--peak-size", "256",
        "--settle-s", "0"]


def _run(capsys: pytest.CaptureFixture[str], data_dir: Path, *extra: str) -> list[str]:
    threads = torch.get_num_threads()
    try:
        assert throughput.main([*TINY, "--data-dir", str(data_dir), *extra]) == 0
    finally:
        torch.set_num_threads(threads)
    return capsys.readouterr().out.splitlines()


def _rows(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(("usual (", "ours "))]


def _ratios(lines: list[str]) -> dict[str, float]:
    return {line.split(" = ")[0]: float(line.split(" = ")[1]) for line in lines if line.startswith(("fp32/usual", "best/usual"))}


def test_an_avx2_cpu_skips_mixed_precision_says_why_and_fits_the_budget(
    tiny_data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As on an AVX2-only CPU: no bf16/fp16 row, no bf16 peak, one `skipped:` line with the reason and the flag
    that forces it; a budget far below the asked steps cuts them to one step in one round."""
    monkeypatch.setattr(throughput, "describe", lambda device: Hardware("cpu", "AVX2"))
    lines = _run(capsys, tiny_data_dir, "--steps", "6", "--rounds", "2", "--budget-min", "0.001", "--only", "(channels_last)")
    skipped = [line for line in lines if line.startswith("skipped:")]
    assert skipped and all("AVX2" in line and "--amp-dtype bf16" in line for line in skipped), skipped
    rows = _rows(lines)
    assert [row.split("  ")[0] for row in rows] == ["usual (PIL + DataLoader, fp32 eager)", "ours fp32 (channels_last)"]
    assert not any(line.startswith("  peak bf16") for line in lines)
    assert any(line.startswith("budget: 6 steps per configuration") for line in lines)
    assert "measuring 1 steps per configuration in 1 alternating rounds" in " ".join(lines)
    assert len([line for line in lines if line.startswith("  round ")]) == 1
    assert set(_ratios(lines)) == {"fp32/usual", "best/usual"} and all(r > 0 for r in _ratios(lines).values())


def test_forcing_bf16_on_an_avx2_cpu_measures_it_and_warns_it_is_emulated(
    tiny_data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(throughput, "describe", lambda device: Hardware("cpu", "AVX2"))
    lines = _run(capsys, tiny_data_dir, "--steps", "1", "--rounds", "1", "--amp-dtype", "bf16", "--only", "(channels_last)")
    assert [line for line in lines if line.startswith(("mixed precision:", "warning:", "skipped:"))] == [
        "mixed precision: bf16 (forced amp_dtype=bf16 on cpu AVX2)",
        "warning: bf16 is not native here: emulated, expect it several times slower than fp32",
    ]
    assert [row.split("  ")[0] for row in _rows(lines)][-1] == "ours bf16 (channels_last)"
    assert any(line.startswith("  peak bf16") for line in lines)


def test_this_machine_measures_its_native_precision_beside_its_capability(
    tiny_data_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Real hardware: a mixed-precision row exactly when greenstudy.measure.precision says it is native; the hardware line
    (torch's CPU capability, core count, torch version) stands above the table and above the ratio lines."""
    lines = _run(capsys, tiny_data_dir, "--steps", "2", "--rounds", "2", "--only", "(channels_last)")
    native = choose_mixed_precision(describe(torch.device("cpu")))
    mixed_rows = [row for row in _rows(lines) if row.startswith(("ours bf16", "ours fp16"))]
    if native.runs:
        expected = [f"ours {native.precision.name} (channels_last)"]
        if native.precision.depthwise_fp32:  # the CPU bf16 policy, and plain autocast beside it
            expected.insert(0, f"ours {native.precision.name} dw-fp32 (channels_last)")
        assert [row.split("  ")[0] for row in mixed_rows] == expected
        assert not any(line.startswith("skipped:") for line in lines)
    else:
        assert mixed_rows == [] and any(line.startswith("skipped:") for line in lines)
    hardware = [i for i, line in enumerate(lines) if line.startswith("hardware: ")]
    assert len(hardware) == 3
    assert all(f"cpu capability {cpu_capability()}" in lines[i] and f"torch {torch.__version__}" in lines[i]
               and " cores" in lines[i] for i in hardware)
    table = lines.index(next(line for line in lines if line.startswith("configuration ")))
    ratio = lines.index(next(line for line in lines if line.startswith("fp32/usual")))
    assert hardware[1] < table and table < hardware[2] < ratio
    assert len(_rows(lines)) == 2 + len(mixed_rows)
    assert _ratios(lines)["best/usual"] >= _ratios(lines)["fp32/usual"] > 0
    assert len([line for line in lines if line.startswith("paired fp32/usual = ")]) == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "vgg"], "unknown model 'vgg': choose one of"),
    (["--amp-dtype", "fp8"], "--amp-dtype must be one of auto, bf16, fp16, off, got 'fp8'"),
    (["--budget-min", "0"], "--warmup and --workers must be 0 or more, --budget-min above 0"),
])
def test_throughput_bad_input_is_one_error_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert throughput.run_cli(lambda: throughput.main(argv)) == 2
    finally:
        signal.signal(signal.SIGTERM, handler)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err


def test_fit_budget_cuts_steps_and_rounds_to_the_time_left() -> None:
    assert throughput.fit_budget(16, 4, step_seconds=1.0, pause_s=0.0, left_s=100.0) == (16, 4)
    assert throughput.fit_budget(16, 4, step_seconds=10.0, pause_s=0.0, left_s=100.0) == (10, 4)
    assert throughput.fit_budget(16, 4, step_seconds=10.0, pause_s=5.0, left_s=100.0) == (8, 4)
    assert throughput.fit_budget(16, 4, step_seconds=60.0, pause_s=0.0, left_s=100.0) == (1, 1)


def test_paired_speed_is_the_median_of_per_round_ratios() -> None:
    """A slow round for everyone (machine busy) leaves the paired ratio alone; the summed speed moves."""
    usual = throughput.Result("usual", "fp32", rounds=[10.0, 10.0, 2.0])
    ours = throughput.Result("ours", "fp32", rounds=[20.0, 30.0, 5.0])
    assert throughput.paired(ours, usual) == pytest.approx(2.5)


def test_variants_table_lists_a_skipped_variant_with_its_reason_and_lifecycle_energy() -> None:
    """benchmarks/variants.py's table: ratios against baseline, own vs lifecycle energy, and a SKIPPED amp row
    that carries the reason the core gave (as on an AVX2-only CPU)."""
    def metrics(acc: float, own: float, life: float, ips: float) -> dict[str, float]:
        return {"test_acc1": acc, "energy_kwh": own, "lifecycle_energy_kwh": life, "infer_images_per_second": ips,
                "infer_energy_wh_per_1k_images": 1.0 / ips, "model_size_mb": 40.0, "macs": 5e8}

    reason = "no native bf16/fp16 on this CPU (AVX2); force with amp_dtype=bf16 to run it emulated"
    lines = variants_benchmark.table([
        ChildOutcome("baseline", "r1", "FINISHED", metrics(10.0, 0.002, 0.002, 100.0)),
        ChildOutcome("amp", "r2", "SKIPPED", error=reason),
        ChildOutcome("pruned", "r3", "FINISHED", metrics(9.0, 0.001, 0.003, 300.0)),
    ])
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert rows["amp"] == ["amp", "SKIPPED", *reason.split()]
    assert rows["pruned"][2:9] == ["9.00", "-1.00", "1.000", "0.50x", "3.000", "300", "3.00x"]


def test_break_even_is_compile_seconds_over_the_time_saved_per_image() -> None:
    """35 s of compile (beyond the eager twin's own first-call cost) at 103.3 -> 107.8 img/s pays after
    35 / (1/103.3 - 1/107.8) = 86,600 images; a compiled configuration that is slower never pays."""
    class Runner:
        def __init__(self, label: str, compiled: bool) -> None:
            self.label, self.compiled, self.eager_twin = label, compiled, label.replace(", compiled)", ")")

    def result(label: str, speed: float, warmup_s: float) -> throughput.Result:
        return throughput.Result(label, "bf16", images=1000, seconds=1000 / speed, warmup_seconds=warmup_s)

    eager_s = 2 * 128 / 103.3 + 1.0  # two warm-up steps + 1 s of first-call cost
    results = {"usual": result("usual", 40.0, 1.0), "ours bf16 (cl)": result("ours bf16 (cl)", 103.3, eager_s),
               "ours bf16 (cl, compiled)": result("ours bf16 (cl, compiled)", 107.8, 2 * 128 / 107.8 + 1.0 + 35.0),
               "ours fp32 (cl)": result("ours fp32 (cl)", 50.0, 2 * 128 / 50.0),
               "ours fp32 (cl, compiled)": result("ours fp32 (cl, compiled)", 45.0, 2 * 128 / 45.0 + 30.0)}
    runners = [Runner("usual", False), *(Runner(label, "compiled" in label) for label in list(results)[1:])]
    lines = _throughput_report.break_even_lines(results, runners, warmup_steps=2, batch_size=128)
    assert len(lines) == 2
    assert "ours bf16 (cl, compiled): compile 35 s, 103.3 -> 107.8 img/s: pays after 86,6" in lines[0], lines[0]
    assert lines[1].endswith("never pays (compiled is not faster)"), lines[1]


def test_inference_paths_refuses_bad_arguments_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/inference_paths.py: an unknown model or an empty round is one `error:` line, exit 2."""
    import inference_paths

    for argv in (["--model", "vgg"], ["--rounds", "0"]):
        assert inference_paths.run_cli(lambda argv=argv: inference_paths.main(argv)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err


def test_inference_paths_names_a_failed_path_in_one_line_even_without_a_message() -> None:
    """A path that fails (PT2E on a model it cannot take, inductor on FX int8) is printed as `Type: first line`;
    an empty message (a bare assert deep in torch) must not crash the handler meant to tolerate the failure."""
    import inference_paths

    assert inference_paths.first_line(AssertionError()) == "AssertionError: "
    assert inference_paths.first_line(ValueError("Input partition has more\nthan one output")) == (
        "ValueError: Input partition has more")
    assert len(inference_paths.first_line(RuntimeError("x" * 500))) == len("RuntimeError: ") + 200
