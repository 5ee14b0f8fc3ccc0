"""Ctrl-C and SIGTERM stop a run at a safe point, never in the middle of a tracking-store write.

Under `run_cli` the first signal is only noted; the next batch (`stop_if_interrupted`, called by every
batch loop and by the measurement-lock wait) raises KeyboardInterrupt there, so the run is marked
KILLED with a consistent store and a usable checkpoint. A second signal a second or more later
raises at once; one sooner is the same request (a Ctrl-C on `mlflow run` delivers SIGINT to the
job and then `mlflow run` sends it SIGTERM). Without `install` (library use, tests) Python's
default Ctrl-C behaviour is untouched.
"""

from __future__ import annotations

import signal
import sys
import time

FORCE_AFTER_S = 1.0
_pending: int | None = None
_pending_since = 0.0


def _on_signal(signum: int, frame: object) -> None:
    global _pending, _pending_since
    if _pending is not None:
        if time.monotonic() - _pending_since >= FORCE_AFTER_S:  # asked again: stop now
            raise KeyboardInterrupt(f"signal {signum}")
        return
    _pending, _pending_since = signum, time.monotonic()
    print(f"interrupt (signal {signum}): stopping after the current batch; again to stop now",
          file=sys.stderr, flush=True)


def install() -> None:
    """Defer SIGINT and SIGTERM (what `mlflow run` sends when cancelled) to the next safe point."""
    global _pending
    _pending = None
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def stop_if_interrupted() -> None:
    """A safe point: raise the KeyboardInterrupt a deferred signal asked for."""
    global _pending
    if _pending is not None:
        signum, _pending = _pending, None
        raise KeyboardInterrupt(f"signal {signum}")
