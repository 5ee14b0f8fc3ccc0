"""Where to train: each compared row's measured energy (own and lifecycle) priced on other grids — the
countries and cloud regions of `-P regions=…`, by default the lowest, median and highest cloud regions
CodeCarbon ships — as a table (`regions.csv`) and one picture (`emissions_by_region.png`). Every figure
names its source table and year (greenstudy.measure.intensity reads them from the installed CodeCarbon).

The same kWh everywhere: the energy measured on this machine, priced at each grid's annual, location-based
average. The `as logged` column is the emission CodeCarbon logged for the run on its own grid
(`country_iso_code`)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from greenstudy.measure.intensity import GridIntensity  # noqa: E402
from greenstudy.report.html import _html_table, _img  # noqa: E402

REGION_COLUMNS = (
    "model", "variant", "config", "region", "grid", "g_per_kwh", "source_table", "year", "source",
    "own_energy_kwh", "lifecycle_energy_kwh", "own_emissions_g", "lifecycle_emissions_g", "as_logged_lifecycle_g",
)
REGION_NOTE = (
    "Same measured energy on every grid: own and lifecycle kWh × the grid's annual average carbon intensity "
    "(location-based; a provider's market-based figure after renewable purchases would be lower). Hours differ "
    "within a year: see the timed figures for that."
)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def region_rows(rows: Sequence[dict[str, object]], grids: Sequence[GridIntensity]) -> list[dict[str, object]]:
    """One row per (comparison row, grid): its own and lifecycle energy priced on that grid, in g CO2eq."""
    out = []
    for row in rows:
        own, life = _number(row.get("own_energy_kwh")), _number(row.get("lifecycle_energy_kwh"))
        if own is None or life is None:
            continue
        logged = _number(row.get("lifecycle_emissions_kg"))
        for grid in grids:
            out.append({
                "model": row["model"], "variant": row["variant"], "config": row.get("config", ""),
                "region": grid.key, "grid": grid.label, "g_per_kwh": grid.g_per_kwh, "source_table": grid.table,
                "year": grid.year, "source": grid.source, "own_energy_kwh": own, "lifecycle_energy_kwh": life,
                "own_emissions_g": own * grid.g_per_kwh, "lifecycle_emissions_g": life * grid.g_per_kwh,
                "as_logged_lifecycle_g": "" if logged is None else logged * 1000.0,
            })
    return out


def _series_label(row: dict[str, object]) -> str:
    config = f" [{row['config']}]" if row.get("config") else ""
    return f"{row['model']}/{row['variant']}{config}"


def sources_caption(grids: Sequence[GridIntensity]) -> str:
    """One line per distinct table: what the intensities are and where they come from."""
    seen: dict[str, list[str]] = {}
    for grid in grids:
        seen.setdefault(grid.citation, []).append(grid.key)
    return "\n".join(f"{', '.join(keys)}: {citation}" for citation, keys in seen.items())


def plot_region_emissions(table: Sequence[dict[str, object]], grids: Sequence[GridIntensity], path: Path) -> int:
    """Grouped bars: lifecycle emissions (g CO2eq, log scale, value on top) per region, one bar per variant row,
    the own share as a hatched overlay; the grids ordered by intensity, their sources under the axes. Returns the
    number of bars drawn (one per table row)."""
    ordered = sorted(grids, key=lambda g: (g.g_per_kwh, g.key))
    series = list(dict.fromkeys(_series_label(r) for r in table))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(8.0, 1.6 * len(ordered) + 3), 6), layout="constrained")
    colours = plt.get_cmap("tab10").colors
    drawn = 0
    for s, label in enumerate(series):
        by_region = {r["region"]: r for r in table if _series_label(r) == label}
        xs = [i + (s - (len(series) - 1) / 2) * width for i, g in enumerate(ordered) if g.key in by_region]
        mine = [by_region[g.key] for g in ordered if g.key in by_region]
        bars = ax.bar(xs, [r["lifecycle_emissions_g"] for r in mine], width, color=colours[s % len(colours)],
                      label=f"{label} lifecycle", edgecolor="black", linewidth=0.5)
        ax.bar(xs, [r["own_emissions_g"] for r in mine], width * 0.5, color="none", edgecolor="black", hatch="//",
               linewidth=0.5, label="own (hatched)" if s == 0 else None)
        ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=2)
        drawn += len(bars)
    ax.set_xticks(range(len(ordered)), [f"{g.label}\n{g.g_per_kwh:g} gCO2eq/kWh" for g in ordered], fontsize=8)
    if drawn:
        ax.set_yscale("log")
        ax.legend(fontsize=8, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no finished runs to price", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("emissions of the measured energy (g CO2eq, log scale)")
    ax.set_title("Where to train: the same measured energy on other grids (annual averages)")
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.text(0.01, 0.005, "intensities: " + sources_caption(ordered), fontsize=6.5, va="bottom", wrap=True)
    fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def regions_html(table: Sequence[dict[str, object]], grids: Sequence[GridIntensity], picture: Path) -> str:
    """The report page's "Where to train" section: grids with their sources, the priced table, the picture."""
    grid_cells = [[g.key, g.label, f"{g.g_per_kwh:g}", g.table, g.year, g.source] for g in grids]
    cells = [[_series_label(r), r["region"], f"{r['g_per_kwh']:g}", f"{r['own_emissions_g']:.3g}",
              f"{r['lifecycle_emissions_g']:.3g}",
              "–" if r["as_logged_lifecycle_g"] == "" else f"{r['as_logged_lifecycle_g']:.3g}"] for r in table]
    return "".join([
        "<h2>Where to train: the same energy on other grids</h2>",
        f"<p>{html.escape(REGION_NOTE)} Exact values: regions.csv.</p>",
        _html_table(("region", "grid", "gCO2eq/kWh", "source table", "year", "source"), grid_cells),
        _html_table(("model/variant", "region", "gCO2eq/kWh", "own g CO2eq", "lifecycle g CO2eq",
                     "as logged (own grid), lifecycle g"), cells) if cells else "<p>No finished runs to price.</p>",
        _img(picture, "Lifecycle (bars) and own (hatched) emissions of each variant's measured energy per region"),
    ])
