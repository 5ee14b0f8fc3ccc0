"""Ctrl-C and SIGTERM stop a training job at a safe point, never in the middle of a tracking-store write.

With `install` (the `main` and `tune` entries) the first signal is only noted; the next safe point
(`stop_if_interrupted`: every batch loop, the measurement-lock wait, the step before each variant and
after each study trial) raises KeyboardInterrupt there, so the runs are marked KILLED with a
consistent store and a usable checkpoint. A signal within a second of the first is the same request
(a Ctrl-C on `mlflow run` delivers SIGINT to the job, then `mlflow run` sends it SIGTERM); one a
second or more later raises at once, wherever the job is. Without `install` (library use, tests,
the report) Python's default Ctrl-C behaviour is untouched.
"""

from __future__ import annotations

import os
import signal
import time

FORCE_AFTER_S = 1.0
_first_signal_at: float | None = None  # when the current stop request began
_pending: int | None = None  # a signal not yet raised at a safe point


def _on_signal(signum: int, frame: object) -> None:
    global _first_signal_at, _pending
    now = time.monotonic()
    if _first_signal_at is not None:
        if now - _first_signal_at >= FORCE_AFTER_S:  # asked again: stop now
            _pending = None
            raise KeyboardInterrupt(f"signal {signum}")
        return
    _first_signal_at, _pending = now, signum
    # os.write, not print: a handler may run while the main thread is inside a print to stderr
    os.write(2, f"interrupt (signal {signum}): stopping after the current batch; again to stop now\n".encode())


def install() -> None:
    """Defer SIGINT and SIGTERM (what `mlflow run` sends when cancelled) to the next safe point."""
    reset()
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def reset() -> None:
    """Forget any noted signal (a new job, or a test's teardown)."""
    global _first_signal_at, _pending
    _first_signal_at, _pending = None, None


def pending() -> bool:
    """Whether a noted signal has not been raised yet (it came after the last safe point)."""
    return _pending is not None


def stop_if_interrupted() -> None:
    """A safe point: raise the KeyboardInterrupt a deferred signal asked for."""
    global _pending
    if _pending is not None:
        signum, _pending = _pending, None
        raise KeyboardInterrupt(f"signal {signum}")
