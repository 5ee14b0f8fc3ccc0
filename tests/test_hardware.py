"""The hardware-dependent choices: precision by capability (pure, runs anywhere), models logged from a
CPU copy, and CUDA end to end (skipped without a GPU)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from greenstudy.errors import ConfigError
from greenstudy.measure.precision import Hardware, Precision, choose_mixed_precision, cpu_capability, describe
from greenstudy.runs.main_run import run_main
from greenstudy.runs.params import parse_main
from greenstudy.tracking import log_torch_model
from greenstudy.training.models import build_model
from tests.conftest import TINY_ARGS

AVX2 = Hardware("cpu", "AVX2")
ZEN4 = Hardware("cpu", "AVX512", cpu_bf16=True)


@pytest.mark.parametrize(
    ("hw", "amp_dtype", "expected", "reason"),
    [
        (Hardware("cuda", "AVX2", cuda_capability=(7, 5)), "auto", "fp16", "fp16 + GradScaler on cuda sm_75"),
        (Hardware("cuda", "AVX2", cuda_capability=(8, 0)), "auto", "bf16", "native bf16 on cuda sm_80"),
        (Hardware("cuda", "AVX2", cuda_capability=(9, 0)), "fp16", "fp16", "forced amp_dtype=fp16"),
        (ZEN4, "auto", "bf16", "native bf16 on cpu AVX512"),
        (Hardware("cpu", "AVX512", cpu_fp16=True), "auto", "fp16", "native fp16"),
        (AVX2, "auto", None, "no native bf16/fp16 on this CPU (AVX2)"),
        (AVX2, "bf16", "bf16", "forced amp_dtype=bf16 on cpu AVX2"),
    ],
)
def test_mixed_precision_follows_capability(hw: Hardware, amp_dtype: str, expected: str | None, reason: str) -> None:
    choice = choose_mixed_precision(hw, amp_dtype)
    assert (choice.precision.name if choice.precision else None) == expected
    assert reason in choice.reason
    if expected == "fp16" and hw.device_type == "cuda":
        assert choice.precision.needs_scaler
    # only bf16 on a CPU keeps depthwise convolutions fp32 (their bf16 backward is the slow kernel there)
    if choice.precision:
        assert choice.precision.depthwise_fp32 == (hw.device_type == "cpu" and expected == "bf16")


@pytest.mark.parametrize("call", ["keywords", "padding_same", "reflect"])
def test_bf16_policy_reads_every_form_of_a_conv2d_call(call: str) -> None:
    """Keyword arguments, string padding and a padded-first (reflect) conv all give the fp32 result."""
    torch.manual_seed(0)
    x, weight = torch.randn(2, 6, 9, 9), torch.randn(6, 1, 3, 3)
    reflect = torch.nn.Conv2d(6, 6, 3, padding=1, groups=6, padding_mode="reflect")
    calls = {
        "keywords": lambda: F.conv2d(input=x, weight=weight, stride=2, padding=1, groups=6),
        "padding_same": lambda: F.conv2d(x, weight, None, 1, "same", 1, 6),
        "reflect": lambda: reflect(x),
    }
    exact = calls[call]()
    with Precision(torch.bfloat16, depthwise_fp32=True).autocast(torch.device("cpu")):
        ours = calls[call]()
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, exact, rtol=1e-6, atol=1e-6)


def test_bf16_policy_runs_depthwise_convolutions_in_fp32_only_while_training() -> None:
    """Under the CPU bf16 policy a depthwise conv gives fp32 outputs and fp32-exact gradients while autograd
    records; a dense conv stays bf16; without grad (inference) the depthwise conv is bf16 again."""
    torch.manual_seed(0)
    depthwise = torch.nn.Conv2d(8, 8, 3, 2, 1, groups=8)
    dense = torch.nn.Conv2d(8, 8, 3, 1, 1)
    x = torch.randn(4, 8, 8, 8, requires_grad=True)
    policy, plain = Precision(torch.bfloat16, depthwise_fp32=True), Precision(torch.bfloat16)
    cpu = torch.device("cpu")
    assert policy.policy == "bf16 (depthwise convolutions fp32 in training)" and plain.policy == "bf16"

    reference = torch.autograd.grad(depthwise(x).square().sum(), (x, depthwise.weight))
    with policy.autocast(cpu):
        out = depthwise(x)
        assert out.dtype == torch.float32 and dense(x).dtype == torch.bfloat16
        grads = torch.autograd.grad(out.square().sum(), (x, depthwise.weight))
        with torch.no_grad():
            assert depthwise(x).dtype == torch.bfloat16
    with plain.autocast(cpu):
        bf16_grads = torch.autograd.grad(depthwise(x).float().square().sum(), (x, depthwise.weight))
    for ours, exact, rounded in zip(grads, reference, bf16_grads, strict=True):
        torch.testing.assert_close(ours, exact, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(rounded, exact, rtol=1e-5, atol=1e-5)  # so the check above can fail


def test_this_machine_is_described_without_cuda() -> None:
    hw = describe(torch.device("cpu"))
    assert hw.cpu_capability == cpu_capability() and hw.cuda_capability is None
    assert hw.label == f"cpu {cpu_capability()}"


def test_model_is_logged_from_a_cpu_copy(tracking_uri: str) -> None:
    """Logging never touches the trained model (still in train mode, same device) and stores a CPU module."""
    model = build_model("efficientnet_b0", 10).train()
    mlflow.set_experiment("cpu-copy")
    with mlflow.start_run() as run:
        log_torch_model(model, torch.randn(2, 3, 32, 32))
    assert model.training
    loaded = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert loaded(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_four_variants_load_back_on_cpu(tiny_data_dir: Path, tracking_uri: str) -> None:
    """All four variants on CUDA: precision by capability, fp32 really fp32 (TF32 off), NVML energy of the
    run's own GPU, and every logged model loads and predicts on the CPU."""
    cfg = parse_main(["--model", "resnet18", "--device", "cuda", "--data-dir", str(tiny_data_dir), "--experiment", "gpu",
                      "--train-subset", "256", *TINY_ARGS])
    outcome = run_main(cfg)
    assert not outcome.failed, [c.error for c in outcome.children]
    client = MlflowClient(tracking_uri)
    major, _ = torch.cuda.get_device_capability()
    for child in outcome.children:
        run = client.get_run(child.run_id)
        assert run.data.tags["device"] == "cuda" and run.data.tags["tf32"] == "off"
        assert "gpu=nvml" in run.data.tags["energy_method"]
        if child.variant == "amp":
            assert run.data.tags["precision"] == ("bf16" if major >= 8 else "fp16")
        if child.variant != "quantized":
            assert run.data.metrics["gpu_energy_nvml_kwh"] > 0
        model = mlflow.pytorch.load_model(f"runs:/{child.run_id}/model", map_location="cpu")
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_a_resume_keeps_the_numerics_it_began_with() -> None:
    """A checkpoint saved under plain bf16 autocast (before the CPU policy; no `precision_policy` key) is refused
    under the policy with one ConfigError, and the same policy resumes; fp32 checkpoints of any age resume."""
    from greenstudy.training.fitting import check_same_precision

    policy = Precision(torch.bfloat16, depthwise_fp32=True)
    with pytest.raises(ConfigError, match="checkpoint trained in bf16, this code trains in bf16 \\(depthwise"):
        check_same_precision({}, policy)
    check_same_precision({"precision_policy": policy.policy}, policy)
    check_same_precision({}, Precision())
    with pytest.raises(ConfigError, match="one run, one numerics"):
        check_same_precision({"precision_policy": policy.policy}, Precision(torch.bfloat16))
