"""MLflow SQLite stores created once, under a lock, whoever touches them first.

MLflow 3.17.2 builds a SQLite store by checking for its tables and, when they are missing, running every
schema migration (`SqlAlchemyStore.__init__`, tracking and model registry alike). Two processes opening a
store that does not exist yet both migrate it and one of them dies (`duplicate column name: step`, or an
alembic "expected to match one row" error). Here every construction of a `sqlite:` store, tracking or
registry, holds an exclusive `flock` on a file beside the database (`<db>.lock`) while MLflow creates,
migrates and checks it, so the first process creates the store and the others wait, then find it ready.

The two builders below are registered for the `sqlite` scheme through the `mlflow.tracking_store` and
`mlflow.model_registry_store` entry points (pyproject.toml). MLflow registers entry-point stores after its
built-in ones, so they replace the built-in `sqlite` builders in every process of the environment: the
`mlflow` command's own first contact (`mlflow run` creates its run before our entry script starts),
`mlflow ui`/`server`, our entry scripts. They delegate to MLflow's own builders (same classes, workspaces
and artifact root as without them). `prepare_store` does the same for callers that want the store ready
before concurrent use (`greenstudy store init`, the entry scripts), and covers a checkout whose entry
points are not installed.

This module is imported by MLflow while MLflow itself is being imported: it imports nothing of MLflow
(or of greenstudy) at module level, and nothing heavy.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCK_SUFFIX = ".lock"
_guard = threading.RLock()  # threads of one process: one creator at a time, and re-entry without deadlock
_held: dict[Path, int] = {}  # lock files this process holds, with their depth


def sqlite_path(store_uri: str) -> Path | None:
    """The database file of a `sqlite:` URI (absolute), or None (another scheme, or an in-memory database)."""
    if not store_uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(store_uri).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().absolute()


def lock_path(store_uri: str) -> Path | None:
    """The lock file beside a SQLite store's database (`mlflow.db` -> `mlflow.db.lock`)."""
    path = sqlite_path(store_uri)
    return path.with_name(path.name + LOCK_SUFFIX) if path else None


@contextmanager
def creation_lock(store_uri: str) -> Iterator[None]:
    """Hold the store's creation lock (machine-wide, dies with the process). Re-entrant within a process;
    a no-op for other schemes. Where the lock file cannot be written (a read-only folder), nobody can
    create the store there either, so it goes on without it."""
    path = lock_path(store_uri)
    if path is None:
        yield
        return
    with _guard:
        if _held.get(path):
            _held[path] += 1
            try:
                yield
            finally:
                _held[path] -= 1
            return
        handle = _open_lock(path)
        try:
            if handle is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            _held[path] = 1
            yield
        finally:
            _held.pop(path, None)
            if handle is not None:
                handle.close()  # closing releases the flock


def _open_lock(path: Path) -> Any:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("a")
    except OSError:
        return None


def tracking_store(store_uri: str, artifact_uri: str | None = None) -> Any:
    """Entry point `mlflow.tracking_store` for `sqlite`: MLflow's own SQLAlchemy tracking store, built
    (created and migrated when new) under the creation lock."""
    from mlflow.tracking._tracking_service.utils import _get_sqlalchemy_store

    with creation_lock(store_uri):
        return _get_sqlalchemy_store(store_uri, artifact_uri)


def registry_store(store_uri: str, **_: Any) -> Any:
    """Entry point `mlflow.model_registry_store` for `sqlite`: MLflow's own SQLAlchemy model registry
    store, built under the same lock (both migrate the one schema of the database)."""
    from mlflow.tracking._model_registry.utils import _get_sqlalchemy_store

    with creation_lock(store_uri):
        return _get_sqlalchemy_store(store_uri)


@dataclass(frozen=True)
class StoreReady:
    """What `prepare_store` found or made."""

    uri: str
    created: bool  # the database did not exist (or was empty) before
    experiments: tuple[str, ...]  # the active experiments' names

    def line(self) -> str:
        state = "created and migrated" if self.created else "already there, schema checked"
        return f"store ready: {self.uri} ({state}; experiments: {', '.join(self.experiments) or 'none'})"


def prepare_store(store_uri: str, experiments: tuple[str, ...] = ()) -> StoreReady:
    """Create (or check) the tracking and registry store at `store_uri` under its creation lock, and the
    named experiments, before anything uses it concurrently. Other schemes are only opened (a tracking
    server creates its own schema). MLflow's errors come out as they are; the callers turn them into
    one line."""
    from mlflow.tracking import MlflowClient

    path = sqlite_path(store_uri)
    with creation_lock(store_uri):
        created = path is not None and (not path.exists() or path.stat().st_size == 0)
        client = MlflowClient(tracking_uri=store_uri, registry_uri=store_uri)
        client.search_experiments(max_results=1)  # builds (creates, migrates) the tracking store
        if path is not None:
            client.search_registered_models(max_results=1)  # and the registry store of the same database
        for name in experiments:
            if client.get_experiment_by_name(name) is None:
                client.create_experiment(name)
        names = tuple(e.name for e in client.search_experiments(max_results=1000))
    return StoreReady(store_uri, created, names)
