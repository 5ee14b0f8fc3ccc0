"""Regenerate the whole `results/` folder from MLflow: `python -m greenstudy.results --experiment NAME --out results`
(or `make results EXPERIMENT=NAME`). Tracking URI from MLFLOW_TRACKING_URI.

Writes README.md (set-up, the commands rebuilt from the runs' params, the variant table per model, poster vs
greenstudy, the batch-size study, runs still in progress with their resume command, skipped and failed runs),
comparison.csv, pareto.csv (with a study), accuracy_vs_energy.png, learning_curves.png and the study's front
picture. Every number is read from a run named by its MLflow run id. Pure table logic: greenstudy.results.tables."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Experiment, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from greenstudy.cli import one_line_parser, run_cli
from greenstudy.errors import ConfigError
from greenstudy.report.comparison import ROW_COLUMNS, RunPoint, Skipped, classify, comparison_rows
from greenstudy.report.entry import fetch_curves, fetch_runs, resolve_experiments
from greenstudy.report.plots import model_colours, plot_accuracy_vs_energy, plot_learning_curves
from greenstudy.results.study import StudySection, study_sections
from greenstudy.results.tables import (
    LIFECYCLE_MARK,
    POSTER_HEADERS,
    THRESHOLDS,
    RunView,
    command_line,
    data_dir_of,
    energy_to,
    make_command,
    markdown,
    pct,
    poster_caveats,
    poster_rows,
    safe_uri,
    variant_table,
    wh,
    when,
)
from greenstudy.runs.params import main_parser
from greenstudy.tracking import ensure_tracking_reachable, write_dict_csv

EXTRA_COLUMNS = ("test_acc5", "epochs_run", "train_seconds", *(f"energy_to_{t:g}_val_kwh" for t in THRESHOLDS),
                 "fp32_cpu_infer_energy_wh_per_1k_images", "fp32_cpu_infer_images_per_second")
SETUP_TAGS = ("cpu_model", "cpu_capability", "cpu_cores", "device", "gpu_model", "energy_method", "codecarbon_version",
              "data_source")
CORE_TAGS = ("cpu_cores", "cpu_count", "cpu_threads", "torch_threads")  # whichever the runs carry
UNFINISHED = ("RUNNING", "KILLED")
CONFIG_NOT_PARAMS = ("experiment", "extra_tags", "resume")  # RunConfig fields that are no `-P` of the main entry point
RESUME_ALWAYS = ("model", "variants", "epochs", "resume", "checkpoint_dir")


@dataclass
class Collected:
    """Everything read from the experiment(s)."""

    experiments: list[Experiment]
    runs: list[Run]
    views: list[RunView]  # the table's runs: latest per (model, variant, config)
    rows: list[dict[str, object]]
    skipped: list[Skipped]


def history(client: MlflowClient, run_id: str, name: str) -> dict[int, float]:
    """A per-epoch metric as {step: value}; a step logged twice keeps its latest value."""
    values = {}
    for m in sorted(client.get_metric_history(run_id, name), key=lambda m: (m.timestamp, m.step)):
        values[m.step] = m.value
    return values


def view_of(client: MlflowClient, point: RunPoint, config: str = "") -> RunView:
    """A run with its per-epoch val_acc1, cumulative_energy_kwh and train_acc1."""
    return RunView(point, *(history(client, point.run_id, name) for name in ("val_acc1", "cumulative_energy_kwh", "train_acc1")),
                   config=config)


def collect(client: MlflowClient, names: Sequence[str]) -> Collected:
    experiments = [e for name in names for e in resolve_experiments(client, name)]
    runs = fetch_runs(client, [e.experiment_id for e in experiments], "", [])
    points, skipped = classify(runs)
    rows = comparison_rows(points, "latest")
    by_id = {p.run_id: p for p in points}
    views = [view_of(client, by_id[str(r["run_id"])], str(r["config"])) for r in rows]
    for row, view in zip(rows, views, strict=True):
        row.update({c: view.metrics.get(c, "") for c in EXTRA_COLUMNS if not c.startswith("energy_to_")})
        for t in THRESHOLDS:
            reached = energy_to(view, t)
            row[f"energy_to_{t:g}_val_kwh"] = "" if reached is None else reached
    return Collected(experiments, runs, views, rows, skipped)


# ---------------------------------------------------------------- README sections


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def setup_value(tags: dict[str, str], name: str) -> str:
    names = CORE_TAGS if name == "cpu_cores" else (name,)
    return next((tags[n] for n in names if tags.get(n)), "not logged")


def setup_section(c: Collected) -> list[str]:
    shown = [v.point for v in c.views]
    setups: dict[tuple[str, ...], list[str]] = {}
    for p in shown:
        setups.setdefault(tuple(setup_value(p.tags, t) for t in SETUP_TAGS), []).append(p.run_id)
    table = markdown([*SETUP_TAGS, "runs"], [[*key, ", ".join(ids)] for key, ids in setups.items()])
    ids = {p.run_id for p in shown}
    children = [r for r in c.runs if r.info.run_id in ids]
    ids |= {p.tags.get("mlflow.parentRunId", "") for p in shown}  # `mlflow run` tags the commit on the parent
    commits = sorted({r.data.tags.get("mlflow.source.git.commit", "") for r in c.runs if r.info.run_id in ids} - {""})
    return [
        "## Set-up", "",
        f"- runs dated {when(min((r.info.start_time or 0 for r in children), default=0))} to "
        f"{when(max((r.info.end_time or 0 for r in children), default=0))}",
        f"- code commit of the runs: {', '.join(commits) if commits else 'not recorded (started outside `mlflow run`)'}; "
        f"this folder regenerated at commit {git_commit()}",
        f"- cpu_cores: the runs' tag {' / '.join(CORE_TAGS)}; `not logged` where they carry none", "", table,
    ]


def command_section(client: MlflowClient, c: Collected) -> list[str]:
    lines = ["## Commands that produced these runs", "",
             "Rebuilt from each parent run's and its children's params (parameters at their defaults omitted):", "", "```"]
    exp_names = {e.experiment_id: e.name for e in c.experiments}
    for parent_id in dict.fromkeys(v.point.tags.get("mlflow.parentRunId", "") for v in c.views):
        if not parent_id:
            continue
        parent = client.get_run(parent_id)
        params, experiment = main_params(client, parent), exp_names.get(parent.info.experiment_id, "?")
        lines += [f"# parent {parent_id}", command_line(main_parser(), params, experiment)]
        sittings = [r for r in c.runs if r.data.tags.get("resumes") == parent_id]  # `mlflow run` sittings that resumed it
        if sittings:
            lines += [f"# interrupted, then resumed in place {len(sittings)} time(s) with",
                      command_line(main_parser(), {**params, "resume": parent_id}, experiment, always=RESUME_ALWAYS)]
    return [*lines, "```"]


def main_params(client: MlflowClient, parent: Run) -> dict[str, str]:
    """The `main` parameters of a parent, later sources winning: its children's contract params, the RunConfig
    a finished child saved (config.json: every parameter as given), the parent's own params (every entry-point
    parameter under `mlflow run`); data_dir from the data_source tag where none of them has it."""
    params: dict[str, str] = {}
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    children.sort(key=lambda r: r.data.tags.get("variant") != "baseline")
    for child in children:
        params.update({k: v for k, v in child.data.params.items() if k != "variant" and k not in params})
    finished = [r for r in children if r.info.status == "FINISHED"]
    params.update(saved_config(client, finished[0].info.run_id) if finished else {})
    params.update(parent.data.params)
    if "data_dir" not in params and data_dir_of(parent.data.tags):
        params["data_dir"] = data_dir_of(parent.data.tags)
    return params


def saved_config(client: MlflowClient, run_id: str) -> dict[str, str]:
    """config.json of a finished child as -P values ({} where it has none); not the sitting's resume id."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            config = json.loads(Path(client.download_artifacts(run_id, "config.json", tmp)).read_text())
        except (MlflowException, OSError, ValueError):
            return {}
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in config.items()
            if v is not None and k not in CONFIG_NOT_PARAMS}


