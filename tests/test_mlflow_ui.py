"""Browser check: the MLflow UI shows a Kedro run's parent run, its nested stage runs and their metrics.

Real runs are logged with the MLflow API into a temporary SQLite store (the same layout the training
hooks produce: one parent run per ``kedro run``, one nested run per stage), a real ``mlflow server``
serves them on 127.0.0.1, and headless Chromium renders the React UI: ``--dump-dom`` after the page's
JavaScript ran (``--virtual-time-budget``) and ``--screenshot``.

Chromium is a system package (Debian ``chromium``); CI installs it (.ci/run). Without it this test
fails with the install command rather than skipping, so a missing browser can't pass silently.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
STAGES = ("stage1", "stage2", "stage3")
PARENT = "kedro-run-stage1-stage2-stage3"
METRIC = "train_loss"
MODEL = "opensora-mlops-ui-check"
CARD = "# opensora-mlops-ui-check\n\nAn ST-DiT-2 text-to-video diffusion model (UI check card).\n"
SERVER_START_TIMEOUT_S = 180


def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "headless Chromium is required for the MLflow UI browser check but none of "
        f"{', '.join(CHROMIUM_NAMES)} is on PATH; install it with "
        "`apt-get update && apt-get install -y chromium` (.ci/run does this)",
        pytrace=False,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_runs(tracking_uri: str, artifact_root: Path) -> dict[str, str]:
    """A parent run with nested stage runs and per-step metrics; returns {run name: run id}."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.create_experiment(
        "opensora-mlops-ui-check", artifact_location=artifact_root.as_uri()
    )
    parent = client.create_run(
        experiment_id, run_name=PARENT, tags={"kedro.pipelines": "stage1,stage2,stage3"}
    )
    client.log_param(parent.info.run_id, "pipelines", "stage1,stage2,stage3")
    ids = {PARENT: parent.info.run_id}
    for index, stage in enumerate(STAGES):
        run = client.create_run(
            experiment_id, run_name=stage, tags={"mlflow.parentRunId": parent.info.run_id, "stage": stage}
        )
        for step in range(4):
            client.log_metric(run.info.run_id, METRIC, 1.0 / (step + 1 + index), step=step)
        client.log_metric(run.info.run_id, "val_loss", 0.5 - 0.1 * index)
        client.set_terminated(run.info.run_id)
        ids[stage] = run.info.run_id
    client.log_metric(parent.info.run_id, "pipeline_seconds", 12.5)
    client.set_terminated(parent.info.run_id)
    return ids


def _register_version(tracking_uri: str, run_id: str, artifact_root: Path) -> str:
    """A registered version described, tagged and aliased by the export's registry code; returns it."""
    from opensora_mlops.evaluation.verdict import HEADLINE_SCORE
    from opensora_mlops.pipelines.export.registry import annotate_and_alias

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.create_registered_model(MODEL)
    source = artifact_root / "model"
    source.mkdir(parents=True, exist_ok=True)
    version = str(client.create_model_version(MODEL, source.as_uri(), run_id=run_id).version)
    annotate_and_alias(client, MODEL, version, CARD, {HEADLINE_SCORE: 0.4375, "vbench.trained.color": 0.75},
                       {"stage": "stage3", "steps": "30"})
    return version


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(
        f"mlflow server did not answer /health within {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
    )


@pytest.fixture(scope="module")
def mlflow_ui(tmp_path_factory, mlflow_sqlite_store):
    """(base URL, {run name: run id}, experiment id, registered version of MODEL) of a live ``mlflow
    server`` over fresh runs."""
    root = tmp_path_factory.mktemp("mlflow_ui")
    tracking_uri = mlflow_sqlite_store(root / "mlflow.db")
    ids = _log_runs(tracking_uri, root / "artifacts")
    version = _register_version(tracking_uri, ids["stage3"], root / "artifacts")
    experiment_id = mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(ids[PARENT]).info.experiment_id
    port = _free_port()
    log = root / "server.log"
    env = dict(os.environ, MLFLOW_ENABLE_TELEMETRY="false", DO_NOT_TRACK="1")
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                tracking_uri,
                "--default-artifact-root",
                (root / "artifacts").as_uri(),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield url, ids, experiment_id, version
    finally:
        # the server runs uvicorn in child processes: end the whole session we started
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass


def _chromium_args(profile: Path) -> list[str]:
    return [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        "--window-size=1400,1000",
    ]


