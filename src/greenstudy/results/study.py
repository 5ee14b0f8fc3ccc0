"""The batch-size study in `results/`: each study parent run (tag kind=study) with its Pareto front (from
Optuna when a storage is given, else the parent's pareto.csv artifact, else its trial runs' metrics), its
trials, its front picture (copied from the parent's artifacts) and the `tune` command rebuilt from its params."""

from __future__ import annotations

import csv
import io
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from greenstudy.pareto import pareto_front
from greenstudy.results.tables import as_given, command_line, data_dir_of, markdown, num, pct, wh
from greenstudy.tracking import write_dict_csv

FRONT_PICTURES = ("pareto_front.png", "energy_to_target.png")
PARAM_RENAMES = {"reference_batch_size": "batch_size", "base_lr": "lr"}  # study_params name -> tune parameter
TRIAL_VARYING = ("batch_size", "lr", "variant")  # trial params that are not the study's settings
FINAL_ENERGY = "train_val_energy_kwh"


@dataclass
class StudySection:
    """One study as results/README.md shows it."""

    run: Run
    front: list[dict[str, str]]
    front_source: str
    trials: list[list[str]]
    command: str
    picture: str = ""  # file name in results/, '' when the parent has none
    csv_name: str = ""
    notes: list[str] = field(default_factory=list)
    sessions: int = 1  # `tune` invocations of this study (their commands, one per line)

    def markdown(self) -> list[str]:
        p, m = self.run.data.params, self.run.data.metrics
        name = study_name_of(self.run) or self.run.info.run_name or "?"
        energy_key = next((k for k in self.front[0] if k.endswith("_kwh")), FINAL_ENERGY) if self.front else FINAL_ENERGY
        rows = [[r.get("trial", ""), r.get("batch_size", ""), num(_float(r.get("lr")), ".4g"), pct(_float(r.get("val_acc1"))),
                 wh(_float(r.get(energy_key))), r.get("run_id", "")] for r in self.front]
        counts = honest_counts(m)
        lines = [
            f"### Study `{name}` (latest parent run {self.run.info.run_id}, {self.run.info.status}; "
            f"{self.sessions} session(s), commands below in order)", "",
            f"- model {p.get('model', '?')}, objective {p.get('objective', '?')}, sampler {p.get('sampler', '?')}, "
            f"{p.get('epochs', '?')} epochs per trial, batch sizes {p.get('batch_size_choices', '?')}",
            f"- trials: {counts or '?'}; study energy (all trials, trained, pruned, failed and interrupted) "
            f"{wh(m.get('all_trials_energy_kwh'))} Wh; hypervolume {num(m.get('hypervolume'))} "
            f"(reference {self.run.data.tags.get('hypervolume_reference', '?')})",
            f"- front read from {self.front_source}" + (f"; written to {self.csv_name}" if self.csv_name else ""),
            *(f"- {note}" for note in self.notes), "", "```", self.command, "```", "", "Pareto front (selected on val_acc1):", "",
            markdown(("trial", "batch size", "lr", "val top-1 %", f"{energy_key.removesuffix('_kwh')} Wh", "run id"), rows)
            if rows else "no completed trial yet\n",
            "All trials:", "",
            markdown(("trial", "batch size", "lr", "status", "val top-1 % (last epoch)", "train+val Wh", "run id"), self.trials),
        ]
        if self.picture:
            lines += [f"![front of {name}]({self.picture})", ""]
        return lines


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def trial_number(run: Run) -> int:
    return int(run.data.tags.get("trial_number", "0") or 0)


def trial_runs(client: MlflowClient, study: Run) -> list[Run]:
    found = client.search_runs([study.info.experiment_id], f"tags.`mlflow.parentRunId` = '{study.info.run_id}'",
                               max_results=5000)
    return sorted(found, key=trial_number)


def trial_row(run: Run) -> list[str]:
    m, tags = run.data.metrics, run.data.tags
    energy = m.get("train_energy_kwh", math.nan) + m.get("val_energy_kwh", math.nan)
    state = tags.get("optuna_state", run.info.status) + (f": {tags['prune_reason']}" if tags.get("prune_reason") else "")
    state += f": {tags['error']}" if tags.get("error") else ""
    return [tags.get("trial_number", "?"), run.data.params.get("batch_size", "?"), num(_float(run.data.params.get("lr")), ".4g"),
            state, pct(m.get("val_acc1")), wh(energy), run.info.run_id]


def front_from_trials(trials: Sequence[Run]) -> list[dict[str, str]]:
    """The front of the finished, unpruned trial runs on (train+val energy, last val_acc1)."""
    done = [r for r in trials if r.info.status == "FINISHED" and r.data.tags.get("optuna_state") != "PRUNED"
            and {"val_acc1", "train_energy_kwh", "val_energy_kwh"} <= set(r.data.metrics)]
    coords = [(r.data.metrics["train_energy_kwh"] + r.data.metrics["val_energy_kwh"], r.data.metrics["val_acc1"]) for r in done]
    return [{"trial": done[i].data.tags.get("trial_number", "?"), "batch_size": done[i].data.params.get("batch_size", ""),
             "lr": done[i].data.params.get("lr", ""), "val_acc1": str(coords[i][1]), FINAL_ENERGY: str(coords[i][0]),
             "run_id": done[i].info.run_id} for i in pareto_front(coords)]


