"""An int8 recipe that keeps its accuracy, chosen on the validation split (never the test split).

Post-training static quantization, FX graph mode, x86 backend, per-channel weights, histogram-calibrated
activations; 8-bit activation ranges (`reduce_range` off) where the CPU has VNNI, whose int8 dot product
cannot saturate. Then, while the int8 model's validation top-1 is more than `max_loss` points below the
fp32 model's, the most sensitive *block* (a ResNet basic block, an EfficientNet MBConv block, the stem,
the head) is kept in fp32, one at a time. Sensitivity = the validation top-1 lost when that block alone is
quantized.

Why FX and not PT2E (torchao `X86InductorQuantizer`): with torch 2.14.1, PT2E fails on torchvision's
ResNet-18 ("Input partition has more than one output node": BasicBlock reuses one ReLU module), its int8
model is a Q/DQ reference graph that is only fast after `torch.compile` with freezing (23-35 s of compile
per process, redone by every process that loads it), and the compiled artefact is not a module MLflow can
log and load back on another host. FX gives eager int8 kernels that trace to a self-contained TorchScript
module. FX is deprecated upstream; its DeprecationWarning is silenced here only.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from greenstudy.interrupts import stop_if_interrupted
from greenstudy.progress import say


@dataclass
class Int8Recipe:
    """What was chosen and what it was chosen on (validation top-1, %)."""

    keep_fp32: tuple[str, ...]
    reduce_range: bool
    fp32_val_acc1: float
    int8_val_acc1: float
    max_loss: float
    tried: list[dict[str, object]] = field(default_factory=list)  # every candidate evaluated, in order

    @property
    def within_bound(self) -> bool:
        return self.fp32_val_acc1 - self.int8_val_acc1 <= self.max_loss


def quantizable_groups(model: nn.Module) -> list[str]:
    """The blocks a recipe can keep in fp32, in forward order: the module path of every conv/linear cut at
    its block (`layer1.0`, `features.3.1`), or its container where it sits directly in one (`features.0`)."""
    groups: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        parts = name.split(".")
        if parts[-1].isdigit():  # the layer itself is an element of a container: the container is its block
            parts = parts[:-1]
        cut = 1
        while cut < len(parts) and parts[cut].isdigit():
            cut += 1
        group = ".".join(parts[:cut])
        if group not in groups:
            groups.append(group)
    return groups


def vnni_available() -> bool:
    """Whether this CPU has an int8 dot-product instruction (AVX512-VNNI or AVX-VNNI): then 8-bit activations
    cannot saturate and `reduce_range` (7-bit, the x86 default) only costs accuracy."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def quantize_fx(model: nn.Module, calibration: Sequence[torch.Tensor], keep_fp32: Sequence[str] = (),
                reduce_range: bool = True, quantize_only: str | None = None) -> nn.Module:
    """int8 copy of `model` on the CPU: every block but `keep_fp32` (or only `quantize_only`) quantized,
    activations calibrated on `calibration`."""
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import HistogramObserver, default_per_channel_weight_observer
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    qconfig = QConfig(activation=HistogramObserver.with_args(reduce_range=reduce_range),
                      weight=default_per_channel_weight_observer)
    # module names outrank the mapping's object types (its fixed-qparams sigmoid/tanh/softmax), so a block named
    # None stays fp32 whole; to quantize one block alone, every *other* block is named None
    mapping = get_default_qconfig_mapping("x86").set_global(qconfig)
    others = [group for group in quantizable_groups(model) if group != quantize_only] if quantize_only else []
    for name in (*keep_fp32, *others):
        mapping.set_module_name(name, None)
    model = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao")
        prepared = prepare_fx(model, mapping, example_inputs=(calibration[0],))
        with torch.no_grad():
            for batch in calibration:
                stop_if_interrupted()
                prepared(batch)
        return convert_fx(prepared)


def keep_until_within(order: Sequence[str], accuracy_with: Callable[[tuple[str, ...]], float], fp32_acc1: float,
                      max_loss: float, all_int8_acc1: float, tried: list[dict[str, object]]) -> tuple[tuple[str, ...], float]:
    """Keep blocks in fp32, most sensitive first, until the int8 model is within `max_loss` points of fp32
    (or every block is kept: then int8 cannot keep the accuracy post-training). Returns (kept, accuracy)."""
    kept: tuple[str, ...] = ()
    accuracy = all_int8_acc1
    for group in order:
        if fp32_acc1 - accuracy <= max_loss:
            break
        kept = (*kept, group)
        accuracy = accuracy_with(kept)
        tried.append({"keep_fp32": ",".join(kept), "val_acc1": accuracy})
    return kept, accuracy


def choose_recipe(model: nn.Module, calibration: Sequence[torch.Tensor], evaluate_acc1: Callable[[nn.Module], float],
                  max_loss: float, reduce_range: bool | None = None) -> tuple[nn.Module, Int8Recipe]:
    """The int8 model and its recipe: all blocks int8 first; if that loses more than `max_loss` validation
    points, per-block sensitivity, then the most sensitive blocks back to fp32 until the bound holds."""
    reduce_range = not vnni_available() if reduce_range is None else reduce_range
    fp32_acc1 = evaluate_acc1(copy.deepcopy(model).cpu().eval())
    models: dict[tuple[str, ...], nn.Module] = {}

    def accuracy_with(kept: tuple[str, ...]) -> float:
        models.clear()  # keep only the last candidate in memory
        models[kept] = quantize_fx(model, calibration, kept, reduce_range)
        return evaluate_acc1(models[kept])

    all_int8 = accuracy_with(())
    recipe = Int8Recipe((), reduce_range, fp32_acc1, all_int8, max_loss, [{"keep_fp32": "", "val_acc1": all_int8}])
    if recipe.within_bound:
        return models[()], recipe
    groups = quantizable_groups(model)
    say(f"int8: all blocks quantized lose {fp32_acc1 - all_int8:.2f} points of validation top-1 (bound {max_loss}): "
        f"measuring the sensitivity of {len(groups)} blocks")
    loss = {group: fp32_acc1 - evaluate_acc1(quantize_fx(model, calibration, (), reduce_range, quantize_only=group))
            for group in groups}
    order = sorted(groups, key=lambda group: loss[group], reverse=True)
    recipe.tried.extend({"quantize_only": group, "val_acc1": fp32_acc1 - loss[group]} for group in order)
    kept, accuracy = keep_until_within(order, accuracy_with, fp32_acc1, max_loss, all_int8, recipe.tried)
    recipe.keep_fp32, recipe.int8_val_acc1 = kept, accuracy
    return models[kept], recipe
