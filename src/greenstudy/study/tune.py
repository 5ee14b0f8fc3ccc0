"""The `tune` entry point: an Optuna study of batch size (and learning rate), every trial a nested
MLflow child run of the study's parent run; the front, hypervolume and the study's energy bill are
logged to the parent after every trial.

Search space: `batch_size` is a categorical over powers of two, 16 ... min(1024, max_batch_size),
stored in the study (a resume asking for another list is rejected). The lr follows the batch size
(`lr_scaling`) relative to the reference point (`batch_size`, `lr`): `linear` (Goyal et al. 2017,
SGD's linear scaling rule), `sqrt` (constant gradient-noise scale; Krizhevsky 2014, Hoffer et al.
2017) or `tuned` (the base lr is a second, log-uniform dimension in [lr/10, lr*10], then scaled
linearly, so the two dimensions stay close to independent).

Objectives (`greenstudy.study.front`): `final` maximises the last epoch's val_acc1 and minimises
train_val_energy_kwh; `to_target` minimises energy_to_target_kwh. The test set never selects.

Budget (greenstudy.study.budget): every trial the same optimizer steps (default) or the same epochs;
successive halving (greenstudy.study.fidelity) stops the configurations that are not among the best at
a rung. In a finite space only untried configurations are sampled (greenstudy.study.sampling).

What a trial can end as (counted apart: greenstudy.study.counts):
- COMPLETE, with its values (trained).
- PRUNED (never FAIL, never a made-up number): `to_target` and the target was not reached (user attr
  `pruned=target_not_reached`); the energy-aware stop ended it before its last epoch (`over_budget`):
  once its train + val energy passed `stop_beta` x the reference of the completed trials (best energy
  to target; for `final` the energy of the most expensive trial on the front); or it was not promoted
  at a rung (`not_promoted`); or it waits at a rung with its checkpoint (`paused`: a later trial with
  `continues=<number>` trains it on, greenstudy.study.waiting). The child run ends FINISHED, tagged `stopped_early` by the core and
  `optuna_state=PRUNED` here, with everything it spent logged. A trial that finished its schedule is
  never pruned by the budget or a rung.
- Reused: a configuration some finished trial already measured is not retrained; the trial ends PRUNED
  (`pruned=reused`, `reused_from=<trial number>`), no MLflow child run, and does not count in `n_trials`.
- FAIL: training raised (NaN loss, out of memory, ...); child FAILED with tag `error`, user attr
  `fail_reason`; or interrupted (user attr `interrupted`, what it spent in `energy_kwh`). The study goes
  on (a failed configuration is sampled again).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial

from greenstudy.errors import ConfigError, GreenstudyError
from greenstudy.interrupts import stop_if_interrupted
from greenstudy.study.budget import optimizer_steps, trial_epochs
from greenstudy.study.counts import count_trials, counts_text, kind_of
from greenstudy.study.fidelity import StudyControl, judge_at_rung, rung_epochs, rung_fractions, tally
from greenstudy.study.front import (
    DIRECTIONS,
    OBJECTIVE_TEXT,
    REFERENCE_ATTR,
    TARGET_NOT_REACHED,
    budget_reference_kwh,
    find_measured,
    study_summary_lines,
)
from greenstudy.study.kinds import CONTINUES
from greenstudy.study.log import FrontLogger, progress_line, study_params
from greenstudy.study.params import StudyConfig, default_sampler_seed, scaled_lr
from greenstudy.study.sampling import make_sampler, untried
from greenstudy.study.storage import create_or_load_study, default_storage_url, masked_url, open_storage
from greenstudy.study.trial_end import TrialFailed, child_energy_kwh, free_accelerator_memory, record_interrupt, reuse
from greenstudy.study.waiting import (
    can_wait,
    continue_paused,
    drop_checkpoint,
    queue_continuation,
    release_checkpoints,
    waiting_enabled,
)

REUSE_ALLOWANCE = 50  # reused proposals (instant, 0 kWh) and continuations of paused trials: not in n_trials


class StudyFailed(GreenstudyError):
    """Every trial of this session failed."""


def resolve_variant(config: StudyConfig, device: object) -> tuple[StudyConfig, str]:
    """`auto` -> amp where the hardware runs mixed precision natively, else baseline; an explicit amp
    that would be emulated is refused (force it with amp_dtype=bf16|fp16)."""
    from greenstudy.measure.precision import choose_mixed_precision, describe

    choice = choose_mixed_precision(describe(device), config.run.amp_dtype)
    if config.variant == "auto":
        variant = "amp" if choice.runs else "baseline"
        return config.resolved(variant), f"auto -> {variant}: {choice.reason}"
    if config.variant == "amp" and not choice.runs:
        raise ConfigError(f"variant=amp does not run natively here: {choice.reason}; or use variant=auto or baseline")
    return config, f"{config.variant} (asked)"


@dataclass
class StudyOutcome:
    study_name: str
    storage: str
    parent_run_id: str
    trial_numbers: list[int]
    complete: int
    failed: int
    summary: list[str]


@dataclass
class Trainer:
    """What every trial shares: config, data, device, meter, tags and this session's record."""

    config: StudyConfig
    bench: object  # greenstudy.variants.catalog.Bench of the reference config; each trial replaces its cfg
    tags: dict[str, str]
    client: object
    session: list[FrozenTrial]
    train_size: int = 0
    started: list[int] = dataclasses.field(default_factory=list)  # every trial this session began
    closing: bool = False  # this session begins no new configuration: trials at a rung are decided for good

    def propose(self, trial: optuna.Trial) -> tuple[int, float]:
        cfg = self.config.run
        batch_size = trial.suggest_categorical("batch_size", self.config.batch_choices)
        tuned = self.config.lr_scaling == "tuned"
        base_lr = trial.suggest_float("base_lr", *self.config.tuned_lr_range, log=True) if tuned else cfg.lr
        lr = scaled_lr(base_lr, batch_size, cfg.batch_size, self.config.lr_scaling)
        trial.set_user_attr("lr", lr)
        return batch_size, lr

    def control(self, trial: optuna.Trial, epochs: int, earlier_kwh: float = 0.0) -> StudyControl:
        """The trial's control: the target (stop there for `to_target`), the energy budget and the rungs."""
        cfg, config = self.config.run, self.config
        budget = None
        reference = budget_reference_kwh(trial.study.get_trials(deepcopy=False), config.objective)
        if config.stop_beta > 0 and reference is not None:
            budget = config.stop_beta * reference
            trial.set_user_attr("budget_kwh", budget)
        stop_at_target = cfg.stop_at_target or config.objective == "to_target"
        rungs = rung_epochs(rung_fractions(config.halving_eta, cfg.epochs), epochs)
        return StudyControl(
            target_acc1=cfg.target_acc1, stop_at_target=stop_at_target, budget_kwh=budget, total_epochs=epochs, rungs=rungs,
            at_rung=lambda rung, report: judge_at_rung(trial, config.halving_eta, epochs, rung, report,
                                                       lambda: can_wait(trial.study, config, self.closing)),
            on_epoch=lambda report: tally(trial, report, earlier_kwh),
        )

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        self.started.append(trial.number)
        batch_size, lr = self.propose(trial)
        earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number != trial.number]
        if CONTINUES in trial.user_attrs:
            paused = next(t for t in earlier if t.number == int(trial.user_attrs[CONTINUES]))
            run_id, earlier_kwh = continue_paused(trial, paused, earlier, self.client, self.config)
            return self.train(trial, batch_size, lr, run_id, earlier_kwh)
        measured = find_measured(earlier, trial.params)
        if measured is not None:
            reuse(trial, measured)
        return self.train(trial, batch_size, lr)

    def train(self, trial: optuna.Trial, batch_size: int, lr: float, resume_run_id: str = "",
              earlier_kwh: float = 0.0) -> tuple[float, ...]:
        """Train one configuration (or continue it: `resume_run_id`, which had spent `earlier_kwh`)."""
        from greenstudy.runs.main_run import run_variant

        config = self.config
        epochs = trial_epochs(config, batch_size, self.train_size)
        trial.set_user_attr("epochs", epochs)
        trial.set_user_attr("optimizer_steps", optimizer_steps(epochs, batch_size, self.train_size))
        control = self.control(trial, epochs, earlier_kwh)
        bench = dataclasses.replace(self.bench, cfg=config.run.replace(batch_size=batch_size, lr=lr, epochs=epochs))
        tags = {**self.tags, "kind": "trial", "trial_number": str(trial.number)}
        try:
            child = run_variant(bench, config.variant, tags, control=control, lean=not config.trial_artifacts,
                                resume_run_id=resume_run_id,
                                checkpoint=True if resume_run_id or (waiting_enabled(config) and control.rungs) else None)
        except KeyboardInterrupt as interrupt:
            record_interrupt(trial, interrupt, self.client, earlier_kwh)
            raise
        trial.set_user_attr("mlflow_run_id", child.run_id)
        trial.set_user_attr("energy_kwh", max(0.0, child_energy_kwh(child, self.client) - earlier_kwh))
        if "val_acc1" in child.last_epoch:
            trial.set_user_attr("val_acc1", child.last_epoch["val_acc1"])
        if child.run_id:
            self.client.set_tag(child.run_id, "mlflow.runName", f"trial-{trial.number}-bs{batch_size}")
        if child.status != "FINISHED" or "val_acc1" not in child.last_epoch:
            reason = child.error or f"child run {child.status} without validation metrics"
            trial.set_user_attr("fail_reason", reason)
            if child.run_id and not resume_run_id:  # its configuration is tried again in a new run: nothing resumes this one
                drop_checkpoint(self.client, child.run_id, config)
            free_accelerator_memory()
            raise TrialFailed(reason)
        if control.stop_kind:
            self.prune(trial, child.run_id, control.stop_kind, f"stopped early, {control.stopped_early}")
        trial.set_user_attr("rung", len(rung_fractions(config.halving_eta, config.run.epochs)))  # the full budget
        if config.objective == "to_target":
            if control.reached is None:
                self.prune(trial, child.run_id, TARGET_NOT_REACHED,
                           f"val_acc1 {control.last.val_acc1:.2f} % after epoch {control.last.epoch} < target "
                           f"{config.run.target_acc1:g} %")
            reached = control.reached
            trial.set_user_attr("seconds_to_target", reached.seconds)
            trial.set_user_attr("epochs_to_target", reached.epoch)
            trial.set_user_attr("val_acc1", reached.val_acc1)
            return (reached.energy_kwh,)
        return child.last_epoch["val_acc1"], child.metrics["train_energy_kwh"] + child.metrics["val_energy_kwh"]

    def prune(self, trial: optuna.Trial, run_id: str, kind: str, reason: str) -> None:
        """End the trial PRUNED with its reason on the trial and on its (FINISHED) child run."""
        trial.set_user_attr("pruned", kind)
        trial.set_user_attr("prune_reason", reason)
        if run_id:
            self.client.set_tag(run_id, "optuna_state", "PRUNED")
            self.client.set_tag(run_id, "prune_reason", reason)
        raise optuna.TrialPruned(reason)


