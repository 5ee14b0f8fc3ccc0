"""A run's energy ledger: named phases, each with CPU/GPU/RAM kWh, emissions, seconds and how it was
measured, and the one place that turns a ledger into the run's energy metrics.

Phase kinds:
- `train`  — one training epoch (fine-tuning epochs of `pruned` too);
- `val`    — the validation pass after an epoch;
- `setup`  — one-time work: compile/warm-up, pruning, int8 calibration;
- `test`   — the test-set evaluation;
- `inference` — the fixed-time inference benchmark (reported per 1,000 images only, never in totals);
- `interrupted` — training work (train, val, setup) cut short by Ctrl-C/SIGTERM, or an epoch that ended
  after the last checkpoint and so is trained again on resume: spent, so counted, but no finished epoch;
- `idle` — a measured wait (e.g. for a low-carbon hour): reported on its own, never in `energy_kwh`.

A test or inference phase cut short keeps its kind (flag `cut_short`): a cut test still counts, a cut
inference still does not. Every phase names the `sitting` (1, 2, ... across resumes) it was measured in.

`energy_kwh` (= `own_energy_kwh`) is everything a run did to make and check its model: every phase but
inference. A derived variant (pruned, quantized) also carries its *upstream* phases — the baseline's
train, val, setup and interrupted phases it was made from — and `lifecycle_energy_kwh` = upstream + own.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

KINDS = ("train", "val", "setup", "test", "inference", "interrupted", "idle")
MAKE_AND_CHECK = ("train", "val", "setup", "test", "interrupted")  # what energy_kwh sums
UPSTREAM_KINDS = ("train", "val", "setup", "interrupted")  # what a derived model stands on
COMPONENTS = ("cpu", "gpu", "ram")
TOLERANCE_KWH = 1e-12


class MissingEnergyReading(RuntimeError):
    """A phase ended without an energy reading: never recorded as 0."""


@dataclass
class PhaseEnergy:
    """Energy of one measured phase (kWh), its emissions (kg CO2eq), duration (s) and method."""

    name: str
    kind: str
    epoch: int = 0
    energy_kwh: float = 0.0
    cpu_kwh: float = 0.0
    gpu_kwh: float = 0.0
    ram_kwh: float = 0.0
    emissions_kg: float = 0.0
    seconds: float = 0.0
    started_at: float = 0.0
    method: str = ""
    gpu_nvml_kwh: float | None = None
    upstream_run_id: str = ""
    sitting: int = 1
    cut_short: bool = False
    codecarbon_seconds: float = 0.0  # CodeCarbon's own duration of the task (cross-checks `seconds`)
    devices: int = 1  # devices (GPUs, or CPU processes) working in the phase: several for data-parallel training

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown phase kind {self.kind!r}: one of {', '.join(KINDS)}")


@dataclass
class Ledger:
    """The phases of one run, in the order they were measured."""

    phases: list[PhaseEnergy]

    def of(self, *kinds: str) -> list[PhaseEnergy]:
        return [phase for phase in self.phases if phase.kind in kinds]

    def energy(self, *kinds: str) -> float:
        return sum(phase.energy_kwh for phase in self.of(*kinds))

    def component(self, component: str, *kinds: str) -> float:
        return sum(getattr(phase, f"{component}_kwh") for phase in self.of(*kinds))

    def emissions(self, *kinds: str) -> float:
        return sum(phase.emissions_kg for phase in self.of(*kinds))

    def seconds(self, *kinds: str) -> float:
        return sum(phase.seconds for phase in self.of(*kinds))

    def as_upstream(self, run_id: str) -> Ledger:
        """The phases a model derived from this run stands on, each naming `run_id`."""
        return Ledger([replace(phase, upstream_run_id=run_id) for phase in self.of(*UPSTREAM_KINDS)])


def check_phase(phase: PhaseEnergy) -> None:
    """A phase's components must add up to its total (CodeCarbon: energy = cpu + gpu + ram)."""
    parts = phase.cpu_kwh + phase.gpu_kwh + phase.ram_kwh
    if abs(parts - phase.energy_kwh) > max(TOLERANCE_KWH, 1e-6 * phase.energy_kwh):
        raise ValueError(f"phase {phase.name}: cpu+gpu+ram = {parts} kWh != total {phase.energy_kwh} kWh")


