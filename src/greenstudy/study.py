"""The `tune` entry point: a multi-objective Optuna study of batch size (and learning rate) that
maximises the final validation top-1 and minimises the training energy, every trial a nested MLflow
child run of the study's parent run, the Pareto front logged to the parent after every trial.

Search space
  `batch_size` is a categorical over powers of two, 16 ... min(1024, max_batch_size). Optuna needs
  the same choice list in every trial of a study, so the list is stored in the study's user
  attributes and a resume (or another worker) asking for a different list is rejected.

  The learning rate follows the batch size (`lr_scaling`), relative to the reference point
  (`batch_size`, `lr`) of the training params:
  - `linear`: lr = lr_ref * b / b_ref. The linear scaling rule (Goyal et al. 2017, "Accurate,
    Large Minibatch SGD"): with SGD, k times the batch takes k times fewer steps, so each step
    must move k times further for the same progress per sample. Our optimizer is SGD + Nesterov
    with a one-cycle warm-up, the setting that rule was shown for.
  - `sqrt`: lr = lr_ref * sqrt(b / b_ref). Square-root scaling keeps the gradient-noise scale
    constant (Krizhevsky 2014; Hoffer et al. 2017) and is the usual rule for adaptive optimizers
    and very large batches, where linear scaling overshoots.
  - `tuned`: the base lr (the lr at b_ref) is a second, log-uniform dimension in
    [lr_ref / 10, lr_ref * 10], then scaled linearly. Neither rule holds exactly for a short
    schedule on a small set; tuning the base lets the study find where, at the price of a second
    dimension (more trials to converge). Scaling the sampled base keeps the two dimensions close
    to independent, which samplers handle better than a raw lr correlated with the batch size.

Objectives: the trial's last-epoch `val_acc1` (maximise) and `train_energy_kwh` (minimise). The
test set is measured and logged by each trial but never used to select.

Failures: a trial whose training raises (NaN loss -> TrainingDiverged, out of memory, any
exception) is FAILED in MLflow with the reason (tag `error`) and FAIL in Optuna (user attribute
`fail_reason`); the study goes on. To force one deliberately, enqueue a trial whose lr diverges
(`study.enqueue_trial({"batch_size": 16, "base_lr": 1e6})` on a `tuned` study) and resume.

Hypervolume: the area dominated by the Pareto front up to a reference point with val_acc1 = 0 %
and train energy = `hv_ref_energy_kwh`, by default twice the largest energy among the completed
trials when the first hypervolume is computed. The reference is stored in the study, so every
resume and every worker measures against the same point and the metric is comparable over time.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from greenstudy.config import RunConfig
from greenstudy.errors import ConfigError, GreenstudyError
from greenstudy.pareto import hypervolume_2d

SAMPLERS = ("nsga2", "tpe", "random")
LR_SCALINGS = ("linear", "sqrt", "tuned")
TRAINING_VARIANTS = ("baseline", "amp")
BATCH_SIZES = tuple(2**k for k in range(4, 11))  # 16 ... 1024
TUNED_LR_FACTOR = 10.0
OBJECTIVES = ("val_acc1", "train_energy_kwh")
DIRECTIONS = ("maximize", "minimize")
SETTINGS_ATTR = "greenstudy_settings"
REFERENCE_ATTR = "hypervolume_reference"
STORAGE_CONNECT_TIMEOUT_S = 5
HEARTBEAT_INTERVAL_S = 60
HEARTBEAT_GRACE_S = 180
PARETO_COLUMNS = ("trial", "batch_size", "lr", "val_acc1", "train_energy_kwh", "run_id")


class StudyFailed(GreenstudyError):
    """No trial of this session completed."""


class TrialFailed(Exception):
    """The trial's training failed; Optuna records it as FAIL and the study goes on."""


