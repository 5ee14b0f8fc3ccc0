"""Progress a person can follow: one line per event on stderr, never inside a timed step."""

from __future__ import annotations

import sys
import time


def say(message: str) -> None:
    """One progress line on stderr, flushed at once."""
    print(message, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """`75` -> `1m15s`; under a minute `12.3s`."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class EpochProgress:
    """Prints `[model/variant] epoch k/N ...` lines with the time left estimated from the epochs so far."""

    def __init__(self, label: str, epochs: int, first_epoch: int = 1) -> None:
        self.label = label
        self.epochs = epochs
        self.first_epoch = first_epoch
        self.started = time.perf_counter()

    def epoch(self, epoch: int, metrics: dict[str, float], cumulative_kwh: float) -> None:
        done = epoch - self.first_epoch + 1
        elapsed = time.perf_counter() - self.started
        left = elapsed / done * (self.epochs - epoch)
        say(
            f"[{self.label}] epoch {epoch}/{self.epochs}  train_loss {metrics['train_loss']:.3f}  "
            f"val_acc1 {metrics['val_acc1']:.2f}%  {duration(metrics['epoch_seconds'])}  "
            f"{cumulative_kwh * 1000:.3f} Wh so far  ~{duration(left)} left"
        )
