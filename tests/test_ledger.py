"""The energy ledger's invariants, with a real CodeCarbon tracker and no MLflow: epoch energies sum to
training energy, phases sum to energy_kwh, lifecycle = upstream + own, components sum to totals; a
phase without a reading fails loudly; two measuring processes never overlap."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from greenstudy.config import RunConfig
from greenstudy.measure.energy import EnergyMeter, machine_lock
from greenstudy.measure.ledger import (
    MAKE_AND_CHECK,
    Ledger,
    MissingEnergyReading,
    PhaseEnergy,
    energy_metrics,
    read_journal,
    read_ledger_csv,
    write_ledger_csv,
)
from greenstudy.measure.precision import Precision
from greenstudy.training.checkpoint import Checkpointer
from greenstudy.training.control import TrainingControl
from greenstudy.training.data import load_cifar
from greenstudy.training.fitting import fit
from greenstudy.training.models import build_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def meter() -> EnergyMeter:
    meter = EnergyMeter(CPU, country_iso_code="FRA")
    yield meter
    meter.stop()


def _busy(seconds: float) -> None:
    x = torch.randn(256, 256)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        x = (x @ x).tanh()


def test_phase_is_measured_with_components_and_method(meter: EnergyMeter) -> None:
    ledger: list[PhaseEnergy] = []
    with meter.phase(ledger, "work", "train", 1) as phase:
        _busy(0.5)
    assert ledger == [phase]
    assert phase.energy_kwh > 0 and phase.seconds >= 0.5 and phase.emissions_kg > 0
    assert phase.energy_kwh == pytest.approx(phase.cpu_kwh + phase.gpu_kwh + phase.ram_kwh, rel=1e-6)
    assert re.fullmatch(r"cpu=[\w.-]+, gpu=(nvml|none), ram=[\w.-]+", phase.method), phase.method


def test_forced_powers_are_used_and_tagged() -> None:
    forced = EnergyMeter(CPU, cpu_power_w=50, ram_power_w=3)
    try:
        assert forced.energy_method().startswith("cpu=user-forced-50W, gpu=")
        assert forced.energy_method().endswith(", ram=user-forced-3W")
        ledger: list[PhaseEnergy] = []
        with forced.phase(ledger, "idle", "setup"):
            time.sleep(0.5)
        assert ledger[0].ram_kwh == pytest.approx(3 * ledger[0].seconds / 3.6e6, rel=0.25)
    finally:
        forced.stop()


def test_phase_without_reading_fails_loudly(meter: EnergyMeter) -> None:
    """CodeCarbon reports a zero delta for a task it lost: the ledger refuses it, naming the phase."""
    ledger: list[PhaseEnergy] = []
    with pytest.raises(MissingEnergyReading, match="phase lost/epoch1"), meter.phase(ledger, "lost/epoch1", "train", 1):
        meter._tracker.stop_task("lost/epoch1")  # the task ends behind the meter's back
    assert ledger == []


def test_fit_ledger_invariants(meter: EnergyMeter, tiny_data_dir: Path) -> None:
    """A real 2-epoch fit: per-epoch energies sum to train/val energy, phases to energy_kwh, components
    to totals; a derived ledger's lifecycle = upstream + own."""
    cfg = RunConfig(model="efficientnet_b0", data_dir=str(tiny_data_dir), download=False, epochs=2, batch_size=64,
                    val_size=100, train_subset=256)
    data = load_cifar(cfg.dataset, cfg.data_dir, False, cfg.val_size, cfg.train_subset, 0, cfg.seed)
    phases: list[PhaseEnergy] = []
    logged: list[tuple[int, dict[str, float]]] = []
    with meter.phase(phases, "setup/build", "setup"):
        model = build_model(cfg.model, data.num_classes)
    result = fit(cfg, data, meter, model, Precision(), cfg.epochs, cfg.lr, "t", phases, TrainingControl(), None,
                 log=lambda metrics, epoch: logged.append((epoch, metrics)))
    with meter.phase(phases, "t/test", "test"):
        _busy(0.1)
    with meter.phase(phases, "t/inference", "inference"):
        _busy(0.1)
    own = Ledger(phases)
    metrics = energy_metrics(own)
    assert [p.kind for p in phases] == ["setup", "train", "val", "train", "val", "test", "inference"]
    assert [epoch for epoch, _ in logged] == [1, 2] and len(result.history) == 2
    assert sum(m["epoch_train_energy_kwh"] for _, m in logged) == pytest.approx(metrics["train_energy_kwh"], rel=1e-9)
    assert sum(m["epoch_val_energy_kwh"] for _, m in logged) == pytest.approx(metrics["val_energy_kwh"], rel=1e-9)
    assert sum(m["epoch_energy_kwh"] for _, m in logged) == pytest.approx(
        metrics["train_energy_kwh"] + metrics["val_energy_kwh"], rel=1e-9)
    last = logged[-1][1]  # cumulative = the epochs' energy + setup (here the model build) + cut-short work, said apart
    made_so_far = metrics["train_energy_kwh"] + metrics["val_energy_kwh"] + metrics["setup_energy_kwh"]
    assert last["cumulative_energy_kwh"] == pytest.approx(made_so_far)
    assert last["cumulative_setup_energy_kwh"] == pytest.approx(metrics["setup_energy_kwh"])
    assert last["cumulative_interrupted_energy_kwh"] == 0
    made = sum(p.energy_kwh for p in phases if p.kind in MAKE_AND_CHECK)
    assert metrics["energy_kwh"] == pytest.approx(made, rel=1e-9)
    assert metrics["energy_kwh"] == pytest.approx(
        sum(metrics[f"{k}_energy_kwh"] for k in ("train", "val", "setup", "test")), rel=1e-9)
    assert metrics["energy_kwh"] < own.energy(*MAKE_AND_CHECK, "inference")  # inference is never in the total
    assert metrics["energy_kwh"] == pytest.approx(
        metrics["cpu_energy_kwh"] + metrics["gpu_energy_kwh"] + metrics["ram_energy_kwh"], rel=1e-6)
    for kind in ("train", "val", "setup", "test"):
        assert metrics[f"{kind}_energy_kwh"] == pytest.approx(
            sum(metrics[f"{kind}_{c}_energy_kwh"] for c in ("cpu", "gpu", "ram")), rel=1e-6)
    assert metrics["lifecycle_energy_kwh"] == metrics["own_energy_kwh"] == metrics["energy_kwh"]

    with meter.phase(derived := [], "q/calibrate", "setup"):
        _busy(0.1)
    upstream = own.as_upstream("base-run")
    derived_metrics = energy_metrics(Ledger(derived), upstream)
    assert derived_metrics["upstream_energy_kwh"] == pytest.approx(
        own.energy("train", "val", "setup"), rel=1e-9)  # what the model stands on: not its test or inference
    assert derived_metrics["lifecycle_energy_kwh"] == pytest.approx(
        derived_metrics["upstream_energy_kwh"] + derived_metrics["own_energy_kwh"], rel=1e-12)