@dataclass
class StudyConfig:
    """Everything one `tune` invocation needs; `run` holds the training params, whose
    `batch_size` and `lr` are the reference point of the lr scaling."""

    run: RunConfig = field(default_factory=RunConfig)
    variant: str = "amp"
    n_trials: int = 20
    timeout_s: float | None = None
    study_name: str = ""
    storage: str = "auto"
    sampler: str = "nsga2"
    sampler_seed: int | None = None
    population_size: int = 10
    lr_scaling: str = "linear"
    max_batch_size: int = 1024
    hv_ref_energy_kwh: float | None = None

    def __post_init__(self) -> None:
        if self.variant not in TRAINING_VARIANTS:
            raise ConfigError(
                f"variant {self.variant!r} cannot be tuned: a trial trains from scratch, choose one of "
                f"{', '.join(TRAINING_VARIANTS)}"
            )
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}: choose one of {', '.join(SAMPLERS)}")
        if self.lr_scaling not in LR_SCALINGS:
            raise ConfigError(f"unknown lr_scaling {self.lr_scaling!r}: choose one of {', '.join(LR_SCALINGS)}")
        if self.n_trials < 1:
            raise ConfigError(f"n_trials must be at least 1, got {self.n_trials}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be positive (or 0 for none), got {self.timeout_s}")
        if self.max_batch_size < BATCH_SIZES[0]:
            raise ConfigError(f"max_batch_size must be at least {BATCH_SIZES[0]}, got {self.max_batch_size}")
        if self.population_size < 2:
            raise ConfigError(f"population_size must be at least 2, got {self.population_size}")
        if self.hv_ref_energy_kwh is not None and not self.hv_ref_energy_kwh > 0:
            raise ConfigError(f"hv_ref_energy_kwh must be positive (or 0 for auto), got {self.hv_ref_energy_kwh}")
        if not self.study_name:
            self.study_name = f"{self.run.model}-{self.variant}-{self.run.dataset}"
        self.run = self.run.replace(variants=(self.variant,))

    @property
    def batch_choices(self) -> list[int]:
        return batch_size_choices(self.max_batch_size)

    @property
    def tuned_lr_range(self) -> tuple[float, float]:
        return self.run.lr / TUNED_LR_FACTOR, self.run.lr * TUNED_LR_FACTOR

    def settings(self) -> dict[str, object]:
        """What makes two trials comparable; stored in the study and checked on every resume."""
        settings: dict[str, object] = {
            "model": self.run.model, "variant": self.variant, "dataset": self.run.dataset,
            "epochs": self.run.epochs, "train_subset": self.run.train_subset, "val_size": self.run.val_size,
            "resolution": self.run.resolution, "seed": self.run.seed, "lr_scaling": self.lr_scaling,
            "reference_batch_size": self.run.batch_size, "batch_size_choices": self.batch_choices,
        }
        if self.lr_scaling == "tuned":
            settings["base_lr_range"] = list(self.tuned_lr_range)
        else:
            settings["base_lr"] = self.run.lr
        return settings


def batch_size_choices(max_batch_size: int) -> list[int]:
    """Powers of two from 16 up to min(1024, max_batch_size)."""
    return [b for b in BATCH_SIZES if b <= max_batch_size]


def scaled_lr(base_lr: float, batch_size: int, reference_batch_size: int, scaling: str) -> float:
    """The lr for `batch_size` given `base_lr` at `reference_batch_size` (see the module docstring)."""
    ratio = batch_size / reference_batch_size
    if scaling == "sqrt":
        return base_lr * math.sqrt(ratio)
    return base_lr * ratio  # linear, and tuned (whose base is sampled)


# ---------------------------------------------------------------- storage and study


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


