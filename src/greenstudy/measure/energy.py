"""Energy and emissions per phase, from CodeCarbon's OfflineEmissionsTracker (never online).

What it really measures: CodeCarbon reads RAPL counters for the CPU where the kernel exposes them,
NVML for NVIDIA GPUs, and otherwise *estimates*: without RAPL the CPU power is a load-scaled TDP
guess (4 W per thread when the model is unknown) and RAM is a constant (20 W by default), which
then dominates the total. `energy_method()` says which of these happened, and runs tag it.

CodeCarbon measures the whole machine. So that two runs on one machine never both claim the same
joules, a measured run holds a machine-wide lock (`machine_lock`) while it measures: a second run
waits for it, saying so once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")  # its repeated warnings become one energy_method line

import torch  # noqa: E402

from greenstudy.interrupts import stop_if_interrupted  # noqa: E402
from greenstudy.measure.ledger import MissingEnergyReading, PhaseEnergy, check_phase  # noqa: E402

_CPU_METHODS = {
    "intel_rapl": "rapl",
    "windows_emi": "rapl",
    "intel_power_gadget": "power-gadget",
    "cpu_load": "load-scaled-tdp-estimate",
    "constant": "tdp-constant-estimate",
}
LOCK_ENV = "GREENSTUDY_ENERGY_LOCK"
CUT_TRAINING_KINDS = ("train", "val", "setup")


def lock_path() -> Path:
    """The machine-wide lock file: one fixed path for every process and user on the machine (not
    $TMPDIR, which differs between jobs); GREENSTUDY_ENERGY_LOCK overrides it (tests use their own)."""
    return Path(os.environ.get(LOCK_ENV) or "/tmp/greenstudy-energy.lock")


def _open_lock(path: Path) -> int:
    """A descriptor flock can use, whoever created the file (flock needs no write access)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY)
    with contextlib.suppress(PermissionError):
        os.fchmod(fd, 0o666)
    return fd


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def machine_lock(label: str) -> Iterator[None]:
    """Hold the machine's measurement lock for the enclosed block; wait (one line on stderr) while
    another measured run holds it. The lock dies with its process (flock), so a crash frees it."""
    path = lock_path()
    fd = _open_lock(path)
    held = False
    try:
        if not _try_lock(fd):
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            print(f"energy: waiting for {holder} to finish measuring on this machine ({path})", file=sys.stderr, flush=True)
            while not _try_lock(fd):
                stop_if_interrupted()
                time.sleep(0.2)
        held = True
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} ({label})".encode(), 0)
        yield
    finally:
        if held:  # an interrupted wait leaves the holder's label alone
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class _NvmlCounter:
    """The job's GPUs' cumulative energy counters (mJ), read through NVML and summed; absent off CUDA."""

    def __init__(self, gpu_ids: list[int]) -> None:
        self.handles: list[object] = []
        if not gpu_ids:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(index) for index in gpu_ids]
            self.read()
        except Exception:  # noqa: BLE001 - no NVML or no energy counter on a GPU: no cross-check
            self.handles = []

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def read(self) -> float:
        import pynvml

        return sum(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) for handle in self.handles) / 3.6e9  # mJ -> kWh


def ranks_on_this_machine() -> int:
    """Processes of this job on this machine: torchrun's LOCAL_WORLD_SIZE (1 outside torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))


def job_gpu_ids(device: torch.device) -> list[int]:
    """The GPUs the job uses on this machine, by the physical index NVML and CodeCarbon know them by: the
    run's own GPU, or under torchrun every local rank's (cuda:0 .. cuda:LOCAL_WORLD_SIZE-1). None on a CPU."""
    if device.type != "cuda":
        return []
    local = ranks_on_this_machine()
    if local > 1:
        return [_gpu_index(torch.device("cuda", index)) for index in range(local)]
    return [_gpu_index(device)]


def _gpu_index(device: torch.device) -> int:
    """The physical index NVML and CodeCarbon know a GPU by (CUDA_VISIBLE_DEVICES mapped)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [part.strip() for part in visible.split(",") if part.strip()]
    if ids and index < len(ids) and ids[index].isdigit():
        return int(ids[index])
    return index


