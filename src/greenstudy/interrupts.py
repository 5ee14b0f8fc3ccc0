"""Ctrl-C and SIGTERM stop a run at a safe point, never in the middle of a tracking-store write.

Under `run_cli` the first signal is only noted; the next batch (`stop_if_interrupted`, called by every
batch loop and by the measurement-lock wait) raises KeyboardInterrupt there, so the run is marked
KILLED with a consistent store and a usable checkpoint. A second signal raises at once. Without
`install` (library use, tests) Python's default Ctrl-C behaviour is untouched.
"""

from __future__ import annotations

import signal
import sys

_pending: int | None = None
_installed = False


def _on_signal(signum: int, frame: object) -> None:
    global _pending
    if _pending is not None:  # the second one: stop now
        raise KeyboardInterrupt(f"signal {signum}")
    _pending = signum
    print(f"interrupt (signal {signum}): stopping after the current batch; again to stop now",
          file=sys.stderr, flush=True)


def install() -> None:
    """Defer SIGINT and SIGTERM (what `mlflow run` sends when cancelled) to the next safe point."""
    global _installed, _pending
    _pending = None
    _installed = True
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def stop_if_interrupted() -> None:
    """A safe point: raise the KeyboardInterrupt a deferred signal asked for."""
    global _pending
    if _pending is not None:
        signum, _pending = _pending, None
        raise KeyboardInterrupt(f"signal {signum}")
