"""The MLflow UI, checked in a real headless Chromium (Playwright, the system's /usr/bin/chromium, never a
downloaded browser): a real `mlflow server` serves a store holding variant runs and a report run; the page
must list the runs, show the energy_kwh and test_acc1 values MlflowClient reads, and render the report's
accuracy_vs_energy.png in the artifact view. Screenshots go to the test's tmp dir and test-artifacts/browser/."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from greenstudy.report.entry import build_report
from tests.conftest import stop_process_group, tracking_store

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS_DIR = ROOT / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
EXPERIMENT = "greenstudy-browser-test"
SERVER_START_S = 90
UI_TIMEOUT_MS = 90_000
BREAKDOWN = {f"{phase}_{part}_energy_kwh": value for phase in ("train", "val", "setup", "test")
             for part, value in (("cpu", 2e-5), ("gpu", 0.0), ("ram", 6e-5))}

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if CHROMIUM is None:
    pytest.skip("chromium is not installed (run .ci/system-deps.sh)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_runs(client: MlflowClient, experiment_id: str) -> dict[str, str]:
    """Two models x two variants plus a FAILED child, logged with the names greenstudy's runs use."""
    ids = {}
    now = int(time.time() * 1000)
    for m, model in enumerate(("resnet18", "efficientnet_b0")):
        parent = client.create_run(experiment_id, run_name=model, tags={"kind": "parent", "model": model}).info.run_id
        ids[model] = parent
        for v, variant in enumerate(("baseline", "amp")):
            tags = {"mlflow.parentRunId": parent, "kind": "variant", "model": model, "variant": variant, "cpu_model": "Browser-test CPU",
                    "gpu_model": "none", "device": "cpu", "energy_method": "logged-directly"}
            run_id = client.create_run(experiment_id, run_name=f"{model}-{variant}", tags=tags).info.run_id
            metrics = {"test_acc1": 31.25 + 7 * m - 1.5 * v, "energy_kwh": 0.0123456789 / (1 + m + v),
                       "emissions_kg": 0.004 / (1 + m + v), "infer_energy_wh_per_1k_images": 0.07,
                       "infer_images_per_second": 150.0 * (1 + v), "params": 11e6 / (1 + 2 * m), "macs": 557e6 / (1 + 16 * m),
                       "model_size_mb": 42.7 / (1 + 2 * m), **BREAKDOWN}
            batch = [Metric(k, val, now, 0) for k, val in metrics.items()]
            batch += [Metric("val_acc1", 10.0 * step + m, now, step) for step in (1, 2)]
            batch += [Metric("epoch_energy_kwh", metrics["energy_kwh"] / 3, now, step) for step in (1, 2)]
            client.log_batch(run_id, metrics=batch)
            client.set_terminated(run_id, "FINISHED")
            ids[f"{model}-{variant}"] = run_id
        client.set_terminated(parent, "FINISHED")
    failed = client.create_run(experiment_id, run_name="resnet18-pruned", tags={
        "mlflow.parentRunId": ids["resnet18"], "kind": "variant", "model": "resnet18", "variant": "pruned", "error": "RuntimeError: boom"})
    client.set_terminated(failed.info.run_id, "FAILED")
    ids["failed"] = failed.info.run_id
    return ids


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """Runs and a report in a sqlite store with local artifacts, served by `mlflow server` on 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("browser")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=str(tmp / "artifacts"))
    ids = _log_runs(client, experiment_id)
    with tracking_store(uri):
        report = build_report(EXPERIMENT)
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", uri, "--workers", "1"],
        cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, server, tmp / "server.log")
        yield {"base": base, "client": client, "experiment_id": experiment_id, "ids": ids, "report": report}
    finally:
        _stop(server)
        log.close()


def _wait_healthy(base: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer /health within {SERVER_START_S} s: {log.read_text()[-2000:]}")


_stop = stop_process_group


@pytest.fixture(scope="module")
def page(served: dict[str, object]) -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1920, "height": 1080})
            tab = context.new_page()
            tab.set_default_timeout(UI_TIMEOUT_MS)
            yield tab
        finally:
            browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def _screenshot(tab: object, shots: Path, name: str) -> Path:
    path = shots / name
    tab.screenshot(path=str(path), full_page=True)
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    copy = Path(shutil.copy(path, ARTIFACTS_DIR / name))
    print(f"screenshot: {path}  (copy: {copy})")
    return copy


def _close_assistant(tab: object) -> None:
    """MLflow 3.17 opens an 'Assistant' side panel; close it so the runs get the room (if it is there)."""
    close = tab.get_by_role("button", name="Close", exact=True)
    if close.count():
        close.first.click()


def _show_metric_columns(tab: object, names: tuple[str, ...]) -> None:
    tab.get_by_role("button", name="Columns", exact=True).click()
    search = tab.get_by_placeholder("Search columns")
    for name in names:
        search.fill(name)
        tab.locator("[data-testid=column-selector-tree] [role=treeitem], [data-testid=column-selector-tree] div") \
            .filter(has_text=re.compile(rf"^{re.escape(name)}$")).last.click()
    tab.keyboard.press("Escape")


def _cell(tab: object, run_id: str, metric: str) -> str:
    cell = tab.locator(f'[role=row][row-id="{run_id}"] [role=gridcell][col-id="metrics.`{metric}`"]').first
    cell.wait_for()
    return cell.inner_text().strip()


def test_runs_table_lists_runs_with_their_metrics(served: dict[str, object], page: object, shots: Path) -> None:
    client: MlflowClient = served["client"]
    ids: dict[str, str] = served["ids"]
    page.goto(f"{served['base']}/#/experiments/{served['experiment_id']}/runs")
    for parent in ("resnet18", "efficientnet_b0"):
        page.get_by_text(parent, exact=True).first.wait_for()
    _close_assistant(page)
    page.get_by_text("report", exact=True).first.wait_for()
    for parent in ("resnet18", "efficientnet_b0"):  # expand the parent rows to list the children
        page.locator(f'[role=row][row-id="{ids[parent]}"] button[data-component-id*="runnamecellrenderer"]').first.click()
    children = {name: ids[name] for name in ids if "-" in name} | {"resnet18-pruned": ids["failed"]}
    for name in children:
        page.get_by_text(name, exact=True).first.wait_for()
    _show_metric_columns(page, ("energy_kwh", "test_acc1"))
    for name, run_id in children.items():
        logged = client.get_run(run_id).data.metrics
        for metric in ("energy_kwh", "test_acc1"):
            shown = _cell(page, run_id, metric)
            if metric in logged:
                assert float(shown) == logged[metric], (name, metric, shown)
            else:
                assert shown in ("-", ""), (name, metric, shown)  # the FAILED run logged nothing
    _screenshot(page, shots, "runs_table.png")


def test_run_page_shows_the_logged_values(served: dict[str, object], page: object, shots: Path) -> None:
    client: MlflowClient = served["client"]
    run_id = served["ids"]["efficientnet_b0-amp"]
    logged = client.get_run(run_id).data.metrics
    page.goto(f"{served['base']}/#/experiments/{served['experiment_id']}/runs/{run_id}")
    page.get_by_text("efficientnet_b0-amp", exact=True).first.wait_for()
    _close_assistant(page)
    for metric in ("energy_kwh", "test_acc1"):
        row = page.get_by_role("row").filter(has=page.get_by_text(metric, exact=True)).first
        row.wait_for()
        values = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", row.inner_text())]
        assert logged[metric] in values, (metric, row.inner_text())
    _screenshot(page, shots, "run_page.png")


def test_report_artifacts_render_inline(served: dict[str, object], page: object, shots: Path, tmp_path: Path) -> None:
    report = served["report"]
    page.goto(f"{served['base']}/#/experiments/{served['experiment_id']}/runs/{report.run_id}/artifacts")
    page.get_by_text("accuracy_vs_energy.png", exact=True).first.wait_for()
    _close_assistant(page)
    page.get_by_text("accuracy_vs_energy.png", exact=True).first.click()
    image = page.locator('img[alt="accuracy_vs_energy.png"]').first
    image.wait_for()
    image.evaluate("img => img.decode()")  # resolves once the image is loaded and decoded, rejects if it cannot be
    png = matplotlib.image.imread(served["client"].download_artifacts(report.run_id, "accuracy_vs_energy.png", str(tmp_path)))
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [png.shape[1], png.shape[0]]
    assert image.bounding_box()["width"] > 300  # and it is shown, not a thumbnail
    _screenshot(page, shots, "report_accuracy_vs_energy.png")
    page.get_by_text("report.html", exact=True).first.click()
    frame = page.frame_locator("iframe").first  # the page previews in an iframe
    frame.get_by_text("How the energy was measured").wait_for()
    # three comparison pictures and the emissions-by-region one
    assert frame.locator("img").count() == 4 and "Browser-test CPU" in frame.locator("body").inner_text()
    _screenshot(page, shots, "report_html.png")
