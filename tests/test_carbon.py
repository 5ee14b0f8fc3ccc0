"""Where and when: grid intensities read from the installed CodeCarbon's own files, an hourly series priced
against a ledger (hand-computed sums), the best start hour, a series that misses the run, and the wait for a
low-carbon hour (fake clock for the logic, the real CodeCarbon meter for the measured wait)."""

from __future__ import annotations

import csv
import json
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import pytest

from greenstudy import interrupts
from greenstudy.config import RunConfig
from greenstudy.errors import ConfigError
from greenstudy.measure.carbon import (
    SeriesGap,
    best_start,
    price,
    read_series,
    utc,
    wait_until_below,
)
from greenstudy.measure.carbon_hooks import WAIT_KIND, WAIT_PHASE, check_series, timed_metrics, wait_for_low_carbon, wait_metrics
from greenstudy.measure.intensity import default_regions, lookup, parse_regions
from greenstudy.measure.ledger import KINDS, Ledger, PhaseEnergy
from greenstudy.runs.params import parse_main

T0 = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
HOURLY = [400.0, 300.0, 50.0, 300.0, 400.0, 500.0]  # one clean hour: T0+2h


def write_series(path: Path, values: list[float], start: float = T0, step: float = 3600.0, iso: bool = True) -> Path:
    """A hand-made series CSV with a header row."""
    lines = ["timestamp_utc,gco2eq_per_kwh"]
    for i, value in enumerate(values):
        moment = start + i * step
        stamp = datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if iso else f"{moment:.3f}"
        lines.append(f"{stamp},{value}")
    path.write_text("\n".join(lines) + "\n")
    return path


def phase(name: str, kwh: float, start: float, seconds: float, kind: str = "train", upstream: str = "") -> PhaseEnergy:
    return PhaseEnergy(name, kind, energy_kwh=kwh, ram_kwh=kwh, seconds=seconds, started_at=start, upstream_run_id=upstream)


def run_phases() -> list[PhaseEnergy]:
    """2 Wh over T0+0:30..1:30 (half at 400 g, half at 300 g), 1 Wh at T0+2:10..2:30 (50 g)."""
    return [phase("train/epoch1", 0.002, T0 + 1800, 3600), phase("test", 0.001, T0 + 7800, 1200, kind="test")]


# ---------------------------------------------------------------- where: CodeCarbon's tables


def codecarbon_data(relative: str) -> Path:
    return Path(str(resources.files("codecarbon").joinpath(relative)))


