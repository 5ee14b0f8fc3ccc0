"""The report's decision in the MLflow Model Registry.

Per (model, dataset), the variants on the accuracy-vs-energy front (test_acc1 against lifecycle energy,
the latest run of each variant and config) become versions of one registered model
`greenstudy-<model>-<dataset>`, and three aliases name the decision:

- `most-accurate`: the highest test_acc1;
- `least-energy`: the lowest lifecycle energy (own energy_kwh where a run does not log lifecycle);
- `accurate-within-<N>pt`: the cheapest run within N points of the most accurate (N = `within_points`,
  default 1 -> `accurate-within-1pt`; 0.5 -> `accurate-within-0p5pt`, as alias names allow no dot).

Versions carry the run's test_acc1, energies and variant as tags. A run already registered keeps its
version (looked up by run id); re-running moves the aliases and never adds a second version of one run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from greenstudy.errors import ConfigError
from greenstudy.report.comparison import RunPoint, energy_basis, front, latest_per_group, lifecycle_energy, run_values

MOST_ACCURATE = "most-accurate"
LEAST_ENERGY = "least-energy"
WITHIN_PREFIX = "accurate-within-"
MODEL_ARTIFACT = "model"
VERSION_TAGS = ("test_acc1", "lifecycle_energy_kwh", "own_energy_kwh", "upstream_energy_kwh", "lifecycle_emissions_kg")


@dataclass(frozen=True)
class Registered:
    """One front run as a version of a registered model, with the aliases it holds now."""

    name: str
    version: str
    run_id: str
    variant: str
    aliases: tuple[str, ...]
    created: bool

    def line(self) -> str:
        held = ", ".join(f"@{a}" for a in self.aliases) or "no alias"
        return f"{self.name} v{self.version} = {self.variant} run {self.run_id} ({held}{', new' if self.created else ''})"


def registered_name(model: str, dataset: str) -> str:
    return f"greenstudy-{model}-{dataset}"


def within_alias(within_points: float) -> str:
    """`accurate-within-1pt` for 1.0; the value's digits otherwise (a dot becomes `p`)."""
    return f"{WITHIN_PREFIX}{within_points:g}pt".replace(".", "p")


def check_within_points(within_points: float) -> float:
    if not (math.isfinite(within_points) and within_points >= 0):
        raise ConfigError(f"within_points must be a finite number >= 0, got {within_points}")
    return within_points


def choose_aliases(candidates: Sequence[RunPoint], within_points: float) -> dict[str, RunPoint]:
    """The three decisions among the front of `candidates` (ties: the other objective decides)."""
    best = front(candidates)
    if not best:
        return {}
    acc = {p.run_id: p.metrics["test_acc1"] for p in best}
    most = max(best, key=lambda p: (acc[p.run_id], -lifecycle_energy(p)))
    least = min(best, key=lambda p: (lifecycle_energy(p), -acc[p.run_id]))
    close = [p for p in best if acc[p.run_id] >= acc[most.run_id] - within_points]
    within = min(close, key=lambda p: (lifecycle_energy(p), -acc[p.run_id]))
    return {MOST_ACCURATE: most, LEAST_ENERGY: least, within_alias(within_points): within}


def register_front(client: MlflowClient, points: Sequence[RunPoint], within_points: float = 1.0) -> list[Registered]:
    """Register the front runs of each (model, dataset) and point the aliases at them."""
    check_within_points(within_points)
    by_model: dict[tuple[str, str], list[RunPoint]] = {}
    for point in latest_per_group(points):
        by_model.setdefault((point.model, point.dataset or "unknown"), []).append(point)
    registered: list[Registered] = []
    for (model, dataset), candidates in sorted(by_model.items()):
        with_model = {p.run_id: uri for p in candidates if (uri := logged_model(client, p.run_id))}
        usable = [p for p in candidates if p.run_id in with_model]
        registered += _register_model(client, registered_name(model, dataset), usable, with_model, within_points)
    return registered


def _register_model(client: MlflowClient, name: str, candidates: list[RunPoint], sources: dict[str, tuple[str, str]],
                    within_points: float) -> list[Registered]:
    on_front = front(candidates)
    if not on_front:
        return []
    _ensure_registered_model(client, name)
    versions = {p.run_id: _version_of(client, name, p, sources[p.run_id]) for p in on_front}
    aliases = choose_aliases(candidates, within_points)
    for alias, point in aliases.items():
        client.set_registered_model_alias(name, alias, versions[point.run_id][0])
    for stale in set(client.get_registered_model(name).aliases) - set(aliases):
        if stale.startswith(WITHIN_PREFIX):  # an earlier `within_points`: its alias would mislead
            client.delete_registered_model_alias(name, stale)
    held = {p.run_id: tuple(a for a, q in aliases.items() if q.run_id == p.run_id) for p in on_front}
    return [Registered(name, versions[p.run_id][0], p.run_id, p.variant, held[p.run_id], versions[p.run_id][1])
            for p in on_front]


def logged_model(client: MlflowClient, run_id: str) -> tuple[str, str] | None:
    """(source URI, logged model id) of the run's `model`, or None where the run logged none."""
    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'")
    named = [m for m in found if m.name == MODEL_ARTIFACT]
    return (named[0].model_uri, named[0].model_id) if named else None


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="greenstudy: the variants on the accuracy-vs-energy front")


def _version_of(client: MlflowClient, name: str, point: RunPoint, source: tuple[str, str]) -> tuple[str, bool]:
    """(version, created): the run's existing version, its tags refreshed, or a new one."""
    tags = version_tags(point)
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{point.run_id}'")
    if existing:
        version = str(min(int(v.version) for v in existing))
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        return version, False
    uri, model_id = source
    created = client.create_model_version(name, uri, run_id=point.run_id, tags=tags, model_id=model_id)
    return str(created.version), True


def version_tags(point: RunPoint) -> dict[str, str]:
    """What the version says about its run: accuracy, energies and variant."""
    values = run_values(point)
    tags = {name: f"{values[name]:.6g}" for name in VERSION_TAGS if not math.isnan(values[name])}
    tags.update(variant=point.variant, model=point.model, energy_basis=energy_basis(point), run_name=point.name,
                precision=point.tags.get("precision", ""), dataset=point.dataset)
    return tags
