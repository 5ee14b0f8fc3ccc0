"""Resume: an interrupted `main` run goes on in place (same child run id) from its last finished epoch,
reaches the same weights as an uninterrupted run, and its energy totals add up across both sittings."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from greenstudy.errors import ConfigError
from greenstudy.measure.ledger import MAKE_AND_CHECK, Ledger, read_ledger_csv
from greenstudy.runs.main_run import _not_in_this_sitting, logged_energy
from greenstudy.runs.outcome import ChildOutcome
from greenstudy.runs.resume import ResumePlan
from tests.conftest import PYTHON, ROOT, entry_env

ARGS = ["--model", "efficientnet_b0", "--variants", "baseline", "--epochs", "3", "--batch-size", "64",
        "--train-subset", "320", "--val-size", "100", "--test-subset", "100", "--infer-seconds", "0.2", "--infer-b1-repeats", "0",
        "--download", "false"]


def _main(args: list[str], uri: str, cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, str(ROOT / "mlproject" / "main.py"), *args], env=entry_env(uri), cwd=cwd,
                          capture_output=True, text=True, timeout=400, **kwargs)


def _only(client: MlflowClient, experiment: str, kind: str) -> mlflow.entities.Run:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.kind = '{kind}'")
    assert len(runs) == 1, runs
    return runs[0]


def _interrupt_after_first_checkpoint(args: list[str], uri: str, cwd: Path, experiment: str) -> str:
    """Start a run, SIGINT it once its first epoch's checkpoint exists; returns the child run id."""
    process = subprocess.Popen([PYTHON, str(ROOT / "mlproject" / "main.py"), *args], env=entry_env(uri), cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(uri)
    deadline = time.monotonic() + 240
    child_id = ""
    while time.monotonic() < deadline and process.poll() is None:
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], "tags.kind = 'variant'") if exp else []
        if runs and "checkpoint" in runs[0].data.tags and Path(runs[0].data.tags["checkpoint"]).is_file():
            child_id = runs[0].info.run_id
            break
        time.sleep(0.2)
    assert child_id, "no checkpoint was written"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    return child_id