def open_storage(url: str, heartbeat: bool = True) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for any SQLAlchemy URL; bad or unreachable URLs fail within seconds
    with one clear line. PostgreSQL gets a connect timeout; concurrent first use by several
    workers (table creation races) is retried."""
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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat_kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            if attempt == 3:  # another worker creating the same tables at the same moment, 4 times over
                raise ConfigError(f"cannot initialise Optuna storage {shown}: {_first_line(exc)}") from None
            time.sleep(0.5 + attempt)
        except Exception as exc:  # noqa: BLE001 - OperationalError (unreachable, bad path), driver errors
            raise ConfigError(f"cannot open Optuna storage {shown}: {_first_line(exc)}") from None
    raise AssertionError("unreachable")


def _first_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0] if text else ''}"


def make_sampler(name: str, seed: int | None, population_size: int) -> optuna.samplers.BaseSampler:
    """nsga2 (default): NSGA-II, the standard multi-objective evolutionary sampler; its first
    generation of `population_size` trials is random. tpe: multi-objective TPE. random: baseline."""
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def create_or_load_study(
    storage: optuna.storages.BaseStorage, name: str, settings: dict[str, object],
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    """Create the study, or load it (resume / another worker) after checking it was made with the
    same settings: Optuna needs identical categorical choices, and trials must be comparable."""
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, directions=list(DIRECTIONS), sampler=sampler, load_if_exists=True
        )
    except Exception as exc:  # noqa: BLE001 - storage errors surface here on first use
        raise ConfigError(f"cannot create or load study {name!r}: {_first_line(exc)}") from None
    directions = [d.name.lower() for d in study.directions]
    if directions != list(DIRECTIONS):
        raise ConfigError(f"study {name!r} exists with directions {directions}, not {list(DIRECTIONS)}: use another study_name")
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, settings)
        stored = optuna.load_study(study_name=name, storage=storage).user_attrs[SETTINGS_ATTR]  # a racing worker may have won
    differences = [f"{key}={stored.get(key)!r} (asked {value!r})" for key, value in settings.items() if stored.get(key) != value]
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


# ---------------------------------------------------------------- Pareto front and hypervolume


def completed_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def pareto_rows(study: optuna.Study) -> list[dict[str, object]]:
    """The Pareto-optimal trials, least energy first."""
    rows = [
        {
            "trial": t.number, "batch_size": t.params.get("batch_size"), "lr": t.user_attrs.get("lr"),
            "val_acc1": t.values[0], "train_energy_kwh": t.values[1], "run_id": t.user_attrs.get("mlflow_run_id", ""),
        }
        for t in study.best_trials
    ]
    return sorted(rows, key=lambda row: (row["train_energy_kwh"], -row["val_acc1"]))


def reference_point(study: optuna.Study, requested_energy_kwh: float | None = None) -> tuple[float, float] | None:
    """(val_acc1, energy) reference of the hypervolume, fixed in the study the first time it is
    needed; None while no trial has completed and none was requested."""
    stored = study.user_attrs.get(REFERENCE_ATTR)
    if stored is not None:
        return float(stored["val_acc1"]), float(stored["train_energy_kwh"])
    if requested_energy_kwh is None:
        energies = [t.values[1] for t in completed_trials(study)]
        if not energies:
            return None
        requested_energy_kwh = 2.0 * max(energies)
    study.set_user_attr(REFERENCE_ATTR, {"val_acc1": 0.0, "train_energy_kwh": requested_energy_kwh})
    return 0.0, requested_energy_kwh


def format_pareto_table(rows: list[dict[str, object]]) -> list[str]:
    """The Pareto front as aligned text lines (energy in Wh for readability)."""
    if not rows:
        return ["(no completed trials yet)"]
    lines = [f"{'trial':>5}  {'batch':>5}  {'lr':>9}  {'val_acc1 %':>10}  {'train Wh':>10}  run id"]
    for row in rows:
        lr = row["lr"]
        lines.append(
            f"{row['trial']:>5}  {row['batch_size']!s:>5}  {lr if lr is None else format(lr, '.4g'):>9}  "
            f"{row['val_acc1']:>10.2f}  {row['train_energy_kwh'] * 1000:>10.4f}  {row['run_id']}"
        )
    return lines


def study_summary_lines(study: optuna.Study) -> list[str]:
    """What `greenstudy study show` prints: counts, settings, reference, hypervolume, the front."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    lines = [
        f"study: {study.study_name}  (maximise val_acc1, minimise train_energy_kwh)",
        "trials: " + ", ".join(f"{n} {name.lower()}" for name, n in counts.items() if n) if trials else "trials: none",
    ]
    settings = study.user_attrs.get(SETTINGS_ATTR)
    if settings:
        lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    stored = study.user_attrs.get(REFERENCE_ATTR)
    rows = pareto_rows(study)
    if stored and rows:
        ref = (float(stored["val_acc1"]), float(stored["train_energy_kwh"]))
        hv = hypervolume_2d([(r["val_acc1"], r["train_energy_kwh"]) for r in rows], ref)
        lines.append(f"hypervolume: {hv:.6g} (%·kWh, reference val_acc1={ref[0]:g} %, train_energy_kwh={ref[1]:.6g})")
    lines.append(f"Pareto front ({len(rows)} trials):")
    return lines + format_pareto_table(rows)


# ---------------------------------------------------------------- logging to the parent run


@dataclass
class FrontLogger:
    """Logs the study's Pareto front to the active (parent) MLflow run; an Optuna callback."""

    requested_reference_kwh: float | None = None
    logged_finished: int = -1

    def __call__(self, study: optuna.Study, trial: FrozenTrial | None = None) -> None:
        finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        if finished == self.logged_finished:
            return
        self.logged_finished = finished
        log_front(study, finished, self.requested_reference_kwh)


