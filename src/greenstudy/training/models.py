"""torchvision ResNet-18 and EfficientNet-B0, adapted to 32x32 CIFAR images."""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tv

from greenstudy.config import MODELS
from greenstudy.errors import ConfigError


class Upsample(nn.Module):
    """Resize inputs on the device, for the ImageNet-style high-resolution set-up."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)


def _resnet18(num_classes: int, cifar_stem: bool) -> nn.Module:
    model = tv.resnet18(weights=None, num_classes=num_classes)
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def _efficientnet_b0(num_classes: int, cifar_stem: bool) -> nn.Module:
    model = tv.efficientnet_b0(weights=None, num_classes=num_classes)
    if cifar_stem:
        model.features[0][0].stride = (1, 1)
    return model


_BUILDERS = {"resnet18": _resnet18, "efficientnet_b0": _efficientnet_b0}


def build_model(name: str, num_classes: int, resolution: int = 32) -> nn.Module:
    """A fresh model; at resolution 32 with the CIFAR stem, above it the stock stem after an upsample."""
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    if resolution == 32:
        return _BUILDERS[name](num_classes, cifar_stem=True)
    return nn.Sequential(Upsample(resolution), _BUILDERS[name](num_classes, cifar_stem=False))


def classifier_layer(model: nn.Module) -> nn.Module:
    """The final Linear layer (kept whole when pruning)."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    return linears[-1]


def count_macs_params(model: nn.Module) -> tuple[int, int]:
    """(MACs, parameters) of one 3x32x32 forward pass, counted by torch-pruning."""
    import torch_pruning as tp

    device = next(model.parameters()).device
    example = torch.zeros(1, 3, 32, 32, device=device)
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    return int(macs), int(params)


def model_size_mb(model: nn.Module) -> float:
    """Size of the model as saved (state_dict, or the whole TorchScript module), in MB (1e6 bytes)."""
    buffer = io.BytesIO()
    if isinstance(model, torch.jit.ScriptModule):
        torch.jit.save(model, buffer)
    else:
        torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6
