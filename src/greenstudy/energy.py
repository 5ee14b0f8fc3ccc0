"""Energy and emissions per phase, from CodeCarbon's OfflineEmissionsTracker (never online).

What it really measures: CodeCarbon reads RAPL counters for the CPU where the kernel exposes them,
NVML for NVIDIA GPUs, and otherwise *estimates*: without RAPL the CPU power is a load-scaled TDP
guess (4 W per thread when the model is unknown) and RAM is a constant (20 W by default), which
then dominates the total. `energy_method()` says which of these happened, and runs tag it.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("CODECARBON_LOG_LEVEL", "warning")

import torch  # noqa: E402

_CPU_METHODS = {
    "intel_rapl": "rapl",
    "windows_emi": "rapl",
    "intel_power_gadget": "power-gadget",
    "cpu_load": "load-scaled-tdp-estimate",
    "constant": "tdp-constant-estimate",
}


@dataclass
class PhaseEnergy:
    """Energy of one tracked phase (kWh), its emissions (kg CO2eq) and duration (s)."""

    name: str
    energy_kwh: float = 0.0
    cpu_kwh: float = 0.0
    gpu_kwh: float = 0.0
    ram_kwh: float = 0.0
    emissions_kg: float = 0.0
    seconds: float = 0.0
    cpu_power_w: float = 0.0
    ram_power_w: float = 0.0
    gpu_nvml_kwh: float | None = None

    def __add__(self, other: PhaseEnergy) -> PhaseEnergy:
        nvml = None
        if self.gpu_nvml_kwh is not None or other.gpu_nvml_kwh is not None:
            nvml = (self.gpu_nvml_kwh or 0.0) + (other.gpu_nvml_kwh or 0.0)
        return PhaseEnergy(
            self.name,
            self.energy_kwh + other.energy_kwh,
            self.cpu_kwh + other.cpu_kwh,
            self.gpu_kwh + other.gpu_kwh,
            self.ram_kwh + other.ram_kwh,
            self.emissions_kg + other.emissions_kg,
            self.seconds + other.seconds,
            max(self.cpu_power_w, other.cpu_power_w),
            max(self.ram_power_w, other.ram_power_w),
            nvml,
        )


def total(phases: list[PhaseEnergy], name: str = "total") -> PhaseEnergy:
    """Sum of phases."""
    result = PhaseEnergy(name)
    for phase in phases:
        result = result + phase
    result.name = name
    return result


class _NvmlCounter:
    """The GPU's own cumulative energy counter (mJ), summed over visible GPUs; absent without CUDA."""

    def __init__(self) -> None:
        self.handles: list[object] = []
        if not torch.cuda.is_available():
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.read()
        except Exception:  # noqa: BLE001 - no NVML or no energy counter on this GPU: no cross-check
            self.handles = []

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def read(self) -> float:
        import pynvml

        return sum(pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles) / 3.6e9  # mJ -> kWh


@dataclass
class EnergyMeter:
    """One CodeCarbon tracker for a run; `phase(name)` measures a block of work."""

    country_iso_code: str = "USA"
    cpu_power_w: float | None = None
    ram_power_w: float | None = None
    measure_power_secs: float = 15.0
    phases: list[PhaseEnergy] = field(default_factory=list)

    def __post_init__(self) -> None:
        from codecarbon import OfflineEmissionsTracker

        self._tracker = OfflineEmissionsTracker(
            country_iso_code=self.country_iso_code,
            output_methods=[],
            log_level="warning",
            measure_power_secs=self.measure_power_secs,
            force_cpu_power=self.cpu_power_w,
            force_ram_power=self.ram_power_w,
            allow_multiple_runs=True,
            project_name="greenstudy",
        )
        self._nvml = _NvmlCounter()
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._tracker.start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self._tracker.stop()
            self._started = False

    @contextmanager
    def phase(self, name: str) -> Iterator[PhaseEnergy]:
        """Measure the enclosed block; the yielded PhaseEnergy is filled in when it ends."""
        self.start()
        result = PhaseEnergy(name)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        nvml_start = self._nvml.read() if self._nvml.available else None
        self._tracker.start_task(name)
        began = time.perf_counter()
        try:
            yield result
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            data = self._tracker.stop_task(name)
            result.seconds = time.perf_counter() - began
            if data is not None:
                result.energy_kwh = float(data.energy_consumed)
                result.cpu_kwh = float(data.cpu_energy)
                result.gpu_kwh = float(data.gpu_energy)
                result.ram_kwh = float(data.ram_energy)
                result.emissions_kg = float(data.emissions)
                result.cpu_power_w = float(data.cpu_power)
                result.ram_power_w = float(data.ram_power)
            if nvml_start is not None:
                result.gpu_nvml_kwh = self._nvml.read() - nvml_start
            self.phases.append(result)

    def energy_method(self) -> str:
        """How CodeCarbon obtained each component, e.g. `cpu=rapl, gpu=nvml, ram=constant-estimate`."""
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
        return f"cpu={cpu}, gpu={gpu}, ram={ram}"

    def hardware(self) -> dict[str, str]:
        """CPU and GPU model names as CodeCarbon saw them."""
        self.start()
        conf = self._tracker._conf
        return {"cpu_model": str(conf.get("cpu_model") or "unknown"), "gpu_model": str(conf.get("gpu_model") or "none")}

    @property
    def codecarbon_version(self) -> str:
        import codecarbon

        return codecarbon.__version__

    def write_csv(self, path: str | Path, since: int = 0) -> Path:
        """The phases measured from index `since` on, one CSV row each."""
        path = Path(path)
        fields = list(asdict(PhaseEnergy("x")).keys())
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            for phase in self.phases[since:]:
                writer.writerow(asdict(phase))
        return path
