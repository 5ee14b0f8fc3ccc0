"""Pure comparison logic of the report: which runs are compared, how they become table rows, the
ratios against the baseline, the accuracy-vs-energy front and the energy breakdown. No MLflow or
matplotlib here: everything takes `mlflow.entities.Run`-shaped objects or `RunPoint`s and returns data.

Energy convention: the comparison uses each run's **lifecycle** energy (`lifecycle_energy_kwh` = the
baseline training a derived variant stands on + its own cost); a run that lacks it falls back to its own
`energy_kwh`, and its row says so in `energy_basis`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from greenstudy.errors import ConfigError
from greenstudy.pareto import pareto_front

AGGREGATES = ("latest", "mean")
VARIANT_KINDS = ("variant",)  # tag `kind` of the `main` entry point's children
TRIAL_KIND = "trial"  # Optuna trials: compared only when asked for
# a run is reported only with all of these (finite)
REQUIRED_METRICS = (
    "test_acc1", "energy_kwh", "emissions_kg", "infer_energy_wh_per_1k_images", "infer_images_per_second",
    "params", "macs", "model_size_mb",
)
# the numbers of one table row (see run_values for the fall-backs)
TABLE_METRICS = (
    "test_acc1", "lifecycle_energy_kwh", "own_energy_kwh", "upstream_energy_kwh", "emissions_kg",
    "lifecycle_emissions_kg", "infer_energy_wh_per_1k_images", "infer_images_per_second", "params", "macs",
    "model_size_mb",
)
# ratio columns: name -> (metric, "ratio" = run / baseline, "delta" = run - baseline)
BASELINE_COMPARISONS = {
    "test_acc1_delta_vs_baseline": ("test_acc1", "delta"),
    "energy_vs_baseline": ("lifecycle_energy_kwh", "ratio"),
    "own_energy_vs_baseline": ("own_energy_kwh", "ratio"),
    "emissions_vs_baseline": ("lifecycle_emissions_kg", "ratio"),
    "infer_energy_vs_baseline": ("infer_energy_wh_per_1k_images", "ratio"),
    "infer_speed_vs_baseline": ("infer_images_per_second", "ratio"),
    "macs_vs_baseline": ("macs", "ratio"),
    "model_size_vs_baseline": ("model_size_mb", "ratio"),
}
ROW_COLUMNS = ("model", "variant", "config", "n_runs", "run_id", "energy_basis", *TABLE_METRICS, *BASELINE_COMPARISONS)
# hyper-parameters that make runs different experiments: never averaged together (seeds are)
TRAINING_PARAMS = ("dataset", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "train_subset",
                   "val_size", "test_subset", "resolution")
VARIANT_PARAMS = ("prune_ratio", "prune_importance", "finetune_epochs", "calib_batches", "amp_dtype")
CONFIG_TAGS = ("device",)
PHASES = ("train", "val", "setup", "test")
COMPONENTS = ("cpu", "gpu", "ram")
VARIANT_ORDER = ("baseline", "amp", "pruned", "quantized")
HARDWARE_TAGS = ("cpu_model", "gpu_model", "device", "cpu_capability", "energy_method", "codecarbon_version")
SKIPPED_COLUMNS = ("run_id", "run_name", "model", "variant", "status", "reason")
IN_PROGRESS_STATUSES = ("RUNNING", "SCHEDULED")  # still going: listed as in progress, never compared
ENERGY_NOTE = (
    "Energy = lifecycle energy (lifecycle_energy_kwh: the run's own train + val + setup + test evaluation, plus "
    "the baseline training a pruned or quantized variant is made from); a run that does not log it falls back "
    "to its own energy_kwh (column energy_basis). Ratios (×) and the accuracy-vs-energy front (test_acc1) use "
    "it; comparison.csv also holds own_energy_kwh and upstream_energy_kwh. Inference is reported per 1,000 "
    "images only. × = ratio and Δ = difference against the baseline of the same model and training config."
)


class RunLike(Protocol):
    """What is read of an `mlflow.entities.Run` (info: run_id, run_name, status, start_time; data: tags,
    metrics, params)."""

    info: Any
    data: Any


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
    params: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.model}/{self.variant}"

    @property
    def dataset(self) -> str:
        return self.tags.get("dataset") or self.params.get("dataset", "")


@dataclass(frozen=True)
class Skipped:
    """A child run left out of the report, and why (`in_progress`: it has not ended yet)."""

    run_id: str
    run_name: str
    model: str
    variant: str
    status: str
    reason: str

    @property
    def in_progress(self) -> bool:
        return self.status in IN_PROGRESS_STATUSES


@dataclass(frozen=True)
class Curve:
    """val_acc1 against cumulative train + val energy (kWh) of one run; `source` names the run whose
    epochs these are when they are not the run's own (the quantized child draws its baseline's)."""

    run_id: str
    label: str
    energy_kwh: list[float]
    val_acc1: list[float]
    derived: bool = False
    source: str = ""


# ---------------------------------------------------------------- selecting runs


def classify(runs: Iterable[RunLike], include_trials: bool = False) -> tuple[list[RunPoint], list[Skipped]]:
    """Split runs into reportable points and skipped child runs with a reason. Compared: the `main`
    entry point's children (tag kind=variant), and Optuna trials (kind=trial) only if `include_trials`.
    Parents, studies, reports and (unless asked for) trials are ignored; a run with a `variant` tag but no
    `kind` (logged before the run contract) is listed as skipped."""
    kinds = VARIANT_KINDS + ((TRIAL_KIND,) if include_trials else ())
    points: list[RunPoint] = []
    skipped: list[Skipped] = []
    for run in runs:
        tags = run.data.tags
        kind = tags.get("kind", "")
        if kind not in kinds and not (not kind and "variant" in tags):
            continue
        model, variant, status = tags.get("model", ""), tags.get("variant", ""), run.info.status
        reason = "no kind tag: not a run of the `main` entry point's contract" if not kind else skip_reason(run)
        if reason:
            skipped.append(Skipped(run.info.run_id, run.info.run_name or "", model, variant, status, reason))
        else:
            points.append(RunPoint(run.info.run_id, run.info.run_name or "", model, variant, run.info.start_time or 0,
                                   dict(run.data.metrics), dict(tags), dict(run.data.params)))
    points.sort(key=lambda p: (p.model, variant_rank(p.variant), p.start_time))
    return points, skipped


def skip_reason(run: RunLike) -> str:
    """Why a child run cannot be compared ('' when it can)."""
    tags, metrics, status = run.data.tags, run.data.metrics, run.info.status
    if status in IN_PROGRESS_STATUSES:  # its metrics are those of a run half-way: compared once it has ended
        return f"in progress (status {status}): compared once it has ended"
    if status != "FINISHED":
        if tags.get("skipped"):
            return f"skipped: {tags['skipped']}"
        error = tags.get("error", "")
        return f"status {status}" + (f": {error}" if error else "")
    if not tags.get("variant"):
        return "no variant tag"
    if not tags.get("model"):
        return "no model tag"
    missing = [name for name in REQUIRED_METRICS if name not in metrics or not math.isfinite(metrics[name])]
    if missing:
        return "missing metrics: " + ", ".join(missing)
    return ""


def variant_rank(variant: str) -> tuple[int, str]:
    return (VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER), variant)


# ---------------------------------------------------------------- energy of one run


def lifecycle_energy(point: RunPoint) -> float:
    """The energy the comparison uses: lifecycle where logged, else the run's own energy_kwh."""
    return point.metrics.get("lifecycle_energy_kwh", point.metrics["energy_kwh"])