def test_resume_goes_on_in_place_and_matches_uninterrupted(tiny_data_dir: Path, tracking_uri: str, tmp_path: Path) -> None:
    args = [*ARGS, "--data-dir", str(tiny_data_dir), "--checkpoint-dir", str(tmp_path / "ckpt")]
    full = _main([*args, "--experiment", "full"], tracking_uri, tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]

    child_id = _interrupt_after_first_checkpoint([*args, "--experiment", "cut"], tracking_uri, tmp_path, "cut")
    client = MlflowClient(tracking_uri)
    parent = _only(client, "cut", "parent")
    assert parent.info.status == "KILLED" and client.get_run(child_id).info.status == "KILLED"
    logged_before = len(client.get_metric_history(child_id, "val_acc1"))
    assert 1 <= logged_before < 3
    spent_before = client.get_run(child_id).data.metrics["energy_kwh"]  # the killed sitting's partial ledger

    resumed = _main([*args, "--experiment", "cut", "--resume", parent.info.run_id], tracking_uri, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming run {child_id}" in resumed.stderr
    child = client.get_run(child_id)
    assert child.info.status == "FINISHED" and client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert len(client.search_runs([parent.info.experiment_id], "tags.kind = 'variant'")) == 1, "went on in place"
    steps = [p.step for p in client.get_metric_history(child_id, "val_acc1")]
    assert steps == [1, 2, 3]

    own, _ = read_ledger_csv(client.download_artifacts(child_id, "energy_ledger.csv", str(tmp_path / "dl")))
    assert [p.epoch for p in own.of("train")] == [1, 2, 3]
    assert child.data.metrics["energy_kwh"] == pytest.approx(own.energy(*MAKE_AND_CHECK), rel=1e-6)
    assert child.data.metrics["energy_kwh"] > spent_before > 0, "both sittings are in the total"
    assert child.data.metrics["train_energy_kwh"] == pytest.approx(
        sum(p.value for p in client.get_metric_history(child_id, "epoch_train_energy_kwh")), rel=1e-6)
    assert not Path(child.data.tags["checkpoint"]).exists(), "a finished run's checkpoint is removed"

    reference = _only(client, "full", "variant")
    a = mlflow.pytorch.load_model(f"runs:/{reference.info.run_id}/model").state_dict()
    b = mlflow.pytorch.load_model(f"runs:/{child_id}/model").state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_bad_resume_id_and_other_settings_are_one_line(tiny_data_dir: Path, tracking_uri: str, tmp_path: Path) -> None:
    args = [*ARGS, "--data-dir", str(tiny_data_dir), "--checkpoint-dir", str(tmp_path / "ckpt"), "--experiment", "bad"]
    args[args.index("--epochs") + 1] = "30"  # long enough never to finish before the interrupt
    result = _main([*args, "--resume", "0123456789abcdef"], tracking_uri, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: resume: no run '0123456789abcdef'")

    _interrupt_after_first_checkpoint(args, tracking_uri, tmp_path, "bad")
    parent = _only(MlflowClient(tracking_uri), "bad", "parent")
    other = [a if a != "0.1" else "0.05" for a in [*args, "--lr", "0.1"]]
    result = _main([*other, "--resume", parent.info.run_id], tracking_uri, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: resume: run ") and "other settings: lr=0.1 (now 0.05)" in last
    result = _main([*args, "--country-iso-code", "FRA", "--resume", parent.info.run_id], tracking_uri, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]  # one ledger prices every sitting on the same grid
    assert "other settings: country_iso_code=USA (now FRA)" in result.stderr.strip().splitlines()[-1]


def test_resume_refuses_another_machine_and_sums_every_child() -> None:
    """Pure parts of a resumed sitting: another measuring method or CPU is refused; the parent's summary of a
    sitting that resumed fewer variants still covers the others."""
    plan = ResumePlan(finished={"baseline": ChildOutcome("baseline", "b", "FINISHED", {"energy_kwh": 1.0})},
                      unfinished={"amp": "a", "pruned": "p"},
                      machine={"a": {"energy_method": "cpu=rapl, gpu=none, ram=constant-estimate", "cpu_model": "EPYC"}})
    plan.check_same_machine({"energy_method": "cpu=rapl, gpu=none, ram=constant-estimate", "cpu_model": "EPYC"})
    with pytest.raises(ConfigError, match="run a was measured elsewhere: cpu_model='EPYC' \\(now 'Xeon'\\)"):
        plan.check_same_machine({"energy_method": "cpu=rapl, gpu=none, ram=constant-estimate", "cpu_model": "Xeon"})
    this_sitting = [ChildOutcome("amp", "a", "FINISHED", {"energy_kwh": 2.0})]
    others = _not_in_this_sitting(plan, this_sitting, logged={"p": {"energy_kwh": 0.5}}.get)
    assert [(c.variant, c.status) for c in others] == [("baseline", "FINISHED"), ("pruned", "KILLED")]
    assert [c.metrics["energy_kwh"] for c in others] == [1.0, 0.5]  # the unresumed child's partial energy counts


def test_an_unfinished_childs_logged_energy_is_read_back(tracking_uri: str) -> None:
    """logged_energy: a child's partial totals as logged; a hard-killed child (no totals, only the per-epoch
    cumulative energy) counts its last cumulative energy; an unreadable run is {} (the summary goes on)."""
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("logged")
    partial, killed = client.create_run(experiment).info.run_id, client.create_run(experiment).info.run_id
    client.log_metric(partial, "energy_kwh", 0.25)
    for step, value in ((1, 0.1), (2, 0.3)):
        client.log_metric(killed, "cumulative_energy_kwh", value, step=step)
    assert logged_energy(partial)["energy_kwh"] == 0.25
    assert logged_energy(killed)["energy_kwh"] == 0.3
    assert logged_energy("no-such-run") == {}


def test_interrupt_while_waiting_for_the_measurement_lock(tiny_data_dir: Path, tracking_uri: str, tmp_path: Path) -> None:
    """Ctrl-C is deferred to safe points under run_cli; waiting for another run's lock is one of them."""
    lock = tmp_path / "energy.lock"
    holder = subprocess.Popen([PYTHON, "-c", "import sys, time\nfrom greenstudy.measure.energy import machine_lock\n"
                               "with machine_lock('holder'):\n    print('held', flush=True); time.sleep(300)"],
                              env={**entry_env(tracking_uri), "GREENSTUDY_ENERGY_LOCK": str(lock)},
                              stdout=subprocess.PIPE, text=True)
    waiter: subprocess.Popen[str] | None = None
    try:
        assert holder.stdout.readline().strip() == "held"
        args = [*ARGS, "--data-dir", str(tiny_data_dir), "--checkpoint-dir", str(tmp_path / "ckpt"), "--experiment", "wait"]
        waiter = subprocess.Popen([PYTHON, str(ROOT / "mlproject" / "main.py"), *args], cwd=tmp_path,
                                  env={**entry_env(tracking_uri), "GREENSTUDY_ENERGY_LOCK": str(lock)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        waited = ""
        while "waiting for pid" not in waited:
            line = waiter.stderr.readline()
            assert line, f"ended without waiting: {waited[-2000:]}"
            waited += line
        waiter.send_signal(signal.SIGTERM)
        _, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 130, err[-2000:]
        assert "stopping after the current batch" in err
        parent = _only(MlflowClient(tracking_uri), "wait", "parent")
        assert parent.info.status == "KILLED"
        runs = MlflowClient(tracking_uri).search_runs([parent.info.experiment_id])
        assert [run.info.status for run in runs] == ["KILLED"] * len(runs)
    finally:
        for process in (holder, waiter):
            if process is not None:
                process.kill()
                process.wait()


def _steps(client: MlflowClient, run_id: str, metric: str = "val_acc1") -> list[int]:
    return [point.step for point in client.get_metric_history(run_id, metric)]


def _sitting(args: list[str], uri: str, cwd: Path, experiment: str, stop: signal.Signals | None, after_steps: int) -> int:
    """One sitting of a `main` run; with `stop`, that signal once the child has logged `after_steps` epochs.
    Returns the exit code."""
    with (cwd / "sitting.log").open("a") as log:
        process = subprocess.Popen([PYTHON, str(ROOT / "mlproject" / "main.py"), *args], env=entry_env(uri), cwd=cwd,
                                   stdout=log, stderr=log, text=True)
        client = MlflowClient(uri)
        deadline = time.monotonic() + 300
        while stop is not None and time.monotonic() < deadline and process.poll() is None:
            exp = client.get_experiment_by_name(experiment)
            runs = client.search_runs([exp.experiment_id], "tags.kind = 'variant'") if exp else []
            if runs and len(_steps(client, runs[0].info.run_id)) >= after_steps:
                process.send_signal(stop)
                break
            time.sleep(0.1)
        return process.wait(timeout=200)


def _check_adds_up(client: MlflowClient, child_id: str, tmp: Path) -> tuple[list[int], Ledger]:
    """What any sitting must leave: contiguous steps, a cumulative energy that never decreases, a logged ledger
    whose own phases (each measured once, naming its sitting) sum to energy_kwh."""
    steps = _steps(client, child_id)
    assert steps == list(range(1, len(steps) + 1)), steps
    cumulative = [p.value for p in sorted(client.get_metric_history(child_id, "cumulative_energy_kwh"), key=lambda p: p.step)]
    assert cumulative == sorted(cumulative), "cumulative_energy_kwh never decreases"
    own, _ = read_ledger_csv(client.download_artifacts(child_id, "energy_ledger.csv", str(tmp)))
    keys = [(p.sitting, p.name, p.started_at) for p in own.phases]
    assert len(keys) == len(set(keys)), "every phase once"
    assert client.get_run(child_id).data.metrics["energy_kwh"] == pytest.approx(own.energy(*MAKE_AND_CHECK), rel=1e-6)
    return steps, own


def test_kill_matrix_every_sitting_adds_up(tiny_data_dir: Path, tracking_uri: str, tmp_path: Path) -> None:
    """SIGKILL after epoch 1, resume; SIGINT, resume; SIGKILL, resume to the end: after each step the
    figures add up, and the finished run's ledger holds every sitting's phases once."""
    experiment = "matrix"
    args = [*ARGS, "--epochs", "6", "--data-dir", str(tiny_data_dir), "--checkpoint-dir", str(tmp_path / "ckpt"),
            "--experiment", experiment]
    client = MlflowClient(tracking_uri)

    assert _sitting(args, tracking_uri, tmp_path, experiment, signal.SIGKILL, 1) == -signal.SIGKILL
    parent = _only(client, experiment, "parent")
    child = _only(client, experiment, "variant")
    child_id = child.info.run_id
    journal = Path(child.data.tags["checkpoint"]).parent / "ledger.jsonl"
    assert child.info.status == "RUNNING" and journal.is_file(), "a hard kill leaves the journal (and the run RUNNING)"
    killed_at = len(_steps(client, child_id))
    resume = [*args, "--resume", parent.info.run_id]

    assert _sitting(resume, tracking_uri, tmp_path, experiment, signal.SIGINT, killed_at + 2) == 130
    assert client.get_run(child_id).info.status == "KILLED"
    steps, own = _check_adds_up(client, child_id, tmp_path / "after-sigint")
    assert {p.sitting for p in own.phases} == {1, 2} and len(steps) >= killed_at + 2
    interrupted_at = len(steps)

    assert _sitting(resume, tracking_uri, tmp_path, experiment, signal.SIGKILL, interrupted_at + 1) == -signal.SIGKILL
    assert _sitting(resume, tracking_uri, tmp_path, experiment, None, 0) == 0
    final = client.get_run(child_id)
    assert final.info.status == "FINISHED" and client.get_run(parent.info.run_id).info.status == "FINISHED"
    steps, own = _check_adds_up(client, child_id, tmp_path / "final")
    assert steps == [1, 2, 3, 4, 5, 6]
    assert {p.sitting for p in own.phases} == {1, 2, 3, 4}, "the hard-killed third sitting's epochs are not lost"
    assert [p.epoch for p in own.of("train")] == [1, 2, 3, 4, 5, 6], "each finished epoch once; redone ones are interrupted"
    metrics = final.data.metrics
    assert metrics["train_energy_kwh"] == pytest.approx(sum(p.value for p in client.get_metric_history(child_id, "epoch_train_energy_kwh")))
    last = {name: max(client.get_metric_history(child_id, name), key=lambda p: p.step).value
            for name in ("cumulative_energy_kwh", "cumulative_setup_energy_kwh", "cumulative_interrupted_energy_kwh")}
    epochs = sum(p.value for p in client.get_metric_history(child_id, "epoch_energy_kwh"))
    assert last["cumulative_energy_kwh"] == pytest.approx(
        epochs + last["cumulative_setup_energy_kwh"] + last["cumulative_interrupted_energy_kwh"], rel=1e-6)
    assert last["cumulative_energy_kwh"] == pytest.approx(own.energy("train", "val", "setup", "interrupted"), rel=1e-6)
    assert metrics["sittings"] == 4 and not journal.exists()
