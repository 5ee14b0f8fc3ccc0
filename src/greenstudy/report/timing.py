"""When to train: with `-P carbon_intensity_csv=PATH` the report prices each compared run's phases (its
`energy_ledger.csv` artifact) at the intensity of the hours they ran, and says how much less the run would
have emitted had it started at the best hour of the series (greenstudy.measure.carbon). Without a series it
shows the figures the runs logged themselves (`emissions_kg_timed`, `best_start_*`), where they did."""

from __future__ import annotations

import html
import tempfile
from collections.abc import Sequence

from greenstudy.measure.carbon import IntensitySeries, timed_figures, utc
from greenstudy.measure.ledger import MAKE_AND_CHECK, UPSTREAM_KINDS, read_ledger_csv
from greenstudy.report.comparison import RunPoint
from greenstudy.report.html import _html_table

TIMING_COLUMNS = (
    "run_id", "model", "variant", "emissions_kg", "emissions_kg_timed", "lifecycle_emissions_kg_timed",
    "intensity_timed_g_per_kwh", "best_start_utc", "best_start_emissions_kg", "best_start_saving_pct", "note",
)
TIMING_NOTE = (
    "emissions_kg: the annual average of the run's grid (country_iso_code), as CodeCarbon logged it. Timed: each "
    "phase's measured energy (spread evenly over the phase) at the intensity of the hours it ran. Best start: the "
    "run's measured power profile (own train/val/setup/test phases, their gaps kept) moved to each start of the "
    "series it fits behind; inference and waits are left out."
)


def _ledger(run_id: str) -> tuple[list, list] | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="energy_ledger.csv", dst_path=tmp)
        except (MlflowException, OSError):
            return None
        own, upstream = read_ledger_csv(path)
    return [p for p in own.of(*MAKE_AND_CHECK) if not p.name.startswith("wait/")], upstream.of(*UPSTREAM_KINDS)


def timing_rows(points: Sequence[RunPoint], series: IntensitySeries | None) -> list[dict[str, object]]:
    """One row per run: priced on `series` from its ledger, else what the run logged (rows only where it did)."""
    rows = []
    for p in points:
        row: dict[str, object] = {"run_id": p.run_id, "model": p.model, "variant": p.variant,
                                  "emissions_kg": p.metrics.get("emissions_kg", "")}
        if series is None:
            if "emissions_kg_timed" not in p.metrics and "emissions_timed" not in p.tags:
                continue
            row.update({k: p.metrics[k] for k in TIMING_COLUMNS if k in p.metrics})
            row.update(best_start_utc=p.tags.get("best_start_utc", ""), note=p.tags.get("emissions_timed", ""))
        elif (ledger := _ledger(p.run_id)) is None:
            row["note"] = "not computed: the run has no energy_ledger.csv artifact"
        else:
            metrics, tags = timed_figures(*ledger, series)
            row.update({k: v for k, v in metrics.items() if k in TIMING_COLUMNS})
            if "best_start_unix" in metrics:
                row["best_start_utc"] = utc(metrics["best_start_unix"])
            row["note"] = tags.get("emissions_timed", "")
        rows.append(row)
    return rows


def advice(row: dict[str, object]) -> str:
    """"had this run started at the best hour of the series, it would have emitted X % less"."""
    if "best_start_saving_pct" not in row:
        return str(row.get("note", ""))
    return (f"had this run started at the best hour of the series ({row['best_start_utc']}), it would have "
            f"emitted {row['best_start_saving_pct']:.1f} % less")


def timing_html(rows: Sequence[dict[str, object]], series: IntensitySeries | None) -> str:
    """The report page's "When to train" section (empty without a series or logged figures)."""
    if not rows:
        return ""
    source = f"series {series.source} ({series.span()})" if series else "figures the runs logged"
    cells = [[f"{r['model']}/{r['variant']}", r["run_id"][:8], _g(r.get("emissions_kg")), _g(r.get("emissions_kg_timed")),
              _g(r.get("lifecycle_emissions_kg_timed")), advice(r)] for r in rows]
    return "".join([
        f"<h2>When to train: the hours the runs ran ({html.escape(source)})</h2>",
        f"<p>{html.escape(TIMING_NOTE)} Exact values: timing.csv.</p>",
        _html_table(("model/variant", "run", "g CO2eq, annual", "g CO2eq, timed", "lifecycle g, timed", "best start"),
                    cells),
    ])


def _g(kg: object) -> str:
    return f"{kg * 1000:.3g}" if isinstance(kg, int | float) and not isinstance(kg, bool) else "–"
