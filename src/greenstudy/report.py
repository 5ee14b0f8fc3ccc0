"""The `report` entry point: every variant run of an experiment compared in one table and four pictures,
logged to a new MLflow run tagged `kind=report`.

What is read: the child runs (runs with a `variant` tag) of the experiment, optionally only those under
given parent runs and/or matching an MLflow search filter. A run is reported only if it FINISHED and has
the whole metric contract of the table; every other run is listed as skipped, with the reason, in the
output and in `skipped.csv`. An experiment with nothing to report still gets a report run (tag
`report_empty=true`) holding `skipped.csv` and a `report.html` that says why, so the answer is in the
UI next to the runs; the command then prints a clear message and exits 0. Bad input (an unknown
experiment or parent run, a filter MLflow rejects) is an error before any run is created.

One table row per (model, variant): the latest run (default) or the mean over the runs (`aggregate=mean`),
with `n_runs` saying how many there were. The plots show every reported run, not the rows.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from mlflow.entities import Run  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from greenstudy.errors import ConfigError  # noqa: E402
from greenstudy.pareto import pareto_front  # noqa: E402
from greenstudy.tracking import ensure_tracking_reachable, run_scope, write_dict_csv  # noqa: E402

DEFAULT_EXPERIMENT = "greenstudy-cifar100"
AGGREGATES = ("latest", "mean")
TABLE_METRICS = (
    "test_acc1", "energy_kwh", "emissions_kg", "infer_energy_wh_per_1k_images", "infer_images_per_second",
    "params", "macs", "model_size_mb",
)
# ratio columns: name -> (metric, "ratio" = run / baseline, "delta" = run - baseline)
BASELINE_COMPARISONS = {
    "test_acc1_delta_vs_baseline": ("test_acc1", "delta"),
    "energy_kwh_vs_baseline": ("energy_kwh", "ratio"),
    "emissions_kg_vs_baseline": ("emissions_kg", "ratio"),
    "infer_energy_vs_baseline": ("infer_energy_wh_per_1k_images", "ratio"),
    "infer_speed_vs_baseline": ("infer_images_per_second", "ratio"),
    "macs_vs_baseline": ("macs", "ratio"),
    "model_size_vs_baseline": ("model_size_mb", "ratio"),
}
ROW_COLUMNS = ("model", "variant", "n_runs", "run_id", *TABLE_METRICS, *BASELINE_COMPARISONS)
# energy phases of a child run; the training phase of `quantized` is its calibration, of `pruned`
# without fine-tuning its pruning step
PHASES = {"train": ("train", "calibrate", "prune"), "eval": ("eval",), "inference": ("inference",)}
COMPONENTS = ("cpu", "gpu", "ram")
COMPONENT_COLOURS = {"cpu": "#4c72b0", "gpu": "#55a868", "ram": "#c44e52"}
VARIANT_ORDER = ("baseline", "amp", "pruned", "quantized")
MARKERS = {"baseline": "o", "amp": "^", "pruned": "s", "quantized": "D"}
PLOTLY_SYMBOLS = {"baseline": "circle", "amp": "triangle-up", "pruned": "square", "quantized": "diamond"}
HARDWARE_TAGS = ("cpu_model", "gpu_model", "device", "energy_method", "codecarbon_version")
SKIPPED_COLUMNS = ("run_id", "run_name", "model", "variant", "status", "reason")
FRONT_LABEL = "non-dominated front"
RATIO_NOTE = ("× = ratio and Δ = difference against the same model's baseline. The energy of pruned and quantized "
              "runs is their own (pruning + fine-tuning or calibration, eval, inference), not the baseline training "
              "they start from.")


@dataclass(frozen=True)
class RunPoint:
    """One finished child run with the whole table contract."""

    run_id: str
    name: str
    model: str
    variant: str
    start_time: int
    metrics: dict[str, float]
    tags: dict[str, str]

    @property
    def label(self) -> str:
        return f"{self.model}/{self.variant}"


@dataclass(frozen=True)
class Skipped:
    """A child run left out of the report, and why."""

    run_id: str
    run_name: str
    model: str
    variant: str
    status: str
    reason: str


@dataclass(frozen=True)
class Curve:
    """val_acc1 against cumulative training energy (kWh) of one run."""

    run_id: str
    label: str
    energy_kwh: list[float]
    val_acc1: list[float]
    derived: bool = False


@dataclass
class ReportResult:
    """What a report run holds, with the counts the pictures were checked against."""

    experiment: str
    run_id: str
    artifact_uri: str
    rows: list[dict[str, object]]
    points: list[RunPoint]
    skipped: list[Skipped]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.points

    @property
    def report_location(self) -> str:
        """Local path of report.html where the artifacts are local files, else its URI."""
        uri = self.artifact_uri.rstrip("/")
        if uri.startswith("file://"):
            uri = unquote(urlparse(uri).path)
        return uri + "/report.html"


# ---------------------------------------------------------------- selecting runs (pure)


def classify(runs: Iterable[Run]) -> tuple[list[RunPoint], list[Skipped]]:
    """Split child runs (tag `variant`) into reportable points and skipped runs with a reason;
    runs without a `variant` tag (parents, studies, reports) are not children and are ignored."""
    points: list[RunPoint] = []
    skipped: list[Skipped] = []
    for run in runs:
        tags = run.data.tags
        if "variant" not in tags:
            continue
        model, variant, status = tags.get("model", ""), tags["variant"], run.info.status
        reason = _skip_reason(status, tags, run.data.metrics)
        if reason:
            skipped.append(Skipped(run.info.run_id, run.info.run_name or "", model, variant, status, reason))
        else:
            points.append(RunPoint(run.info.run_id, run.info.run_name or "", model, variant, run.info.start_time or 0,
                                   dict(run.data.metrics), dict(tags)))
    points.sort(key=lambda p: (p.model, _variant_rank(p.variant), p.start_time))
    return points, skipped


def _skip_reason(status: str, tags: dict[str, str], metrics: dict[str, float]) -> str:
    if status != "FINISHED":
        error = tags.get("error", "")
        return f"status {status}" + (f": {error}" if error else "")
    if not tags.get("model"):
        return "no model tag"
    missing = [name for name in TABLE_METRICS if name not in metrics or not math.isfinite(metrics[name])]
    if missing:
        return "missing metrics: " + ", ".join(missing)
    return ""


def _variant_rank(variant: str) -> tuple[int, str]:
    return (VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER), variant)


# ---------------------------------------------------------------- the table (pure)


def comparison_rows(points: Sequence[RunPoint], aggregate: str = "latest") -> list[dict[str, object]]:
    """One row per (model, variant): the latest run's metrics or their mean over the runs, plus the
    comparisons with the same model's baseline row (empty where the model has no baseline)."""
    if aggregate not in AGGREGATES:
        raise ConfigError(f"unknown aggregate {aggregate!r}: choose one of {', '.join(AGGREGATES)}")
    rows = []
    groups = sorted(_grouped(points).items(), key=lambda kv: (kv[0][0], _variant_rank(kv[0][1])))
    for (model, variant), members in groups:
        latest = max(members, key=lambda p: p.start_time)
        row: dict[str, object] = {"model": model, "variant": variant, "n_runs": len(members), "run_id": latest.run_id}
        for name in TABLE_METRICS:
            values = [p.metrics[name] for p in members] if aggregate == "mean" else [latest.metrics[name]]
            row[name] = sum(values) / len(values)
        rows.append(row)
    baselines = {row["model"]: row for row in rows if row["variant"] == "baseline"}
    for row in rows:
        base = baselines.get(row["model"])
        for column, (metric, how) in BASELINE_COMPARISONS.items():
            row[column] = _compare(row[metric], base[metric], how) if base else ""
    return rows