def _dump_dom(url: str, profile: Path) -> str:
    result = subprocess.run(
        [*_chromium_args(profile), "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, (
        f"chromium --dump-dom failed ({result.returncode}):\n{result.stderr[-2000:]}"
    )
    return result.stdout


def _visible_text(dom: str) -> str:
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())


def _compare_url(base: str, ids: dict[str, str], experiment_id: str) -> str:
    runs = urllib.parse.quote(json.dumps(list(ids.values())))
    experiments = urllib.parse.quote(json.dumps([experiment_id]))
    return f"{base}/#/compare-runs?runs={runs}&experiments={experiments}"


def test_compare_page_renders_parent_and_stage_runs_with_metrics(mlflow_ui, tmp_path):
    base, ids, experiment_id, _ = mlflow_ui
    text = _visible_text(_dump_dom(_compare_url(base, ids, experiment_id), tmp_path / "profile"))
    # the React app rendered (the static shell only says to enable JavaScript)
    assert f"Comparing {len(ids)} Runs" in text, text[:2000]
    for name in (PARENT, *STAGES):
        assert name in text, f"run {name!r} not shown in the compare page: {text[:2000]}"
    assert METRIC in text and "val_loss" in text, text[:2000]


def test_stage_run_page_links_its_parent_and_shows_metrics(mlflow_ui, tmp_path):
    base, ids, experiment_id, _ = mlflow_ui
    url = f"{base}/#/experiments/{experiment_id}/runs/{ids['stage2']}"
    text = _visible_text(_dump_dom(url, tmp_path / "profile"))
    assert "stage2" in text
    assert re.search(rf"Parent run\s+{re.escape(PARENT)}", text), text[:2000]
    # the final logged value of the stage's train_loss: 1 / (3 + 1 + 1)
    assert re.search(rf"{METRIC}\s+0\.2\b", text), text[:2000]


def test_screenshot_of_compare_page_is_a_real_render(mlflow_ui, tmp_path):
    base, ids, experiment_id, _ = mlflow_ui
    screenshot = tmp_path / "mlflow_compare_runs.png"
    result = subprocess.run(
        [
            *_chromium_args(tmp_path / "profile"),
            f"--screenshot={screenshot}",
            _compare_url(base, ids, experiment_id),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(screenshot) as image:
        assert image.size == (1400, 1000)
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    # a rendered page has text and widgets: many distinct grey levels and real contrast
    assert pixels.std() > 10.0
    assert len(np.unique(pixels)) > 32
    # keep a copy with the reports when the project's reporting folder exists (not in a bare checkout)
    reporting = Path(__file__).resolve().parents[1] / "data" / "08_reporting"
    if reporting.is_dir():
        shutil.copyfile(screenshot, reporting / "mlflow_ui_compare_runs.png")


def test_registered_version_page_shows_card_alias_and_score_tags(mlflow_ui, tmp_path):
    """The export's registry entry as the MLflow UI shows it: the model card as description, the
    ``champion`` alias, the evaluation scores and provenance as tags; and a screenshot of that page."""
    base, ids, _, version = mlflow_ui
    url = f"{base}/#/models/{MODEL}/versions/{version}"
    text = _visible_text(_dump_dom(url, tmp_path / "profile"))
    assert f"Version {version}" in text, text[:2000]
    assert "An ST-DiT-2 text-to-video diffusion model (UI check card)." in text, text[:3000]
    assert re.search(r"Aliases\s*:?\s*@\s*champion", text), text[:3000]
    for tag, value in (("eval.adherence.trained.adherence", "0.4375"), ("eval.vbench.trained.color", "0.75"),
                       ("stage", "stage3"), ("promotion.alias", "champion")):
        assert re.search(rf"{re.escape(tag)}\s+{re.escape(value)}\b", text), (tag, text[:3000])
    assert "first registered version: no champion yet" in text

    screenshot = tmp_path / "mlflow_model_version.png"
    result = subprocess.run(
        [*_chromium_args(tmp_path / "profile"), f"--screenshot={screenshot}", url],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert screenshot.stat().st_size > 0 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 10.0 and len(np.unique(pixels)) > 32  # a rendered page, not a blank one
    reporting = Path(__file__).resolve().parents[1] / "data" / "08_reporting"
    if reporting.is_dir():
        shutil.copyfile(screenshot, reporting / "mlflow_ui_model_version.png")