def test_country_and_cloud_intensities_are_codecarbons_own() -> None:
    mix = json.loads(codecarbon_data("data/private_infra/global_energy_mix.json").read_text())
    with codecarbon_data("data/cloud/impact.csv").open(encoding="utf-8-sig", newline="") as handle:
        cloud = {f"{r['provider']}:{r['region']}": r for r in csv.DictReader(handle)}
    for iso in ("FRA", "POL", "USA"):
        grid = lookup(iso)
        assert grid.g_per_kwh == mix[iso]["carbon_intensity"] and grid.year == str(mix[iso]["year"])
        assert "global_energy_mix.json" in grid.table and grid.label == mix[iso]["country_name"]
    north = lookup("gcp:europe-north1")
    assert north.g_per_kwh == float(cloud["gcp:europe-north1"]["impact"])
    assert north.source == cloud["gcp:europe-north1"]["source"] and "impact.csv" in north.citation
    ranked = sorted(cloud, key=lambda k: (float(cloud[k]["impact"]), k))
    assert [g.key for g in default_regions()] == [ranked[0], ranked[(len(ranked) - 1) // 2], ranked[-1]]
    assert [g.key for g in parse_regions("FRA, pol,gcp:europe-north1,FRA")] == ["FRA", "POL", "gcp:europe-north1"]
    assert parse_regions("") == parse_regions("default") == default_regions()


def test_unknown_regions_are_one_line() -> None:
    providers = sorted({k.split(":")[0] for k in (g.key for g in parse_regions("default"))})
    with pytest.raises(ConfigError, match=r"aws:us-east-1.*providers there: " + providers[0]):
        lookup("aws:us-east-1")
    with pytest.raises(ConfigError, match="gcp regions there: .*europe-north1"):
        lookup("gcp:mars-1")
    with pytest.raises(ConfigError, match="neither an ISO 3166-1 alpha-3"):
        lookup("XXX")


# ---------------------------------------------------------------- when: the hourly series


def test_timed_emissions_are_the_hand_computed_sum(tmp_path: Path) -> None:
    series = read_series(write_series(tmp_path / "s.csv", HOURLY))
    assert series.starts[0] == T0 and series.step_s == 3600 and series.end == T0 + 6 * 3600
    # 0.001 kWh x 400 + 0.001 x 300 + 0.001 x 50 = 0.75 g
    assert price(run_phases(), series) == pytest.approx(0.75e-3, rel=1e-12)
    upstream = [phase("base/train", 0.004, T0, 3600, upstream="base-run")]
    own = Ledger([*run_phases(), phase("inference", 0.5, T0 + 9000, 10, kind="inference")])
    config = RunConfig(carbon_intensity_csv=str(tmp_path / "s.csv"))
    metrics, tags = timed_metrics(own, Ledger(upstream), config)
    assert metrics["emissions_kg_timed"] == pytest.approx(0.75e-3)  # inference never counted
    assert metrics["lifecycle_emissions_kg_timed"] == pytest.approx(0.75e-3 + 0.004 * 400 / 1000)
    assert metrics["intensity_timed_g_per_kwh"] == pytest.approx(750 / 3)
    assert tags["best_start_utc"] == "2026-12-01 02:00 UTC"
    # unix-seconds timestamps and a finer (15-minute) step price the same way
    fine = read_series(write_series(tmp_path / "fine.csv", [v for v in HOURLY for _ in range(4)], step=900, iso=False))
    assert price(run_phases(), fine) == pytest.approx(0.75e-3, rel=1e-12)


def test_best_start_is_the_clean_hour(tmp_path: Path) -> None:
    series = read_series(write_series(tmp_path / "s.csv", HOURLY))
    one_hour = [phase("train/epoch1", 0.003, T0 + 4 * 3600, 3600)]  # ran at 400 g
    best = best_start(one_hour, series)
    assert best.start == T0 + 2 * 3600 and best.kg == pytest.approx(0.003 * 50 / 1000)
    assert best.saving_pct == pytest.approx(100 * (400 - 50) / 400)
    assert "02:00 UTC" in best.line() and "87.5 % less" in best.line()
    # a two-phase profile keeps its gap: starting at 02:00 puts the 2 Wh at 50 g and the 1 Wh at 300 g
    both = best_start(run_phases(), series)
    assert both.start == T0 + 2 * 3600 and both.kg == pytest.approx((0.002 * 50 + 0.001 * 300) / 1000)
    assert both.saving_pct == pytest.approx(100 * (0.75 - 0.4) / 0.75)


def test_a_series_that_misses_the_run_is_stated_never_zero(tmp_path: Path) -> None:
    series = read_series(write_series(tmp_path / "s.csv", HOURLY))
    late = [phase("train/epoch1", 0.002, T0 + 5.5 * 3600, 3600)]  # runs past the series' end
    with pytest.raises(SeriesGap, match=r"covers 2026-12-01 00:00 UTC \.\. 2026-12-01 06:00 UTC; phase train/epoch1"):
        price(late, series)
    metrics, tags = timed_metrics(Ledger(late), None, RunConfig(carbon_intensity_csv=str(tmp_path / "s.csv")))
    assert metrics == {} and tags["emissions_timed"].startswith("not computed: carbon_intensity_csv covers")
    with pytest.raises(ConfigError, match="ends before this run starts"):
        check_series(RunConfig(carbon_intensity_csv=str(tmp_path / "s.csv")))  # December 2026, 00:00-06:00 is past


@pytest.mark.parametrize(("rows", "message"), [
    (["2026-12-01T00:00Z,400"], "at least two rows"),
    (["2026-12-01T00:00Z,400", "2026-12-01T00:00Z,300"], "timestamps must increase"),
    (["2026-12-01T00:00Z,400", "2026-12-01T03:00Z,300"], "hourly or finer"),
    (["2026-12-01T00:00Z,400", "2026-12-01T01:00Z,-3"], "finite number >= 0"),
    (["2026-12-01T00:00Z,400", "yesterday,300"], "neither ISO 8601 nor unix seconds"),
    (["2026-12-01T00:00Z,400", "2026-12-01T01:00Z,lots"], "is not a number"),
])
def test_bad_series_are_one_line(tmp_path: Path, rows: list[str], message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match=message):
        read_series(path)


def test_parameters_reach_the_config_and_are_checked(tmp_path: Path) -> None:
    path = write_series(tmp_path / "s.csv", HOURLY)
    config = parse_main(["--carbon-intensity-csv", str(path), "--start-below-gco2", "100"])
    assert config.carbon_intensity_csv == str(path) and config.start_below_gco2 == 100.0
    assert parse_main([]).start_below_gco2 is None and parse_main([]).carbon_intensity_csv == ""
    with pytest.raises(ConfigError, match="start_below_gco2 needs carbon_intensity_csv"):
        RunConfig(start_below_gco2=100)
    with pytest.raises(ConfigError, match="start_below_gco2 must be positive"):
        RunConfig(carbon_intensity_csv=str(path), start_below_gco2=-5)
    with pytest.raises(ConfigError, match="is not a file"):
        check_series(RunConfig(carbon_intensity_csv=str(tmp_path / "missing.csv")))
    now = T0 + 600
    assert check_series(RunConfig(carbon_intensity_csv=str(path), start_below_gco2=100), now=now).end == T0 + 6 * 3600
    with pytest.raises(ConfigError, match="no interval below start_below_gco2=40"):
        check_series(RunConfig(carbon_intensity_csv=str(path), start_below_gco2=40), now=now)


# ---------------------------------------------------------------- the wait


class FakeClock:
    """time.time and time.sleep for a wait that takes no real time."""

    def __init__(self, now: float, on_sleep: object = None) -> None:
        self.now, self.slept, self.on_sleep = now, 0, on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += 1
        if self.on_sleep:
            self.on_sleep(self)


def test_wait_until_below_waits_for_the_first_low_hour(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series = read_series(write_series(tmp_path / "s.csv", HOURLY))
    clock = FakeClock(T0 + 600)
    waited = wait_until_below(100, series, clock=clock, sleep=clock.sleep, poll_s=60, report_every_s=1800)
    assert waited == pytest.approx(2 * 3600 - 600) and clock.now == T0 + 2 * 3600
    err = capsys.readouterr().err
    assert "carbon: waiting until 2026-12-01 02:00 UTC (1h50m) for 50 gCO2eq/kWh < 100" in err
    assert err.count("still waiting until 2026-12-01 02:00 UTC") == 3  # every 30 min of the 110
    assert wait_until_below(350, series, clock=FakeClock(T0 + 4000)) == 0.0  # 300 g now: no wait
    with pytest.raises(ConfigError, match="no interval below start_below_gco2=40"):
        wait_until_below(40, series, clock=FakeClock(T0))


def test_wait_stops_at_an_interrupt(tmp_path: Path) -> None:
    series = read_series(write_series(tmp_path / "s.csv", HOURLY))
    clock = FakeClock(T0, on_sleep=lambda c: c.slept == 3 and interrupts._on_signal(2, None))
    interrupts.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            wait_until_below(100, series, clock=clock, sleep=clock.sleep, poll_s=1)
    finally:
        interrupts.reset()
        import signal

        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert clock.slept == 3 and clock.now == T0 + 3


def test_the_wait_is_measured_as_a_ledger_phase(tmp_path: Path) -> None:
    """The real CodeCarbon meter: the current interval is dirty, the next (in ~2 s) clean."""
    import torch

    from greenstudy.measure.energy import EnergyMeter

    meter = EnergyMeter(torch.device("cpu"))
    meter.start()
    now = time.time()
    rows = ["t,g", f"{now - 10:.3f},500", f"{now + 2:.3f},80", f"{now + 3602:.3f},80"]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    config = RunConfig(carbon_intensity_csv=str(tmp_path / "s.csv"), start_below_gco2=100)
    ledger: list[PhaseEnergy] = []
    try:
        waited = wait_for_low_carbon(meter, ledger, config, poll_s=0.2)
        assert wait_for_low_carbon(meter, ledger, config) == 0.0  # low now: no second phase
        with pytest.raises(ConfigError, match="no interval below start_below_gco2=40"):
            wait_for_low_carbon(meter, ledger, config.replace(start_below_gco2=40))  # nothing that clean ahead
    finally:
        meter.stop()
    assert 1.0 < waited < 4.0 and time.time() >= now + 2
    assert [(p.name, p.kind) for p in ledger] == [(WAIT_PHASE, WAIT_KIND)] and WAIT_KIND in KINDS
    wait = ledger[0]
    assert wait.energy_kwh > 0 and wait.seconds == pytest.approx(waited, abs=0.5)
    assert wait_metrics(ledger) == {"wait_seconds": wait.seconds, "wait_energy_kwh": wait.energy_kwh,
                                    "wait_emissions_kg": wait.emissions_kg}
    # CodeCarbon priced the wait on its own grid (USA, annual) at the intensity our table look-up reads
    assert wait.emissions_kg == pytest.approx(wait.energy_kwh * lookup("USA").kg_per_kwh, rel=1e-9)
    assert utc(now).endswith("UTC")


def test_tune_refuses_a_series_that_cannot_price_it_before_loading_data(tmp_path: Path) -> None:
    """One `error:` line within seconds: the series ended before the run (no data folder is even looked at)."""
    import subprocess

    from tests.conftest import PYTHON, ROOT, entry_env

    series = write_series(tmp_path / "past.csv", HOURLY)
    began = time.monotonic()
    done = subprocess.run([PYTHON, str(ROOT / "mlproject" / "tune.py"), "--data-dir", str(tmp_path / "no-data"),
                           "--download", "false", "--carbon-intensity-csv", str(series), "--start-below-gco2", "100"],
                          env=entry_env(f"sqlite:///{tmp_path / 'mlflow.db'}"), cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and time.monotonic() - began < 60
    lines = [line for line in done.stderr.splitlines() if line.strip() and "INFO" not in line]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: carbon_intensity_csv covers {utc(T0)} .. {utc(T0 + 6 * 3600)}, which ends "
                               "before this run starts")
