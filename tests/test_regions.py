"""The report's "where" and "when" figures on a real MLflow store: runs logged with the metric contract and an
`energy_ledger.csv` artifact, the report built with `regions` and `carbon_intensity_csv`, and every figure read
back from the report run's artifacts, against CodeCarbon's own files and hand-computed sums."""

from __future__ import annotations

import csv
import io
import json
from importlib import resources
from pathlib import Path

import matplotlib.image
import pytest
import yaml
from mlflow.tracking import MlflowClient

from greenstudy.errors import ConfigError
from greenstudy.measure.ledger import Ledger, write_ledger_csv
from greenstudy.report.entry import build_report, report_parser
from tests.conftest import ROOT, tracking_store
from tests.test_carbon import HOURLY, T0, phase, run_phases, write_series
from tests.test_report import contract, log_child

EXPERIMENT = "greenstudy-regions-test"
OWN_KWH = 0.003  # run_phases(): 2 Wh + 1 Wh
UPSTREAM_KWH = 0.004


def codecarbon_data(relative: str) -> Path:
    return Path(str(resources.files("codecarbon").joinpath(relative)))


def cloud_table() -> dict[str, dict[str, str]]:
    with codecarbon_data("data/cloud/impact.csv").open(encoding="utf-8-sig", newline="") as handle:
        return {f"{r['provider']}:{r['region']}": r for r in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A `main` run: a baseline and a quantized child (standing on the baseline), each with its ledger."""
    tmp = tmp_path_factory.mktemp("regions")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=str(tmp / "artifacts"))
    parent = client.create_run(experiment_id, run_name="resnet18", tags={"kind": "parent", "model": "resnet18"}).info.run_id
    base = log_child(client, experiment_id, parent, "resnet18", "baseline", contract(OWN_KWH, acc=20.0))
    quant = log_child(client, experiment_id, parent, "resnet18", "quantized", contract(OWN_KWH, UPSTREAM_KWH, acc=19.0),
                      tags={"derived_from": base})
    for run_id, upstream in ((base, None), (quant, Ledger([phase("base/train", UPSTREAM_KWH, T0, 3600, upstream=base)]))):
        path = write_ledger_csv(tmp / "energy_ledger.csv", Ledger(run_phases()), upstream)
        client.log_artifact(run_id, str(path))
    client.set_terminated(parent, "FINISHED")
    series = write_series(tmp / "series.csv", HOURLY)
    with tracking_store(uri):
        yield {"client": client, "base": base, "quant": quant, "series": series, "experiment_id": experiment_id}


def _csv(client: MlflowClient, run_id: str, name: str, dst: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(Path(client.download_artifacts(run_id, name, str(dst))).read_text())))


def test_region_table_prices_the_measured_energy_on_codecarbons_grids(store: dict[str, object], tmp_path: Path) -> None:
    client: MlflowClient = store["client"]
    result = build_report(EXPERIMENT, regions="FRA,POL,gcp:europe-north1", carbon_intensity_csv=str(store["series"]))
    rows = _csv(client, result.run_id, "regions.csv", tmp_path)
    mix = json.loads(codecarbon_data("data/private_infra/global_energy_mix.json").read_text())
    cloud = cloud_table()
    expected = {"FRA": (mix["FRA"]["carbon_intensity"], str(mix["FRA"]["year"])),
                "POL": (mix["POL"]["carbon_intensity"], str(mix["POL"]["year"])),
                "gcp:europe-north1": (float(cloud["gcp:europe-north1"]["impact"]), "not stated")}
    assert [(r["variant"], r["region"]) for r in rows] == [(v, g) for v in ("baseline", "quantized") for g in expected]
    for row in rows:
        intensity, year = expected[row["region"]]
        lifecycle = OWN_KWH + (UPSTREAM_KWH if row["variant"] == "quantized" else 0.0)
        assert float(row["g_per_kwh"]) == intensity and row["year"] == year
        assert float(row["own_emissions_g"]) == pytest.approx(OWN_KWH * intensity)
        assert float(row["lifecycle_emissions_g"]) == pytest.approx(lifecycle * intensity)
        assert float(row["as_logged_lifecycle_g"]) == pytest.approx(lifecycle * 0.4 * 1000)  # what contract() logged
        table = "global_energy_mix.json" if row["region"].isupper() else "impact.csv"
        assert row["source_table"].startswith("codecarbon ") and row["source_table"].endswith(table)
    assert client.get_run(result.run_id).data.metrics["region_bars_plotted"] == 6
    assert client.get_run(result.run_id).data.params["regions"] == "FRA,POL,gcp:europe-north1"
    picture = matplotlib.image.imread(client.download_artifacts(result.run_id, "emissions_by_region.png", str(tmp_path)))
    assert picture.shape[0] > 400 and picture.shape[1] > 700
    page = Path(client.download_artifacts(result.run_id, "report.html", str(tmp_path))).read_text()
    assert "Where to train" in page and "global_energy_mix.json" in page and "gcp:europe-north1 (FIN)" in page


def test_timing_table_and_best_start_from_the_ledgers(store: dict[str, object], tmp_path: Path) -> None:
    client: MlflowClient = store["client"]
    result = build_report(EXPERIMENT, regions="FRA", carbon_intensity_csv=str(store["series"]))
    rows = {r["variant"]: r for r in _csv(client, result.run_id, "timing.csv", tmp_path)}
    assert set(rows) == {"baseline", "quantized"}
    for variant, row in rows.items():
        assert float(row["emissions_kg_timed"]) == pytest.approx(0.75e-3)  # 2 Wh at 400/300 g, 1 Wh at 50 g
        upstream_g = UPSTREAM_KWH * 400 if variant == "quantized" else 0.0
        assert float(row["lifecycle_emissions_kg_timed"]) == pytest.approx((0.75 + upstream_g) / 1000)
        assert row["best_start_utc"] == "2026-12-01 02:00 UTC"
        assert float(row["best_start_saving_pct"]) == pytest.approx(100 * (0.75 - 0.4) / 0.75)
    page = Path(client.download_artifacts(result.run_id, "report.html", str(tmp_path))).read_text()
    assert "it would have emitted 46.7 % less" in page


def test_default_regions_and_bad_input(store: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client: MlflowClient = store["client"]
    result = build_report(EXPERIMENT)
    regions = list(dict.fromkeys(r["region"] for r in _csv(client, result.run_id, "regions.csv", tmp_path)))
    ranked = sorted(cloud_table().items(), key=lambda item: (float(item[1]["impact"]), item[0]))
    assert regions == [ranked[0][0], ranked[(len(ranked) - 1) // 2][0], ranked[-1][0]]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert "timing.csv" not in artifacts  # no series, no timed figures logged by the runs
    before = len(client.search_runs([store["experiment_id"]]))
    with pytest.raises(ConfigError, match="aws:us-east-1"):
        build_report(EXPERIMENT, regions="FRA,aws:us-east-1")
    late = write_series(tmp_path / "late.csv", HOURLY, start=T0 + 86400)
    missed = build_report(EXPERIMENT, regions="FRA", carbon_intensity_csv=str(late))
    notes = {r["note"] for r in _csv(client, missed.run_id, "timing.csv", tmp_path / "late")}
    assert len(notes) == 1 and notes.pop().startswith("not computed: carbon_intensity_csv covers 2026-12-02 00:00 UTC")
    assert len(client.search_runs([store["experiment_id"]])) == before + 1  # the bad region created no run


def test_mlproject_report_declares_the_new_parameters() -> None:
    section = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["report"]
    args = report_parser().parse_args([])
    assert section["parameters"]["regions"]["default"] == args.regions == "default"
    assert section["parameters"]["carbon_intensity_csv"]["default"] == args.carbon_intensity_csv == ""
    assert "--regions {regions}" in section["command"] and "--carbon-intensity-csv {carbon_intensity_csv}" in section["command"]


def test_without_a_series_the_report_shows_what_the_runs_logged(store: dict[str, object], tmp_path: Path) -> None:
    """A child that logged the timed figures itself (greenstudy.measure.carbon_hooks.timed_metrics on `main`)."""
    client: MlflowClient = store["client"]
    experiment_id = client.create_experiment("greenstudy-regions-logged", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment_id, tags={"kind": "parent", "model": "resnet18"}).info.run_id
    timed = {"emissions_kg_timed": 0.75e-3, "lifecycle_emissions_kg_timed": 0.75e-3, "best_start_saving_pct": 46.7}
    child = log_child(client, experiment_id, parent, "resnet18", "baseline", contract(OWN_KWH, **timed),
                      tags={"best_start_utc": "2026-12-01 02:00 UTC", "emissions_timed": "priced on s.csv"})
    plain = log_child(client, experiment_id, parent, "efficientnet_b0", "baseline", contract(OWN_KWH))
    result = build_report("greenstudy-regions-logged", regions="FRA")
    rows = _csv(client, result.run_id, "timing.csv", tmp_path)
    assert [(r["run_id"], float(r["emissions_kg_timed"]), r["best_start_utc"]) for r in rows] == [
        (child, 0.75e-3, "2026-12-01 02:00 UTC")]  # the run that logged nothing has no row
    page = Path(client.download_artifacts(result.run_id, "report.html", str(tmp_path))).read_text()
    when = page.split("When to train")[1].split("</table>")[0]
    assert "figures the runs logged" in when and "it would have emitted 46.7 % less" in when and plain[:8] not in when
