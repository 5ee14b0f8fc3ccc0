"""Optuna storage plumbing, apart from the study: where the storage lives, opening it with one clear
line on bad input, and creating or loading a study whose stored settings must match the asked ones."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import optuna
import sqlalchemy

from greenstudy.errors import ConfigError
from greenstudy.store import creation_lock

SETTINGS_ATTR = "greenstudy_settings"
LEGACY_SETTINGS = {"halving_wait": False}  # what a study stored before the setting existed did
STORAGE_CONNECT_TIMEOUT_S = 5
HEARTBEAT_INTERVAL_S = 60
HEARTBEAT_GRACE_S = 180


def default_storage_url(tracking_uri: str | None = None) -> str:
    """A SQLite file next to the MLflow store: `<dir of mlflow.db>/optuna.db` for a sqlite tracking
    URI, else `optuna.db` in the working folder."""
    if tracking_uri is None:
        import mlflow

        tracking_uri = mlflow.get_tracking_uri()
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        store = Path(tracking_uri[len(prefix):])
        return prefix + str(store.parent / "optuna.db")
    return prefix + "optuna.db"


def masked_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and error lines."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL at all: nothing to hide
        return url


def first_line(exc: BaseException) -> str:
    """`Type: first line` of an exception (or of the driver error it wraps)."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0] if text else ''}"


def open_storage(url: str, heartbeat: bool = True) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for any SQLAlchemy URL; bad or unreachable URLs fail within seconds
    with one clear line. PostgreSQL gets a connect timeout; concurrent first use by several workers
    is serialised on SQLite (a lock beside the file) and retried on a server."""
    shown = masked_url(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
        parsed.get_dialect()
    except Exception as exc:  # noqa: BLE001 - ArgumentError, NoSuchModuleError, missing driver
        raise ConfigError(
            f"bad storage URL {shown!r} ({type(exc).__name__}: {exc}): give a SQLAlchemy URL such as "
            "sqlite:///optuna.db or postgresql://user@host:5432/db"
        ) from None
    engine_kwargs: dict[str, object] = {}
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the project pins psycopg2-binary
            url = parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
        if "connect_timeout" not in parsed.query:
            engine_kwargs["connect_args"] = {"connect_timeout": STORAGE_CONNECT_TIMEOUT_S}
    heartbeat_kwargs = {"heartbeat_interval": HEARTBEAT_INTERVAL_S, "grace_period": HEARTBEAT_GRACE_S} if heartbeat else {}
    for attempt in range(4):
        try:
            # SQLite: the first worker creates the tables while the others wait (two creating them at once
            # fail with "table studies already exists", an OperationalError the retry below does not see)
            with creation_lock(url), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat_kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            if attempt == 3:  # another worker creating the same tables at the same moment, 4 times over
                raise ConfigError(f"cannot initialise Optuna storage {shown}: {first_line(exc)}") from None
            time.sleep(0.5 + attempt)
        except Exception as exc:  # noqa: BLE001 - OperationalError (unreachable, bad path), driver errors
            raise ConfigError(f"cannot open Optuna storage {shown}: {first_line(exc)}") from None
    raise AssertionError("unreachable")


def create_or_load_study(
    storage: optuna.storages.BaseStorage, name: str, settings: dict[str, object], directions: Sequence[str],
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    """Create the study, or load it (resume / another worker) after checking it was made with the
    same directions and settings: Optuna needs identical categorical choices, and trials must be comparable."""
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, directions=list(directions), sampler=sampler, load_if_exists=True
        )
    except Exception as exc:  # noqa: BLE001 - storage errors surface here on first use
        raise ConfigError(f"cannot create or load study {name!r}: {first_line(exc)}") from None
    stored_directions = [d.name.lower() for d in study.directions]
    if stored_directions != list(directions):
        raise ConfigError(
            f"study {name!r} exists with directions {stored_directions}, not {list(directions)}: use another study_name"
        )
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, settings)
        stored = optuna.load_study(study_name=name, storage=storage).user_attrs[SETTINGS_ATTR]  # a racing worker may have won
    differences = [f"{key}={stored.get(key, LEGACY_SETTINGS.get(key))!r} (asked {value!r})" for key, value in settings.items()
                   if stored.get(key, LEGACY_SETTINGS.get(key)) != value]
    if differences:
        raise ConfigError(
            f"study {name!r} was created with other settings: {', '.join(differences)}; "
            "use the same parameters to resume, or another study_name"
        )
    return study


def load_existing_study(storage_url: str, name: str | None) -> optuna.Study:
    """A study that must exist (for `study show`); one clear line listing the names otherwise."""
    if storage_url.startswith("sqlite:///") and not Path(storage_url[len("sqlite:///"):]).is_file():
        raise ConfigError(f"no Optuna storage file {storage_url[len('sqlite:///'):]}: check --storage")
    storage = open_storage(storage_url, heartbeat=False)
    names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
    if name is None:
        if len(names) != 1:
            raise ConfigError(f"give --study-name: {masked_url(storage_url)} holds {len(names)} studies ({', '.join(names) or 'none'})")
        name = names[0]
    if name not in names:
        raise ConfigError(f"no study {name!r} in {masked_url(storage_url)}; studies there: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)
