"""greenstudy.store: an MLflow SQLite store is created and migrated once, under a lock, however many
processes open it for the first time together; `greenstudy store init` does it ahead of parallel runs."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry.utils import _get_store_registry
from mlflow.tracking._tracking_service.utils import _tracking_store_registry

from greenstudy import store
from greenstudy.__main__ import main as greenstudy_main
from tests.conftest import PYTHON, ROOT, entry_env

# what a process does on first contact: build the tracking store, then the registry store, of one new
# database; it says it has imported MLflow (ready-<pid>) and starts when the test says go (all at once)
FIRST_CONTACT = """
import os, sys, time
from pathlib import Path
from mlflow.tracking import MlflowClient
gate = Path(sys.argv[2])
(gate / f"ready-{os.getpid()}").touch()
while not (gate / "go").exists():
    time.sleep(0.001)
client = MlflowClient(tracking_uri=sys.argv[1], registry_uri=sys.argv[1])
print(len(client.search_experiments()), len(client.search_registered_models()))
"""


def test_mlflow_builds_sqlite_stores_with_greenstudy_builders() -> None:
    """The entry points are installed and replace MLflow's built-in `sqlite` builders (tracking and registry)."""
    assert _tracking_store_registry._registry["sqlite"] is store.tracking_store
    assert _get_store_registry()._registry["sqlite"] is store.registry_store
    assert _tracking_store_registry._registry["postgresql"] is not store.tracking_store


def test_lock_path_and_non_sqlite_uris(tmp_path: Path) -> None:
    assert store.lock_path(f"sqlite:///{tmp_path}/a/mlflow.db") == tmp_path / "a" / "mlflow.db.lock"
    assert store.sqlite_path("sqlite:///mlflow.db") == Path.cwd() / "mlflow.db"
    for uri in ("sqlite://", "sqlite:///:memory:", "http://127.0.0.1:5000", "postgresql://u@h/db", "file:///tmp/x"):
        assert store.lock_path(uri) is None, uri
        with store.creation_lock(uri):  # a no-op there
            pass


def test_creation_lock_is_reentrant_and_excludes_other_processes(tmp_path: Path) -> None:
    """Held, the lock makes another process wait; re-entering it in this process does not deadlock."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a'); "
             "sys.exit(0 if fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB) is None else 1)")
    with store.creation_lock(uri), store.creation_lock(uri):
        busy = subprocess.run([PYTHON, "-c", probe, str(store.lock_path(uri))], capture_output=True, text=True)
        assert busy.returncode == 1 and "BlockingIOError" in busy.stderr
    free = subprocess.run([PYTHON, "-c", probe, str(store.lock_path(uri))], capture_output=True, text=True)
    assert free.returncode == 0, free.stderr


def test_processes_opening_a_new_store_together_all_succeed(tmp_path: Path) -> None:
    """Three processes open the same store that does not exist yet at the same instant (MLflow alone: one
    or more die in the migrations, 5 tries of 5 here). All succeed; the store holds one Default experiment."""
    db = tmp_path / "new" / "mlflow.db"
    uri = f"sqlite:///{db}"
    gate = tmp_path / "gate"
    gate.mkdir()
    procs = [subprocess.Popen([PYTHON, "-c", FIRST_CONTACT, uri, str(gate)], env=entry_env(uri), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    deadline = time.monotonic() + 120
    while len(list(gate.glob("ready-*"))) < len(procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    (gate / "go").touch()
    results = [(proc.wait(timeout=120), *proc.communicate()) for proc in procs]
    for code, out, err in results:
        assert code == 0, err[-2000:]
        assert out.split() == ["1", "0"]
    client = MlflowClient(uri)
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert store.prepare_store(uri).created is False


def test_store_init_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`greenstudy store init URI --experiment NAME` creates store and experiment, again is a check only;
    a URI MLflow cannot open is one error line."""
    uri = f"sqlite:///{tmp_path / 'deep' / 'mlflow.db'}"
    assert greenstudy_main(["store", "init", uri, "--experiment", "pair"]) == 0
    first = capsys.readouterr().out.strip()
    assert first == f"store ready: {uri} (created and migrated; experiments: pair, Default)"
    assert greenstudy_main(["store", "init", uri, "--experiment", "pair"]) == 0
    assert "already there, schema checked" in capsys.readouterr().out
    assert [e.name for e in MlflowClient(uri).search_experiments()] == ["pair", "Default"]
    assert greenstudy_main(["store", "init", "nosuchscheme://x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot prepare MLflow store nosuchscheme://x") and "\n" not in err


def test_store_init_defaults_to_the_tracking_uri(tmp_path: Path) -> None:
    """Run as a command, with no URI: the one MLFLOW_TRACKING_URI names."""
    uri = f"sqlite:///{tmp_path / 'env.db'}"
    done = subprocess.run([PYTHON, "-m", "greenstudy", "store", "init"], env=entry_env(uri), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(f"store ready: {uri} (created and migrated")
    assert (tmp_path / "env.db").stat().st_size > 0
