"""One `main` run: a parent MLflow run for the model, one nested child run per variant; the one place
where a variant's record becomes MLflow metrics."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import torch

from greenstudy.config import RunConfig
from greenstudy.errors import VariantSkipped
from greenstudy.interrupts import stop_if_interrupted
from greenstudy.measure.carbon_hooks import check_series, timed_metrics, wait_for_low_carbon, wait_metrics
from greenstudy.measure.energy import EnergyMeter, machine_lock
from greenstudy.measure.ledger import Ledger, energy_metrics, redo_unsaved_epochs, write_journal, write_ledger_csv
from greenstudy.measure.precision import cpu_capability, describe
from greenstudy.progress import say
from greenstudy.runs.outcome import TABLE_COLUMNS, ChildOutcome, MainOutcome, contract_params
from greenstudy.runs.resume import ResumePlan, load_baseline, plan_resume
from greenstudy.tracking import ensure_tracking_reachable, log_final, log_torch_model, run_scope
from greenstudy.training.checkpoint import Checkpointer, fingerprint
from greenstudy.training.control import TrainingControl
from greenstudy.training.data import CifarData, load_cifar
from greenstudy.training.steps import configure_device, progress_every_s, resolve_device, seed_everything, set_cpu_threads
from greenstudy.variants.catalog import DERIVED, VARIANT_RUNNERS, execution_order
from greenstudy.variants.common import Bench, VariantJob
from greenstudy.variants.record import Upstream, VariantRecord, record_metrics


def prepare(cfg: RunConfig) -> tuple[torch.device, CifarData]:
    """Everything that can fail on bad input, done before any run starts."""
    ensure_tracking_reachable()
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        set_cpu_threads()
    seed_everything(cfg.seed)
    data = load_cifar(cfg.dataset, cfg.resolved_data_dir(), cfg.download, cfg.val_size, cfg.train_subset, cfg.test_subset, cfg.seed)
    return device, data


def make_bench(cfg: RunConfig, device: torch.device, cpu_data: CifarData) -> tuple[Bench, dict[str, str]]:
    """The shared bench and the tags every run of this process carries."""
    meter = EnergyMeter(device, cfg.country_iso_code, cfg.cpu_power_w, cfg.ram_power_w)
    bench = Bench(cfg, cpu_data.to(device), cpu_data, device, meter, describe(device))
    tags = {
        "model": cfg.model, "dataset": cfg.dataset, "data_source": cpu_data.source, "device": device.type,
        "energy_method": meter.energy_method(), "codecarbon_version": meter.codecarbon_version,
        "torch_version": torch.__version__, "cpu_capability": cpu_capability(), "cpu_threads": str(torch.get_num_threads()),
        **meter.hardware(), **configure_device(device), **cfg.extra_tags,
        "devices": str(cfg.devices),  # > 1: data-parallel training over that many devices (greenstudy.training.launch)
    }
    if cfg.devices > 1:
        tags["sync_bn"] = str(cfg.sync_bn).lower()
    if device.type == "cuda":
        tags["gpu_model"] = torch.cuda.get_device_name(device)
    say(f"energy: {tags['energy_method']} (CodeCarbon {meter.codecarbon_version}, {tags['cpu_model']}, "
        f"torch CPU capability {tags['cpu_capability']}, device {bench.hw.label})")
    return bench, tags


def log_record(record: VariantRecord, cfg: RunConfig, lean: bool) -> dict[str, float]:
    """Final metrics, tags and artifacts of a finished variant (the model from a CPU copy)."""
    metrics = record_metrics(record)
    log_final(metrics)
    timed, timed_tags = timed_metrics(record.ledger, record.upstream.ledger if record.upstream else None, cfg)
    log_final(timed)  # emissions_kg_timed, lifecycle_emissions_kg_timed, best_start_* (nothing without a series)
    mlflow.set_tags(timed_tags)
    metrics = {**metrics, **timed}
    mlflow.set_tags(record.tags)
    if record.control.stopped_early:
        mlflow.set_tag("stopped_early", record.control.stopped_early)
    mlflow.log_dict(cfg.as_dict(), "config.json")
    for name, content in record.artifacts.items():
        mlflow.log_dict(content, name)
    _log_ledger(record.ledger, record.upstream)
    if not lean:
        log_torch_model(record.model, record.example)
    return metrics


def _control(cfg: RunConfig, control: TrainingControl | None) -> TrainingControl:
    return control or TrainingControl(cfg.target_acc1, cfg.stop_at_target)


def run_variant(
    bench: Bench, variant: str, tags: dict[str, str], control: TrainingControl | None = None, lean: bool = False,
    upstream: Upstream | None = None, resume_run_id: str = "", checkpoint: bool | None = None,
) -> ChildOutcome:
    """One variant as a nested child run (or `resume_run_id` reopened in place). A failure marks the
    child FAILED and is returned, not raised; Ctrl-C is re-raised after the child is marked KILLED.
    `checkpoint`: save one after every epoch (default: unless `lean`); a control that paused keeps it."""
    cfg = bench.cfg
    control = _control(cfg, control)
    child_tags = {"kind": "variant", **tags, "variant": variant}
    run_id = resume_run_id
    partial: dict[str, float] = {}  # what a failed or interrupted child had spent, for the parent's totals
    say(f"[{cfg.model}/{variant}] starting" + (f" (resuming run {resume_run_id})" if resume_run_id else ""))
    try:
        with machine_lock(f"{cfg.model}/{variant}"), run_scope(
            f"{cfg.model}-{variant}", cfg.experiment_name, nested=True, tags=child_tags, run_id=resume_run_id or None,
            system_metrics=True,
        ) as run:
            run_id = run.info.run_id
            if not resume_run_id:
                mlflow.log_params(contract_params(cfg, variant, bench.device))
            keep_checkpoints = (not lean) if checkpoint is None else checkpoint
            checkpointer = Checkpointer(Path(cfg.checkpoint_dir).resolve() / run_id) if keep_checkpoints else None
            resume = checkpointer.load(fingerprint(cfg)) if checkpointer and checkpointer.exists() else None
            if checkpointer:
                mlflow.set_tag("checkpoint", str(checkpointer.path))
            job = VariantJob(bench, control, checkpointer, resume, upstream if variant in DERIVED else None, lean)
            if checkpointer:  # every earlier sitting's phases, and this sitting's appended as measured
                job.ledger = checkpointer.open_journal(resume)
            try:
                record = VARIANT_RUNNERS[variant](job)
            except (Exception, KeyboardInterrupt) as exc:
                if not isinstance(exc, VariantSkipped):
                    partial.update(_keep_partial_energy(job))
                raise
            metrics = log_record(record, cfg, lean)
            if checkpointer and not control.paused:
                checkpointer.remove()
            last = record.history[-1] if record.history else {}
            say(f"[{cfg.model}/{variant}] finished: " + _headline(metrics))
            return ChildOutcome(variant, run_id, "FINISHED", metrics, last_epoch=last, control=control, record=record)
    except KeyboardInterrupt as interrupt:
        partial = partial or _earlier_sittings(resume_run_id)
        interrupt.child = ChildOutcome(variant, run_id, "KILLED", partial, error="interrupted", control=control)
        raise
    except VariantSkipped as skip:
        say(f"[{cfg.model}/{variant}] skipped: {skip}")
        return ChildOutcome(variant, run_id, "SKIPPED", error=str(skip), control=control)
    except Exception as exc:  # noqa: BLE001 - one variant failing must not stop the others
        say(f"[{cfg.model}/{variant}] FAILED: {type(exc).__name__}: {exc}")
        partial = partial or _earlier_sittings(resume_run_id)
        return ChildOutcome(variant, run_id, "FAILED", partial, error=f"{type(exc).__name__}: {exc}", control=control)


def _earlier_sittings(resume_run_id: str) -> dict[str, float]:
    """A resumed child that stopped before its ledger opened still spent its earlier sittings' energy."""
    return logged_energy(resume_run_id) if resume_run_id else {}


