"""When a run draws its energy: an hourly (or finer) carbon-intensity series priced against the ledger.

The series is a CSV a user exports from a grid operator or an intensity service: first column the
timestamp in UTC (ISO 8601, e.g. `2026-12-03T14:00Z`, or unix seconds; a naive timestamp is UTC), second
column gCO2eq/kWh; an optional header row. Each row's intensity holds from its timestamp until the next
row's; the last row for one step (the series' typical step). Steps longer than an hour are refused.

Pricing (`price`): each phase's energy is spread evenly over its own seconds (a phase's power is taken
as constant) and each slice is priced at the intensity of the interval it fell in. A phase outside the
series is `SeriesGap`, never a silent zero. `best_start` slides the run's measured power profile (its
phases at their offsets from the run's first phase) to every timestamp of the series it fits behind, and
returns the cheapest start. `wait_until_below` waits, interruptibly, for the first interval whose
intensity is below a threshold.
"""

from __future__ import annotations

import bisect
import csv
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from greenstudy.errors import ConfigError
from greenstudy.interrupts import stop_if_interrupted
from greenstudy.progress import duration, say

MAX_STEP_S = 3600.0


class SeriesGap(ConfigError):
    """The series does not cover a phase's hours."""


class PhaseLike(Protocol):
    """What pricing reads of a ledger phase (greenstudy.measure.ledger.PhaseEnergy)."""

    name: str
    energy_kwh: float
    seconds: float
    started_at: float


def utc(seconds: float) -> str:
    """Unix time as `2026-12-03 14:00 UTC`."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def parse_timestamp(text: str) -> float:
    """ISO 8601 (naive = UTC, `Z` accepted) or unix seconds -> unix seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(frozen=True)
class IntensitySeries:
    """Intensity (gCO2eq/kWh) from `starts[i]` until `starts[i+1]`; the last one until `end`."""

    starts: tuple[float, ...]
    g_per_kwh: tuple[float, ...]
    step_s: float
    source: str = ""

    @property
    def end(self) -> float:
        return self.starts[-1] + self.step_s

    def bounds(self, i: int) -> tuple[float, float]:
        return self.starts[i], (self.starts[i + 1] if i + 1 < len(self.starts) else self.end)

    def covers(self, start: float, stop: float) -> bool:
        return self.starts[0] <= start and stop <= self.end

    def index_at(self, moment: float) -> int:
        """The interval holding `moment` (it must be covered)."""
        return bisect.bisect_right(self.starts, moment) - 1

    def span(self) -> str:
        return f"{utc(self.starts[0])} .. {utc(self.end)}"

    def mean_g_per_kwh(self, start: float, stop: float) -> float:
        """Time-weighted mean intensity over [start, stop] (covered)."""
        if stop <= start:
            return self.g_per_kwh[self.index_at(start)]
        total = 0.0
        for i in range(max(0, self.index_at(start)), len(self.starts)):
            lo, hi = self.bounds(i)
            if lo >= stop:
                break
            total += self.g_per_kwh[i] * max(0.0, min(hi, stop) - max(lo, start))
        return total / (stop - start)


def read_series(path: str | Path) -> IntensitySeries:
    """Read and check a series CSV; every problem is one ConfigError line naming the file and row."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"carbon_intensity_csv {str(path)!r} is not a file")
    starts: list[float] = []
    values: list[float] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2:
                raise ConfigError(f"{path}:{number}: expected `timestamp (UTC), gCO2eq/kWh`, got {row!r}")
            try:
                value = float(row[1])
            except ValueError:
                if not starts and number == 1:  # a header row
                    continue
                raise ConfigError(f"{path}:{number}: intensity {row[1]!r} is not a number (gCO2eq/kWh)") from None
            try:
                moment = parse_timestamp(row[0])
            except ValueError:
                raise ConfigError(f"{path}:{number}: timestamp {row[0]!r} is neither ISO 8601 nor unix seconds") from None
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{path}:{number}: intensity must be a finite number >= 0, got {row[1]!r}")
            if starts and moment <= starts[-1]:
                raise ConfigError(f"{path}:{number}: timestamps must increase ({row[0]!r} is not after the row before)")
            starts.append(moment)
            values.append(value)
    if len(starts) < 2:
        raise ConfigError(f"{path}: a series needs at least two rows (timestamp, gCO2eq/kWh); found {len(starts)}")
    steps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    if max(steps) > MAX_STEP_S:
        at = steps.index(max(steps))
        raise ConfigError(f"{path}: rows must be hourly or finer; {utc(starts[at])} to {utc(starts[at + 1])} is a "
                          f"{duration(max(steps))} gap")
    return IntensitySeries(tuple(starts), tuple(values), statistics.median(steps), str(path))


def phase_kg(phase: PhaseLike, series: IntensitySeries) -> float:
    """kg CO2eq of one phase at the intensity of the intervals it ran in (SeriesGap outside the series)."""
    start, stop = phase.started_at, phase.started_at + max(0.0, phase.seconds)
    if not series.covers(start, stop):
        raise SeriesGap(f"carbon_intensity_csv covers {series.span()}; phase {phase.name} ran {utc(start)} .. "
                        f"{utc(stop)}, outside it: no hourly figure for it")
    return phase.energy_kwh * series.mean_g_per_kwh(start, stop) / 1000.0


def price(phases: Sequence[PhaseLike], series: IntensitySeries) -> float:
    """kg CO2eq of the phases, each at the intensity of the hours it ran."""
    return sum(phase_kg(phase, series) for phase in phases)


def shifted_kg(phases: Sequence[PhaseLike], series: IntensitySeries, start: float) -> float:
    """kg CO2eq of the same power profile had its first phase started at `start`."""
    origin = min(p.started_at for p in phases)
    total = 0.0
    for p in phases:
        begin = start + p.started_at - origin
        total += p.energy_kwh * series.mean_g_per_kwh(begin, begin + max(0.0, p.seconds)) / 1000.0
    return total


@dataclass(frozen=True)
class BestStart:
    """The cheapest start of a power profile within a series, against the start it really had."""

    start: float
    kg: float
    actual_kg: float

    @property
    def saving_pct(self) -> float:
        return 100.0 * (self.actual_kg - self.kg) / self.actual_kg if self.actual_kg > 0 else 0.0

    def line(self) -> str:
        return (f"had this run started at the best hour of the series ({utc(self.start)}), it would have emitted "
                f"{self.saving_pct:.1f} % less ({self.kg * 1000:.3g} g instead of {self.actual_kg * 1000:.3g} g CO2eq)")


def best_start(phases: Sequence[PhaseLike], series: IntensitySeries) -> BestStart:
    """The start (a timestamp of the series) that minimises the profile's emissions; the profile must fit
    behind it inside the series, and the run's real start must be covered (SeriesGap otherwise)."""
    if not phases:
        raise ConfigError("no measured phase to shift: the ledger is empty")
    actual = price(phases, series)
    origin = min(p.started_at for p in phases)
    length = max(p.started_at + max(0.0, p.seconds) for p in phases) - origin
    candidates = [s for s in series.starts if s + length <= series.end]
    if not candidates:
        raise SeriesGap(f"carbon_intensity_csv covers {series.span()}: shorter than the run ({duration(length)})")
    best = min(candidates, key=lambda s: (shifted_kg(phases, series, s), s))
    return BestStart(best, shifted_kg(phases, series, best), actual)


