"""devices=N: data-parallel training under torchrun (gloo processes on this CPU machine), measured once per
machine. Real MLflow, real CodeCarbon; NVML is faked only where a GPU would be needed."""

from __future__ import annotations

import csv
import math
import signal
import subprocess
import sys
import types
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from greenstudy.config import RunConfig
from greenstudy.errors import ConfigError
from greenstudy.measure import energy
from greenstudy.measure.ledger import PhaseEnergy
from greenstudy.training.checkpoint import Checkpointer, fingerprint
from greenstudy.training.follower import NoMeter
from tests.conftest import PYTHON, ROOT, entry_env

sys.path.insert(0, str(ROOT / "mlproject"))
import main as entry  # noqa: E402

TINY = ["--model", "efficientnet_b0", "--epochs", "1", "--batch-size", "32", "--train-subset", "128", "--val-size", "64",
        "--test-subset", "64", "--infer-seconds", "0.2", "--infer-b1-repeats", "0", "--calib-batches", "1", "--finetune-epochs", "1",
        "--int8-max-loss", "100", "--download", "false"]
# Wraps (never replaces) CodeCarbon's tracker in every rank torchrun starts: each one made is written down.
SITECUSTOMIZE = '''
import os
if os.environ.get("RANK") is not None and os.environ.get("GS_TRACKER_LOG"):
    import codecarbon
    _Real = codecarbon.OfflineEmissionsTracker
    class _Written(_Real):
        def __init__(self, *args, **kwargs):
            with open(os.environ["GS_TRACKER_LOG"], "a") as log:
                log.write(f"rank={os.environ['RANK']} gpu_ids={kwargs.get('gpu_ids')}\\n")
            super().__init__(*args, **kwargs)
    codecarbon.OfflineEmissionsTracker = _Written
'''


def _runs(client: MlflowClient) -> list[mlflow.entities.Run]:
    experiment = client.get_experiment_by_name("greenstudy-cifar100")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def _ledger_rows(client: MlflowClient, run_id: str, tmp: Path) -> list[dict[str, str]]:
    with open(client.download_artifacts(run_id, "energy_ledger.csv", str(tmp))) as handle:
        return list(csv.DictReader(handle))