def _compare(value: float, base: float, how: str) -> float | str:
    if how == "delta":
        return value - base
    return value / base if base else ""


def phase_breakdown(point: RunPoint) -> dict[str, dict[str, float]]:
    """kWh per phase (train, eval, inference) and component (cpu, gpu, ram); 0 where not logged."""
    result = {}
    for phase, prefixes in PHASES.items():
        result[phase] = {}
        for component in COMPONENTS:
            names = [f"{prefix}_{component}_energy_kwh" for prefix in prefixes]
            result[phase][component] = next((point.metrics[n] for n in names if n in point.metrics), 0.0)
    return result


def cumulative_curve(
    val_acc1: dict[int, float], epoch_energy: dict[int, float], offset_kwh: float = 0.0
) -> tuple[list[float], list[float]]:
    """(cumulative energy kWh, val_acc1) per epoch, over the epochs that logged both."""
    energy, acc, spent = [], [], offset_kwh
    for step in sorted(set(val_acc1) & set(epoch_energy)):
        spent += epoch_energy[step]
        energy.append(spent)
        acc.append(val_acc1[step])
    return energy, acc


# ---------------------------------------------------------------- files


def write_skipped_csv(skipped: Sequence[Skipped], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SKIPPED_COLUMNS)
        for s in skipped:
            writer.writerow((s.run_id, s.run_name, s.model, s.variant, s.status, s.reason))
    return path


