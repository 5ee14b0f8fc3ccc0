"""`python -m greenstudy.results` rebuilds results/ from MLflow: from a small real `main` run (real CIFAR-100 where
../shared/data has it, 256 images, 1 epoch, baseline + quantized), and from runs logged directly for the parts a
short run cannot produce (an interrupted run, a study parent with its front). Every check compares the README's
cells and the CSVs with the values read back through MlflowClient — never with published numbers."""

from __future__ import annotations

import csv
import math
import subprocess
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pytest  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from optuna.distributions import CategoricalDistribution  # noqa: E402

from greenstudy.report.comparison import RunPoint  # noqa: E402
from greenstudy.results.build import regenerate  # noqa: E402
from greenstudy.results.tables import (  # noqa: E402
    NOT_REACHED,
    THRESHOLDS,
    VARIANT_HEADERS,
    RunView,
    command_line,
    energy_to,
    energy_to_cell,
    make_command,
    num,
    pct,
    wh,
)
from greenstudy.runs.main_run import run_main  # noqa: E402
from greenstudy.runs.params import main_parser, parse_main  # noqa: E402
from greenstudy.training.data import write_synthetic_cifar  # noqa: E402
from tests.conftest import PYTHON, ROOT, SHARED_DATA, entry_env  # noqa: E402

HAS_REAL_DATA = (SHARED_DATA / "cifar-100-python.tar.gz").is_file()
EXPERIMENT = "results-test"


def table_rows(readme: str, header_start: str) -> list[dict[str, str]]:
    """Rows, in order, of every markdown table whose header starts with `header_start`."""
    rows: list[dict[str, str]] = []
    headers: list[str] | None = None
    for line in readme.splitlines():
        if not line.startswith("|"):
            headers = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if headers is None:
            headers = cells if line.startswith(header_start) else []
        elif headers and not line.startswith("|---"):
            rows.append(dict(zip(headers, cells, strict=True)))
    return rows