def run_study(config: StudyConfig) -> StudyOutcome:
    """Check inputs (storage, data, study settings) before any MLflow run exists, then run up to
    `n_trials` new trials under one parent run."""
    storage_url = default_storage_url() if config.storage == "auto" else config.storage
    storage = open_storage(storage_url)  # first: a bad URL fails before the slow imports below
    from greenstudy.training.steps import progress_every_s

    progress_every_s()  # a bad GREENSTUDY_PROGRESS_S: one error line before any trial

    import mlflow

    from greenstudy.measure.carbon_hooks import check_series
    from greenstudy.runs.main_run import make_bench, prepare

    check_series(config.run)  # carbon_intensity_csv / start_below_gco2: a bad series fails before the data loads
    device, cpu_data = prepare(config.run)
    config, variant_choice = resolve_variant(config, device)
    cfg = config.run
    if max(config.batch_choices) > len(cpu_data.train):
        raise ConfigError(
            f"max_batch_size={config.max_batch_size} exceeds the {len(cpu_data.train)} training images: "
            "lower max_batch_size or raise train_subset"
        )
    sampler_seed = default_sampler_seed() if config.sampler_seed is None else config.sampler_seed
    study = create_or_load_study(
        storage, config.study_name, config.settings(), DIRECTIONS[config.objective], make_sampler(config, sampler_seed)
    )
    check_reference(study, config)
    study.set_user_attr("objective", config.objective)
    study.set_user_attr("objective_definition", OBJECTIVE_TEXT[config.objective])

    bench, tags = make_bench(cfg, device, cpu_data)
    tags = {**tags, "optuna_study": config.study_name, "variant_choice": variant_choice}
    session: list[FrozenTrial] = []
    trainer = Trainer(config, bench, tags, mlflow.MlflowClient(), session, train_size=len(cpu_data.train))
    if not os.environ.get("MLFLOW_RUN_ID"):
        # Two workers creating the experiment at the same moment: MLflow 3.17's set_experiment returns
        # without activating it for the loser of the race; the call in run_scope then finds it.
        mlflow.set_experiment(cfg.experiment_name)
    return _run_parent(config, study, trainer, masked_url(storage_url), sampler_seed, bench.meter)