def _keep_partial_energy(job: VariantJob) -> dict[str, float]:
    """A failed or interrupted run keeps what it spent. Train/val phases after the checkpoint's last
    epoch become `interrupted` (that epoch will be trained again on resume, so it is not a finished
    epoch); the journal beside the checkpoint says so for the next sitting; the partial totals and
    ledger are logged to the run and returned."""
    if job.checkpointer:
        redo_unsaved_epochs(job.ledger, job.checkpointer.saved_epoch())
    if not job.ledger:
        return {}
    metrics: dict[str, float] = {}
    try:
        if job.checkpointer:
            write_journal(job.checkpointer.journal_path, job.ledger)
        metrics = energy_metrics(Ledger(job.ledger), job.upstream.ledger if job.upstream else None)
        log_final(metrics)
        _log_ledger(Ledger(job.ledger), job.upstream)
    except Exception as exc:  # noqa: BLE001 - the original error is what the run must report
        say(f"(could not keep the partial energy ledger: {type(exc).__name__}: {exc})")
    return metrics


def _log_ledger(own: Ledger, upstream: Upstream | None) -> None:
    """The run's `energy_ledger.csv`: upstream phases (naming their run) first, then its own."""
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(write_ledger_csv(Path(tmp) / "energy_ledger.csv", own, upstream.ledger if upstream else None)))