def log_front(study: optuna.Study, step: int, requested_reference_kwh: float | None = None) -> None:
    """Pareto PNG + self-contained HTML + pareto.csv, `hypervolume` (step = finished trials) and
    the best_* metrics, all on the active run."""
    import mlflow

    from greenstudy.tracking import write_dict_csv  # imports torch: kept out of `study show`

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    mlflow.log_metrics({
        "trials_complete": len(complete),
        "trials_failed": sum(t.state == TrialState.FAIL for t in trials),
    }, step=step)
    if not complete:
        return
    rows = pareto_rows(study)
    ref = reference_point(study, requested_reference_kwh)
    assert ref is not None
    mlflow.set_tags({
        "hypervolume_reference": f"val_acc1={ref[0]:g}, train_energy_kwh={ref[1]:.6g}",
        "hypervolume_reference_val_acc1": f"{ref[0]:g}",
        "hypervolume_reference_energy_kwh": f"{ref[1]:.6g}",
    })
    most_accurate = max(complete, key=lambda t: (t.values[0], -t.values[1]))
    least_energy = min(complete, key=lambda t: (t.values[1], -t.values[0]))
    mlflow.log_metrics({
        "hypervolume": hypervolume_2d([(r["val_acc1"], r["train_energy_kwh"]) for r in rows], ref),
        "pareto_size": len(rows),
        **_best_metrics("best_acc", most_accurate),
        **_best_metrics("best_energy", least_energy),
    }, step=step)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_dict_csv(rows, PARETO_COLUMNS, folder / "pareto.csv")
        _plot_front(study, folder)
        mlflow.log_artifacts(tmp)


def _best_metrics(prefix: str, trial: FrozenTrial) -> dict[str, float]:
    return {
        f"{prefix}_val_acc1": trial.values[0], f"{prefix}_train_energy_kwh": trial.values[1],
        f"{prefix}_batch_size": trial.params["batch_size"], f"{prefix}_lr": trial.user_attrs.get("lr", float("nan")),
        f"{prefix}_trial": trial.number,
    }