def by_run_id(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {row["run id"]: row for row in rows}


# ---------------------------------------------------------------- a small real experiment


@pytest.mark.slow
def test_results_are_rebuilt_from_a_small_real_experiment(tracking_uri: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """~60-80 s on a shared 2-core CPU: one epoch of ResNet-18 on 256 real images, then its int8 copy."""
    monkeypatch.setenv("GREENSTUDY_ENERGY_LOCK", str(tmp_path / "energy.lock"))  # other test sessions on this machine
    data_dir = SHARED_DATA
    if not HAS_REAL_DATA:
        data_dir = tmp_path / "cifar"
        write_synthetic_cifar(data_dir, "cifar100", n_train=800, n_test=200, seed=0)
    cfg = parse_main(["--model", "resnet18", "--variants", "baseline,quantized", "--data-dir", str(data_dir),
                      "--download", "false", "--epochs", "1", "--batch-size", "64", "--train-subset", "256",
                      "--val-size", "500", "--test-subset", "200", "--infer-seconds", "0.5", "--calib-batches", "2",
                      "--infer-b1-images", "20", "--infer-b1-repeats", "1", "--int8-max-loss", "100",
                      "--experiment", EXPERIMENT, "--checkpoint-dir", str(tmp_path / "ckpt")])
    outcome = run_main(cfg)
    assert not outcome.failed
    ids = {child.variant: child.run_id for child in outcome.children}
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id  # what `mlflow run -P resume=` leaves:
    client.create_run(experiment_id, tags={"kind": "resume-sitting", "resumes": outcome.parent_run_id})
    out = tmp_path / "results"
    out.mkdir()
    (out / "stale.png").write_bytes(b"left over from an older experiment")
    result = subprocess.run([PYTHON, "-m", "greenstudy.results", "--experiment", EXPERIMENT, "--out", str(out)],
                            env=entry_env(tracking_uri), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    readme = (out / "README.md").read_text()
    base, quant = client.get_run(ids["baseline"]).data, client.get_run(ids["quantized"]).data

    rows = by_run_id(table_rows(readme, "| variant | run id |"))
    assert set(rows) == set(ids.values())
    for run_id, data in ((ids["baseline"], base), (ids["quantized"], quant)):
        m, row = data.metrics, rows[run_id]
        assert row["test top-1 %"] == pct(m["test_acc1"]) and row["test top-5 %"] == pct(m["test_acc5"])
        assert row["lifecycle Wh"] == wh(m["lifecycle_energy_kwh"]) and row["own Wh"] == wh(m["own_energy_kwh"])
        assert row["infer Wh/1k img"] == num(m["infer_energy_wh_per_1k_images"])
        assert row["infer img/s"] == num(m["infer_images_per_second"], ".1f")
        assert row["params M"] == num(m["params"], ".3f", 1e-6) and row["size MB"] == num(m["model_size_mb"], ".2f")
    assert quant.metrics["lifecycle_energy_kwh"] > quant.metrics["own_energy_kwh"]  # the baseline is upstream of int8
    fp32 = rows[ids["quantized"]]["fp32 same CPU Wh/1k img · img/s"]
    assert fp32 == (f"{num(quant.metrics['fp32_cpu_infer_energy_wh_per_1k_images'])} · "
                    f"{num(quant.metrics['fp32_cpu_infer_images_per_second'], '.1f')}")
    best = max(m.value for m in client.get_metric_history(ids["baseline"], "val_acc1"))
    assert best < THRESHOLDS[0]  # one epoch on 256 images is near chance
    assert rows[ids["baseline"]]["Wh to 40 % val"] == f"{NOT_REACHED} (best {pct(best)} %)"
    assert rows[ids["quantized"]]["Wh to 40 % val"].startswith("n/a: no epochs of its own")

    with (out / "comparison.csv").open() as handle:
        csv_rows = {r["run_id"]: r for r in csv.DictReader(handle)}
    assert set(csv_rows) == set(ids.values())
    for name in ("test_acc1", "test_acc5", "lifecycle_energy_kwh", "infer_images_per_second", "macs"):
        assert float(csv_rows[ids["baseline"]][name]) == pytest.approx(base.metrics[name])
    assert csv_rows[ids["baseline"]]["energy_to_40_val_kwh"] == ""  # not reached: never a made-up number

    poster = table_rows(readme, "| source | model |")
    assert [(r["source"], r["model"]) for r in poster] == [("poster", "resnet18"), ("greenstudy", "resnet18"),
                                                           ("poster", "efficientnet_b0"), ("greenstudy", "efficientnet_b0")]
    assert poster[3]["top-1"].startswith("no finished")  # EfficientNet-B0: no run here, said so
    ours = poster[1]
    assert ours["run id"] == ids["baseline"] and ours["val top-1 at epoch 20"] == "not reached"
    assert ours["kg CO2eq"] == num(base.metrics["emissions_kg"], ".3g") and ours["top-1"].startswith(pct(base.metrics["test_acc1"]))
    assert "| poster | resnet18 | – | 20 | 52.5 % |" in readme and "99.8 %" in readme
    assert "ran 1 epochs, not the poster's 20" in readme and "trained on a subset of 256 images" in readme
    command = next(line for line in readme.splitlines() if line.startswith("mlflow run ."))
    for part in (f"-P data_dir={data_dir}", "-P download=false", "-P variants=baseline,quantized", "-P epochs=1",
                 "-P train_subset=256", "-P calib_batches=2", f"--experiment-name {EXPERIMENT}"):
        assert part in command
    resumed = command.replace(" -P checkpoint_dir=", f" -P resume={outcome.parent_run_id} -P checkpoint_dir=")
    assert f"resumed in place 1 time(s) with\n{resumed}\n" in readme
    assert base.tags["cpu_model"] in readme and base.tags["energy_method"] in readme and base.tags["data_source"] in readme
    assert not (out / "stale.png").exists()
    for picture in ("accuracy_vs_energy.png", "learning_curves.png"):
        assert matplotlib.image.imread(out / picture).shape[0] > 100
    assert "No unfinished run" in readme and "No study parent run" in readme


# ---------------------------------------------------------------- runs a short test cannot produce


def _log(client: MlflowClient, experiment_id: str, name: str, tags: dict[str, str], params: dict[str, str],
         metrics: dict[str, float], history: dict[str, list[float]] | None = None, status: str = "FINISHED") -> str:
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, 0) for k, v in metrics.items()]
    batch += [Metric(k, v, now, step) for k, values in (history or {}).items() for step, v in enumerate(values, start=1)]
    client.log_batch(run_id, metrics=batch, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(run_id, status)
    return run_id


def test_interrupted_runs_failures_and_the_study_are_listed(tracking_uri: str, tmp_path: Path) -> None:
    """A KILLED child with a checkpoint gets its resume command, a FAILED one its reason, a study parent its
    front (from its pareto.csv artifact), its trials and its picture."""
    client = MlflowClient(tracking_uri)
    eid = client.create_experiment(EXPERIMENT)
    common = {"model": "efficientnet_b0", "dataset": "cifar100", "device": "cpu", "cpu_model": "Test CPU",
              "energy_method": "cpu=rapl"}
    params = {"model": "efficientnet_b0", "dataset": "cifar100", "epochs": "20", "batch_size": "128", "seed": "0",
              "train_subset": "0", "device": "cpu"}
    parent = _log(client, eid, "efficientnet_b0", {**common, "kind": "parent"},
                  {"model": "efficientnet_b0", "variants": "baseline,pruned", "dataset": "cifar100"}, {}, status="KILLED")
    child_tags = {**common, "kind": "variant", "mlflow.parentRunId": parent}
    killed = _log(client, eid, "b0-baseline", {**child_tags, "variant": "baseline", "checkpoint": "/ck/last.pt"},
                  {**params, "variant": "baseline"}, {}, {"val_acc1": [20.0, 31.5, 41.0],
                                                         "cumulative_energy_kwh": [0.01, 0.02, 0.03]}, status="KILLED")
    client.set_tag(killed, "checkpoint", f"/ck/{killed}/last.pt")  # checkpoint_dir/<child run id>/last.pt
    failed = _log(client, eid, "b0-pruned", {**child_tags, "variant": "pruned", "error": "RuntimeError: boom"},
                  {**params, "variant": "pruned"}, {}, status="FAILED")
    study = _log(client, eid, "study-s", {**common, "kind": "study", "hypervolume_reference": "val_acc1=0, x"},
                 {"study_name": "s", "model": "efficientnet_b0", "n_trials": "8", "sampler_seed": "3", "epochs": "5",
                  "objective": "final", "batch_size_choices": "64,128", "reference_batch_size": "128", "base_lr": "0.1"},
                 {"trials_complete": 2, "all_trials_energy_kwh": 0.05, "hypervolume": 1.5})
    trials = [_log(client, eid, f"trial-{n}", {**common, "kind": "trial", "trial_number": str(n), "mlflow.parentRunId": study},
                   {**params, "batch_size": str(bs), "lr": "0.1", "train_subset": "20000"},
                   {"val_acc1": acc, "train_energy_kwh": e, "val_energy_kwh": e / 10}) for n, bs, acc, e in
              ((0, 64, 30.0, 0.02), (1, 128, 25.0, 0.01))]
    artifacts = tmp_path / "study"
    artifacts.mkdir()
    with (artifacts / "pareto.csv").open("w") as handle:
        handle.write("trial,batch_size,lr,val_acc1,train_val_energy_kwh,run_id\n"
                     f"1,128,0.1,25.0,0.011,{trials[1]}\n0,64,0.1,30.0,0.022,{trials[0]}\n")
    fig, ax = plt.subplots()
    ax.plot([0.011, 0.022], [25, 30])
    fig.savefig(artifacts / "pareto_front.png")
    plt.close(fig)
    client.log_artifacts(study, str(artifacts))

    out = tmp_path / "results"
    readme = regenerate([EXPERIMENT], out).read_text()
    progress = readme.split("## In progress")[1]
    assert killed in progress and "3 of 20" in progress and wh(0.03) in progress
    resume = next(line for line in progress.splitlines() if line.startswith("mlflow run ."))
    assert resume.endswith(f"-P resume={parent} -P checkpoint_dir=/ck")
    assert "-P variants=baseline,pruned" in resume and "-P epochs=20" in resume
    assert failed in readme.split("## Skipped and failed runs")[1] and "boom" in readme
    section = readme.split("## Batch-size study")[1]
    listed = table_rows(section, "| trial | batch size |")
    assert [r["run id"] for r in listed] == [trials[1], trials[0], trials[0], trials[1]]  # front (least energy first), all
    assert listed[0]["train_val_energy Wh"] == wh(0.011) and listed[0]["val top-1 %"] == pct(25.0)
    assert listed[3]["train+val Wh"] == wh(0.01 + 0.001) and listed[3]["status"] == "FINISHED"
    tune = next(line for line in section.splitlines() if line.startswith("mlflow run ."))
    for part in ("-e tune", "-P n_trials=8", "-P sampler_seed=3", "-P train_subset=20000", "-P study_name=s"):
        assert part in tune
    assert "-P batch_size=" not in tune  # 128 is the default reference batch size
    assert (out / "pareto.csv").read_text() == (artifacts / "pareto.csv").read_text()
    assert (out / "pareto_front.png").read_bytes() == (artifacts / "pareto_front.png").read_bytes()

    # with its Optuna storage the front is read from the study itself (here: trial 1 alone, a different front)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study_obj = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    dist = {"batch_size": CategoricalDistribution([64, 128])}
    for number, (bs, acc, energy) in enumerate(((64, 20.0, 0.022), (128, 25.0, 0.011))):
        study_obj.add_trial(optuna.trial.create_trial(params={"batch_size": bs}, distributions=dist, values=[acc, energy],
                                                      user_attrs={"lr": 0.1, "mlflow_run_id": trials[number]}))
    section = regenerate([EXPERIMENT], out, study_name="s", storage=storage).read_text().split("## Batch-size study")[1]
    assert "front read from Optuna storage" in section
    assert f"`make results EXPERIMENT={EXPERIMENT} STUDY=s STORAGE={storage}`" in (out / "README.md").read_text()
    assert [r["run id"] for r in table_rows(section, "| trial | batch size |")][:2] == [trials[1], trials[0]]  # front, all
    with (out / "pareto.csv").open() as handle:
        assert [r["run_id"] for r in csv.DictReader(handle)] == [trials[1]]

    # a second `tune` session of the same study through `mlflow run`: it logs the empty study_name default
    # as '' (the name is in the tag optuna_study); one section gathers both sessions' trials and commands
    later = _log(client, eid, "study-s2", {**common, "kind": "study", "optuna_study": "s"},
                 {"study_name": "''", "model": "efficientnet_b0", "n_trials": "2", "sampler": "grid", "epochs": "5",
                  "resume": "''"}, {"trials_complete": 3})
    third = _log(client, eid, "trial-2", {**common, "kind": "trial", "trial_number": "2", "mlflow.parentRunId": later},
                 {**params, "batch_size": "64", "lr": "0.1"}, {"val_acc1": 31.0, "train_energy_kwh": 0.03, "val_energy_kwh": 0.0})
    section = regenerate([EXPERIMENT], out, study_name="s", storage=storage).read_text().split("## Batch-size study")[1]
    section = section.split("## Pictures")[0]
    assert section.count("### Study `s`") == 1 and f"latest parent run {later}" in section and "2 session(s)" in section
    assert [r["run id"] for r in table_rows(section, "| trial | batch size |")][1:] == [trials[0], trials[1], third]  # front, all
    tunes = [line for line in section.splitlines() if line.startswith("mlflow run .")]
    assert len(tunes) == 2 and "-P study_name=s " in tunes[1] and "''" not in tunes[1] and "resume" not in tunes[1]


# ---------------------------------------------------------------- pure parts


def _view(variant: str, acc: list[float], cumulative: list[float], upstream: float = 0.0) -> RunView:
    point = RunPoint("r1", "n", "resnet18", variant, 0, {"upstream_energy_kwh": upstream}, {}, {})
    steps = range(1, len(acc) + 1)
    return RunView(point, dict(zip(steps, acc, strict=True)), dict(zip(steps, cumulative, strict=True)))


def test_energy_to_threshold_is_the_first_epoch_reaching_it() -> None:
    view = _view("baseline", [30.0, 45.0, 39.0, 53.0], [0.1, 0.2, 0.3, 0.4])
    assert energy_to(view, 40.0) == 0.2 and energy_to(view, 52.5) == 0.4
    assert energy_to_cell(view, 40.0) == f"{wh(0.2)} (epoch 2)"
    assert energy_to(view, 60.0) is None and energy_to_cell(view, 60.0) == f"{NOT_REACHED} (best 53.00 %)"
    pruned = _view("pruned", [41.0], [0.05], upstream=0.4)
    assert energy_to(pruned, 40.0) == pytest.approx(0.45) and "incl. upstream 400" in energy_to_cell(pruned, 40.0)
    assert "Wh to 52.5 % val" in VARIANT_HEADERS and math.isnan(float("nan"))


def test_command_keeps_non_defaults_and_quotes() -> None:
    line = command_line(main_parser(), {"model": "resnet18", "epochs": "20", "lr": "0.1", "batch_size": "256",
                                        "variants": "baseline,amp", "cpu_power_w": "None", "data_dir": "/a b"}, "exp x")
    assert line == ("mlflow run . --env-manager local --experiment-name 'exp x' -P model=resnet18 -P data_dir='/a b' "
                    "-P epochs=20 -P batch_size=256 -P variants=baseline,amp")


def test_regeneration_command_never_shows_credentials() -> None:
    line = make_command(["a", "b c"], "s", "postgresql+psycopg2://tuner:secret@db-host:5432/optuna")
    assert line == "make results EXPERIMENT='a,b c' STUDY=s STORAGE=postgresql+psycopg2://db-host:5432/optuna"


def test_make_results_calls_the_module() -> None:
    result = subprocess.run(["make", "-n", "results", "EXPERIMENT=a,b", "STUDY=s"], cwd=ROOT, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "greenstudy.results" in line)
    assert line.rstrip().endswith('-m greenstudy.results --experiment "a,b" --out results --study-name "s"')