def variants_section(c: Collected) -> list[str]:
    lines = ["## Variants per model", "",
             f"Energy to a validation top-1: the run's `cumulative_energy_kwh` (train + validation) at the first epoch "
             f"whose `val_acc1` reaches it; {LIFECYCLE_MARK} = a pruned run's fine-tuning plus its upstream baseline "
             "(`upstream_energy_kwh`), i.e. lifecycle. Quantized runs have no epochs of their own. Lifecycle = upstream + "
             "own; own = train + val + setup + test (not inference). Exact values: comparison.csv.", ""]
    for model in dict.fromkeys(v.point.model for v in c.views):
        lines += [f"### {model}", "", variant_table([v for v in c.views if v.point.model == model])]
    return lines


def poster_section(c: Collected) -> list[str]:
    return ["## Poster vs greenstudy", "", markdown(POSTER_HEADERS, poster_rows(c.views)), "Caveats:", "",
            *(f"- {note}" for note in poster_caveats(c.views)), ""]


def unfinished_runs(c: Collected) -> list[Run]:
    """Variant runs RUNNING or KILLED with a checkpoint (not skipped): they can be resumed."""
    return [r for r in c.runs if r.info.status in UNFINISHED and r.data.tags.get("kind") == "variant"
            and r.data.tags.get("checkpoint") and not r.data.tags.get("skipped")]


def in_progress_ids(c: Collected) -> set[str]:
    return {r.info.run_id for r in unfinished_runs(c)}


