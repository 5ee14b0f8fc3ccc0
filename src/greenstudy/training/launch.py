"""`devices=N` (N > 1): the same entry command again under torchrun, one process per device, and each of
those processes' place in the job.

The command first checks what it can alone (settings, data present — downloaded once, not by N processes),
then runs `python -m torch.distributed.run --standalone --nproc-per-node N <entry> <same arguments>` in a
session of its own and waits. A Ctrl-C or SIGTERM is passed on to torchrun once (torchrun signals every
rank; they stop together at the next agreed batch, rank 0 marks its runs KILLED); a later one is not passed
on (torchrun kills ranks still running 30 s after the first). The command's exit code is rank 0's.
One machine only (`--standalone`); a job across machines is not supported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from greenstudy.config import RunConfig
from greenstudy.errors import ConfigError
from greenstudy.progress import say
from greenstudy.training import distributed
from greenstudy.training.data import locate_dataset
from greenstudy.training.steps import resolve_device

EXIT_FILE_ENV = "GREENSTUDY_DDP_EXIT_FILE"


def wanted(cfg: RunConfig) -> bool:
    """Whether this command must start the several-device job (it is not one of its ranks already)."""
    return cfg.devices > 1 and not distributed.launched()


def check(cfg: RunConfig) -> None:
    """What must hold before N processes start: one `error:` line otherwise."""
    cuda = resolve_device(cfg.device).type == "cuda"
    if cuda and cfg.devices > torch.cuda.device_count():
        raise ConfigError(f"devices={cfg.devices} but {torch.cuda.device_count()} GPUs are visible")
    if cfg.sync_bn and not cuda:
        raise ConfigError("sync_bn=true needs CUDA GPUs (torch's SyncBatchNorm does not run on CPUs)")
    locate_dataset(cfg.dataset, cfg.resolved_data_dir(), cfg.download)  # fetched once, here, not by every rank


def torchrun_command(entry: str, argv: list[str], devices: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}", entry, *argv]


def relaunch(entry: str, argv: list[str], cfg: RunConfig) -> int:
    """Run `entry argv` as a torchrun job of `cfg.devices` processes; rank 0's exit code."""
    check(cfg)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        exit_file = Path(tmp) / "rank0-exit-code"
        env = {**os.environ, distributed.LAUNCHED_ENV: "1", EXIT_FILE_ENV: str(exit_file),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(max(1, cores // cfg.devices))}
        say(f"devices={cfg.devices}: {' '.join(torchrun_command('<entry>', [], cfg.devices))} (one process per device)")
        child = subprocess.Popen(torchrun_command(entry, argv, cfg.devices), env=env, start_new_session=True)
        with _passing_signals_on(child):
            returncode = child.wait()
        text = exit_file.read_text().strip() if exit_file.is_file() else ""
    return int(text) if text else returncode


@contextlib.contextmanager
def _passing_signals_on(child: subprocess.Popen) -> Iterator[None]:
    """SIGINT and SIGTERM go to torchrun, once; the handlers of before are put back after."""
    passed: list[int] = []

    def pass_on(signum: int, frame: object) -> None:
        if passed:
            os.write(2, b"already stopping: every rank ends at its next batch (torchrun ends the rest after 30 s)\n")
            return
        passed.append(signum)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    before = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def job_ranks(cfg: RunConfig) -> Iterator[distributed.Ranks | None]:
    """Inside a rank: the job's process group for the block (None for a one-device command)."""
    if not distributed.launched():
        yield None
        return
    ranks = distributed.start(resolve_device(cfg.device).type)
    try:
        yield ranks
    finally:
        distributed.finish()


def report_exit(code: int) -> int:
    """Rank 0 leaves its exit code for the command that started torchrun (which reports any failure as 1)."""
    path = os.environ.get(EXIT_FILE_ENV)
    if path and distributed.launched() and os.environ.get("RANK") == "0":
        with contextlib.suppress(OSError):
            Path(path).write_text(str(code))
    return code