def test_two_gloo_processes_train_with_the_global_batch_and_log_once(
    tiny_data_dir: Path, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """devices=2 end to end: one parent, one child per variant, one ledger each (training phases on 2 devices,
    the rest on rank 0 alone), finite losses, the optimizer steps of devices=1 with the same global batch, and
    one CodeCarbon tracker in the whole job (rank 0's)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = entry_env(tracking_uri)
    env.update(PYTHONPATH=f"{hook}:{env['PYTHONPATH']}", GS_TRACKER_LOG=str(tmp_path / "trackers.log"),
               GREENSTUDY_ENERGY_LOCK=str(tmp_path / "lock"))
    args = [*TINY, "--data-dir", str(tiny_data_dir), "--checkpoint-dir", str(tmp_path / "ck"),
            "--variants", "baseline,pruned", "--devices", "2"]  # pruned: prune on rank 0 alone, fine-tune on both
    done = subprocess.run([PYTHON, str(ROOT / "mlproject" / "main.py"), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "trackers.log").read_text().splitlines() == ["rank=0 gpu_ids=[]"]  # a CPU job charges no GPU
    assert done.stderr.count("energy: rank 0 measures this machine once: 2 CPU processes") == 1
    assert "rank 1/2: trains its shard of every batch on cpu; measures and logs nothing" in done.stderr

    client = MlflowClient()
    runs = _runs(client)
    parents = [run for run in runs if run.data.tags.get("kind") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {run.data.tags["variant"]: run for run in runs if run.data.tags.get("kind") == "variant"}
    assert len(runs) == 3 and sorted(children) == ["baseline", "pruned"]
    for variant, child in children.items():
        assert child.info.status == "FINISHED", child.data.tags.get("error")
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.data.tags["devices"] == "2"
        ledgers = [item.path for item in client.list_artifacts(child.info.run_id) if item.path.endswith(".csv")]
        assert ledgers == ["energy_ledger.csv"], variant
        rows = [row for row in _ledger_rows(client, child.info.run_id, tmp_path) if not row["upstream_run_id"]]
        names = [row["name"] for row in rows]
        assert len(names) == len(set(names)), f"{variant}: a phase measured twice"
        for row in rows:
            expected = "2" if row["kind"] in ("train", "val") else "1"  # test, inference, prune: rank 0 alone
            assert row["devices"] == expected, row
            assert float(row["energy_kwh"]) > 0
    for variant in ("baseline", "pruned"):
        metrics = children[variant].data.metrics
        assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"]), variant
        assert 0 <= metrics["val_acc1"] <= 100
    two_device_steps = children["baseline"].data.metrics["train_steps"]

    monkeypatch.setenv("GREENSTUDY_ENERGY_LOCK", str(tmp_path / "lock"))
    one = [*TINY, "--data-dir", str(tiny_data_dir), "--checkpoint-dir", str(tmp_path / "ck1"), "--variants", "baseline",
           "--experiment", "one-device"]
    assert entry.main(one) == 0
    single = MlflowClient().search_runs([mlflow.get_experiment_by_name("one-device").experiment_id], "tags.kind = 'variant'")
    assert single[0].data.tags["devices"] == "1"
    assert single[0].data.metrics["train_steps"] == two_device_steps == 128 // 32


def test_sigterm_stops_every_rank_and_the_run_resumes_on_the_same_devices(
    tiny_data_dir: Path, tracking_uri: str, tmp_path: Path,
) -> None:
    """SIGTERM (a cancelled `mlflow run`) to a devices=2 command: every rank stops at the same batch, rank 0
    marks its runs KILLED and keeps the checkpoint, the command exits 130; resumed with devices=1 it is refused
    with one line, with devices=2 it finishes in place."""
    env = {**entry_env(tracking_uri), "GREENSTUDY_ENERGY_LOCK": str(tmp_path / "lock")}
    args = [*TINY, "--epochs", "3", "--train-subset", "256", "--data-dir", str(tiny_data_dir), "--variants", "baseline",
            "--checkpoint-dir", str(tmp_path / "ck"), "--devices", "2"]
    command = [PYTHON, str(ROOT / "mlproject" / "main.py"), *args]
    job = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in job.stderr:
        seen.append(line)
        if "epoch 1/3" in line:
            job.send_signal(signal.SIGTERM)
            break
    rest = job.communicate(timeout=120)[1]
    assert job.returncode == 130, "".join(seen) + rest
    client = MlflowClient()
    runs = {run.data.tags["kind"]: run for run in _runs(client)}
    assert runs["parent"].info.status == runs["variant"].info.status == "KILLED"
    assert [p.step for p in client.get_metric_history(runs["variant"].info.run_id, "val_acc1")][:1] == [1]
    parent = runs["parent"].info.run_id

    refused = subprocess.run([PYTHON, str(ROOT / "mlproject" / "main.py"), *args[:-2], "--resume", parent],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "devices=2 (now 1)" in refused.stderr.strip().splitlines()[-1], refused.stderr[-2000:]
    resumed = subprocess.run([*command, "--resume", parent], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    child = client.get_run(runs["variant"].info.run_id)
    assert child.info.status == "FINISHED"
    assert [p.step for p in client.get_metric_history(child.info.run_id, "val_acc1")] == [1, 2, 3]
    assert child.data.metrics["sittings"] == 2


@pytest.fixture()
def fake_two_gpus(monkeypatch: pytest.MonkeyPatch) -> dict[int, float]:
    """Rank 0 of a 2-process job on GPUs 3 and 5 of a machine (CUDA_VISIBLE_DEVICES=3,5), through a fake NVML
    whose energy counters advance 1 J (GPU 3) and 2 J (GPU 5) per read."""
    counters = {3: 0.0, 5: 0.0}

    def read(handle: int) -> float:
        counters[handle] += 1000.0 * (1 if handle == 3 else 2)  # mJ
        return counters[handle]

    fake = types.SimpleNamespace(nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda index: index,
                                 nvmlDeviceGetTotalEnergyConsumption=read)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    return counters


def test_rank_zero_measures_every_gpu_of_the_job_and_the_others_nothing(fake_two_gpus: dict[int, float]) -> None:
    meter = energy.EnergyMeter(torch.device("cuda", 0))
    assert meter.gpu_ids == [3, 5]
    assert [int(i) for i in meter._tracker._conf["gpu_ids"]] == [3, 5]  # the real CodeCarbon tracker got exactly them
    ledger: list[PhaseEnergy] = []
    with meter.phase(ledger, "train/epoch1", "train", 1, devices=2):
        pass
    meter.stop()
    phase = ledger[0]
    assert phase.devices == 2
    assert phase.gpu_nvml_kwh == pytest.approx((1 + 2) / 3.6e6)  # both GPUs' counters, summed (one read each side)
    assert phase.energy_kwh > 0
    follower_ledger: list[PhaseEnergy] = []
    with NoMeter().phase(follower_ledger, "train/epoch1", "train", 1, devices=2) as nothing:
        pass
    assert follower_ledger == [] and nothing.energy_kwh == 0.0 and not hasattr(NoMeter(), "_tracker")


def test_one_gpu_job_still_measures_its_own_gpu_only(fake_two_gpus: dict[int, float],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert energy.job_gpu_ids(torch.device("cuda", 1)) == [5]
    assert energy.job_gpu_ids(torch.device("cpu")) == []


def test_device_settings_are_checked_and_resume_needs_the_same_devices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="devices must be at least 1"):
        RunConfig(devices=0)
    with pytest.raises(ConfigError, match="sync_bn=true needs devices of 2 or more"):
        RunConfig(sync_bn=True)
    from greenstudy.training import launch

    with pytest.raises(ConfigError, match="sync_bn=true needs CUDA"):
        launch.check(RunConfig(devices=2, sync_bn=True, device="cpu"))
    one, two = RunConfig(), RunConfig(devices=2)
    assert "devices" not in fingerprint(one)  # checkpoints made before devices existed still resume
    checkpointer = Checkpointer(tmp_path / "run")
    checkpointer.save({"fingerprint": fingerprint(two), "epoch": 1})
    with pytest.raises(ConfigError, match=r"devices=2 \(now 1\)"):
        checkpointer.load(fingerprint(one))
    checkpointer.save({"fingerprint": fingerprint(one), "epoch": 1})
    with pytest.raises(ConfigError, match=r"devices=None \(now 2\)"):
        checkpointer.load(fingerprint(two))


def test_a_bad_devices_value_is_one_line_before_anything_starts(tracking_uri: str, tmp_path: Path) -> None:
    done = subprocess.run([PYTHON, str(ROOT / "mlproject" / "main.py"), "--devices", "2", "--sync-bn", "true",
                           "--device", "cpu", "--download", "false"], env=entry_env(tracking_uri), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: sync_bn=true needs CUDA GPUs (torch's SyncBatchNorm does not run on CPUs)"]


def test_a_compiled_or_data_parallel_module_is_used_without_asking_its_truth() -> None:
    """`step_fn or model` asked a compiled module for its len() and failed every compiled run."""
    from torch import nn

    from greenstudy.training.steps import TrainSetup

    model = nn.Linear(2, 2)
    compiled = torch.compile(model)
    with pytest.raises(TypeError):
        bool(compiled)
    setup = TrainSetup(model, None, None, None, None, 0.0, 1, torch.device("cpu"), torch.Generator(), step_fn=compiled)
    assert setup.forward() is compiled
    assert TrainSetup(model, None, None, None, None, 0.0, 1, torch.device("cpu"), torch.Generator()).forward() is model
