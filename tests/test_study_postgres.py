"""Distributed tuning for real: a PostgreSQL server on loopback (initdb + pg_ctl in a temp dir) holds
one Optuna study and the MLflow tracking store; two `mlproject/tune.py` workers run at once on the
same study. The union of the trials they report must be exactly the study's trials: numbers unique,
none lost, every trial a FINISHED MLflow child run of its own worker's parent run."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.conftest import PYTHON, entry_env
from tests.test_study import TUNE, TUNE_TINY, session_trials

pytestmark = pytest.mark.postgres

SUPERUSER = "greenstudy"


def _pg_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb (Debian's layout), or one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user() -> tuple[list[str], int | None]:
    """PostgreSQL refuses to run as root: as root, run its tools as the `postgres` system user (the
    Debian package creates it) or `nobody`, through runuser; otherwise as ourselves."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            uid = pwd.getpwnam(name).pw_uid
            if runuser:
                return [runuser, "-u", name, "--"], uid
    pytest.skip("running as root with neither runuser nor a postgres/nobody user to run PostgreSQL as")


@dataclass
class Postgres:
    port: int
    data: Path

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"


@pytest.fixture()
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL server on 127.0.0.1:<free port>, socket and data in a temp dir,
    trust authentication for its own superuser; stopped (by pid if pg_ctl cannot) at the end."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): install the `postgresql` package (.ci/system-deps.sh)")
    prefix, uid = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="greenstudy-pg-"))  # not under pytest's 0700 root-owned tmp tree
    if uid is not None:
        os.chown(root, uid, -1)
    data, log = root / "data", root / "server.log"
    port = _free_port()
    try:
        subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        started = subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
            capture_output=True, text=True, timeout=90,
        )
        assert started.returncode == 0, started.stdout + started.stderr + (log.read_text() if log.exists() else "")
        yield Postgres(port, data)
    finally:
        pid_file = data / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            stopped = subprocess.run(
                [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
                capture_output=True, timeout=60,
            )
            if stopped.returncode != 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def _create_databases(server: Postgres, *names: str) -> None:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=server.port, user=SUPERUSER, dbname="postgres", connect_timeout=10)
    connection.autocommit = True
    with connection.cursor() as cursor:
        for name in names:
            cursor.execute(f"CREATE DATABASE {name}")
    connection.close()


def test_two_workers_share_one_postgres_study(postgres: Postgres, tiny_data_dir: Path, tmp_path: Path) -> None:
    _create_databases(postgres, "optuna", "mlflow")
    # One MLflow store for both workers, on the same server (what a shared tracking server would sit on).
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, so MLflow gets the psycopg2 driver by name;
    # the Optuna storage URL stays bare: greenstudy.study maps it to psycopg2 itself.
    tracking = postgres.url("mlflow", "postgresql+psycopg2")
    MlflowClient(tracking).search_experiments()  # create MLflow's schema once, before two workers race to migrate it
    storage = postgres.url("optuna")
    study_name = "distributed"

    workers = []
    cores = sorted(os.sched_getaffinity(0))
    for seed in (1, 2):  # one sampler seed per worker: same-seeded workers would propose the same trials
        core = {cores[seed % len(cores)]}  # a core each: greenstudy then trains on 1 thread, no oversubscription
        log = (tmp_path / f"worker{seed}.log").open("w")
        args = [
            PYTHON, TUNE, "--data-dir", str(tiny_data_dir), *TUNE_TINY, "--study-name", study_name,
            "--storage", storage, "--n-trials", "2", "--sampler", "random", "--sampler-seed", str(seed),
            "--hv-ref-energy-kwh", "0.01",  # explicit: otherwise the first worker to finish a trial fixes it
        ]
        process = subprocess.Popen(
            args, cwd=tmp_path, env=entry_env(tracking), stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=lambda core=core: os.sched_setaffinity(0, core),
        )
        workers.append((process, log))
    reported: list[list[int]] = []
    parents: list[str] = []
    deadline = time.monotonic() + 400
    for process, log in workers:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
        output = Path(log.name).read_text()
        assert process.returncode == 0, output[-4000:]
        reported.append(session_trials(output))
        parents.append(next(line.split()[-1] for line in output.splitlines() if line.startswith("parent run id:")))

    study = optuna.load_study(study_name=study_name, storage=postgres.url("optuna", "postgresql+psycopg2"))
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    union = sorted(reported[0] + reported[1])
    assert len(reported[0]) == len(reported[1]) == 2
    assert not set(reported[0]) & set(reported[1])  # no trial claimed by both workers
    assert union == sorted(numbers) == [0, 1, 2, 3]  # none lost, none duplicated
    assert all(t.state == TrialState.COMPLETE for t in trials)

    client = MlflowClient(tracking)
    assert parents[0] != parents[1]
    for worker, parent_id in enumerate(parents):
        for number in reported[worker]:
            run = client.get_run(trials[number].user_attrs["mlflow_run_id"])
            assert run.info.status == "FINISHED"
            assert run.data.tags["mlflow.parentRunId"] == parent_id
            assert run.data.tags["trial_number"] == str(number)
            assert run.data.tags["optuna_study"] == study_name
        parent = client.get_run(parent_id)
        assert "pareto_front.png" in {item.path for item in client.list_artifacts(parent_id)}
        assert parent.data.tags["optuna_storage"] == storage  # no password in this URL; one would show as ***
    # both workers measured the hypervolume against the one reference point stored in the study
    assert study.user_attrs["hypervolume_reference"] == {"val_acc1": 0.0, "train_energy_kwh": 0.01}
    for parent_id in parents:
        assert client.get_run(parent_id).data.tags["hypervolume_reference_energy_kwh"] == "0.01"