def check_reference(study: optuna.Study, config: StudyConfig) -> None:
    stored = study.user_attrs.get(REFERENCE_ATTR)
    if config.hv_ref_energy_kwh is not None and stored is not None and float(stored["energy_kwh"]) != config.hv_ref_energy_kwh:
        raise ConfigError(
            f"study {config.study_name!r} measures hypervolume against energy_kwh={stored['energy_kwh']}, "
            f"not {config.hv_ref_energy_kwh}: drop hv_ref_energy_kwh or use another study"
        )


def _run_parent(config: StudyConfig, study: optuna.Study, trainer: Trainer, shown_storage: str, sampler_seed: int,
                meter: object) -> StudyOutcome:
    import mlflow

    from greenstudy.measure.carbon_hooks import wait_for_low_carbon, wait_metrics
    from greenstudy.progress import say
    from greenstudy.tracking import run_scope

    cfg, session = config.run, trainer.session
    front_logger = FrontLogger(config.hv_ref_energy_kwh, session)
    started = time.monotonic()

    def remember(study: optuna.Study, trial: FrozenTrial) -> None:
        session.append(trial)
        # reused copies and continuations of paused trials do not count in n_trials (configurations begun)
        trained = sum(kind_of(t) != "reused" and CONTINUES not in t.user_attrs for t in session)
        say(progress_line(trial, trained, config.n_trials, study.directions, count_trials(study.get_trials(deepcopy=False))))
        trainer.closing = trained >= config.n_trials
        if queue_continuation(study, config, trainer.closing):
            pass  # the next trial continues a paused one, whatever n_trials says: the bracket is finished
        elif untried(study, config) == []:
            say(f"every batch size of {config.batch_choices} has been tried or is in progress: the study stops here")
            study.stop()
        elif trained >= config.n_trials:
            study.stop()
        stop_if_interrupted()  # between trials: the finished one is told and logged

    parent_tags = {**trainer.tags, "kind": "study", "optuna_storage": shown_storage, "optuna_sampler": config.sampler,
                   "sampler_seed": str(sampler_seed), "objective": config.objective}
    left = untried(study, config)
    queued = queue_continuation(study, config)  # a paused trial left by an earlier session, now among the best
    with run_scope(f"study-{config.study_name}", cfg.experiment_name, tags=parent_tags) as parent:
        existing = mlflow.get_run(parent.info.run_id).data.params
        params = study_params(config, shown_storage, sampler_seed, trainer.train_size)
        mlflow.log_params({k: v for k, v in params.items() if k not in existing})
        say(f"study {config.study_name}: up to {config.n_trials} trials, objective={config.objective}, "
            f"sampler={config.sampler} (seed {sampler_seed}), {trainer.tags['variant_choice']}")
        waited: list = []  # start_below_gco2: the wait for a low-carbon hour, measured (a wait costs energy too)
        try:
            wait_for_low_carbon(meter, waited, cfg)
        finally:  # an interrupted wait was spent too
            if waited:
                mlflow.log_metrics(wait_metrics(waited))
        try:
            if left == [] and not queued:
                say(f"every batch size of {config.batch_choices} has been tried already: no new trial")
            else:  # each trial holds the machine's measurement lock while it trains (greenstudy.measure.energy)
                study.optimize(trainer, n_trials=config.n_trials + REUSE_ALLOWANCE, timeout=config.timeout_s,
                               catch=(TrialFailed,), callbacks=[remember, front_logger])
        finally:  # an interrupted trial never reached the callbacks: it is this session's too, with what it spent
            told = {t.number for t in session}
            session.extend(study.trials[n] for n in trainer.started if n not in told)
            front_logger(study)  # again at the end: other workers may have finished trials meanwhile
            meter.stop()
            released = release_checkpoints(study, config, trainer.client)
            if released:
                say(f"paused trials {released} cannot be continued any more: their checkpoints are dropped")
        counts = count_trials(session)
        summary = [
            f"study: {config.study_name}  storage: {shown_storage}",
            f"parent run id: {parent.info.run_id}",
            f"this session: {len(session)} trials ({', '.join(str(t.number) for t in session)}), {counts_text(counts)}; "
            f"{front_logger.session_energy_kwh() * 1000:.4f} Wh in {time.monotonic() - started:.0f} s",
            *study_summary_lines(study),
            f"browse: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}",
        ]
        if session and counts["failed"] == len(session):
            reasons = "; ".join(f"trial {t.number}: {t.user_attrs.get('fail_reason', '?')}" for t in session)
            raise StudyFailed(f"every trial of this session failed: {reasons}")
    return StudyOutcome(
        config.study_name, shown_storage, parent.info.run_id, [t.number for t in session],
        counts["trained"], counts["failed"], summary,
    )
