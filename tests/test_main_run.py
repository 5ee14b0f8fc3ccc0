"""End to end: the `main` entry point against a real MLflow store and a real CodeCarbon tracker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from greenstudy.measure.ledger import MAKE_AND_CHECK, read_ledger_csv
from greenstudy.tracking import CONTRACT_PARAMS, CONTRACT_TAGS, EPOCH_METRICS, FINAL_METRICS
from tests.conftest import PYTHON, ROOT, TINY_ARGS, entry_env

sys.path.insert(0, str(ROOT / "mlproject"))
import main as entry  # noqa: E402

from greenstudy.measure.precision import choose_mixed_precision, describe  # noqa: E402

AMP_NATIVE = choose_mixed_precision(describe(torch.device("cpu"))).runs


def _runs(client: MlflowClient, experiment: str) -> list[mlflow.entities.Run]:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def _children(client: MlflowClient, parent_id: str, experiment_id: str) -> dict[str, mlflow.entities.Run]:
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {run.data.tags["variant"]: run for run in runs}


def assert_contract(client: MlflowClient, run: mlflow.entities.Run) -> None:
    """Every name of the run contract is there, with sane values, and the energy figures add up."""
    assert run.info.status == "FINISHED", run.data.tags.get("error")
    for name in CONTRACT_PARAMS:
        assert name in run.data.params, name
    for name in CONTRACT_TAGS:
        assert run.data.tags.get(name), name
    trains = run.data.tags["variant"] != "quantized"
    for name in FINAL_METRICS + (EPOCH_METRICS if trains else ()):
        assert name in run.data.metrics, name
    metrics = run.data.metrics
    assert metrics["energy_kwh"] > 0
    assert metrics["emissions_kg"] > 0
    assert metrics["energy_kwh"] == pytest.approx(
        metrics["cpu_energy_kwh"] + metrics["gpu_energy_kwh"] + metrics["ram_energy_kwh"], rel=1e-6
    )
    for name in ("test_acc1", "test_acc5") + (("train_acc1", "val_acc1") if trains else ()):
        assert 0 <= metrics[name] <= 100, name
    assert metrics["test_acc5"] >= metrics["test_acc1"]
    assert metrics["infer_images_per_second"] > 0
    assert metrics["model_size_mb"] > 0
    assert run.data.tags["energy_method"].startswith("cpu=")
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "energy_ledger.csv"} <= artifacts
    assert_ledger_adds_up(client, run)


def assert_ledger_adds_up(client: MlflowClient, run: mlflow.entities.Run) -> None:
    """Read back through MlflowClient: epoch energies sum to train/val energy, the ledger's own phases
    (inference aside) sum to energy_kwh, upstream rows to upstream_energy_kwh, lifecycle = upstream + own."""
    metrics, run_id = run.data.metrics, run.info.run_id
    for epoch_name, total in (("epoch_train_energy_kwh", "train_energy_kwh"), ("epoch_val_energy_kwh", "val_energy_kwh")):
        history = client.get_metric_history(run_id, epoch_name)
        assert sum(point.value for point in history) == pytest.approx(metrics[total], rel=1e-6, abs=1e-15), epoch_name
    steps = [point.step for point in client.get_metric_history(run_id, "val_acc1")]
    assert steps == list(range(1, len(steps) + 1))
    own, upstream = read_ledger_csv(client.download_artifacts(run_id, "energy_ledger.csv"))
    assert metrics["energy_kwh"] == pytest.approx(own.energy(*MAKE_AND_CHECK), rel=1e-6)
    assert own.of("inference"), "an inference phase is measured (and kept out of the totals)"
    assert metrics["upstream_energy_kwh"] == pytest.approx(upstream.energy("train", "val", "setup", "interrupted"), rel=1e-6, abs=1e-15)
    assert metrics["lifecycle_energy_kwh"] == pytest.approx(metrics["upstream_energy_kwh"] + metrics["own_energy_kwh"], rel=1e-9)
    infer = own.of("inference")[0]  # energy and speed over the same window: our timer inside CodeCarbon's task
    assert metrics["infer_seconds"] == pytest.approx(infer.seconds, rel=1e-9)
    for phase in own.phases:  # CodeCarbon's own duration wraps the timed block by no more than its start/stop calls
        assert 0 <= phase.codecarbon_seconds - phase.seconds < 0.25 + 0.02 * phase.seconds, phase
    images = metrics["infer_images_per_second"] * metrics["infer_seconds"]
    assert metrics["infer_energy_wh_per_1k_images"] * images / 1e6 == pytest.approx(infer.energy_kwh, rel=1e-6)
    derived = run.data.tags.get("derived_from")
    assert {phase.upstream_run_id for phase in upstream.phases} == ({derived} if derived else set())


def test_mlflow_run_end_to_end(tiny_data_dir: Path, tracking_uri: str) -> None:
    """`mlflow run . --env-manager local` on a tiny folder: a parent and a baseline child with the contract."""
    mlflow_bin = shutil.which("mlflow", path=str(Path(PYTHON).parent)) or "mlflow"
    params = {"model": "resnet18", "variants": "baseline", "data_dir": str(tiny_data_dir), "epochs": "2",
              "batch_size": "64", "val_size": "100", "infer_seconds": "0.3", "download": "false",
              "infer_b1_images": "20", "infer_b1_repeats": "2"}
    command = [mlflow_bin, "run", str(ROOT), "--env-manager", "local", "--experiment-name", "e2e"]
    for name, value in params.items():
        command += ["-P", f"{name}={value}"]
    env = entry_env(tracking_uri)
    env["PATH"] = f"{Path(PYTHON).parent}:{env['PATH']}"
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri)
    runs = _runs(client, "e2e")
    parents = [run for run in runs if run.data.tags.get("kind") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = _children(client, parents[0].info.run_id, parents[0].info.experiment_id)
    assert list(children) == ["baseline"]
    baseline = children["baseline"]
    assert_contract(client, baseline)
    assert baseline.data.params["epochs"] == "2"
    assert len(client.get_metric_history(baseline.info.run_id, "epoch_energy_kwh")) == 2
    assert baseline.data.tags["data_source"].startswith("synthetic:")
    model = mlflow.pytorch.load_model(f"runs:/{baseline.info.run_id}/model")
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 100)
    assert "parent run id: " + parents[0].info.run_id in result.stdout
    assert "experiment: e2e\n" in result.stdout, "the summary names the experiment the runs are in"


@pytest.mark.parametrize("model_name", ["resnet18", "efficientnet_b0"])
def test_four_variants(model_name: str, tiny_data_dir: Path, tracking_uri: str) -> None:
    """All four variants with the full contract (amp only where this CPU runs it natively, else skipped
    with its reason); pruning cuts MACs, int8 shrinks the file; derived variants are priced with their
    baseline's training (lifecycle), and every figure adds up read back through MlflowClient."""
    code = entry.main(["--model", model_name, "--data-dir", str(tiny_data_dir), "--experiment", "variants",
                       "--train-subset", "256", *TINY_ARGS])
    assert code == 0
    client = MlflowClient(tracking_uri)
    parent = next(run for run in _runs(client, "variants") if run.data.tags.get("kind") == "parent")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["variants"] == "baseline,amp,pruned,quantized"
    children = _children(client, parent.info.run_id, parent.info.experiment_id)
    assert sorted(children) == ["amp", "baseline", "pruned", "quantized"]
    amp_run = children["amp"]
    if AMP_NATIVE:  # a bf16 CPU: fp32 and bf16 timed on real steps first, the ratio and any slowdown said
        tags = amp_run.data.tags
        speeds = {name: float(speed) for name, speed in (part.rsplit(" ", 1) for part in tags["amp_probe_img_s"].split(", "))}
        assert set(speeds) == {"fp32", "bf16"} and tags["precision"] == "bf16"
        assert float(tags["amp_speed_vs_fp32"]) == pytest.approx(speeds["bf16"] / speeds["fp32"], rel=0.01)  # 1-decimal speeds
        if "amp_slower_than_fp32" in tags:
            assert float(tags["amp_speed_vs_fp32"]) <= 1 and tags["amp_slower_than_fp32"].startswith(tags["amp_speed_vs_fp32"])
        else:
            assert float(tags["amp_speed_vs_fp32"]) >= 1
        probe, _ = read_ledger_csv(client.download_artifacts(amp_run.info.run_id, "energy_ledger.csv"))
        assert [p.kind for p in probe.phases if p.name == f"{model_name}/amp/precision-probe"] == ["setup"]
    else:
        assert amp_run.info.status == "KILLED" and "no native bf16/fp16" in amp_run.data.tags["skipped"]
        assert parent.data.tags["skipped_variants"] == "amp"
    measured = {v: run for v, run in children.items() if v != "amp" or AMP_NATIVE}
    for child in measured.values():
        assert_contract(client, child)
        assert child.data.tags["kind"] == "variant"
    base, pruned, quant = (children[v].data for v in ("baseline", "pruned", "quantized"))
    base_id = children["baseline"].info.run_id
    assert pruned.metrics["macs"] < pruned.metrics["macs_before"] == base.metrics["macs"]
    assert pruned.metrics["macs_reduction"] > 0.3
    assert pruned.tags["derived_from"] == quant.tags["derived_from"] == base_id
    made_baseline = base.metrics["train_energy_kwh"] + base.metrics["val_energy_kwh"] + base.metrics["setup_energy_kwh"]
    for derived in (pruned, quant):
        assert derived.metrics["upstream_energy_kwh"] == pytest.approx(made_baseline, rel=1e-6)
        assert derived.metrics["lifecycle_energy_kwh"] > base.metrics["train_energy_kwh"]
    assert not client.get_metric_history(children["quantized"].info.run_id, "val_acc1"), "quantized has no history of its own"
    assert quant.tags["precision"] == "int8"
    assert quant.metrics["model_size_mb"] < base.metrics["model_size_mb"]
    assert quant.metrics["fp32_cpu_infer_images_per_second"] > 0  # the fp32 reference: same batch, threads, window, rule
    assert quant.metrics["int8_speedup"] == pytest.approx(
        quant.metrics["infer_images_per_second"] / quant.metrics["fp32_cpu_infer_images_per_second"], rel=1e-6)
    assert quant.metrics["fp32_cpu_infer_seconds"] >= 0.3 and quant.metrics["infer_seconds"] >= 0.3
    for data in (base, pruned, quant):  # every variant timed in its own fastest layout, by one rule
        assert data.tags["infer_layout"] in ("channels_last", "contiguous")
    assert quant.tags["fp32_cpu_infer_layout"] in ("channels_last", "contiguous")
    recipe = json.loads(Path(client.download_artifacts(children["quantized"].info.run_id, "int8_recipe.json")).read_text())
    assert recipe["fp32_val_acc1"] == quant.metrics["fp32_val_acc1"] and recipe["tried"], recipe
    assert quant.tags["int8_keep_fp32"] == (",".join(recipe["keep_fp32"]) or "none")
    pruned_model = mlflow.pytorch.load_model(f"runs:/{children['pruned'].info.run_id}/model")
    assert pruned_model(torch.zeros(3, 3, 32, 32)).shape == (3, 100)
    int8_model = mlflow.pytorch.load_model(f"runs:/{children['quantized'].info.run_id}/model")
    assert int8_model(torch.zeros(3, 3, 32, 32)).shape == (3, 100)
    assert parent.data.metrics["energy_kwh"] == pytest.approx(
        sum(child.data.metrics["energy_kwh"] for child in measured.values()), rel=1e-6
    )
    for variant, child in measured.items():  # each child's ledger holds its own phases only
        own, _ = read_ledger_csv(client.download_artifacts(child.info.run_id, "energy_ledger.csv"))
        assert all(phase.name.startswith(f"{model_name}/{variant}/") for phase in own.phases), own.phases
    table = Path(client.download_artifacts(parent.info.run_id, "variants.csv")).read_text().splitlines()
    assert len(table) == 1 + 4 and table[0].startswith("variant,status,run_id,reason,test_acc1")


