"""What a `main` or `tune` run does with `carbon_intensity_csv` and `start_below_gco2` (greenstudy.measure.carbon):
check the series before anything runs, wait for a low-carbon hour (the wait measured as a ledger phase: a
wait costs energy too) and turn a finished run's ledger into its "when" metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import cache
from pathlib import Path
from typing import Protocol

from greenstudy.config import RunConfig
from greenstudy.errors import ConfigError
from greenstudy.measure.carbon import (
    IntensitySeries,
    first_below,
    nothing_below,
    read_series,
    timed_figures,
    utc,
    wait_until_below,
)
from greenstudy.measure.ledger import KINDS, MAKE_AND_CHECK, UPSTREAM_KINDS, Ledger, PhaseEnergy

# the wait's phase kind: `idle` once the ledger knows it, `setup` (one-time work, counted) until then
WAIT_KIND = "idle" if "idle" in KINDS else "setup"
WAIT_PHASE = "wait/start_below_gco2"


class Meter(Protocol):
    """greenstudy.measure.energy.EnergyMeter, as far as the wait uses it."""

    def phase(self, ledger: list[PhaseEnergy], name: str, kind: str, epoch: int = 0
              ) -> AbstractContextManager[PhaseEnergy]: ...


@cache
def _series(path: str, mtime: float) -> IntensitySeries:
    return read_series(path)


def series_of(config: RunConfig) -> IntensitySeries | None:
    """The run's series (read once per file version), or None without `carbon_intensity_csv`."""
    if not config.carbon_intensity_csv:
        return None
    path = Path(config.carbon_intensity_csv).resolve()
    if not path.is_file():
        raise ConfigError(f"carbon_intensity_csv {config.carbon_intensity_csv!r} is not a file ({path})")
    return _series(str(path), path.stat().st_mtime)


def check_series(config: RunConfig, now: float | None = None) -> IntensitySeries | None:
    """Before anything runs: the series reads, reaches past now (else it cannot price this run), and with
    `start_below_gco2` has an interval below the threshold from now on. ConfigError otherwise."""
    series = series_of(config)
    if series is None:
        return None
    now = time.time() if now is None else now
    if series.end <= now:
        raise ConfigError(f"carbon_intensity_csv covers {series.span()}, which ends before this run starts "
                          f"({utc(now)}): it cannot price the run's hours")
    threshold = config.start_below_gco2
    if threshold is not None and first_below(series, threshold, now) is None:
        raise nothing_below(threshold, series, now)
    return series


def wait_for_low_carbon(meter: Meter, ledger: list[PhaseEnergy], config: RunConfig, *,
                        clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                        poll_s: float = 1.0) -> float:
    """With `start_below_gco2`: wait for the first interval below it, measured as one phase appended to
    `ledger` (kind WAIT_KIND; cut short by Ctrl-C it stays `idle`, flagged `cut_short`, never in energy_kwh). Returns the seconds waited;
    0 and no phase when it is low already or no threshold is set."""
    series = series_of(config)
    if series is None or config.start_below_gco2 is None:
        return 0.0
    now = clock()
    target = first_below(series, config.start_below_gco2, now)
    if target is None:
        raise nothing_below(config.start_below_gco2, series, now)  # before any phase is measured
    if target <= now:
        return 0.0
    with meter.phase(ledger, WAIT_PHASE, WAIT_KIND):
        return wait_until_below(config.start_below_gco2, series, clock=clock, sleep=sleep, poll_s=poll_s)


def wait_metrics(phases: list[PhaseEnergy]) -> dict[str, float]:
    """`wait_seconds`, `wait_energy_kwh`, `wait_emissions_kg` of the wait phase(s) in `phases`."""
    waits = [p for p in phases if p.name == WAIT_PHASE]
    return {"wait_seconds": sum(p.seconds for p in waits), "wait_energy_kwh": sum(p.energy_kwh for p in waits),
            "wait_emissions_kg": sum(p.emissions_kg for p in waits)}


def timed_metrics(own: Ledger, upstream: Ledger | None, config: RunConfig) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) to log on a finished child run: `emissions_kg_timed` (its own make-and-check phases
    at the intensity of the hours they ran), `lifecycle_emissions_kg_timed`, the best start of its power
    profile; nothing without `carbon_intensity_csv`; a tag saying why where the series misses its hours."""
    series = series_of(config)
    if series is None:
        return {}, {}
    own_phases = [p for p in own.of(*MAKE_AND_CHECK) if p.name != WAIT_PHASE]
    upstream_phases = upstream.of(*UPSTREAM_KINDS) if upstream else []
    return timed_figures(own_phases, upstream_phases, series)
