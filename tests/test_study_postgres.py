"""Distributed tuning for real, set up the way the README's multi-machine section says: a PostgreSQL
server on loopback (initdb + pg_ctl in a temp dir, password authentication over TCP) holds one Optuna
study and the MLflow store; an `mlflow server --app-name basic-auth` on 127.0.0.1 (own auth config,
non-default admin password, host and CORS protection) fronts that store; two `mlproject/tune.py`
workers authenticate through MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD and reach the
database through PGPASSWORD, never through a URL. Checked: the server refuses unauthenticated and
foreign-host requests; the union of the trials the workers report is exactly the study's trials
(numbers unique, none lost), every trial a FINISHED MLflow child run of its own worker's parent run;
and no password appears in any logged param or tag."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import requests
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.conftest import PYTHON, entry_env, stop_process_group
from tests.test_study import TUNE, TUNE_TINY, session_trials

pytestmark = pytest.mark.postgres

SUPERUSER = "greenstudy"
WORKER_USER = "tuner"  # the MLflow account the workers share: not the admin
SERVER_START_S = 120


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
    password: str  # of SUPERUSER, required over TCP (scram-sha-256); never part of a URL

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"


@pytest.fixture()
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL server on 127.0.0.1:<free port>, socket and data in a temp dir; TCP
    clients must give the superuser's random password; stopped (by pid if pg_ctl cannot) at the end."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): install the `postgresql` package (.ci/system-deps.sh)")
    prefix, uid = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="greenstudy-pg-"))  # not under pytest's 0700 root-owned tmp tree
    if uid is not None:
        os.chown(root, uid, -1)
    data, log, pwfile = root / "data", root / "server.log", root / "pwfile"
    password = secrets.token_urlsafe(18)
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    if uid is not None:
        os.chown(pwfile, uid, -1)
    port = _free_port()
    try:
        subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, f"--pwfile={pwfile}",
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )
        pwfile.unlink()
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        started = subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
            capture_output=True, text=True, timeout=90,
        )
        assert started.returncode == 0, started.stdout + started.stderr + (log.read_text() if log.exists() else "")
        yield Postgres(port, data, password)
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

    connection = psycopg2.connect(
        host="127.0.0.1", port=server.port, user=SUPERUSER, password=server.password, dbname="postgres", connect_timeout=10,
    )
    connection.autocommit = True
    with connection.cursor() as cursor:
        for name in names:
            cursor.execute(f"CREATE DATABASE {name}")
    connection.close()


@dataclass
class TrackingServer:
    url: str
    admin_password: str
    worker_password: str  # of WORKER_USER


def _wait_healthy(base: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}: {log.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(base + "/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer /health within {SERVER_START_S} s: {log.read_text()[-3000:]}")


_stop = stop_process_group


@pytest.fixture()
def tracking_server(postgres: Postgres, tmp_path: Path) -> Iterator[TrackingServer]:
    """`mlflow server --app-name basic-auth` on 127.0.0.1 over the `mlflow` database, as the README
    starts it: an auth config of its own (users db beside it, admin password not the default), a
    Flask secret key, allowed hosts and CORS origins for its own address only; one worker account."""
    _create_databases(postgres, "mlflow")
    root = tmp_path / "server"
    root.mkdir()
    admin_password, worker_password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    config = root / "basic_auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
        f"admin_username = admin\nadmin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    config.chmod(0o600)
    port = _free_port()
    hosts = f"127.0.0.1:{port},localhost:{port}"
    origins = f"http://127.0.0.1:{port},http://localhost:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.update(
        MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(32), PGPASSWORD=postgres.password,
        MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", postgres.url("mlflow", "postgresql+psycopg2"),
         "--artifacts-destination", str(root / "artifacts"), "--allowed-hosts", hosts, "--cors-allowed-origins", origins],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, server, root / "server.log")
        created = requests.post(
            base + "/api/2.0/mlflow/users/create", json={"username": WORKER_USER, "password": worker_password},
            auth=("admin", admin_password), timeout=30,
        )
        assert created.status_code == 200, created.text
        yield TrackingServer(base, admin_password, worker_password)
    finally:
        _stop(server)
        log.close()


def _assert_server_refuses_strangers(server: TrackingServer) -> None:
    """No credentials, a wrong password, a foreign Host header (DNS rebinding) or a foreign Origin: refused."""
    search = server.url + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(search, timeout=30).status_code == 401
    assert requests.get(search, auth=(WORKER_USER, "not-the-password"), timeout=30).status_code == 401
    worker = (WORKER_USER, server.worker_password)
    assert requests.get(search, auth=worker, timeout=30).status_code == 200
    assert requests.get(search, auth=worker, headers={"Host": "mlflow.attacker.example"}, timeout=30).status_code == 403
    create = server.url + "/api/2.0/mlflow/experiments/create"
    foreign = {"Origin": "http://attacker.example"}
    assert requests.post(create, json={"name": "cross-site"}, auth=worker, headers=foreign, timeout=30).status_code == 403


def _logged_strings(client: MlflowClient) -> tuple[set[str], list[str]]:
    """The ids of every run in the store, and every param and tag key and value any of them holds."""
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    strings = [s for run in runs for items in (run.data.params, run.data.tags) for pair in items.items() for s in pair]
    return {run.info.run_id for run in runs}, strings


def test_two_workers_share_one_postgres_study(
    postgres: Postgres, tracking_server: TrackingServer, tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _create_databases(postgres, "optuna")  # `mlflow` exists already: the tracking server sits on it
    _assert_server_refuses_strangers(tracking_server)
    # The Optuna URL holds no password: the workers' psycopg2 reads PGPASSWORD (or ~/.pgpass).
    storage = postgres.url("optuna")
    study_name = "distributed"
    credentials = {
        "MLFLOW_TRACKING_USERNAME": WORKER_USER, "MLFLOW_TRACKING_PASSWORD": tracking_server.worker_password,
        "PGPASSWORD": postgres.password,
        "GREENSTUDY_ENERGY_LOCK": str(tmp_path / "energy.lock"),  # the workers take turns with each other, not other test sessions
    }

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
            args, cwd=tmp_path, env={**entry_env(tracking_server.url), **credentials}, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=lambda core=core: os.sched_setaffinity(0, core),
        )
        workers.append((process, log))
    reported: list[list[int]] = []
    parents: list[str] = []
    outputs: list[str] = []
    deadline = time.monotonic() + 400  # generous: two workers on one machine may take turns to measure
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
        outputs.append(output)
        reported.append(session_trials(output))
        parents.append(next(line.split()[-1] for line in output.splitlines() if line.startswith("parent run id:")))

    study = optuna.load_study(
        study_name=study_name,
        storage=optuna.storages.RDBStorage(
            postgres.url("optuna", "postgresql+psycopg2"), engine_kwargs={"connect_args": {"password": postgres.password}},
        ),
    )
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    union = sorted(reported[0] + reported[1])
    assert len(reported[0]) == len(reported[1]) == 2
    assert not set(reported[0]) & set(reported[1])  # no trial claimed by both workers
    assert union == sorted(numbers) == [0, 1, 2, 3]  # none lost, none duplicated
    assert all(t.state == TrialState.COMPLETE for t in trials)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", WORKER_USER)  # how any MLflow client authenticates
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", tracking_server.worker_password)
    client = MlflowClient(tracking_server.url)
    assert parents[0] != parents[1]
    trial_runs = set()
    for worker, parent_id in enumerate(parents):
        for number in reported[worker]:
            run = client.get_run(trials[number].user_attrs["mlflow_run_id"])
            trial_runs.add(run.info.run_id)
            assert run.info.status == "FINISHED"
            assert run.data.tags["mlflow.parentRunId"] == parent_id
            assert run.data.tags["trial_number"] == str(number)
            assert run.data.tags["optuna_study"] == study_name
            assert run.data.tags["mlflow.user"] == WORKER_USER  # logged as the worker account, through the server
        parent = client.get_run(parent_id)
        assert "pareto_front.png" in {item.path for item in client.list_artifacts(parent_id)}
        assert parent.data.tags["optuna_storage"] == storage  # the URL as given: it never held a password
        assert parent.data.params["storage"] == storage
    # both workers measured the hypervolume against the one reference point stored in the study
    assert study.user_attrs["hypervolume_reference"] == {"val_acc1": 0.0, "energy_kwh": 0.01}
    for parent_id in parents:
        assert client.get_run(parent_id).data.tags["hypervolume_reference_energy_kwh"] == "0.01"

    # Nothing lost, nothing extra: the store holds the two parents and the four trial runs, no more.
    run_ids, logged = _logged_strings(client)
    assert len(trial_runs) == 4 and run_ids == trial_runs | set(parents)
    assert any(storage in value for value in logged)  # the check below does read the URL-bearing tags
    secrets_ = {"MLflow password": tracking_server.worker_password, "admin password": tracking_server.admin_password,
                "PostgreSQL password": postgres.password}
    for what, secret in secrets_.items():
        assert not [value for value in logged if secret in value], f"{what} logged in a param or tag"
        assert not [i for i, output in enumerate(outputs) if secret in output], f"{what} printed by a worker"
