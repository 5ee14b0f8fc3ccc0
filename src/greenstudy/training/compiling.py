"""Whether a training run compiles its model (`compile=auto|true|false`), and the compile itself: one
measured `setup` phase (see fitting) that falls back to eager, with its reason, when inductor fails.

`auto` compiles on CUDA, and on a CPU where the run trains long enough for the compile to pay for itself:
its planned training images reach the break-even that `benchmarks/throughput.py --compile true` measured
for that model and precision (compile seconds / the seconds compiled saves per image). A model or precision
with no measured break-even stays eager, and the run's `compile_reason` tag says so."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from greenstudy.config import RunConfig
from greenstudy.measure.precision import cpu_capability
from greenstudy.training import distributed
from greenstudy.training.data import CifarData, train_batches
from greenstudy.training.steps import TrainSetup, evaluate

# (model, precision, torch CPU capability) -> training images from which compiling pays on such a CPU: compile
# seconds over (1/eager img/s - 1/compiled img/s), from a `benchmarks/throughput.py --compile true` run (README,
# "Mixed precision and compiled training on the CPU"). An entry needs compiled to beat eager in every measured
# round. None does on the one CPU measured (2-core AMD EPYC, AVX512 with AVX-512 BF16, torch 2.14.1, batch 128,
# channels_last), so it is empty and every CPU run trains eager: resnet18 bf16 with the CPU bf16 policy, 99.2
# eager vs 93.5 compiled img/s (lost both rounds; plain autocast 98.8 vs 96.5; a run before the policy had
# 103.3 vs 107.8); resnet18 fp32 48.8 vs 49.9 (within noise); efficientnet_b0 fp32 won one round of two;
# efficientnet_b0 bf16 compiled was slower. The rule and its fallback are tested with made-up entries. Keyed by
# precision name: an entry for bf16 must be measured under the CPU bf16 policy (depthwise convolutions fp32).
CPU_BREAK_EVEN_IMAGES: dict[tuple[str, str, str], int] = {}


@dataclass(frozen=True)
class CompileDecision:
    """Compile or not, and why (logged as the child's `compile_reason` tag)."""

    compile: bool
    reason: str


def decide_compile(cfg: RunConfig, device: torch.device, precision: str, train_images: int) -> CompileDecision:
    """What `cfg.compile` means for this run: `train_images` is what it will still train on (all epochs)."""
    if cfg.compile != "auto":
        return CompileDecision(cfg.compile == "true", f"compile={cfg.compile}")
    if device.type == "cuda":
        return CompileDecision(True, "compile=auto: CUDA")
    capability = cpu_capability()
    break_even = CPU_BREAK_EVEN_IMAGES.get((cfg.model, precision, capability))
    if break_even is None:
        return CompileDecision(False, f"compile=auto: no measured CPU break-even for {cfg.model} {precision} on {capability}: eager")
    if train_images < break_even:
        return CompileDecision(False, f"compile=auto: {train_images} training images < CPU break-even {break_even}: eager")
    return CompileDecision(True, f"compile=auto: {train_images} training images >= CPU break-even {break_even}")


def warm_up_compiled(setup: TrainSetup, data: CifarData) -> str:
    """Compile `setup.model` and run one training step's forward/backward and one validation pass, so the
    compiles (train and eval graphs) happen here, not inside epoch 1; weights, buffers, gradients, the batch
    generator and the global RNG are left as they were. Returns "" when compiled; when inductor fails on a
    single-process run, the reason, with `setup` back in eager mode (several ranks: raised, so all stop)."""
    saved = copy.deepcopy(setup.model.state_dict())
    generator_state = setup.generator.get_state()
    eager = setup.step_fn
    setup.step_fn = torch.compile(setup.forward())  # several ranks: the DistributedDataParallel module
    devices = [setup.device] if setup.device.type == "cuda" else []
    ranks = distributed.current()
    try:
        with torch.random.fork_rng(devices=devices):  # dropout/stochastic depth draw as if no warm-up happened
            _one_step_and_validation(setup, data, ranks)
    except torch._dynamo.exc.TorchDynamoException as exc:  # inductor/dynamo failures (InductorError among them)
        if ranks:
            raise
        setup.step_fn = eager
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()][:2]  # inductor's cause is on line 2
        reason = f"{type(exc).__name__}: {' '.join(lines)}"[:500]
        print(f"compile failed, training eager instead ({reason})", file=sys.stderr, flush=True)
        return reason
    finally:
        setup.optimizer.zero_grad(set_to_none=True)
        setup.model.load_state_dict(saved)
        setup.generator.set_state(generator_state)
    return ""


def _one_step_and_validation(setup: TrainSetup, data: CifarData, ranks: distributed.Ranks | None) -> None:
    if ranks:  # every rank the same step, at an agreed safe point, on its shard
        batch = next(train_batches(data.train, setup.batch_size, setup.generator, setup.augment, distributed.safe_point))
        images, labels = distributed.shard(*batch)
    else:
        images, labels = next(train_batches(data.train, setup.batch_size, setup.generator, setup.augment))
    setup.model.train()
    with setup.precision.autocast(setup.device):
        loss = F.cross_entropy(setup.step_fn(setup.normalize(images)), labels)
    loss.backward()
    if not ranks:  # several ranks validate through the plain module (see fitting): no eval graph to compile
        evaluate(setup.step_fn, data.val, setup.normalize, setup.precision, setup.device)  # the eval graphs too