DISPLAY_COLUMNS = (  # (header, column, format) of the human-readable table
    ("model", "model", "{}"), ("variant", "variant", "{}"), ("runs", "n_runs", "{}"),
    ("test acc@1 %", "test_acc1", "{:.2f}"), ("energy kWh", "energy_kwh", "{:.3g}"),
    ("emissions kg", "emissions_kg", "{:.3g}"), ("infer Wh/1k img", "infer_energy_wh_per_1k_images", "{:.3g}"),
    ("infer img/s", "infer_images_per_second", "{:.0f}"), ("params M", "params", "{:.2f}"),
    ("MACs M", "macs", "{:.1f}"), ("size MB", "model_size_mb", "{:.2f}"),
    ("Δacc pts", "test_acc1_delta_vs_baseline", "{:+.2f}"), ("energy ×", "energy_kwh_vs_baseline", "{:.2f}"),
    ("infer energy ×", "infer_energy_vs_baseline", "{:.2f}"), ("infer speed ×", "infer_speed_vs_baseline", "{:.2f}"),
    ("MACs ×", "macs_vs_baseline", "{:.2f}"), ("size ×", "model_size_vs_baseline", "{:.2f}"),
)
_SCALE = {"params": 1e-6, "macs": 1e-6}


def display_table(rows: Sequence[dict[str, object]]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of the comparison table (params and MACs in millions)."""
    headers = [header for header, _, _ in DISPLAY_COLUMNS]
    cells = []
    for row in rows:
        line = []
        for _, column, fmt in DISPLAY_COLUMNS:
            value = row.get(column, "")
            if isinstance(value, float | int) and not isinstance(value, bool):
                value = value * _SCALE.get(column, 1)
            line.append("–" if value == "" else fmt.format(value))
        cells.append(line)
    return headers, cells


def markdown_table(rows: Sequence[dict[str, object]], aggregate: str) -> str:
    headers, cells = display_table(rows)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    note = "latest run" if aggregate == "latest" else "mean over runs"
    return "\n".join(lines) + f"\n\nOne row per (model, variant): {note}; {RATIO_NOTE}\n"


# ---------------------------------------------------------------- pictures


def _model_colours(points: Sequence[RunPoint]) -> dict[str, str]:
    palette = plt.get_cmap("tab10").colors
    models = sorted({p.model for p in points})
    return {model: matplotlib.colors.to_hex(palette[i % len(palette)]) for i, model in enumerate(models)}


def _count_scatter_points(ax: plt.Axes) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))


def plot_accuracy_vs_energy(points: Sequence[RunPoint], path: Path) -> int:
    """Test accuracy against total energy, one marker per run (colour = model, marker = variant), the
    non-dominated runs joined; returns the number of run markers drawn."""
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    colours = _model_colours(points)
    for (model, variant), members in _grouped(points).items():
        ax.scatter([p.metrics["energy_kwh"] for p in members], [p.metrics["test_acc1"] for p in members],
                   c=colours[model], marker=MARKERS.get(variant, "P"), s=80, edgecolors="black", linewidths=0.6,
                   label=f"{model} / {variant}", zorder=3)
    drawn = _count_scatter_points(ax)
    coords = [(p.metrics["energy_kwh"], p.metrics["test_acc1"]) for p in points]
    front = pareto_front(coords)
    if front:
        ax.plot([coords[i][0] for i in front], [coords[i][1] for i in front], "--", color="0.4", lw=1.2,
                label=FRONT_LABEL, zorder=2)
    ax.set_xlabel("energy per run (kWh, CodeCarbon)")
    ax.set_ylabel("test accuracy top-1 (%)")
    ax.set_title("Accuracy bought per kWh: every run, non-dominated front dashed")
    ax.grid(alpha=0.3)
    if points:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no finished runs to plot", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def write_accuracy_vs_energy_html(points: Sequence[RunPoint], path: Path) -> int:
    """The same picture as an interactive, self-contained (offline) plotly page; returns run markers."""
    import plotly.graph_objects as go

    fig = go.Figure()
    colours = _model_colours(points)
    for (model, variant), members in _grouped(points).items():
        fig.add_trace(go.Scatter(
            x=[p.metrics["energy_kwh"] for p in members], y=[p.metrics["test_acc1"] for p in members],
            mode="markers", name=f"{model} / {variant}", customdata=[[p.run_id, p.name] for p in members],
            marker={"color": colours[model], "symbol": PLOTLY_SYMBOLS.get(variant, "cross"), "size": 12,
                    "line": {"width": 1, "color": "black"}},
            hovertemplate="%{customdata[1]}<br>run %{customdata[0]}<br>%{x:.4g} kWh<br>acc@1 %{y:.2f}%<extra></extra>",
        ))
    drawn = sum(len(trace.x) for trace in fig.data)
    coords = [(p.metrics["energy_kwh"], p.metrics["test_acc1"]) for p in points]
    front = pareto_front(coords)
    if front:
        fig.add_trace(go.Scatter(x=[coords[i][0] for i in front], y=[coords[i][1] for i in front], mode="lines",
                                 name=FRONT_LABEL, line={"dash": "dash", "color": "#666"}, hoverinfo="skip"))
    fig.update_layout(title="Accuracy bought per kWh (every run; dashed: non-dominated front)",
                      xaxis_title="energy per run (kWh, CodeCarbon)", yaxis_title="test accuracy top-1 (%)",
                      template="plotly_white")
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return drawn


def plot_energy_breakdown(points: Sequence[RunPoint], path: Path) -> int:
    """CPU / GPU / RAM energy stacked per run, one panel per phase (train, eval, inference); returns the
    number of runs drawn (bars per panel)."""
    labels = _run_labels(points)
    width = min(18.0, max(9.0, 3 + 0.5 * len(points) * len(PHASES)))
    fig, axes = plt.subplots(1, len(PHASES), figsize=(width, 5), layout="constrained")
    breakdowns = [phase_breakdown(p) for p in points]
    for ax, phase in zip(axes, PHASES, strict=True):
        bottom = [0.0] * len(points)
        for component in COMPONENTS:
            values = [b[phase][component] for b in breakdowns]
            ax.bar(range(len(points)), values, bottom=bottom, color=COMPONENT_COLOURS[component],
                   label=component.upper())
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_title(phase)
        ax.set_xticks(range(len(points)), labels, rotation=45, ha="right", fontsize=8)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(axis="y", alpha=0.3)
    drawn = len(axes[0].patches) // len(COMPONENTS)  # bars stacked per run in the first panel
    axes[0].set_ylabel("energy (kWh)")
    axes[-1].legend(fontsize=8)
    fig.suptitle("Where the energy goes: CPU / GPU / RAM per run and phase (CodeCarbon)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def plot_learning_curves(curves: Sequence[Curve], path: Path, colours: dict[str, str]) -> int:
    """val_acc1 against cumulative training energy per run; runs derived from another run (pruned) start
    where that run's training ended. Returns the number of curves drawn."""
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    lines = []
    for curve in curves:
        model, variant = curve.label.split("/", 1)
        (line,) = ax.plot(curve.energy_kwh, curve.val_acc1, marker=MARKERS.get(variant, "P"),
                          linestyle="--" if curve.derived else "-", color=colours.get(model, "black"),
                          label=f"{curve.label} ({curve.run_id[:8]})")
        lines.append(line)
    ax.set_xlabel("cumulative training energy (kWh, CodeCarbon)")
    ax.set_ylabel("validation accuracy top-1 (%)")
    ax.set_title("Accuracy bought per kWh over training")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no per-epoch history to plot", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return len(lines)


def _grouped(points: Sequence[RunPoint]) -> dict[tuple[str, str], list[RunPoint]]:
    groups: dict[tuple[str, str], list[RunPoint]] = {}
    for point in points:
        groups.setdefault((point.model, point.variant), []).append(point)
    return groups


def _run_labels(points: Sequence[RunPoint]) -> list[str]:
    groups = _grouped(points)
    return [p.label + (f" {p.run_id[:6]}" if len(groups[(p.model, p.variant)]) > 1 else "") for p in points]


# ---------------------------------------------------------------- the page


def hardware_rows(points: Sequence[RunPoint]) -> list[dict[str, object]]:
    """The distinct measurement set-ups (hardware tags and energy method) and how many runs used each."""
    seen: dict[tuple[str, ...], int] = {}
    for point in points:
        key = tuple(point.tags.get(tag, "unknown") for tag in HARDWARE_TAGS)
        seen[key] = seen.get(key, 0) + 1
    return [{**dict(zip(HARDWARE_TAGS, key, strict=True)), "runs": n} for key, n in seen.items()]


def _html_table(headers: Sequence[str], cells: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in line) + "</tr>" for line in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def render_report_html(result: ReportResult, aggregate: str, pictures: dict[str, Path], message: str) -> str:
    """One self-contained page: message, table, set-ups, pictures (base64), skipped runs."""
    headers, cells = display_table(result.rows)
    setups = hardware_rows(result.points)
    estimate = any("estimate" in str(s["energy_method"]) for s in setups)
    parts = [
        f"<h1>greenstudy report: {html.escape(result.experiment)}</h1>",
        f"<p class='msg'>{html.escape(message)}</p>",
        "<h2>Comparison</h2>",
        f"<p>One row per (model, variant): {'latest run' if aggregate == 'latest' else 'mean over runs'}; "
        f"{html.escape(RATIO_NOTE)} Exact values: comparison.csv.</p>",
        _html_table(headers, cells) if result.rows else "<p>No finished runs with the full metric contract.</p>",
        "<h2>How the energy was measured</h2>",
        _html_table([*HARDWARE_TAGS, "runs"], [list(s.values()) for s in setups]) if setups else "<p>–</p>",
    ]
    if estimate:
        parts.append("<p class='warn'>Some energy figures are CodeCarbon <b>estimates</b> (no RAPL/NVML counters): "
                     "compare runs measured the same way only.</p>")
    parts.append("<h2>Pictures</h2><p>Interactive version: accuracy_vs_energy.html (next to this page).</p>")
    parts += [_img(path, alt) for alt, path in pictures.items()]
    parts.append("<h2>Skipped runs</h2>")
    parts.append(_html_table(SKIPPED_COLUMNS, [[s.run_id, s.run_name, s.model, s.variant, s.status, s.reason]
                                               for s in result.skipped]) if result.skipped else "<p>none</p>")
    parts.append("<h2>Runs reported</h2>")
    parts.append(_html_table(("run_id", "run_name", "model", "variant"),
                             [[p.run_id, p.name, p.model, p.variant] for p in result.points]))
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px} th{background:#f3f3f3}"
             "img{max-width:100%} .warn{color:#a40} .msg{font-weight:bold}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>greenstudy report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


# ---------------------------------------------------------------- reading MLflow


def resolve_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise ConfigError(f"experiment {name!r} not found in {mlflow.get_tracking_uri()}")
    return experiment.experiment_id


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


def parent_experiments(client: MlflowClient, parent_run_ids: list[str]) -> list[str]:
    """Experiments of the given parent runs; an unknown id is an error."""
    ids = []
    for run_id in parent_run_ids:
        try:
            ids.append(client.get_run(run_id).info.experiment_id)
        except MlflowException as exc:
            raise ConfigError(f"parent run {run_id!r} not found: {exc.message.splitlines()[0]}") from exc
    return ids


def fetch_curves(client: MlflowClient, points: Sequence[RunPoint]) -> list[Curve]:
    """Learning curves from the metric history of every run that logged epochs. A run derived from another
    reported run (tag `derived_from`: pruned) starts at that run's last epoch; one whose history is a
    copy of the run it derives from (quantized repeats its baseline's epochs) is not drawn twice."""
    histories = {p.run_id: _history(client, p.run_id) for p in points}
    trained = {run_id: sum(energy.values()) for run_id, (_, energy) in histories.items()}
    curves = []
    for p in points:
        acc, energy = histories[p.run_id]
        parent = p.tags.get("derived_from", "")
        if parent in histories and histories[parent] == histories[p.run_id]:
            continue
        offset = trained.get(parent, 0.0)
        xs, ys = cumulative_curve(acc, energy, offset)
        if xs and parent in trained and histories[parent][0]:  # joined to where its parent's training ended
            parent_acc = histories[parent][0]
            xs, ys = [offset, *xs], [parent_acc[max(parent_acc)], *ys]
        if xs:
            curves.append(Curve(p.run_id, p.label, xs, ys, derived=parent in trained))
    return curves


def _history(client: MlflowClient, run_id: str) -> tuple[dict[int, float], dict[int, float]]:
    acc = {m.step: m.value for m in client.get_metric_history(run_id, "val_acc1")}
    energy = {m.step: m.value for m in client.get_metric_history(run_id, "epoch_energy_kwh")}
    return acc, energy


# ---------------------------------------------------------------- the report run


def build_report(
    experiment: str = DEFAULT_EXPERIMENT, parent_run_ids: str | Sequence[str] | None = None,
    filter_string: str = "", aggregate: str = "latest",
) -> ReportResult:
    """Read the runs, then log the comparison to a new run tagged kind=report in `experiment`."""
    if aggregate not in AGGREGATES:
        raise ConfigError(f"unknown aggregate {aggregate!r}: choose one of {', '.join(AGGREGATES)}")
    ensure_tracking_reachable()
    client = MlflowClient()
    experiment_id = resolve_experiment(client, experiment)
    parents = parse_parent_run_ids(parent_run_ids)
    experiment_ids = sorted({experiment_id, *parent_experiments(client, parents)})
    points, skipped = classify(fetch_runs(client, experiment_ids, filter_string or "", parents))
    rows = comparison_rows(points, aggregate)
    curves = fetch_curves(client, points)
    message = _message(experiment, points, skipped, rows)
    tags = {"kind": "report", "report_empty": str(not points).lower()}
    with run_scope("report", experiment, tags=tags) as run:
        wanted = {"experiment": experiment, "parent_run_ids": ",".join(parents) or "none",
                  "filter": filter_string or "", "aggregate": aggregate}
        logged = mlflow.get_run(run.info.run_id).data.params  # `mlflow run` logged the entry point's params already
        mlflow.log_params({k: v for k, v in wanted.items() if k not in logged})
        result = ReportResult(experiment, run.info.run_id, run.info.artifact_uri, rows, points, skipped)
        with tempfile.TemporaryDirectory() as tmp:
            result.counts = _write_artifacts(result, curves, aggregate, message, Path(tmp))
            mlflow.log_artifacts(tmp)
        mlflow.log_metrics({"runs_reported": len(points), "runs_skipped": len(skipped), "rows": len(rows),
                            **{f"{name}_plotted": float(n) for name, n in result.counts.items()}})
    return result


def _write_artifacts(result: ReportResult, curves: list[Curve], aggregate: str, message: str, out: Path) -> dict[str, int]:
    points = result.points
    write_dict_csv(result.rows, ROW_COLUMNS, out / "comparison.csv")
    (out / "comparison.md").write_text(markdown_table(result.rows, aggregate))
    write_skipped_csv(result.skipped, out / "skipped.csv")
    counts = {
        "points": plot_accuracy_vs_energy(points, out / "accuracy_vs_energy.png"),
        "html_points": write_accuracy_vs_energy_html(points, out / "accuracy_vs_energy.html"),
        "breakdown_runs": plot_energy_breakdown(points, out / "energy_breakdown.png"),
        "curves": plot_learning_curves(curves, out / "learning_curves.png", _model_colours(points)),
    }
    pictures = {
        "Accuracy against energy per run": out / "accuracy_vs_energy.png",
        "Energy breakdown: CPU / GPU / RAM, train / eval / inference": out / "energy_breakdown.png",
        "Validation accuracy against cumulative training energy": out / "learning_curves.png",
    }
    (out / "report.html").write_text(render_report_html(result, aggregate, pictures, message))
    return counts


def _message(experiment: str, points: list[RunPoint], skipped: list[Skipped], rows: list[dict[str, object]]) -> str:
    if points:
        return f"{len(points)} runs compared in {len(rows)} rows; {len(skipped)} skipped"
    if skipped:
        return f"nothing to compare in experiment {experiment!r}: all {len(skipped)} child runs were skipped (see skipped.csv)"
    return f"nothing to compare in experiment {experiment!r}: it has no variant runs (run `mlflow run . -e main` first)"


def summary_lines(result: ReportResult, aggregate: str = "latest") -> list[str]:
    """What a person reads at the end of the report."""
    lines = [f"report run {result.run_id} (experiment {result.experiment})",
             _message(result.experiment, result.points, result.skipped, result.rows)]
    for s in result.skipped:
        lines.append(f"  skipped {s.run_id} {s.run_name or '-'} ({s.model or '?'}/{s.variant}): {s.reason}")
    if result.rows:
        lines.append(markdown_table(result.rows, aggregate).rstrip())
    lines.append(f"report: {result.report_location}")
    return lines


def report_for_experiment(
    experiment_name: str = DEFAULT_EXPERIMENT, parent_run_ids: str | Sequence[str] | None = None,
    filter_string: str = "", aggregate: str = "latest",
) -> tuple[str, str]:
    """Build the report and return (report run id, path or URI of its report.html)."""
    result = build_report(experiment_name, parent_run_ids, filter_string, aggregate)
    return result.run_id, result.report_location
