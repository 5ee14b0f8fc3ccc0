"""The `report` entry point: the `main` entry point's variant runs compared in one table and four pictures,
logged to a new MLflow run tagged `kind=report` (and, with `register`, the decision in the Model Registry).

Where it reads: the experiment named by `experiment`; by default (empty) where the runs are: under
`mlflow run`, the experiment of the run that launched the report (MLFLOW_RUN_ID); run directly, every
experiment holding greenstudy runs (tag kind=parent). It says which experiment(s) it read.

What it compares: child runs tagged kind=variant (Optuna trials, kind=trial, only with `include_trials`),
optionally only those under given parent runs and/or matching an MLflow search filter. A run is reported
only if it FINISHED with the metric contract; every other child (failed, skipped variants, missing
metrics) is listed with the reason in the output and in `skipped.csv`. An experiment with nothing to
report still gets a report run (tag `report_empty=true`) saying why. Bad input is an error before any
run is created. The pure logic is greenstudy.report.comparison, the pictures greenstudy.report.plots.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.entities import Experiment, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from greenstudy.cli import one_line_parser
from greenstudy.config import parse_bool
from greenstudy.errors import ConfigError
from greenstudy.measure.carbon import IntensitySeries, read_series
from greenstudy.measure.intensity import GridIntensity, parse_regions
from greenstudy.report.comparison import (
    AGGREGATES,
    ROW_COLUMNS,
    SKIPPED_COLUMNS,
    Curve,
    RunPoint,
    Skipped,
    classify,
    comparison_rows,
    cumulative_curve,
    phase_breakdown,
)
from greenstudy.report.html import markdown_table, render_report_html
from greenstudy.report.plots import (
    model_colours,
    plot_accuracy_vs_energy,
    plot_energy_breakdown,
    plot_learning_curves,
    write_accuracy_vs_energy_html,
)
from greenstudy.report.regions import REGION_COLUMNS, plot_region_emissions, region_rows, regions_html
from greenstudy.report.registry import Registered, check_within_points, register_front
from greenstudy.report.timing import TIMING_COLUMNS, timing_html, timing_rows
from greenstudy.tracking import ensure_tracking_reachable, run_scope, write_dict_csv

DEFAULT_EXPERIMENT = ""  # = where the runs are (see resolve_experiments)
REGISTRY_COLUMNS = ("name", "version", "run_id", "variant", "aliases", "created")


@dataclass
class ReportResult:
    """What a report run holds, with the counts the pictures were checked against."""

    experiment: str  # the experiment(s) read, as shown
    run_id: str
    artifact_uri: str
    rows: list[dict[str, object]]
    points: list[RunPoint]
    skipped: list[Skipped]
    counts: dict[str, int] = field(default_factory=dict)
    registered: list[Registered] = field(default_factory=list)
    grids: list[GridIntensity] = field(default_factory=list)  # where to train: the grids priced
    series: IntensitySeries | None = None  # when to train: the hourly series, if given

    @property
    def empty(self) -> bool:
        return not self.points

    @property
    def in_progress(self) -> list[Skipped]:  # child runs still going when read: listed, never compared
        return [s for s in self.skipped if s.in_progress]

    @property
    def report_location(self) -> str:
        """Local path of report.html where the artifacts are local files, else its URI."""
        uri = self.artifact_uri.rstrip("/")
        if uri.startswith("file://"):
            uri = unquote(urlparse(uri).path)
        return uri + "/report.html"


# ---------------------------------------------------------------- reading MLflow


def resolve_experiments(client: MlflowClient, name: str = "") -> list[Experiment]:
    """The experiments to read: `name`; else the launching run's (under `mlflow run`); else every
    experiment holding a greenstudy parent run, the one with the latest parent first."""
    if name:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise ConfigError(f"experiment {name!r} not found in {mlflow.get_tracking_uri()}")
        return [experiment]
    launched = os.environ.get("MLFLOW_RUN_ID")
    if launched:
        try:
            return [client.get_experiment(client.get_run(launched).info.experiment_id)]
        except MlflowException as exc:
            raise ConfigError(f"MLFLOW_RUN_ID {launched!r} is not a run of {mlflow.get_tracking_uri()}") from exc
    latest: list[tuple[int, Experiment]] = []
    for experiment in client.search_experiments(max_results=50000):
        parents = client.search_runs([experiment.experiment_id], "tags.kind = 'parent'", max_results=1,
                                     order_by=["attributes.start_time DESC"])
        if parents:
            latest.append((parents[0].info.start_time or 0, experiment))
    if not latest:
        raise ConfigError(f"no experiment in {mlflow.get_tracking_uri()} holds greenstudy runs (tag kind=parent): "
                          "run `mlflow run . --env-manager local` first, or name one with experiment=")
    return [experiment for _, experiment in sorted(latest, key=lambda item: -item[0])]


def describe(experiments: Sequence[Experiment]) -> str:
    return ", ".join(f"{e.name!r} (id {e.experiment_id})" for e in experiments)


def parse_parent_run_ids(text: str | Sequence[str] | None) -> list[str]:
    """Comma-separated run ids; empty or 'none' means no restriction."""
    if text is None:
        return []
    parts = text.split(",") if isinstance(text, str) else list(text)
    ids = [p.strip() for p in parts if p.strip()]
    return [] if [i.lower() for i in ids] == ["none"] else ids


def fetch_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str, parent_run_ids: list[str]) -> list[Run]:
    """Every run matching the filter (all pages), restricted to children of the parents if any are given."""
    runs: list[Run] = []
    token = None
    while True:
        try:
            page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        except MlflowException as exc:
            raise ConfigError(f"MLflow rejected filter {filter_string!r}: {exc.message.splitlines()[0]}") from exc
        runs.extend(page)
        token = page.token
        if not token:
            break
    if parent_run_ids:
        wanted = set(parent_run_ids)
        runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in wanted]
    return runs


def parent_experiments(client: MlflowClient, parent_run_ids: list[str]) -> list[Experiment]:
    """Experiments of the given parent runs; an unknown id is an error."""
    found = []
    for run_id in parent_run_ids:
        try:
            found.append(client.get_experiment(client.get_run(run_id).info.experiment_id))
        except MlflowException as exc:
            raise ConfigError(f"parent run {run_id!r} not found: {exc.message.splitlines()[0]}") from exc
    return found


def fetch_curves(client: MlflowClient, points: Sequence[RunPoint]) -> list[Curve]:
    """Learning curves from the metric history. A run derived from another (tag `derived_from`) with
    epochs of its own (pruned's fine-tuning) starts where that run's training ended; one without epochs
    of its own (quantized) is drawn with the epochs of the run it derives from."""
    cache: dict[str, tuple[dict[int, float], dict[int, float]]] = {}

    def history(run_id: str) -> tuple[dict[int, float], dict[int, float]]:
        if run_id not in cache:
            cache[run_id] = _history(client, run_id)
        return cache[run_id]

    curves = []
    for p in points:
        own, source = history(p.run_id), p.tags.get("derived_from", "")
        upstream = history(source) if source else ({}, {})
        if source and (not own[0] or own == upstream):  # no epochs of its own (older runs: a copy of them)
            xs, ys = cumulative_curve(*upstream)
            if xs:
                curves.append(Curve(p.run_id, p.label, xs, ys, derived=True, source=source))
            continue
        offset = sum(upstream[1].values())
        xs, ys = cumulative_curve(*own, offset)
        if xs and upstream[0]:  # joined to where its source's training ended
            xs, ys = [offset, *xs], [upstream[0][max(upstream[0])], *ys]
        if xs:
            curves.append(Curve(p.run_id, p.label, xs, ys, derived=bool(upstream[0])))
    return curves


def _history(client: MlflowClient, run_id: str) -> tuple[dict[int, float], dict[int, float]]:
    try:
        acc = {m.step: m.value for m in client.get_metric_history(run_id, "val_acc1")}
        energy = {m.step: m.value for m in client.get_metric_history(run_id, "epoch_energy_kwh")}
    except MlflowException:  # a derived_from run that was deleted
        return {}, {}
    return acc, energy


# ---------------------------------------------------------------- the report run


def build_report(
    experiment: str = DEFAULT_EXPERIMENT, parent_run_ids: str | Sequence[str] | None = None,
    filter_string: str = "", aggregate: str = "latest", include_trials: bool = False,
    register: bool = False, within_points: float = 1.0, regions: str = "default", carbon_intensity_csv: str = "",
) -> ReportResult:
    """Read the runs, log the comparison to a new run tagged kind=report and, with `register`, register
    the front of each model (greenstudy.report.registry)."""
    if aggregate not in AGGREGATES:
        raise ConfigError(f"unknown aggregate {aggregate!r}: choose one of {', '.join(AGGREGATES)}")
    check_within_points(within_points)
    grids, series = parse_regions(regions), read_series(carbon_intensity_csv) if carbon_intensity_csv else None
    ensure_tracking_reachable()
    client = MlflowClient()
    experiments = resolve_experiments(client, experiment)
    parents = parse_parent_run_ids(parent_run_ids)
    read = list({e.experiment_id: e for e in [*experiments, *parent_experiments(client, parents)]}.values())
    points, skipped = classify(fetch_runs(client, [e.experiment_id for e in read], filter_string or "", parents),
                               include_trials)
    rows = comparison_rows(points, aggregate)
    curves = fetch_curves(client, points)
    shown = describe(read)
    message = _message(shown, points, skipped, rows)
    tags = {"kind": "report", "report_empty": str(not points).lower(), "experiments_read": shown[:5000],
            "runs_in_progress": ",".join(s.run_id for s in skipped if s.in_progress)[:5000] or "none"}
    with run_scope("report", experiments[0].name, tags=tags) as run:
        wanted = {"experiment": experiment or "auto", "parent_run_ids": ",".join(parents) or "none",
                  "filter": filter_string or "", "aggregate": aggregate, "include_trials": str(include_trials).lower(),
                  "register": str(register).lower(), "within_points": within_points, "regions": regions or "default",
                  "carbon_intensity_csv": carbon_intensity_csv}
        logged = mlflow.get_run(run.info.run_id).data.params  # `mlflow run` logged the entry point's params already
        mlflow.log_params({k: v for k, v in wanted.items() if k not in logged})
        result = ReportResult(shown, run.info.run_id, run.info.artifact_uri, rows, points, skipped, grids=grids,
                              series=series)
        if register:
            result.registered = register_front(client, points, within_points)
            mlflow.set_tag("registered_models", ",".join(sorted({r.name for r in result.registered})) or "none")
        with tempfile.TemporaryDirectory() as tmp:
            result.counts = _write_artifacts(result, curves, aggregate, message, Path(tmp))
            mlflow.log_artifacts(tmp)
        mlflow.log_metrics({"runs_reported": len(points), "runs_skipped": len(skipped), "rows": len(rows),
                            "runs_in_progress": len(result.in_progress),
                            **{f"{name}_plotted": float(n) for name, n in result.counts.items()}})
    return result


def write_skipped_csv(skipped: Sequence[Skipped], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SKIPPED_COLUMNS)
        for s in skipped:
            writer.writerow((s.run_id, s.run_name, s.model, s.variant, s.status, s.reason))
    return path


def _write_artifacts(result: ReportResult, curves: list[Curve], aggregate: str, message: str, out: Path) -> dict[str, int]:
    points = result.points
    write_dict_csv(result.rows, ROW_COLUMNS, out / "comparison.csv")
    (out / "comparison.md").write_text(markdown_table(result.rows, aggregate))
    write_skipped_csv(result.skipped, out / "skipped.csv")
    if result.registered:
        write_dict_csv([{**vars(r), "aliases": " ".join(r.aliases)} for r in result.registered], REGISTRY_COLUMNS,
                       out / "registry.csv")
    counts = {
        "points": plot_accuracy_vs_energy(points, out / "accuracy_vs_energy.png"),
        "html_points": write_accuracy_vs_energy_html(points, out / "accuracy_vs_energy.html"),
        "breakdown_runs": plot_energy_breakdown(points, [phase_breakdown(p) for p in points], out / "energy_breakdown.png"),
        "curves": plot_learning_curves(curves, out / "learning_curves.png", model_colours(points)),
    }
    where, when = region_rows(result.rows, result.grids), timing_rows(points, result.series)
    write_dict_csv(where, REGION_COLUMNS, out / "regions.csv")
    counts["region_bars"] = plot_region_emissions(where, result.grids, out / "emissions_by_region.png")
    if when:
        write_dict_csv(when, TIMING_COLUMNS, out / "timing.csv")
        counts["timing_rows"] = len(when)
    sections = [regions_html(where, result.grids, out / "emissions_by_region.png"), timing_html(when, result.series)]
    pictures = {
        "Accuracy against lifecycle energy per run": out / "accuracy_vs_energy.png",
        "Own energy breakdown: CPU / GPU / RAM, train / val / setup / test": out / "energy_breakdown.png",
        "Validation accuracy against cumulative train + validation energy": out / "learning_curves.png",
    }
    page = render_report_html(result.experiment, message, result.rows, points, result.skipped, aggregate, pictures,
                              [r.line() for r in result.registered], sections)
    (out / "report.html").write_text(page)
    return counts


def _message(shown: str, points: list[RunPoint], skipped: list[Skipped], rows: list[dict[str, object]]) -> str:
    running = sum(s.in_progress for s in skipped)  # still going: listed, never compared
    if points:
        return f"{len(points)} runs compared in {len(rows)} rows; {len(skipped) - running} skipped, {running} in progress (read: {shown})"
    if running:
        return f"nothing to compare yet in {shown}: {running} run(s) in progress, {len(skipped) - running} skipped"
    if skipped:
        return f"nothing to compare in {shown}: all {len(skipped)} child runs were skipped (see skipped.csv)"
    return f"nothing to compare in {shown}: it has no variant runs (run `mlflow run . -e main` first)"


def summary_lines(result: ReportResult, aggregate: str = "latest") -> list[str]:
    """What a person reads at the end of the report."""
    lines = [f"read experiment(s): {result.experiment}", f"report run {result.run_id}",
             _message(result.experiment, result.points, result.skipped, result.rows)]
    for s in result.skipped:
        lines.append(f"  {'in progress' if s.in_progress else 'skipped'} {s.run_id} {s.run_name or '-'} "
                     f"({s.model or '?'}/{s.variant}): {s.reason}")
    if result.rows:
        lines.append(markdown_table(result.rows, aggregate).rstrip())
    lines += [f"registered: {r.line()}" for r in result.registered]
    lines.append(f"where to train: the energy priced on {', '.join(g.key for g in result.grids)} (regions.csv, "
                 f"emissions_by_region.png{', timing.csv' if result.series else ''})")
    lines.append(f"report: {result.report_location}")
    return lines


def report_for_experiment(
    experiment_name: str = DEFAULT_EXPERIMENT, parent_run_ids: str | Sequence[str] | None = None,
    filter_string: str = "", aggregate: str = "latest",
) -> tuple[str, str]:
    """Build the report and return (report run id, path or URI of its report.html)."""
    result = build_report(experiment_name, parent_run_ids, filter_string, aggregate)
    return result.run_id, result.report_location


def report_parser() -> argparse.ArgumentParser:
    """The `report` entry point's parser (MLproject's `report` section is checked against it)."""
    parser = one_line_parser("Compare the variant runs of the `main` entry point: table, plots, report.html.")
    add = parser.add_argument
    add("--experiment", default=DEFAULT_EXPERIMENT, help="experiment to read; empty = where the runs are (the launching "
        "run's experiment under `mlflow run`, else every experiment holding greenstudy runs)")
    add("--parent-run-ids", default="none", help="comma-separated parent run ids (default: all)")
    add("--filter", default="", help="MLflow search filter, e.g. \"tags.model = 'resnet18'\"")
    add("--aggregate", default="latest", choices=AGGREGATES,
        help="one table row per (model, variant, config): the latest run or the mean over its runs")
    add("--include-trials", type=parse_bool, default=False, help="also compare Optuna trials (kind=trial)")
    add("--register", type=parse_bool, default=False, help="register each model's front in the Model Registry")
    add("--within-points", type=float, default=1.0, help="accuracy points for the accurate-within-<N>pt alias")
    add("--regions", default="default", help="grids to price the energy on: ISO3 countries and provider:region cloud "
        "regions, e.g. FRA,POL,gcp:europe-north1; default: the lowest, median and highest bundled cloud regions")
    add("--carbon-intensity-csv", default="", help="hourly series (timestamp UTC, gCO2eq/kWh) to price each run's hours")
    return parser
