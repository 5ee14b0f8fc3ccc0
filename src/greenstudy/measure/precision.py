"""What the hardware runs natively, and the precision each variant uses there.

Mixed precision only pays where the hardware has native kernels: bf16 on CUDA compute capability
>= 8.0 (Ampere+) and on CPUs with AVX-512 BF16 or AMX; fp16 + GradScaler on older CUDA GPUs; on a
CPU without native bf16/fp16 (e.g. AVX2 only) autocast is emulated and several times *slower* than
fp32, so the amp variant is skipped there unless forced with `amp_dtype=bf16|fp16`. bf16 on a CPU keeps
depthwise convolutions in fp32 while training (`greenstudy.measure.depthwise_fp32` says why: their bf16
backward is many times slower there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from greenstudy.config import AMP_DTYPES
from greenstudy.measure.depthwise_fp32 import DepthwiseInFp32

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """What autocast does for a run: None = fp32. `depthwise_fp32`: depthwise convolutions stay fp32 while
    training (the CPU bf16 policy)."""

    dtype: torch.dtype | None = None
    depthwise_fp32: bool = False

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def policy(self) -> str:
        """The name plus what autocast leaves out, e.g. `bf16 (depthwise convolutions fp32 in training)`."""
        return f"{self.name} (depthwise convolutions fp32 in training)" if self.depthwise_fp32 and self.dtype else self.name

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        """This precision's autocast region (nothing for fp32), with the depthwise policy where it has one."""
        if self.dtype is None:
            yield
            return
        with torch.autocast(device_type=device.type, dtype=self.dtype), (
                DepthwiseInFp32() if self.depthwise_fp32 else contextlib.nullcontext()):
            yield


@dataclass(frozen=True)
class Hardware:
    """The facts the precision choice depends on; `describe()` reads them off this machine."""

    device_type: str
    cpu_capability: str
    cpu_bf16: bool = False
    cpu_fp16: bool = False
    cuda_capability: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        if self.device_type == "cuda" and self.cuda_capability:
            return f"cuda sm_{self.cuda_capability[0]}{self.cuda_capability[1]}"
        return f"cpu {self.cpu_capability}"


def cpu_capability() -> str:
    """torch's own word for the CPU's vector ISA: e.g. AVX2, AVX512 (what its kernels dispatch to)."""
    return str(torch.backends.cpu.get_cpu_capability())


def _torch_says(namespace: object, name: str) -> bool:
    """Ask one of torch's private capability probes; False where this torch lacks it."""
    with contextlib.suppress(Exception):
        return bool(getattr(namespace, name)())
    return False


def describe(device: torch.device) -> Hardware:
    """The hardware facts of `device`; makes no CUDA call for a CPU device. Native bf16 needs oneDNN's
    bf16 path *and* the instructions (AVX512_BF16 or AMX): oneDNN alone also says yes on AVX-512 CPUs
    without BF16 (Skylake to Ice Lake), where bf16 is emulated."""
    cuda_capability = None
    if device.type == "cuda":
        cuda_capability = tuple(torch.cuda.get_device_capability(device))
    bf16_isa = _torch_says(torch.cpu, "_is_avx512_bf16_supported") or _torch_says(torch.cpu, "_is_amx_tile_supported")
    fp16_isa = _torch_says(torch.cpu, "_is_amx_fp16_supported") or _torch_says(torch.cpu, "_is_avx512_fp16_supported")
    return Hardware(
        device_type=device.type,
        cpu_capability=cpu_capability(),
        cpu_bf16=_torch_says(torch.ops.mkldnn, "_is_mkldnn_bf16_supported") and bf16_isa,
        cpu_fp16=_torch_says(torch.ops.mkldnn, "_is_mkldnn_fp16_supported") and fp16_isa,
        cuda_capability=cuda_capability,
    )


@dataclass(frozen=True)
class PrecisionChoice:
    """The amp variant's precision, or None with the reason it does not run natively."""

    precision: Precision | None
    reason: str

    @property
    def runs(self) -> bool:
        return self.precision is not None


def _mixed_precision_for(hw: Hardware, dtype: torch.dtype) -> Precision:
    """bf16 on a CPU keeps depthwise convolutions fp32 while training (see depthwise_fp32)."""
    return Precision(dtype, depthwise_fp32=hw.device_type == "cpu" and dtype == torch.bfloat16)


def choose_mixed_precision(hw: Hardware, amp_dtype: str = "auto") -> PrecisionChoice:
    """bf16 on Ampere+ GPUs and bf16-native CPUs, fp16 (+ GradScaler) on older GPUs and fp16-native
    CPUs; on other CPUs no choice (emulated autocast is slower than fp32). `amp_dtype` forces one."""
    if amp_dtype in _DTYPES:
        return PrecisionChoice(_mixed_precision_for(hw, _DTYPES[amp_dtype]), f"forced amp_dtype={amp_dtype} on {hw.label}")
    if amp_dtype != "auto":
        raise ValueError(f"amp_dtype must be one of {', '.join(AMP_DTYPES)}, got {amp_dtype!r}")
    if hw.device_type == "cuda":
        if hw.cuda_capability is not None and hw.cuda_capability >= (8, 0):
            return PrecisionChoice(Precision(torch.bfloat16), f"native bf16 on {hw.label}")
        return PrecisionChoice(Precision(torch.float16), f"fp16 + GradScaler on {hw.label} (no native bf16)")
    if hw.cpu_bf16:
        reason = f"native bf16 on {hw.label}, depthwise convolutions fp32 in training"
        return PrecisionChoice(_mixed_precision_for(hw, torch.bfloat16), reason)
    if hw.cpu_fp16:
        return PrecisionChoice(Precision(torch.float16), f"native fp16 on {hw.label}")
    return PrecisionChoice(
        None, f"no native bf16/fp16 on this CPU ({hw.cpu_capability}); force with amp_dtype=bf16 to run it emulated"
    )