def _plot_front(study: optuna.Study, folder: Path) -> None:
    """Optuna's own Pareto-front plots: matplotlib PNG and plotly HTML with plotly.js inlined (opens offline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["val_acc1 (%)", "train energy (kWh)"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = optuna.visualization.matplotlib.plot_pareto_front(study, target_names=names)
    axes.set_title(f"Pareto front: {study.study_name}")
    axes.figure.savefig(folder / "pareto_front.png", dpi=120, bbox_inches="tight")
    plt.close(axes.figure)
    figure = optuna.visualization.plot_pareto_front(study, target_names=names)
    figure.update_layout(title=f"Pareto front: {study.study_name}")
    figure.write_html(folder / "pareto_front.html", include_plotlyjs=True, full_html=True)


# ---------------------------------------------------------------- the study


@dataclass
class StudyOutcome:
    study_name: str
    storage: str
    parent_run_id: str
    trial_numbers: list[int]
    complete: int
    failed: int
    summary: list[str]


def run_study(config: StudyConfig) -> StudyOutcome:
    """Check inputs (storage, data, study settings) before any MLflow run exists, then run
    `n_trials` new trials under one parent run."""
    cfg = config.run
    storage_url = default_storage_url() if config.storage == "auto" else config.storage
    storage = open_storage(storage_url)  # first: a bad URL fails before the slow imports below

    import mlflow
    import torch

    from greenstudy.energy import EnergyMeter
    from greenstudy.run import base_tags, prepare, run_variant
    from greenstudy.tracking import run_scope
    from greenstudy.variants import Bench

    device, cpu_data = prepare(cfg)
    if max(config.batch_choices) > len(cpu_data.train):
        raise ConfigError(
            f"max_batch_size={config.max_batch_size} exceeds the {len(cpu_data.train)} training images: "
            "lower max_batch_size or raise train_subset"
        )
    sampler_seed = cfg.seed if config.sampler_seed is None else config.sampler_seed
    sampler = make_sampler(config.sampler, sampler_seed, config.population_size)
    study = create_or_load_study(storage, config.study_name, config.settings(), sampler)
    if config.hv_ref_energy_kwh is not None:
        stored = study.user_attrs.get(REFERENCE_ATTR)
        if stored is not None and float(stored["train_energy_kwh"]) != config.hv_ref_energy_kwh:
            raise ConfigError(
                f"study {config.study_name!r} measures hypervolume against train_energy_kwh="
                f"{stored['train_energy_kwh']}, not {config.hv_ref_energy_kwh}: drop hv_ref_energy_kwh or use another study"
            )

    data = cpu_data.to(device)
    meter = EnergyMeter(cfg.country_iso_code, cfg.cpu_power_w, cfg.ram_power_w, cfg.measure_power_secs)
    tags = {**base_tags(cfg, data, device, meter), "optuna_study": config.study_name}
    shown_storage = masked_url(storage_url)
    client = mlflow.MlflowClient()
    session_trials: list[FrozenTrial] = []
    errors: list[str] = []

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        batch_size = trial.suggest_categorical("batch_size", config.batch_choices)
        tuned = config.lr_scaling == "tuned"
        base_lr = trial.suggest_float("base_lr", *config.tuned_lr_range, log=True) if tuned else cfg.lr
        lr = scaled_lr(base_lr, batch_size, cfg.batch_size, config.lr_scaling)
        trial.set_user_attr("lr", lr)
        trial_cfg = cfg.replace(batch_size=batch_size, lr=lr)
        meter.phases.clear()  # each child's codecarbon_phases.csv holds its own phases only
        bench = Bench(trial_cfg, data, cpu_data, device, meter)
        child = run_variant(bench, config.variant, {**tags, "kind": "trial", "trial_number": str(trial.number)})
        trial.set_user_attr("mlflow_run_id", child.run_id)
        if child.run_id:
            client.set_tag(child.run_id, "mlflow.runName", f"trial-{trial.number}-bs{batch_size}")
        if child.status != "FINISHED" or "val_acc1" not in child.last_epoch:
            reason = child.error or "no validation metrics"
            trial.set_user_attr("fail_reason", reason)
            errors.append(f"trial {trial.number}: {reason}")
            if device.type == "cuda":
                torch.cuda.empty_cache()  # after an out-of-memory failure, let the next trial start clean
            raise TrialFailed(reason)
        return child.last_epoch["val_acc1"], child.metrics["train_energy_kwh"]

    def remember(study: optuna.Study, trial: FrozenTrial) -> None:
        session_trials.append(trial)

    if not os.environ.get("MLFLOW_RUN_ID"):
        # Two workers creating the experiment at the same moment: MLflow 3.17's set_experiment returns
        # without activating it for the loser of the race; the call in run_scope then finds it.
        mlflow.set_experiment(cfg.experiment_name)
    front_logger = FrontLogger(config.hv_ref_energy_kwh)
    run_name = f"study-{config.study_name}"
    parent_tags = {**tags, "kind": "study", "optuna_storage": shown_storage, "optuna_sampler": config.sampler}
    with run_scope(run_name, cfg.experiment_name, tags=parent_tags) as parent:
        existing = mlflow.get_run(parent.info.run_id).data.params
        params = {
            "study_name": config.study_name, "storage": shown_storage, "sampler": config.sampler,
            "sampler_seed": sampler_seed, "n_trials": config.n_trials, "timeout_s": config.timeout_s or 0,
            "variant": config.variant, "model": cfg.model, "dataset": cfg.dataset, "epochs": cfg.epochs,
            "lr_scaling": config.lr_scaling, "max_batch_size": config.max_batch_size,
            "batch_size_choices": ",".join(map(str, config.batch_choices)),
            "reference_batch_size": cfg.batch_size, "base_lr": cfg.lr, "population_size": config.population_size,
            "hv_ref_energy_kwh": config.hv_ref_energy_kwh or "auto",
        }
        mlflow.log_params({k: v for k, v in params.items() if k not in existing})
        try:
            study.optimize(
                objective, n_trials=config.n_trials, timeout=config.timeout_s, catch=(TrialFailed,),
                callbacks=[remember, front_logger],
            )
        finally:
            front_logger(study)  # again at the end: other workers may have finished trials meanwhile
            meter.stop()
        complete = sum(t.state == TrialState.COMPLETE for t in session_trials)
        summary = [
            f"study: {config.study_name}  storage: {shown_storage}",
            f"parent run id: {parent.info.run_id}",
            f"this session: {len(session_trials)} trials ({', '.join(str(t.number) for t in session_trials)}), "
            f"{complete} complete, {len(session_trials) - complete} failed",
            *[f"  FAILED {line}" for line in errors],
            *study_summary_lines(study),
            f"browse: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}",
        ]
        if session_trials and not complete:
            raise StudyFailed(f"no trial of this session completed: {'; '.join(errors)}")
    return StudyOutcome(
        config.study_name, shown_storage, parent.info.run_id, [t.number for t in session_trials],
        complete, len(session_trials) - complete, summary,
    )