def _headline(metrics: dict[str, float]) -> str:
    parts = [f"{metrics['energy_kwh'] * 1000:.3f} Wh own"]
    if metrics.get("upstream_energy_kwh"):
        parts.append(f"{metrics['lifecycle_energy_kwh'] * 1000:.3f} Wh lifecycle")
    if "test_acc1" in metrics:
        parts.insert(0, f"test_acc1 {metrics['test_acc1']:.2f}%")
    return ", ".join(parts)


def write_variants_table(children: list[ChildOutcome], path: Path) -> Path:
    """One row per child: the headline columns plus status and run id."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("variant", "status", "run_id", "reason", *TABLE_COLUMNS))
        for child in children:
            writer.writerow((child.variant, child.status, child.run_id, child.error,
                             *(child.metrics.get(c, "") for c in TABLE_COLUMNS)))
    return path


def _upstream_of(child: ChildOutcome) -> Upstream | None:
    if child.status != "FINISHED" or child.record is None:
        return None
    return Upstream(child.record.model, child.run_id, child.record.ledger.as_upstream(child.run_id))


def run_main(cfg: RunConfig) -> MainOutcome:
    """Train, measure and log every requested variant of one model (or go on with an interrupted run)."""
    check_series(cfg)  # carbon_intensity_csv / start_below_gco2: one error line before the data loads
    progress_every_s()  # a bad GREENSTUDY_PROGRESS_S: one error line now, not a failed child later
    device, cpu_data = prepare(cfg)
    stop_if_interrupted()  # a download or an extraction may have taken a while
    plan: ResumePlan | None = plan_resume(cfg, device) if cfg.resume else None
    bench, tags = make_bench(cfg, device, cpu_data)
    if plan:
        plan.check_same_machine(tags)
        _mark_sitting(cfg.resume)
    children: list[ChildOutcome] = []
    upstream = plan.upstream if plan else None
    if cfg.from_run:  # derive from a baseline that exists: retraining it would be the least green choice
        upstream = load_baseline(cfg, device)
        tags = {**tags, "from_run": cfg.from_run}
    with run_scope(cfg.model, cfg.experiment_name, tags={**tags, "kind": "parent"}, run_id=cfg.resume or None) as parent:
        existing = mlflow.get_run(parent.info.run_id).data.params
        wanted = {"model": cfg.model, "variants": ",".join(cfg.variants), "dataset": cfg.dataset}
        mlflow.log_params({k: v for k, v in wanted.items() if k not in existing})
        waited: list = []  # start_below_gco2: the wait for a low-carbon hour, measured as an `idle` phase
        try:
            wait_for_low_carbon(bench.meter, waited, cfg)
        finally:  # an interrupted wait was spent too
            if waited:
                mlflow.log_metrics(wait_metrics(waited))
        try:
            for variant in execution_order(cfg.variants, baseline_given=bool(cfg.from_run)):
                if plan and variant in plan.finished:
                    done = plan.finished[variant]
                    say(f"[{cfg.model}/{variant}] already {done.status} in run {done.run_id}: not re-run")
                    children.append(done)
                    continue
                stop_if_interrupted()
                try:
                    child = run_variant(bench, variant, tags, upstream=upstream,
                                        resume_run_id=plan.unfinished.get(variant, "") if plan else "")
                except KeyboardInterrupt as interrupt:
                    if getattr(interrupt, "child", None) is not None:
                        children.append(interrupt.child)
                    raise
                children.append(child)
                if variant == "baseline":
                    upstream = _upstream_of(child)
        finally:
            try:
                _log_parent_summary(children + _not_in_this_sitting(plan, children))
            except Exception as exc:  # noqa: BLE001 - the run's own outcome (an error, Ctrl-C) must come through
                say(f"(could not log the parent's summary: {type(exc).__name__}: {exc})")
            finally:
                bench.meter.stop()
        if children and all(child.status in ("FAILED", "KILLED") for child in children):
            raise RuntimeError("every variant failed: " + "; ".join(f"{c.variant}: {c.error}" for c in children))
    experiment = mlflow.get_experiment(parent.info.experiment_id).name  # `mlflow run --experiment-name` may differ
    return MainOutcome(experiment, parent.info.run_id, children, tags["energy_method"])


def logged_energy(run_id: str) -> dict[str, float]:
    """What an unfinished child logged: its partial totals or, hard-killed (no totals), its last
    `cumulative_energy_kwh` as `energy_kwh`; {} with a line when the run cannot be read."""
    try:
        metrics = dict(mlflow.MlflowClient().get_run(run_id).data.metrics)
    except Exception as exc:  # noqa: BLE001 - a summary must not hide the run's own outcome
        say(f"(could not read run {run_id}'s energy for the parent's total: {type(exc).__name__}: {exc})")
        return {}
    if "energy_kwh" not in metrics and "cumulative_energy_kwh" in metrics:
        metrics["energy_kwh"] = metrics["cumulative_energy_kwh"]
    return metrics


def _not_in_this_sitting(plan: ResumePlan | None, children: list[ChildOutcome],
                         logged: Callable[[str], dict[str, float]] = logged_energy) -> list[ChildOutcome]:
    """A parent resumed with fewer variants still sums all of its children: the earlier sittings' outcomes of
    the variants this sitting did not ask for; an unfinished one counts the energy it logged."""
    if plan is None:
        return []
    seen = {child.variant for child in children}
    left = [done for variant, done in plan.finished.items() if variant not in seen]
    left += [ChildOutcome(variant, run_id, "KILLED", logged(run_id), error="not resumed yet")
             for variant, run_id in plan.unfinished.items() if variant not in seen]
    return left


def _mark_sitting(resumed_parent: str) -> None:
    """Under `mlflow run`, the run MLflow made for this sitting only records that it resumed another:
    the work goes on in the interrupted parent and its children, in place."""
    sitting = os.environ.get("MLFLOW_RUN_ID")
    if sitting and sitting != resumed_parent:
        client = mlflow.MlflowClient()
        client.set_tag(sitting, "kind", "resume-sitting")
        client.set_tag(sitting, "resumes", resumed_parent)


def _log_parent_summary(children: list[ChildOutcome]) -> None:
    if not children:
        return
    finished = [child for child in children if child.status == "FINISHED"]
    unfinished = [child for child in children if child.status in ("FAILED", "KILLED")]
    spent = finished + unfinished  # a failed or interrupted child's energy was spent too
    mlflow.log_metrics({
        "energy_kwh": sum(c.metrics.get("energy_kwh", 0.0) for c in spent),
        "emissions_kg": sum(c.metrics.get("emissions_kg", 0.0) for c in spent),
        "unfinished_energy_kwh": sum(c.metrics.get("energy_kwh", 0.0) for c in unfinished),
        "variants_finished": len(finished),
        "variants_failed": sum(c.status in ("FAILED", "KILLED") for c in children),
        "variants_skipped": sum(c.status == "SKIPPED" for c in children),
    })
    for status, tag in (("FAILED", "failed_variants"), ("SKIPPED", "skipped_variants")):
        names = [child.variant for child in children if child.status == status]
        if names:
            mlflow.set_tag(tag, ",".join(names))
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(write_variants_table(children, Path(tmp) / "variants.csv")))


def summary_lines(outcome: MainOutcome) -> list[str]:
    """What a person reads at the end of a run."""
    uri = mlflow.get_tracking_uri()
    lines = [f"experiment: {outcome.experiment}", f"parent run id: {outcome.parent_run_id}"]
    for child in outcome.children:
        m = child.metrics
        if child.status == "FINISHED" and "test_acc1" in m:
            lines.append(
                f"  {child.variant:<10} run {child.run_id}  test_acc1={m['test_acc1']:.2f}%  "
                f"energy={m['energy_kwh'] * 1000:.3f} Wh (lifecycle {m['lifecycle_energy_kwh'] * 1000:.3f} Wh)  "
                f"emissions={m['emissions_kg'] * 1000:.3f} g CO2eq  "
                f"infer={m['infer_images_per_second']:.0f} img/s  size={m['model_size_mb']:.1f} MB"
            )
        else:
            lines.append(f"  {child.variant:<10} run {child.run_id}  {child.status}: {child.error}")
    lines.append(f"energy: {outcome.energy_method} (CPU capability {cpu_capability()})")
    lines.append(f"browse: mlflow ui --backend-store-uri {uri}")
    return lines