def test_failed_variant_marks_child_failed(tiny_data_dir: Path, tracking_uri: str) -> None:
    """A variant that raises ends FAILED with its reason in `error`; the next variant still runs."""
    from greenstudy.config import RunConfig
    from greenstudy.runs.main_run import make_bench, prepare, run_variant

    cfg = RunConfig(model="efficientnet_b0", data_dir=str(tiny_data_dir), download=False, epochs=1, batch_size=64,
                    val_size=100, train_subset=256, infer_seconds=0.2, infer_b1_repeats=0, experiment="fails")
    device, data = prepare(cfg)
    bench, tags = make_bench(cfg, device, data)
    mlflow.set_experiment("fails")
    with mlflow.start_run() as parent:
        pruned = run_variant(bench, "pruned", tags)  # no trained baseline given
        baseline = run_variant(bench, "baseline", tags)
    bench.meter.stop()
    client = MlflowClient(tracking_uri)
    children = _children(client, parent.info.run_id, parent.info.experiment_id)
    assert pruned.status == "FAILED" and children["pruned"].info.status == "FAILED"
    assert "needs a trained baseline" in children["pruned"].data.tags["error"]
    assert baseline.status == "FINISHED" and children["baseline"].info.status == "FINISHED"


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1
    assert err[-1].startswith("error: ")
    return err[-1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "vgg16"], "unknown model 'vgg16': choose one of resnet18, efficientnet_b0"),
        (["--batch-size", "0"], "batch_size must be at least 1"),
        (["--epochs", "-1"], "epochs must be at least 1"),
        (["--variants", "baseline,fp8"], "unknown variant 'fp8'"),
        (["--batch-size", "abc"], "invalid int value"),
        (["--country-iso-code", "usa"], "country_iso_code"),
    ],
)
def test_bad_parameters_fail_fast(args: list[str], expected: str, tracking_uri: str, tiny_data_dir: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    started = time.perf_counter()
    with pytest.raises(SystemExit) if "abc" in args else _no_raise():
        code = entry.main(["--data-dir", str(tiny_data_dir), *args])
        assert code == 2
    assert expected in _one_error_line(capsys)
    assert time.perf_counter() - started < 10
    assert _runs(MlflowClient(tracking_uri), "greenstudy-cifar100") == []


class _no_raise:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


def test_missing_data_offline(tmp_path: Path, tracking_uri: str, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    started = time.perf_counter()
    assert entry.main(["--data-dir", str(tmp_path / "nothing"), "--download", "false"]) == 2
    line = _one_error_line(capsys)
    assert "cifar100 not found" in line and "cifar-100-python.tar.gz" in line
    # download=true with no network: still one line, within seconds (DNS fails fast offline; a reachable
    # network would start a real download, which this test does not want).
    if not os.environ.get("GREENSTUDY_TEST_ONLINE"):
        assert entry.main(["--data-dir", str(tmp_path / "nothing")]) == 2
        assert "not found and no network" in _one_error_line(capsys)
    assert time.perf_counter() - started < 20
    assert _runs(MlflowClient(tracking_uri), "greenstudy-cifar100") == []


def test_corrupt_data_under_mlflow_run_is_failed(tiny_data_dir: Path, tmp_path: Path, tracking_uri: str) -> None:
    """A corrupt pickle: one clear line, non-zero exit, and the run `mlflow run` created ends FAILED."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_data_dir, broken)
    (broken / "cifar-100-python" / "train").write_bytes(b"this is not a pickle")
    mlflow_bin = shutil.which("mlflow", path=str(Path(PYTHON).parent)) or "mlflow"
    env = entry_env(tracking_uri)
    env["PATH"] = f"{Path(PYTHON).parent}:{env['PATH']}"
    started = time.perf_counter()
    result = subprocess.run(
        [mlflow_bin, "run", str(ROOT), "--env-manager", "local", "--experiment-name", "corrupt",
         "-P", f"data_dir={broken}", "-P", "download=false"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert any(line.startswith("error: corrupt data file") for line in result.stderr.splitlines()), result.stderr[-2000:]
    assert time.perf_counter() - started < 60
    runs = _runs(MlflowClient(tracking_uri), "corrupt")
    assert runs and all(run.info.status == "FAILED" for run in runs)


def test_unreachable_tracking_uri(tiny_data_dir: Path, tmp_path: Path) -> None:
    env = entry_env("http://127.0.0.1:9")
    started = time.perf_counter()
    result = subprocess.run([PYTHON, str(ROOT / "mlproject" / "main.py"), "--data-dir", str(tiny_data_dir)],
                            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: MLflow tracking server http://127.0.0.1:9 is unreachable")
    assert time.perf_counter() - started < 30


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_marks_runs_killed_with_metrics(signum: int, tiny_data_dir: Path, tracking_uri: str, tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) or SIGTERM (a cancelled `mlflow run`) during training: child and parent end KILLED,
    and the epochs logged so far are kept."""
    command = [PYTHON, str(ROOT / "mlproject" / "main.py"), "--data-dir", str(tiny_data_dir), "--experiment", "kill",
               "--model", "efficientnet_b0", "--variants", "baseline", *TINY_ARGS]
    command[command.index("--epochs") + 1] = "200"
    process = subprocess.Popen(command, env=entry_env(tracking_uri), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(tracking_uri)
    deadline = time.monotonic() + 120
    child = None
    while time.monotonic() < deadline and process.poll() is None:
        runs = [run for run in _runs(client, "kill") if run.data.tags.get("variant") == "baseline"]
        if runs and client.get_metric_history(runs[0].info.run_id, "train_loss"):
            child = runs[0]
            break
        time.sleep(0.5)
    assert child is not None, "training never logged an epoch"
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    statuses = {run.data.tags.get("kind", "child"): run.info.status for run in _runs(client, "kill")}
    assert statuses == {"parent": "KILLED", "variant": "KILLED"}
    assert len(client.get_metric_history(child.info.run_id, "train_loss")) >= 1
    killed = client.get_run(child.info.run_id)  # what it spent up to the interruption is kept
    assert killed.data.metrics["energy_kwh"] >= killed.data.metrics["train_energy_kwh"] > 0
    parent = next(run for run in _runs(client, "kill") if run.data.tags.get("kind") == "parent")
    for name in ("energy_kwh", "unfinished_energy_kwh"):  # the parent's total counts the interrupted child's energy
        assert parent.data.metrics[name] == pytest.approx(killed.data.metrics["energy_kwh"], rel=1e-9)


def test_two_runs_at_once_never_measure_together(tiny_data_dir: Path, tracking_uri: str, tmp_path: Path) -> None:
    """CodeCarbon measures the whole machine: two runs started at once take turns (machine lock), so
    no measured phase of one overlaps a measured phase of the other."""
    env = {**entry_env(tracking_uri), "GREENSTUDY_ENERGY_LOCK": str(tmp_path / "energy.lock")}
    MlflowClient(tracking_uri).search_experiments()  # create the store's schema once, before two processes race for it
    command = [PYTHON, str(ROOT / "mlproject" / "main.py"), "--data-dir", str(tiny_data_dir), "--model", "efficientnet_b0",
               "--variants", "baseline", "--train-subset", "128", *TINY_ARGS]
    processes = [subprocess.Popen([*command, "--experiment", f"twin{i}"], env=env, cwd=tmp_path, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err[-1500:] for _, err in outputs]
    assert any("energy: waiting for" in err for _, err in outputs)
    client = MlflowClient(tracking_uri)
    spans = []
    for i in range(2):
        child = next(run for run in _runs(client, f"twin{i}") if run.data.tags.get("kind") == "variant")
        own, _ = read_ledger_csv(client.download_artifacts(child.info.run_id, "energy_ledger.csv", str(tmp_path / str(i))))
        spans.append([(p.started_at, p.started_at + p.seconds) for p in own.phases])
    for start_a, end_a in spans[0]:
        for start_b, end_b in spans[1]:
            assert end_a <= start_b or end_b <= start_a, "two runs measured the machine at the same time"