def energy_basis(point: RunPoint) -> str:
    return "lifecycle" if "lifecycle_energy_kwh" in point.metrics else "own (no lifecycle_energy_kwh logged)"


def run_values(point: RunPoint) -> dict[str, float]:
    """The table numbers of one run; upstream is NaN where the run logged neither it nor lifecycle."""
    m = point.metrics
    own = m.get("own_energy_kwh", m["energy_kwh"])
    upstream = m.get("upstream_energy_kwh", m["lifecycle_energy_kwh"] - own if "lifecycle_energy_kwh" in m else math.nan)
    values = {name: m[name] for name in REQUIRED_METRICS if name != "energy_kwh"}
    values.update(lifecycle_energy_kwh=lifecycle_energy(point), own_energy_kwh=own, upstream_energy_kwh=upstream,
                  lifecycle_emissions_kg=m.get("lifecycle_emissions_kg", m["emissions_kg"]))
    return values


def phase_breakdown(point: RunPoint) -> dict[str, dict[str, float]]:
    """Own kWh per phase (train, val, setup, test) and component (cpu, gpu, ram) from the contract metrics
    `<phase>_<component>_energy_kwh`; 0 where a phase was not logged (e.g. no setup)."""
    return {phase: {c: point.metrics.get(f"{phase}_{c}_energy_kwh", 0.0) for c in COMPONENTS} for phase in PHASES}


# ---------------------------------------------------------------- groups and rows