def progress_section(client: MlflowClient, c: Collected) -> list[str]:
    """Unfinished runs and the command that resumes them in place."""
    unfinished = unfinished_runs(c)
    lines = ["## In progress", ""]
    if not unfinished:
        return [*lines, "No unfinished run with a checkpoint.", ""]
    rows, commands = [], {}
    for run in unfinished:
        acc = history(client, run.info.run_id, "val_acc1")
        spent = history(client, run.info.run_id, "cumulative_energy_kwh")
        last = max(acc) if acc else None
        rows.append([run.data.tags.get("model", "?"), run.data.tags.get("variant", "?"), run.info.run_id, run.info.status,
                     f"{last} of {run.data.params.get('epochs', '?')}" if last else "0",
                     pct(acc[last]) if last else "–", wh(spent.get(last)) if last else "–"])
        parent_id = run.data.tags.get("mlflow.parentRunId", "")
        if parent_id and parent_id not in commands:
            parent = client.get_run(parent_id)
            params = {**main_params(client, parent), "resume": parent_id}
            params.setdefault("checkpoint_dir", str(Path(run.data.tags["checkpoint"]).parent.parent))
            experiment = client.get_experiment(parent.info.experiment_id).name
            commands[parent_id] = command_line(main_parser(), params, experiment, always=RESUME_ALWAYS)
    table = markdown(("model", "variant", "run id", "status", "epochs done", "last val top-1 %", "Wh so far"), rows)
    return [*lines, table, "Resume in place (same params, same checkpoint_dir; a RUNNING run may still be going: "
            "resume it only once its process has stopped):", "", "```",
            *(f"# parent {pid}\n{cmd}" for pid, cmd in commands.items()), "```", ""]


def skipped_section(c: Collected) -> list[str]:
    rows = [[s.model, s.variant, s.run_id, s.status, s.reason] for s in c.skipped if s.run_id not in in_progress_ids(c)]
    return ["## Skipped and failed runs", "", markdown(("model", "variant", "run id", "status", "reason"), rows)
            if rows else "none", ""]


def study_section(sections: Sequence[StudySection]) -> list[str]:
    lines = ["## Batch-size study", ""]
    if not sections:
        return [*lines, "No study parent run (tag kind=study) in this experiment.", ""]
    for s in sections:
        lines += s.markdown()
    return lines


def pictures_section() -> list[str]:
    return ["## Pictures", "", "![accuracy vs lifecycle energy](accuracy_vs_energy.png)", "",
            "![validation accuracy vs cumulative energy](learning_curves.png)", ""]


# ---------------------------------------------------------------- writing the folder


def regenerate(experiments: Sequence[str], out: Path, study_name: str = "", storage: str = "") -> Path:
    """Rebuild `out` (README.md, CSVs, PNGs) from the experiment(s); returns the README path."""
    if not experiments:
        raise ConfigError("name at least one experiment (--experiment)")
    ensure_tracking_reachable()
    client = MlflowClient()
    c = collect(client, experiments)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.png"), *out.glob("*.csv")]:
        old.unlink()
    columns = [*ROW_COLUMNS, *EXTRA_COLUMNS]
    write_dict_csv(c.rows, columns, out / "comparison.csv")
    shown = [v.point for v in c.views]
    plot_accuracy_vs_energy(shown, out / "accuracy_vs_energy.png")
    plot_learning_curves(fetch_curves(client, shown), out / "learning_curves.png", model_colours(shown))
    with tempfile.TemporaryDirectory() as tmp:
        sections = study_sections(client, c.runs, Path(tmp), out, study_name, storage)
    names = ", ".join(f"`{e.name}`" for e in c.experiments)
    parts = [
        "# greenstudy results", "",
        f"Generated {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} by `{make_command(experiments, study_name, storage)}` "
        f"(= `python -m greenstudy.results`) from MLflow experiment(s) {names} at `{safe_uri(mlflow.get_tracking_uri())}`. "
        "Do not edit by hand: every number comes from the MLflow run whose id is in its row.", "",
        *setup_section(c), "", *command_section(client, c), "", *variants_section(c), *poster_section(c),
        *study_section(sections), *pictures_section(), *progress_section(client, c), *skipped_section(c),
    ]
    readme = out / "README.md"
    readme.write_text("\n".join(parts).rstrip() + "\n")
    return readme


def results_parser() -> argparse.ArgumentParser:
    parser = one_line_parser("Regenerate results/ (README.md, CSVs, PNGs) from MLflow experiment(s).")
    parser.add_argument("--experiment", action="append", required=True, help="experiment name (repeat for several)")
    parser.add_argument("--out", default="results", help="folder to (re)write")
    parser.add_argument("--study-name", default="", help="only this Optuna study (default: every study parent run)")
    parser.add_argument("--storage", default="", help="Optuna storage to read the front from (default: the artifact)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = results_parser().parse_args(argv)

    def job() -> int:
        names = [n.strip() for text in args.experiment for n in text.split(",") if n.strip()]
        readme = regenerate(names, Path(args.out), args.study_name, args.storage)
        print(f"wrote {readme} and {len(list(readme.parent.iterdir())) - 1} other files")
        return 0

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
