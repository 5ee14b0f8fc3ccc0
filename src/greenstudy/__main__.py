"""The package command line: `greenstudy <command> <subcommand> ...` (also `python -m greenstudy`).

Commands register themselves in `COMMANDS`: a function that adds its subparser(s) and sets
`handler` (args -> exit code). `study show` prints an Optuna study's Pareto front as a table;
`store init` creates an MLflow store (and experiments) once, before parallel runs use it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from greenstudy.cli import one_line_parser, run_cli


def _study_show(args: argparse.Namespace) -> int:
    from greenstudy.study.front import study_summary_lines
    from greenstudy.study.storage import default_storage_url, load_existing_study

    storage = default_storage_url() if args.storage == "auto" else args.storage
    study = load_existing_study(storage, args.study_name)
    print("\n".join(study_summary_lines(study)))
    return 0


def _add_study(commands: argparse._SubParsersAction) -> None:
    study = commands.add_parser("study", help="inspect Optuna studies made by the `tune` entry point")
    actions = study.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print a study's trials (pruned and failed with their reasons), energy, hypervolume and front")
    show.add_argument("--storage", default="auto", help="SQLAlchemy URL; auto: optuna.db next to the MLflow store")
    show.add_argument("--study-name", default=None, help="needed when the storage holds several studies")
    show.set_defaults(handler=_study_show)


def _store_init(args: argparse.Namespace) -> int:
    import mlflow

    from greenstudy.errors import ConfigError
    from greenstudy.store import prepare_store

    uri = args.uri or mlflow.get_tracking_uri()
    try:
        ready = prepare_store(uri, tuple(args.experiment))
    except Exception as exc:  # MLflow/SQLAlchemy: unknown scheme, unwritable folder, unreachable server
        raise ConfigError(f"cannot prepare MLflow store {uri}: {str(exc).strip().splitlines()[0]}") from exc
    print(ready.line())
    return 0


def _add_store(commands: argparse._SubParsersAction) -> None:
    store = commands.add_parser("store", help="MLflow tracking stores")
    actions = store.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="create and migrate a store once (under a lock), before parallel runs use it")
    init.add_argument("uri", nargs="?", default=None, help="tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    init.add_argument("--experiment", action="append", default=[], metavar="NAME",
                      help="also create this experiment (repeatable): for parallel `mlflow run --experiment-name NAME`")
    init.set_defaults(handler=_store_init)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_study, _add_store]


def build_parser() -> argparse.ArgumentParser:
    parser = one_line_parser("greenstudy: what image classifiers cost the planet.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return run_cli(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