def config_key(point: RunPoint, names: Sequence[str] = TRAINING_PARAMS + VARIANT_PARAMS) -> tuple[tuple[str, str], ...]:
    """The hyper-parameters (and device) that tell two experiments apart; the seed is not one of them."""
    items = [(n, point.params[n]) for n in names if n in point.params]
    return tuple(items + [(t, point.tags[t]) for t in CONFIG_TAGS if t in point.tags])


def grouped(points: Sequence[RunPoint]) -> dict[tuple[str, str, tuple], list[RunPoint]]:
    """Runs per (model, variant, config): only these are ever averaged together."""
    groups: dict[tuple[str, str, tuple], list[RunPoint]] = {}
    for point in points:
        groups.setdefault((point.model, point.variant, config_key(point)), []).append(point)
    return groups


def varying_config(points: Sequence[RunPoint]) -> list[str]:
    """The config names with different values in two runs that both log them (the `config` column)."""
    configs = [dict(config_key(p)) for p in points]
    names = dict.fromkeys(n for config in configs for n in config)
    return [n for n in names if len({config[n] for config in configs if n in config}) > 1]


def comparison_rows(points: Sequence[RunPoint], aggregate: str = "latest") -> list[dict[str, object]]:
    """One row per (model, variant, config): the latest run's values or their mean over the runs, plus the
    comparisons with the baseline row of the same model and training config (empty where there is none)."""
    if aggregate not in AGGREGATES:
        raise ConfigError(f"unknown aggregate {aggregate!r}: choose one of {', '.join(AGGREGATES)}")
    shown = varying_config(points)
    groups = sorted(grouped(points).items(), key=lambda kv: (kv[0][0], variant_rank(kv[0][1]), kv[0][2]))
    rows = [_row(model, variant, key, members, aggregate, shown) for (model, variant, key), members in groups]
    training = [(model, config_key(max(members, key=lambda p: p.start_time), TRAINING_PARAMS))
                for (model, _, _), members in groups]
    bases: dict[tuple, dict[str, object]] = {}
    for row, trained_as in zip(rows, training, strict=True):
        if row["variant"] == "baseline":
            bases.setdefault(trained_as, row)
    for row, trained_as in zip(rows, training, strict=True):
        base = bases.get(trained_as)
        for column, (metric, how) in BASELINE_COMPARISONS.items():
            row[column] = _compare(row[metric], base[metric], how) if base else ""
    return rows


def _row(model: str, variant: str, key: tuple, members: list[RunPoint], aggregate: str, shown: list[str]) -> dict[str, object]:
    latest = max(members, key=lambda p: p.start_time)
    used = members if aggregate == "mean" else [latest]
    row: dict[str, object] = {"model": model, "variant": variant, "config": " ".join(f"{n}={v}" for n, v in key if n in shown),
                              "n_runs": len(members), "run_id": latest.run_id, "energy_basis": _basis(used)}
    values = [run_values(p) for p in used]
    for name in TABLE_METRICS:
        row[name] = _blank_nan(sum(v[name] for v in values) / len(values))
    return row


def _basis(points: Sequence[RunPoint]) -> str:
    bases = {energy_basis(p) for p in points}
    return bases.pop() if len(bases) == 1 else "mixed: " + ", ".join(sorted(bases))


def _blank_nan(value: float) -> float | str:
    return "" if isinstance(value, float) and math.isnan(value) else value


def _compare(value: object, base: object, how: str) -> float | str:
    if value == "" or base == "":
        return ""
    if how == "delta":
        return value - base
    return value / base if base else ""


def latest_per_group(points: Sequence[RunPoint]) -> list[RunPoint]:
    """The latest run of each (model, variant, config): the runs a decision (registry) chooses among."""
    return [max(members, key=lambda p: p.start_time) for members in grouped(points).values()]


def front(points: Sequence[RunPoint]) -> list[RunPoint]:
    """The non-dominated runs on (lifecycle energy, test_acc1), lowest energy first."""
    coords = [(lifecycle_energy(p), p.metrics["test_acc1"]) for p in points]
    return [points[i] for i in pareto_front(coords)]


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


def aggregate_note(aggregate: str) -> str:
    how = "the latest run" if aggregate == "latest" else "the mean over its runs (seeds)"
    return (f"One row per model, variant and config: {how}. Runs whose hyper-parameters differ "
            f"({', '.join(TRAINING_PARAMS + VARIANT_PARAMS)}) or whose device differs are never averaged: "
            "they get rows of their own (column config shows what differs).")
