"""Compiled training on the CPU: the same loss as eager, `compile=auto`'s rule, and the fallback to eager
(with its reason in the run) when inductor cannot compile."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch._inductor.config as inductor_config
from mlflow.tracking import MlflowClient

from greenstudy.config import RunConfig
from greenstudy.measure.precision import Precision, cpu_capability
from greenstudy.training import compiling
from greenstudy.training.compiling import decide_compile
from greenstudy.training.data import Normalizer, Split
from greenstudy.training.models import build_model
from greenstudy.training.steps import TrainSetup, make_optimizer, make_scheduler, train_one_epoch
from tests.conftest import ROOT, TINY_ARGS

sys.path.insert(0, str(ROOT / "mlproject"))
import main as entry  # noqa: E402

CPU = torch.device("cpu")


def _setup(model: torch.nn.Module, compiled: bool) -> TrainSetup:
    optimizer = make_optimizer(model, 0.05, 5e-4)
    return TrainSetup(
        model=model, optimizer=optimizer, scheduler=make_scheduler(optimizer, 0.05, 4),
        normalize=Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), CPU, channels_last=True), precision=Precision(),
        label_smoothing=0.1, batch_size=8, device=CPU, generator=torch.Generator().manual_seed(0),
        step_fn=torch.compile(model) if compiled else None,
    )


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["resnet18", "efficientnet_b0"])
def test_a_compiled_cpu_training_step_gives_the_eager_loss(model_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real training steps (train_one_epoch: augmentation, forward, backward, SGD) compiled and eager from the
    same weights and batches: the losses agree, so the second step saw the same update."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model(model_name, 100).to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    split = Split(images, torch.arange(16) % 100)
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(2)
        setup = _setup(copy.deepcopy(model), compiled)
        with inductor_config.patch(fallback_random=True):  # dropout / stochastic depth draw as eager does
            first, _ = train_one_epoch(setup, Split(split.images[:8], split.labels[:8]))
            second, _ = train_one_epoch(setup, Split(split.images[8:], split.labels[8:]))
        losses[compiled] = (first, second)
    torch._dynamo.reset()
    assert losses[True] == pytest.approx(losses[False], rel=2e-3), losses


def test_auto_compiles_on_the_cpu_only_from_the_measured_break_even(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = RunConfig(model="resnet18", compile="auto")
    monkeypatch.setitem(compiling.CPU_BREAK_EVEN_IMAGES, ("resnet18", "fp32", cpu_capability()), 1000)
    below, at = decide_compile(cfg, CPU, "fp32", 999), decide_compile(cfg, CPU, "fp32", 1000)
    assert not below.compile and "999 training images < CPU break-even 1000" in below.reason
    assert at.compile and ">= CPU break-even 1000" in at.reason
    unmeasured = decide_compile(RunConfig(model="efficientnet_b0", compile="auto"), CPU, "bf16", 10**9)
    assert not unmeasured.compile and f"no measured CPU break-even for efficientnet_b0 bf16 on {cpu_capability()}" in unmeasured.reason
    assert decide_compile(cfg, torch.device("cuda"), "fp32", 1).compile is True  # auto compiles on CUDA, any length
    assert decide_compile(RunConfig(compile="false"), torch.device("cuda"), "fp32", 10**9).compile is False
    assert decide_compile(RunConfig(compile="true"), CPU, "fp32", 1).compile is True


def test_a_compile_that_fails_trains_eager_and_says_why(tracking_uri: str, tiny_data_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """compile=auto decides to compile (a break-even this tiny run reaches) and inductor really fails (no working
    C++ compiler): the child still trains, eager, FINISHED; its tags say that and why, and the failed attempt
    is a measured setup phase of its own."""
    monkeypatch.setitem(compiling.CPU_BREAK_EVEN_IMAGES, ("resnet18", "fp32", cpu_capability()), 1)
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/g++",))
    torch._dynamo.reset()
    code = entry.main(["--model", "resnet18", "--variants", "baseline", "--data-dir", str(tiny_data_dir),
                       "--experiment", "compile", "--compile", "auto", *TINY_ARGS])
    torch._dynamo.reset()
    assert code == 0
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("compile")
    child = next(r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("variant") == "baseline")
    assert child.info.status == "FINISHED"
    assert child.data.tags["compile"] == "eager"
    reason = child.data.tags["compile_reason"]
    assert ">= CPU break-even 1; compile failed, eager instead: " in reason
    assert reason.split("eager instead: ")[1].startswith(("InductorError", "BackendCompilerFailed")), reason
    assert "InvalidCxxCompiler" in reason, reason
    ledger = client.download_artifacts(child.info.run_id, "energy_ledger.csv")
    assert "resnet18/baseline/compile,setup" in Path(ledger).read_text()
    # the failed attempt left weights, batch order and RNG as they were: the same training as a plain eager run
    assert entry.main(["--model", "resnet18", "--variants", "baseline", "--data-dir", str(tiny_data_dir),
                       "--experiment", "eager", "--compile", "false", *TINY_ARGS]) == 0
    eager_experiment = client.get_experiment_by_name("eager")
    eager = next(r for r in client.search_runs([eager_experiment.experiment_id]) if r.data.tags.get("variant") == "baseline")
    assert eager.data.tags["compile"] == "eager" and eager.data.tags["compile_reason"] == "compile=false"
    for name in ("train_loss", "val_loss", "val_acc1"):
        assert child.data.metrics[name] == eager.data.metrics[name], name