def test_ledger_csv_round_trip(tmp_path: Path) -> None:
    own = Ledger([PhaseEnergy("a", "train", 1, 2e-6, 1e-6, 0.0, 1e-6, 1e-7, 3.0)])
    upstream = Ledger([PhaseEnergy("b", "train", 1, 5e-6, 2e-6, 0.0, 3e-6, 2e-7, 9.0)]).as_upstream("base")
    read_own, read_up = read_ledger_csv(write_ledger_csv(tmp_path / "l.csv", own, upstream))
    assert read_own.phases == own.phases and read_up.phases == upstream.phases
    with pytest.raises(ValueError, match="unknown phase kind"):
        PhaseEnergy("x", "lunch")


def test_components_that_do_not_add_up_are_refused() -> None:
    with pytest.raises(ValueError, match="cpu\\+gpu\\+ram"):
        energy_metrics(Ledger([PhaseEnergy("bad", "train", 1, energy_kwh=1.0, cpu_kwh=0.1)]))


HOLD_LOCK = """
import sys, time
from greenstudy.measure.energy import machine_lock
with machine_lock("holder"):
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def test_second_measuring_process_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """While another process measures, a second one waits for the machine lock (and says so)."""
    monkeypatch.setenv("GREENSTUDY_ENERGY_LOCK", str(tmp_path / "energy.lock"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, "2.0"], stdout=subprocess.PIPE, text=True,
                              env={**__import__("os").environ, "GREENSTUDY_ENERGY_LOCK": str(tmp_path / "energy.lock")})
    assert holder.stdout.readline().strip() == "held"
    started = time.perf_counter()
    with machine_lock("second"):
        waited = time.perf_counter() - started
    holder.wait(timeout=30)
    assert waited > 1.0
    assert "waiting for pid" in capsys.readouterr().err


def test_a_cut_phase_keeps_its_kind_unless_it_is_training(meter: EnergyMeter) -> None:
    """Ctrl-C in training work makes it `interrupted` (counted, no finished epoch); a cut test still counts as
    test and a cut inference is still never in energy_kwh; all three are flagged cut_short."""
    phases: list[PhaseEnergy] = []
    for name, kind in (("c/train", "train"), ("c/test", "test"), ("c/inference", "inference")):
        with pytest.raises(KeyboardInterrupt), meter.phase(phases, name, kind, epoch=1):
            _busy(0.05)
            raise KeyboardInterrupt
    assert [(p.kind, p.cut_short) for p in phases] == [("interrupted", True), ("test", True), ("inference", True)]
    metrics = energy_metrics(Ledger(phases))
    assert metrics["energy_kwh"] == pytest.approx(phases[0].energy_kwh + phases[1].energy_kwh, rel=1e-9)
    assert metrics["interrupted_energy_kwh"] == pytest.approx(phases[0].energy_kwh, rel=1e-9)
    assert Ledger(phases).as_upstream("r").phases == [replace(phases[0], upstream_run_id="r")]  # no test, no inference


class _LosingMeter(EnergyMeter):
    """A meter whose bookkeeping fails when a phase ends (e.g. CodeCarbon raising in stop_task)."""

    def _close_phase(self, *args: object) -> None:
        raise RuntimeError("stop_task failed")


def test_a_signal_is_never_swallowed_by_a_failing_reading() -> None:
    losing = _LosingMeter(CPU, country_iso_code="FRA")
    try:
        with pytest.raises(KeyboardInterrupt), losing.phase([], "l/train", "train", 1):
            raise KeyboardInterrupt  # the run must end KILLED, not FAILED
        with pytest.raises(RuntimeError, match="stop_task failed"), losing.phase([], "l/test", "test"):
            pass  # without a signal, the failing reading is the error
    finally:
        losing.stop()


def test_the_journal_keeps_every_sitting_once(tmp_path: Path) -> None:
    """Phases are on disk as measured (a torn last line is dropped); a new sitting turns the epochs after the
    checkpoint into `interrupted` once, and stamps its own phases with the next sitting number."""
    checkpointer = Checkpointer(tmp_path / "run")
    first = checkpointer.open_journal(None)
    for epoch in (1, 2, 3):
        for kind in ("train", "val"):
            first.append(PhaseEnergy(f"e{epoch}/{kind}", kind, epoch, energy_kwh=1.0, ram_kwh=1.0, seconds=1.0))
    with checkpointer.journal_path.open("a") as handle:
        handle.write('{"name": "torn')  # killed mid-write
    assert [p.sitting for p in read_journal(checkpointer.journal_path)] == [1] * 6
    second = checkpointer.open_journal({"epoch": 2})  # the checkpoint holds epoch 2: epoch 3 is trained again
    assert [p.kind for p in second] == ["train", "val", "train", "val", "interrupted", "interrupted"]
    second.append(PhaseEnergy("e3/train", "train", 3, energy_kwh=2.0, ram_kwh=2.0, seconds=1.0))
    third = checkpointer.open_journal({"epoch": 3})  # a hard kill after epoch 3's checkpoint: nothing is lost
    assert [(p.kind, p.epoch, p.sitting) for p in third][-3:] == [("interrupted", 3, 1), ("interrupted", 3, 1), ("train", 3, 2)]
    assert third.sitting == 3 and Ledger(list(third)).energy(*MAKE_AND_CHECK) == pytest.approx(8.0)
    checkpointer.remove()
    assert not checkpointer.journal_path.exists()


def test_setup_redone_without_a_checkpoint_is_interrupted(tmp_path: Path) -> None:
    """A prune (or calibration) that finished before a kill with no checkpoint is done again: the first one
    was spent but is no longer the run's setup; a torn journal line elsewhere than at the end raises."""
    checkpointer = Checkpointer(tmp_path / "pruned")
    checkpointer.open_journal(None).append(PhaseEnergy("p/prune", "setup", energy_kwh=1.0, ram_kwh=1.0, seconds=1.0))
    again = checkpointer.open_journal(None)
    assert [(p.kind, p.sitting) for p in again] == [("interrupted", 1)] and again.sitting == 2
    lines = checkpointer.journal_path.read_text()
    checkpointer.journal_path.write_text('{"torn\n' + lines)
    with pytest.raises(ValueError, match="line 1 is unreadable"):
        read_journal(checkpointer.journal_path)
