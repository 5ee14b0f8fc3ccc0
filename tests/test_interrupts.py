"""Deferred interrupts: a signal is noted and raised at the next safe point; a quick second one (SIGINT
then `mlflow run`'s SIGTERM) is the same request; one a second later stops at once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from greenstudy import interrupts


@pytest.fixture
def deferred() -> Iterator[None]:
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    interrupts.install()
    yield
    signal.signal(signal.SIGINT, saved[0])
    signal.signal(signal.SIGTERM, saved[1])
    interrupts.reset()


def test_signal_waits_for_the_next_safe_point(deferred: None) -> None:
    interrupts.stop_if_interrupted()  # nothing pending: a no-op
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)  # within a second: the same request, not "stop now"
    with pytest.raises(KeyboardInterrupt, match="signal 2"):
        interrupts.stop_if_interrupted()
    interrupts.stop_if_interrupted()  # raised once
    assert not interrupts.pending()


def test_asking_again_later_stops_at_once(deferred: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interrupts, "FORCE_AFTER_S", 0.05)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
    with pytest.raises(KeyboardInterrupt, match="signal 2"):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handler runs here, in the main thread
    assert not interrupts.pending(), "a forced stop is not raised a second time"