def front_from_optuna(storage: str, study_name: str) -> list[dict[str, str]]:
    import optuna

    from greenstudy.study.front import front_rows, objective_of

    study = optuna.load_study(study_name=study_name, storage=storage)
    return [{k: "" if v is None else str(v) for k, v in row.items()} for row in front_rows(study.get_trials(), objective_of(study))]


def _artifact(client: MlflowClient, run_id: str, name: str, tmp: Path) -> Path | None:
    try:
        return Path(client.download_artifacts(run_id, name, str(tmp)))
    except (MlflowException, OSError):
        return None


def tune_command(client: MlflowClient, study: Run, trials: Sequence[Run]) -> str:
    from greenstudy.study.params import tune_parser

    params = {k: v for t in trials[:1] for k, v in t.data.params.items() if k not in TRIAL_VARYING}
    params.update({PARAM_RENAMES.get(k, k): v for k, v in study.data.params.items() if k != "batch_size_choices"})
    params["study_name"] = study_name_of(study)
    if "data_dir" not in params and data_dir_of(study.data.tags):
        params["data_dir"] = data_dir_of(study.data.tags)  # trials log no data_dir: where the data was found
    experiment = client.get_experiment(study.info.experiment_id).name
    return command_line(tune_parser(), params, experiment, entry="tune",
                        always=("model", "n_trials", "epochs", "study_name", "sampler_seed"))


def study_name_of(run: Run) -> str:
    """The Optuna study a study parent ran (its tag: a `study_name` param logged by `mlflow run` may be
    the empty default)."""
    return run.data.tags.get("optuna_study") or as_given(run.data.params.get("study_name", ""))


def study_sections(client: MlflowClient, runs: Sequence[Run], tmp: Path, out: Path, study_name: str = "",
                   storage: str = "") -> list[StudySection]:
    """One section per study (only `study_name` if given), latest first, gathering every `tune` session
    (study parent run) of it; writes pareto*.csv and the front pictures into `out`."""
    sessions: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        if run.data.tags.get("kind") == "study" and (not study_name or study_name_of(run) == study_name):
            sessions.setdefault(study_name_of(run) or run.info.run_id, []).append(run)
    sections = []
    for k, (key, group) in enumerate(sorted(sessions.items(), key=lambda item: -(item[1][-1].info.start_time or 0))):
        study = group[-1]  # the latest session: its metrics and artifacts cover the whole study
        suffix = "" if k == 0 else f"-{key}"
        per_session = [(session, trial_runs(client, session)) for session in group]
        trials = sorted((t for _, found in per_session for t in found), key=trial_number)
        name = study_name_of(study)
        artifact = _artifact(client, study.info.run_id, "pareto.csv", tmp / study.info.run_id)
        if storage and name:
            front, source = front_from_optuna(storage, name), f"Optuna storage {storage.split('@')[-1]}"
        elif artifact is not None:
            front, source = list(csv.DictReader(io.StringIO(artifact.read_text()))), "the parent's pareto.csv artifact"
        else:
            front, source = front_from_trials(trials), "the trial runs' metrics (no pareto.csv artifact)"
        commands = "\n".join(tune_command(client, session, found) for session, found in per_session)
        section = StudySection(study, front, source, [trial_row(t) for t in trials], commands, sessions=len(group))
        if front:
            section.csv_name = f"pareto{suffix}.csv"
            write_dict_csv(front, list(front[0]), out / section.csv_name)
        for picture in FRONT_PICTURES:
            found = _artifact(client, study.info.run_id, picture, tmp / study.info.run_id)
            if found is not None:
                section.picture = f"{Path(picture).stem}{suffix}.png"
                shutil.copyfile(found, out / section.picture)
                break
        else:
            section.notes.append("the parent has no front picture artifact yet")
        sections.append(section)
    return sections


def honest_counts(metrics: dict[str, float]) -> str:
    """The parent's counts, each kind apart (greenstudy.study.counts). A parent logged before issue 20 has
    no `trials_trained`: its `trials_complete` included reused copies, so trained = complete - reused."""
    def n(key: str) -> int:
        return int(metrics.get(key, 0))

    if "trials_trained" in metrics:
        reasons = [f"{key.removeprefix('trials_pruned_')} {n(key)}" for key in sorted(metrics)
                   if key.startswith("trials_pruned_") and n(key)]
        pruned = f"pruned {n('trials_pruned')}" + (f" ({', '.join(reasons)})" if reasons else "")
        waited = (f", paused {n('trials_paused')}, continued {n('trials_continued')}"
                  if n("trials_paused") or n("trials_continued") else "")
        return (f"trained {n('trials_trained')}, reused {n('trials_reused')}, {pruned}{waited}, failed {n('trials_failed')}, "
                f"interrupted {n('trials_interrupted')}")
    if "trials_complete" not in metrics:
        return ""
    return (f"trained {n('trials_complete') - n('trials_reused')}, reused {n('trials_reused')}, pruned {n('trials_pruned')}, "
            f"failed {n('trials_failed')} (logged before the honest counts: interrupted trials among the failed)")