def timed_figures(own: Sequence[PhaseLike], upstream: Sequence[PhaseLike], series: IntensitySeries
                  ) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics and tags of the "when" figures of one run: own and lifecycle emissions at the hours they
    ran, and the best start of the run's own power profile. A phase outside the series gives no metric
    and a tag `emissions_timed` saying why (the stated fallback, never a zero)."""
    try:
        own_kg = price(own, series)
    except SeriesGap as gap:
        return {}, {"emissions_timed": f"not computed: {gap}"}
    energy = sum(p.energy_kwh for p in own)
    metrics = {"emissions_kg_timed": own_kg, "intensity_timed_g_per_kwh": 1000.0 * own_kg / energy if energy > 0 else 0.0}
    tags = {"emissions_timed": f"priced on {series.source} ({series.span()})"}
    try:  # a baseline priced elsewhere (e.g. from_run, last week) leaves this run's own figure standing
        metrics["lifecycle_emissions_kg_timed"] = own_kg + price(upstream, series)
    except SeriesGap as gap:
        tags["lifecycle_emissions_timed"] = f"not computed: {gap}"
    latest = max((getattr(p, "sitting", 1) for p in own), default=1)
    profile = [p for p in own if getattr(p, "sitting", 1) == latest]  # a resumed run: its last sitting's profile
    try:
        best = best_start(profile, series)
    except SeriesGap as gap:
        tags["best_start_utc"] = f"not computed: {gap}"
        return metrics, tags
    metrics.update(best_start_emissions_kg=best.kg, best_start_saving_pct=best.saving_pct, best_start_unix=best.start)
    return metrics, {**tags, "best_start_utc": utc(best.start)}


def first_below(series: IntensitySeries, threshold: float, now: float) -> float | None:
    """When the first interval (the current one included) below `threshold` starts; `now` if it is now;
    None when the series has none from `now` on."""
    if now >= series.end:
        return None
    for i in range(max(0, series.index_at(now)), len(series.starts)):
        lo, hi = series.bounds(i)
        if hi > now and series.g_per_kwh[i] < threshold:
            return max(lo, now)
    return None


def nothing_below(threshold: float, series: IntensitySeries, now: float) -> ConfigError:
    """The one-line error of a series with no interval below `threshold` from `now` on."""
    return ConfigError(f"carbon_intensity_csv has no interval below start_below_gco2={threshold:g} gCO2eq/kWh "
                       f"between now ({utc(now)}) and its end ({utc(series.end)})")


def wait_until_below(
    threshold: float, series: IntensitySeries, *, clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep, poll_s: float = 1.0, report_every_s: float = 900.0,
) -> float:
    """Block until the first interval whose intensity is below `threshold` (gCO2eq/kWh); a line says until
    when, another every `report_every_s`. Ctrl-C/SIGTERM stop it at the next poll. Returns the seconds
    waited. A series with no such interval from now on is a ConfigError before any wait."""
    began = clock()
    target = first_below(series, threshold, began)
    if target is None:
        raise nothing_below(threshold, series, began)
    if target <= began:
        return 0.0
    at = series.g_per_kwh[series.index_at(target)]
    say(f"carbon: waiting until {utc(target)} ({duration(target - began)}) for {at:g} gCO2eq/kWh < "
        f"{threshold:g} (start_below_gco2); Ctrl-C stops the wait")
    last_line = began
    while (now := clock()) < target:
        stop_if_interrupted()
        if now - last_line >= report_every_s:
            say(f"carbon: still waiting until {utc(target)}, {duration(target - now)} left")
            last_line = now
        sleep(min(poll_s, target - now))
    return clock() - began