def energy_metrics(own: Ledger, upstream: Ledger | None = None) -> dict[str, float]:
    """Every energy figure a run logs, from its ledger (and the upstream ledger of a derived model)."""
    for phase in own.phases:
        check_phase(phase)
    upstream = upstream or Ledger([])
    own_kwh = own.energy(*MAKE_AND_CHECK)
    upstream_kwh = upstream.energy(*UPSTREAM_KINDS)
    metrics = {
        "energy_kwh": own_kwh,
        "own_energy_kwh": own_kwh,
        "upstream_energy_kwh": upstream_kwh,
        "lifecycle_energy_kwh": upstream_kwh + own_kwh,
        "emissions_kg": own.emissions(*MAKE_AND_CHECK),
        "lifecycle_emissions_kg": upstream.emissions(*UPSTREAM_KINDS) + own.emissions(*MAKE_AND_CHECK),
        "train_seconds": own.seconds("train"),
        "interrupted_energy_kwh": own.energy("interrupted"),
        "idle_energy_kwh": own.energy("idle"),
        "sittings": float(max((phase.sitting for phase in own.phases), default=1)),
    }
    for component in COMPONENTS:
        metrics[f"{component}_energy_kwh"] = own.component(component, *MAKE_AND_CHECK)
    for kind in ("train", "val", "setup", "test"):
        metrics[f"{kind}_energy_kwh"] = own.energy(kind)
        for component in COMPONENTS:
            metrics[f"{kind}_{component}_energy_kwh"] = own.component(component, kind)
    metrics["train_emissions_kg"] = own.emissions("train")
    nvml = [p.gpu_nvml_kwh for p in own.of(*MAKE_AND_CHECK) if p.gpu_nvml_kwh is not None]
    if nvml:
        metrics["gpu_energy_nvml_kwh"] = sum(nvml)
    return metrics


LEDGER_COLUMNS = tuple(f.name for f in fields(PhaseEnergy))


def write_ledger_csv(path: str | Path, own: Ledger, upstream: Ledger | None = None) -> Path:
    """Upstream rows first (each naming its run), then this run's own phases."""
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(LEDGER_COLUMNS))
        writer.writeheader()
        for phase in [*(upstream.phases if upstream else []), *own.phases]:
            writer.writerow(asdict(phase))
    return path


def phase_from_row(row: dict[str, str]) -> PhaseEnergy:
    """One ledger row (CSV or journal, every value a string) back into a phase; columns added later default."""
    return PhaseEnergy(
        name=row["name"], kind=row["kind"], epoch=int(row["epoch"]),
        **{k: float(row[k]) for k in ("energy_kwh", "cpu_kwh", "gpu_kwh", "ram_kwh", "emissions_kg", "seconds", "started_at")},
        method=row["method"], gpu_nvml_kwh=float(row["gpu_nvml_kwh"]) if row.get("gpu_nvml_kwh") else None,
        upstream_run_id=row.get("upstream_run_id") or "", sitting=int(row.get("sitting") or 1),
        cut_short=str(row.get("cut_short")) == "True", codecarbon_seconds=float(row.get("codecarbon_seconds") or 0.0),
        devices=int(row.get("devices") or 1),
    )


def read_ledger_csv(path: str | Path) -> tuple[Ledger, Ledger]:
    """(own, upstream) ledgers from an `energy_ledger.csv`."""
    own, upstream = [], []
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            phase = phase_from_row(row)
            (upstream if phase.upstream_run_id else own).append(phase)
    return Ledger(own), Ledger(upstream)


def redo_unsaved_epochs(phases: list[PhaseEnergy], saved_epoch: int) -> None:
    """Train/val phases of epochs after the checkpoint's last one are trained again on resume: they become
    `interrupted` (spent, counted, but not a finished epoch). In place; idempotent."""
    for phase in phases:
        if phase.kind in ("train", "val") and phase.epoch > saved_epoch:
            phase.kind = "interrupted"


def _journal_line(phase: PhaseEnergy) -> str:
    return json.dumps({k: "" if v is None else str(v) for k, v in asdict(phase).items()}) + "\n"


class PhaseJournal(list):
    """A run's phases, each also appended to a file the moment it is measured (flushed and fsynced), so that
    a hard kill (SIGKILL, out of memory, power loss) loses at most the phase in progress. Stamps each phase
    with this sitting's number."""

    def __init__(self, phases: list[PhaseEnergy], path: Path, sitting: int) -> None:
        super().__init__(phases)
        self.path, self.sitting = path, sitting

    def append(self, phase: PhaseEnergy) -> None:
        phase.sitting = self.sitting
        super().append(phase)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(_journal_line(phase))
            handle.flush()
            os.fsync(handle.fileno())


def read_journal(path: Path) -> list[PhaseEnergy]:
    """The phases a journal holds. A torn last line (a kill mid-write) is dropped; a bad line anywhere else
    would silently lose a phase's energy, so it raises."""
    lines = path.read_text().splitlines()
    phases = []
    for number, line in enumerate(lines, 1):
        try:
            phases.append(phase_from_row(json.loads(line)))
        except (ValueError, KeyError) as exc:
            if number == len(lines):
                break
            raise ValueError(f"energy journal {path} line {number} is unreadable ({exc}): the ledger would lose a phase") from exc
    return phases


def write_journal(path: Path, phases: list[PhaseEnergy]) -> None:
    """Replace the journal atomically (a crash mid-write leaves the previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text("".join(_journal_line(phase) for phase in phases))
    os.replace(partial, path)
