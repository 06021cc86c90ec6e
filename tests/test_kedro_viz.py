"""``kedro viz build`` (the ``viz`` extra) on a copy of the project: the static site lists every
registered pipeline and node, groups the namespaced ones (curation, evaluation, export, the stages),
and joins the pipelines where they hand data to each other."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("kedro_viz", reason="kedro-viz is not installed (pip install -e '.[viz]')")

ROOT = Path(__file__).resolve().parents[1]
NAMESPACES = {"curation", "evaluation", "export", "ingestion", "autoencoder", "stage1", "stage2", "stage3"}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("viz_project")
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    shutil.copytree(ROOT / "conf" / "base", project / "conf" / "base")
    (project / "conf" / "local").mkdir()
    (project / "src").mkdir()  # Kedro wants a source dir; the package itself is the installed one
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "KEDRO_DISABLE_TELEMETRY": "true"}
    done = subprocess.run([str(Path(sys.executable).parent / "kedro"), "viz", "build"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return project / "build"


def _api(site: Path, *parts: str) -> dict:
    return json.loads((site / "api" / Path(*parts)).read_text())


def test_the_site_lists_every_pipeline_and_node(site):
    from opensora_mlops.pipeline_registry import register_pipelines

    pipelines = register_pipelines()
    assert (site / "index.html").is_file()
    main = _api(site, "main")
    assert {p["id"] for p in main["pipelines"]} == set(pipelines)
    tasks = {n["full_name"]: n for n in main["nodes"] if n["type"] == "task"}
    assert set(tasks) == {n.name for n in pipelines["__default__"].nodes}
    detect = tasks["curation.detect_scenes"]
    assert detect["name"] == "detect_scenes" and detect["modular_pipelines"] == ["curation"]
    assert detect["parameters"]["curation"]["scenes"]["min_scene_len"] >= 1
    assert set(main["modular_pipelines"]) >= NAMESPACES
    for name, pipe in pipelines.items():
        listed = {n["full_name"] for n in _api(site, "pipelines", name)["nodes"] if n["type"] == "task"}
        assert listed == {n.name for n in pipe.nodes}, name


def test_hand_overs_join_the_pipelines(site):
    """One dataset node per hand-over, shared by both pipelines (a name that only looked namespaced
    would show as a dataset of its own, disconnected)."""
    data = {n["name"]: n for n in _api(site, "main")["nodes"] if n["type"] == "data"}
    assert {"curation", "bucketing", "autoencoder"} <= set(data["stage1.filtered_clips"]["pipelines"])
    assert {"stage3", "evaluation", "export"} <= set(data["stage3.model"]["pipelines"])
    assert {"evaluation", "export"} <= set(data["evaluation_metrics"]["pipelines"])
    assert data["curation.scene_table"]["modular_pipelines"] == ["curation"]
