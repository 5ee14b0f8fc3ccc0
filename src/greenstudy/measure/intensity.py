"""Annual carbon intensity of grids and cloud regions, read from the installed CodeCarbon's own tables
(never copied into the project): countries from `data/private_infra/global_energy_mix.json` (field
`carbon_intensity`, gCO2eq/kWh, and its `year`), cloud regions from `data/cloud/impact.csv` (`impact`,
gCO2eq/kWh, and its `source`; that table states no year).

A region is named `ISO3` (a country, e.g. `FRA`) or `provider:region` (e.g. `gcp:europe-north1`). These
are location-based annual averages: what an average kWh drawn there emitted, not a provider's
market-based figure after renewable purchases (impact.csv's `offsetRatio` is not applied).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from greenstudy.errors import ConfigError

COUNTRY_TABLE = "data/private_infra/global_energy_mix.json"
CLOUD_TABLE = "data/cloud/impact.csv"
CLOUD_YEAR = "not stated"  # impact.csv has no year column


@dataclass(frozen=True)
class GridIntensity:
    """One grid's annual carbon intensity and where the number comes from."""

    key: str  # as the user names it: FRA, gcp:europe-north1
    label: str  # for people: France, gcp:europe-north1 (FIN)
    g_per_kwh: float
    table: str  # e.g. codecarbon 3.3.2 data/cloud/impact.csv
    year: str
    source: str = ""  # the table's own source column, where it has one

    @property
    def kg_per_kwh(self) -> float:
        return self.g_per_kwh / 1000.0

    @property
    def citation(self) -> str:
        """`<table>, year <year>[, source <source>]`: what every figure names."""
        text = f"{self.table}, year {self.year}"
        return f"{text}, source {self.source}" if self.source else text


def codecarbon_file(relative: str) -> str:
    """Absolute path of a data file inside the installed codecarbon package."""
    return str(resources.files("codecarbon").joinpath(relative))


def _table_name(relative: str) -> str:
    import codecarbon

    return f"codecarbon {codecarbon.__version__} {relative}"


@cache
def country_intensities() -> dict[str, GridIntensity]:
    """Every country of CodeCarbon's energy-mix table that states a carbon intensity."""
    with open(codecarbon_file(COUNTRY_TABLE)) as handle:
        data = json.load(handle)
    table = _table_name(COUNTRY_TABLE)
    found = {}
    for iso, entry in data.items():
        if entry.get("carbon_intensity") is not None:
            found[iso] = GridIntensity(iso, str(entry.get("country_name") or iso), float(entry["carbon_intensity"]),
                                       table, str(entry.get("year", "not stated")))
    return found


@cache
def cloud_intensities() -> dict[str, GridIntensity]:
    """Every cloud region of CodeCarbon's impact table, keyed `provider:region`."""
    with open(codecarbon_file(CLOUD_TABLE), newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    table = _table_name(CLOUD_TABLE)
    found = {}
    for row in rows:
        key = f"{row['provider'].strip()}:{row['region'].strip()}"
        found[key] = GridIntensity(key, f"{key} ({row['countryIsoCode']})", float(row["impact"]), table, CLOUD_YEAR,
                                   row.get("source", "").strip())
    return found


def lookup(name: str) -> GridIntensity:
    """The intensity of one country (ISO3) or cloud region (provider:region); ConfigError otherwise."""
    key = name.strip()
    if ":" in key:
        provider, region = (part.strip().lower() for part in key.split(":", 1))
        clouds = cloud_intensities()
        if f"{provider}:{region}" in clouds:
            return clouds[f"{provider}:{region}"]
        providers = sorted({k.split(":")[0] for k in clouds})
        known = sorted(k.split(":", 1)[1] for k in clouds if k.startswith(provider + ":"))
        hint = f"{provider} regions there: {', '.join(known)}" if known else f"providers there: {', '.join(providers)}"
        raise ConfigError(f"cloud region {key!r} is not in {_table_name(CLOUD_TABLE)} ({hint})")
    countries = country_intensities()
    if key.upper() in countries:
        return countries[key.upper()]
    raise ConfigError(f"region {key!r} is neither an ISO 3166-1 alpha-3 country of {_table_name(COUNTRY_TABLE)} "
                      "(e.g. FRA) nor provider:region of the cloud table (e.g. gcp:europe-north1)")


def default_regions() -> list[GridIntensity]:
    """The lowest, median and highest bundled cloud regions (ties broken by name)."""
    ranked = sorted(cloud_intensities().values(), key=lambda g: (g.g_per_kwh, g.key))
    if not ranked:
        raise ConfigError(f"{_table_name(CLOUD_TABLE)} lists no region")
    picks = [ranked[0], ranked[(len(ranked) - 1) // 2], ranked[-1]]
    return list({g.key: g for g in picks}.values())


def parse_regions(text: str | None) -> list[GridIntensity]:
    """`-P regions=FRA,POL,gcp:europe-north1`; empty, `default` or `none` = `default_regions()`."""
    names = [part.strip() for part in (text or "").split(",") if part.strip()]
    if not names or [n.lower() for n in names] in (["default"], ["none"]):
        return default_regions()
    picked = [lookup(name) for name in names]
    return list({g.key: g for g in picked}.values())
