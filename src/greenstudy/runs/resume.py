"""`resume=<parent run id>`: what an interrupted `main` run already finished, and what goes on in place.

Finished variants are not re-run (a derived variant's baseline is loaded back from its logged model and
priced from its `energy_ledger.csv`); every other variant's child run is reopened with its run id and
continues from its checkpoint's last finished epoch (from scratch when it has none)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from greenstudy.config import RunConfig
from greenstudy.errors import ConfigError
from greenstudy.measure.ledger import read_ledger_csv
from greenstudy.runs.outcome import ChildOutcome, contract_params
from greenstudy.training.checkpoint import FINGERPRINT_FIELDS, Checkpointer, fingerprint
from greenstudy.variants.record import Upstream

ENERGY_FIELDS = ("country_iso_code", "cpu_power_w", "ram_power_w")  # what one ledger's energy figures assume
MACHINE_TAGS = ("energy_method", "cpu_model", "gpu_model", "device")


@dataclass
class ResumePlan:
    """Per variant: a finished outcome to keep, or the run id to go on with."""

    finished: dict[str, object] = field(default_factory=dict)  # variant -> ChildOutcome
    unfinished: dict[str, str] = field(default_factory=dict)  # variant -> child run id
    upstream: Upstream | None = None
    machine: dict[str, dict[str, str]] = field(default_factory=dict)  # unfinished child run id -> its machine tags

    def check_same_machine(self, tags: dict[str, str]) -> None:
        """One ledger, one way of measuring: an unfinished child goes on only where its energy is obtained the
        same way, on the same hardware (else its phases would mix methods and machines without saying so)."""
        for run_id, earlier in self.machine.items():
            diff = [f"{k}={earlier[k]!r} (now {tags.get(k)!r})" for k in MACHINE_TAGS if k in earlier and earlier[k] != tags.get(k)]
            if diff:
                raise ConfigError(f"resume: run {run_id} was measured elsewhere: {', '.join(diff)}; resume it on that machine "
                                  "with the same energy settings, or start a new run")


def _parent(client: MlflowClient, run_id: str, cfg: RunConfig) -> mlflow.entities.Run:
    try:
        parent = client.get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(f"resume: no run {run_id!r} in the tracking store {mlflow.get_tracking_uri()}") from exc
    tags, params = parent.data.tags, parent.data.params
    if tags.get("kind") != "parent":
        raise ConfigError(f"resume: run {run_id} is not the parent run of a `main` run (kind={tags.get('kind')!r})")
    if params.get("model") != cfg.model or params.get("dataset") != cfg.dataset:
        raise ConfigError(
            f"resume: run {run_id} trained {params.get('model')} on {params.get('dataset')}, "
            f"not {cfg.model} on {cfg.dataset}: pass the same parameters as the interrupted run"
        )
    return parent


def _check_same_settings(cfg: RunConfig, child: mlflow.entities.Run) -> None:
    """A resumed run must use the settings its earlier sitting logged (finished children included:
    pruned and quantized are built on the finished baseline)."""
    logged = child.data.params
    wanted = contract_params(cfg, child.data.tags.get("variant", ""), torch.device(child.data.tags.get("device", "cpu")))
    diff = [f"{k}={logged[k]} (now {v})" for k, v in wanted.items()
            if k in logged and (k in FINGERPRINT_FIELDS or k in ENERGY_FIELDS) and str(v) != logged[k]]
    if diff:
        raise ConfigError(f"resume: run {child.info.run_id} was made with other settings: {', '.join(diff)}")


def _check_checkpoint(cfg: RunConfig, client: MlflowClient, child: mlflow.entities.Run) -> None:
    """An unfinished child that logged epochs must have its checkpoint where this sitting looks, and
    one made with the same settings; otherwise one line, before anything runs."""
    checkpointer = Checkpointer(Path(cfg.checkpoint_dir).resolve() / child.info.run_id)
    if checkpointer.exists():
        checkpointer.load(fingerprint(cfg))
    elif client.get_metric_history(child.info.run_id, "val_acc1"):
        raise ConfigError(
            f"resume: run {child.info.run_id} logged epochs but its checkpoint is not at {checkpointer.path} "
            f"(the run's tag says {child.data.tags.get('checkpoint', 'nothing')}): pass the same checkpoint_dir, from the same folder"
        )


def load_baseline(cfg: RunConfig, device: torch.device) -> Upstream:
    """`from_run`: a finished baseline child of the same model and dataset, back from MLflow with its cost."""
    client = MlflowClient()
    try:
        run = client.get_run(cfg.from_run)
    except MlflowException as exc:
        raise ConfigError(f"from_run: no run {cfg.from_run!r} in the tracking store {mlflow.get_tracking_uri()}") from exc
    tags, params = run.data.tags, run.data.params
    if tags.get("kind") != "variant" or tags.get("variant") != "baseline" or run.info.status != "FINISHED":
        raise ConfigError(f"from_run: run {cfg.from_run} is not a finished baseline run of `main` "
                          f"(kind={tags.get('kind')!r}, variant={tags.get('variant')!r}, status={run.info.status})")
    wanted = {"model": cfg.model, "dataset": cfg.dataset, "resolution": str(cfg.resolution)}
    diff = [f"{k}={params.get(k)} (now {v})" for k, v in wanted.items() if params.get(k, v) != v]
    if diff:
        raise ConfigError(f"from_run: run {cfg.from_run} was made with other settings: {', '.join(diff)}")
    return _load_upstream(client, cfg.from_run, device)


def _load_upstream(client: MlflowClient, run_id: str, device: torch.device) -> Upstream:
    """The finished baseline: its model back from MLflow, its cost from its ledger artifact."""
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/model", map_location=device)
    with tempfile.TemporaryDirectory() as tmp:
        own, _ = read_ledger_csv(client.download_artifacts(run_id, "energy_ledger.csv", tmp))
    return Upstream(model.to(device), run_id, own.as_upstream(run_id))


def plan_resume(cfg: RunConfig, device: torch.device) -> ResumePlan:
    """Read the interrupted parent's children and decide, per variant, what this sitting does."""
    client = MlflowClient()
    parent = _parent(client, cfg.resume, cfg)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{cfg.resume}' and tags.kind = 'variant'",
        order_by=["attributes.start_time ASC"],
    )
    plan = ResumePlan()
    for child in children:
        variant, tags = child.data.tags.get("variant", ""), child.data.tags
        _check_same_settings(cfg, child)
        if child.info.status == "FINISHED":
            plan.finished[variant] = ChildOutcome(variant, child.info.run_id, "FINISHED", dict(child.data.metrics))
            plan.unfinished.pop(variant, None)
        elif "skipped" in tags:  # not native here: skipped again would say the same
            plan.finished.setdefault(variant, ChildOutcome(variant, child.info.run_id, "SKIPPED", error=tags["skipped"]))
        elif variant not in plan.finished:
            plan.unfinished[variant] = child.info.run_id
            plan.machine[child.info.run_id] = {k: tags[k] for k in MACHINE_TAGS if k in tags}
            _check_checkpoint(cfg, client, child)
    baseline = plan.finished.get("baseline")
    if baseline is not None and any(v in cfg.variants for v in ("pruned", "quantized")):
        plan.upstream = _load_upstream(client, baseline.run_id, device)
    if not plan.unfinished and set(cfg.variants) <= set(plan.finished):
        raise ConfigError(f"resume: every variant of run {cfg.resume} already FINISHED: nothing to resume")
    return plan