class EnergyMeter:
    """One CodeCarbon tracker for a process; `phase(name, kind)` measures a block of work. In a job of
    several processes on one machine (torchrun), only rank 0 makes one: it measures every GPU of the job
    (CodeCarbon with exactly those `gpu_ids`, NVML on each, summed) and the CPU and RAM once; the other
    ranks measure nothing (CodeCarbon issue #544: a tracker per rank would count the machine once per rank)."""

    def __init__(
        self, device: torch.device, country_iso_code: str = "USA",
        cpu_power_w: float | None = None, ram_power_w: float | None = None,
    ) -> None:
        from codecarbon import OfflineEmissionsTracker

        self.device = device
        self.cpu_power_w = cpu_power_w
        self.ram_power_w = ram_power_w
        self.gpu_ids = job_gpu_ids(device)  # a CPU run charges no GPU
        gpu_ids = self.gpu_ids
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=country_iso_code,
            output_methods=[],
            log_level="error",
            gpu_ids=gpu_ids,
            force_cpu_power=cpu_power_w,
            force_ram_power=ram_power_w,
            allow_multiple_runs=True,
            project_name="greenstudy",
        )
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self._nvml = _NvmlCounter(gpu_ids)
        self._started = False
        self._method = ""
        if ranks_on_this_machine() > 1:
            what = f"GPUs {gpu_ids}" if gpu_ids else f"{ranks_on_this_machine()} CPU processes"
            print(f"energy: rank {os.environ.get('RANK', '0')} measures this machine once: {what}, CPU and RAM once; "
                  "the other ranks measure nothing", file=sys.stderr, flush=True)

    def start(self) -> None:
        if not self._started:
            self._tracker.start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self._tracker.stop()
            self._started = False

    def _sync(self) -> None:
        if self.device.type == "cuda":  # the job's GPUs that this process drives (the others sync their own)
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, ledger: list[PhaseEnergy], name: str, kind: str, epoch: int = 0,
              devices: int = 1) -> Iterator[PhaseEnergy]:
        """Measure the enclosed block and append it to `ledger` when it ends (the yielded PhaseEnergy is
        filled in then). Training work cut short by Ctrl-C is recorded as kind `interrupted` (test and
        inference keep their kind), flagged `cut_short`; a missing reading raises MissingEnergyReading naming
        the phase, never a silent 0 — unless the block already failed, whose error then wins. `devices`: how
        many devices worked in it (data-parallel training; the ledger says so)."""
        self.start()
        result = PhaseEnergy(name, kind, epoch, method=self.energy_method(), devices=devices)
        self._sync()
        nvml_start = self._nvml.read() if self._nvml.available else None
        self._tracker.start_task(name)
        result.started_at = time.time()
        began = time.perf_counter()
        failure: BaseException | None = None
        try:
            yield result
        except KeyboardInterrupt as exc:
            result.cut_short = True
            if kind in CUT_TRAINING_KINDS:  # spent, but no finished epoch; a cut test/inference keeps its kind
                result.kind = "interrupted"
            failure = exc
            raise
        except BaseException as exc:
            failure = exc
            raise
        finally:
            try:
                self._close_phase(result, ledger, name, began, nvml_start)
            except Exception as exc:
                if failure is None:
                    raise
                # the signal or error that ended the phase is what the caller must see (Ctrl-C stays KILLED)
                print(f"energy: phase {name} lost its reading ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)

    def _close_phase(self, result: PhaseEnergy, ledger: list[PhaseEnergy], name: str, began: float,
                     nvml_start: float | None) -> None:
        """Stop the CodeCarbon task and append its reading to `ledger`; a missing reading raises."""
        self._sync()
        result.seconds = time.perf_counter() - began
        data = self._tracker.stop_task(name)
        # 3.3.2 leaves a stopped task marked active: forget it, or tracker.stop() "stops" every past
        # task again and logs an ERROR per phase (and a later phase of the same name would collide)
        self._tracker._tasks.pop(name, None)
        if data is None or not data.energy_consumed or data.energy_consumed <= 0:
            # CodeCarbon 3.3.2 reports a *zero delta* (logged, not raised) for a task it lost track of
            raise MissingEnergyReading(f"phase {name}: CodeCarbon returned no energy reading ({'none' if data is None else '0 kWh'})")
        result.energy_kwh = float(data.energy_consumed)
        result.cpu_kwh = float(data.cpu_energy)
        result.gpu_kwh = float(data.gpu_energy)
        result.ram_kwh = float(data.ram_energy)
        result.emissions_kg = float(data.emissions)
        result.codecarbon_seconds = float(data.duration)
        if nvml_start is not None:
            result.gpu_nvml_kwh = self._nvml.read() - nvml_start
        check_phase(result)
        ledger.append(result)

    def energy_method(self) -> str:
        """How CodeCarbon obtained each component, e.g. `cpu=rapl, gpu=nvml, ram=constant-estimate`."""
        if self._method:
            return self._method
        self.start()
        cpu = gpu = "none"
        for hardware in self._tracker._hardware:  # CodeCarbon exposes no public accessor for this
            kind = type(hardware).__name__
            if kind == "CPU":
                cpu = _CPU_METHODS.get(getattr(hardware, "_mode", ""), str(getattr(hardware, "_mode", "unknown")))
            elif kind == "GPU":
                gpu = "nvml"
        if self.cpu_power_w is not None:
            cpu = f"user-forced-{self.cpu_power_w:g}W"
        ram = f"user-forced-{self.ram_power_w:g}W" if self.ram_power_w is not None else "constant-estimate"
        self._method = f"cpu={cpu}, gpu={gpu}, ram={ram}"
        return self._method

    def hardware(self) -> dict[str, str]:
        """CPU and GPU model names as CodeCarbon saw them."""
        self.start()
        conf = self._tracker._conf
        return {"cpu_model": str(conf.get("cpu_model") or "unknown"), "gpu_model": str(conf.get("gpu_model") or "none")}

    @property
    def codecarbon_version(self) -> str:
        import codecarbon

        return codecarbon.__version__
