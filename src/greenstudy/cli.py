"""Shared plumbing for the entry scripts: one-line errors, exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from greenstudy import interrupts
from greenstudy.errors import GreenstudyError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def run_cli(job: Callable[[], int], defer_interrupts: bool = False) -> int:
    """Run `job`, turning user errors into one clear line on stderr, and Ctrl-C or SIGTERM (what
    `mlflow run` sends when it is cancelled) into KILLED runs and exit 130. With `defer_interrupts`
    (training jobs) the signal takes effect at the next safe point (greenstudy.interrupts), so that
    no tracking write is cut in half."""
    if defer_interrupts:
        interrupts.install()
    try:
        code = job()
        if interrupts.pending():
            print("interrupt came after the last batch: the work had finished and is logged", file=sys.stderr)
        return code
    except GreenstudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: the run is marked KILLED with what it had logged", file=sys.stderr)
        return EXIT_INTERRUPTED


def one_line_parser(description: str) -> argparse.ArgumentParser:
    """An ArgumentParser whose errors are one line (`error: ...`) and exit 2."""
    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT)

    return _Parser(description=description)
