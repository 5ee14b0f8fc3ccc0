"""Depthwise convolutions in fp32 inside a bf16 autocast region, while gradients are being recorded.

Why: in torch 2.14.1 on the CPU (oneDNN, AVX-512 BF16, channels_last or not) the *backward* of a bf16
depthwise convolution is 3-25x slower than the fp32 one; its forward is as fast or faster. Measured on the
2-core AMD EPYC, batch 128, EfficientNet-B0's depthwise shapes: fp32 forward+backward 102 ms in all, bf16
657 ms; a stride-2 5x5 over 144 channels at 16x16 takes 12.6 ms backward in fp32 and 173 ms in bf16
(upstream: pytorch issue #183815). In one script timing whole training steps of EfficientNet-B0 (random
data, batch 128, channels_last) it trained at 93 img/s under plain bf16 autocast, 172 in fp32 and 229 with
this policy; benchmarks/throughput.py on real data: 101.9, 163.4 and 199.8 (README). A depthwise conv's fp32
output keeps the BN/SiLU after it in fp32 until the next convolution, which autocast casts back to bf16. A
bf16 forward with an fp32 backward was slower (192): the casts cost more than they save.

Only calls of `torch.nn.functional.conv2d` with `groups == input channels > 1` are changed, and only while
autograd records (`torch.is_grad_enabled()`): inference keeps the fast bf16 forward. Models without depthwise
convolutions (ResNet-18) run exactly as under plain autocast.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_POSITIONAL = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def _conv_args(args: tuple, kwargs: dict) -> dict[str, Any]:
    named = dict(_DEFAULTS)
    named.update(zip(_POSITIONAL, args, strict=False))
    named.update(kwargs)
    return named


def is_depthwise(groups: int, input_channels: int) -> bool:
    """A convolution whose every group is one input channel (EfficientNet's and MobileNet's 3x3/5x5)."""
    return groups > 1 and groups == input_channels


class DepthwiseInFp32(TorchFunctionMode):
    """Runs depthwise `conv2d` calls in fp32 (autocast off for them) while gradients are recorded."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.conv2d and torch.is_grad_enabled():
            conv = _conv_args(args, kwargs)
            x = conv.pop("input")
            if x.dim() == 4 and is_depthwise(int(conv["groups"]), x.shape[1]):
                weight, bias = conv.pop("weight"), conv.pop("bias")
                with torch.autocast(device_type=x.device.type, enabled=False):
                    return func(x.float(), weight.float(), None if bias is None else bias.float(), **conv)
        return func(*args, **kwargs)
