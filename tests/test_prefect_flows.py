"""Prefect orchestration: a flow runs the real ingestion pipeline (``kedro run`` in a subprocess) in a
tiny copy of the project under Prefect's test harness; failures are retried and stop the flow; the
deployments carry the right schedules, entrypoints, work pool and code location, built without a
server."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines import deployments as prefect_deployments  # noqa: E402
from pipelines.flows import (  # noqa: E402
    CLUSTER_LIMIT,
    CURATION_PIPELINES,
    TRAINING_PIPELINES,
    _with_ray,
    cluster_ray_address,
    curation_flow,
    kedro_command,
    kedro_flow,
    training_flow,
)


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        assert prefect_deployments.ensure_cluster_limit() is True  # the flows' 1-slot cluster limit
        assert prefect_deployments.ensure_cluster_limit() is False  # already there
        yield


def _task_runs(flow_run_id) -> list:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(runs, key=lambda r: r.expected_start_time or r.start_time)


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory) -> Path:
    """A copy of the project (pyproject, conf, package) whose ingestion makes a 1-video corpus."""
    root = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    shutil.copytree(
        ROOT / "src" / "opensora_mlops",
        root / "src" / "opensora_mlops",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (root / "conf" / "local").mkdir()
    tiny = {
        "ingestion": {
            "progress": False,
            "synthetic": {
                "num_single_shot": 0,
                "num_videos": 1,
                "sizes": [[64, 96]],
                "fps_choices": [8],
                "duration_seconds": [1.0, 1.0],
                "shots_per_video": [1, 1],
                "min_shot_seconds": 0.5,
                "num_large": 0,
                "num_images": 0,
                "defect_duration_seconds": [1.0, 1.0],
                "defects": {
                    "static": 0,
                    "text": 0,
                    "dark": 0,
                    "blurred": 0,
                    "zero_bytes": 1,
                    "truncated": 0,
                    "not_video": 0,
                },
            },
        }
    }
    (root / "conf" / "local" / "parameters_ingestion.yml").write_text(yaml.safe_dump(tiny))
    return root


def test_kedro_command_is_an_argument_list():
    assert kedro_command("stage1", env="cluster", params={"seed": 3})[1:] == [
        "-m",
        "kedro",
        "run",
        "--pipelines=stage1",
        "--env=cluster",
        "--params=seed=3",
    ]
    with pytest.raises(ValueError, match="comma"):
        kedro_command("stage1", params={"x": "a,b"})


def test_flow_runs_the_real_ingestion_pipeline(harness, tiny_project, monkeypatch):
    monkeypatch.setenv("OPENSORA_MLFLOW", "0")  # tracking is the hooks' business, not this test's
    state = kedro_flow(pipelines=["ingestion"], project_dir=str(tiny_project), return_state=True)
    assert state.is_completed(), state
    results = state.result()
    assert [r["pipeline"] for r in results] == ["ingestion"]
    assert results[0]["runner"] == "subprocess"

    # the pipeline really ran in the project copy: one good video, one quarantined zero-byte file
    raw = pd.read_parquet(tiny_project / "data" / "01_raw" / "raw_metadata.parquet")
    quarantine = pd.read_parquet(tiny_project / "data" / "01_raw" / "raw_quarantine.parquet")
    assert len(raw) == 1 and raw["num_frames"].iloc[0] == 8
    assert len(quarantine) == 1

    task_runs = _task_runs(state.state_details.flow_run_id)
    assert [t.name for t in task_runs] == ["kedro-ingestion"]
    assert task_runs[0].state.is_completed()
    assert task_runs[0].run_count == 1


def test_a_failing_pipeline_is_retried_and_stops_the_flow(harness, tmp_path):
    not_a_project = tmp_path / "empty"
    not_a_project.mkdir()
    state = curation_flow(
        project_dir=str(not_a_project),
        pipelines=["ingestion", "curation"],
        retries=1,
        retry_delay_seconds=0,
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(FileNotFoundError, match="not a Kedro project"):
        state.result()
    task_runs = _task_runs(state.state_details.flow_run_id)
    # ingestion failed after its retry; curation never started
    assert [t.name for t in task_runs] == ["kedro-ingestion"]
    assert task_runs[0].state.is_failed()
    assert task_runs[0].run_count == 2


def test_unknown_runner_is_rejected(harness, tiny_project):
    state = kedro_flow(
        pipelines=["ingestion"], project_dir=str(tiny_project), runner="ssh", retries=0, return_state=True
    )
    assert state.is_failed()
    with pytest.raises(ValueError, match="runner must be one of"):
        state.result()


def test_deployments_have_schedules_entrypoints_and_the_work_pool(tmp_path):
    built = prefect_deployments.build_deployments(
        ROOT, work_pool="gpu-pool", env="cluster", timezone="Europe/Berlin"
    )
    by_name = {d.name: d for d in built}
    assert set(by_name) == {"nightly-curation", "weekly-fine-tune"}

    nightly, weekly = by_name["nightly-curation"], by_name["weekly-fine-tune"]
    assert nightly.entrypoint == "pipelines/flows.py:curation_flow"
    assert weekly.entrypoint == "pipelines/flows.py:training_flow"
    assert nightly.flow_name == "nightly-curation" and weekly.flow_name == "weekly-fine-tune"
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert [s.schedule.cron for s in weekly.schedules] == ["0 4 * * 0"]
    assert all(s.schedule.timezone == "Europe/Berlin" for d in built for s in d.schedules)
    assert all(d.work_pool_name == "gpu-pool" for d in built)
    # the code location is the project directory (process workers run the flow from there)
    assert all(
        d.storage.to_pull_step()
        == {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
        for d in built
    )
    # the nightly curation submits to the Ray cluster named in conf/cluster
    assert nightly.parameters == {"project_dir": str(ROOT), "runner": "subprocess", "env": "cluster",
                                  "ray_address": "ray://ray-head:10001"}
    assert weekly.parameters == {"project_dir": str(ROOT), "runner": "subprocess", "env": "cluster"}
    assert all(d.concurrency_limit == 1 for d in built)
    # the parameter schema comes from the flow signature: the pipelines default to the full sequences
    defaults = {d.name: d._parameter_openapi_schema.properties["pipelines"]["default"] for d in built}
    assert defaults == {
        "nightly-curation": list(CURATION_PIPELINES),
        "weekly-fine-tune": list(TRAINING_PIPELINES),
    }

    served = prefect_deployments.build_deployments(ROOT, work_pool=None)
    assert all(d.work_pool_name is None for d in served)
    assert all(s.schedule.timezone == "UTC" for d in served for s in d.schedules)


def test_deployments_register_on_a_server_with_their_schedules(harness):
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="gpu-pool", type="process"), overwrite=True)
    assert prefect_deployments.main(["--work-pool", "gpu-pool", "--env", "cluster"]) == 0
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("nightly-curation/nightly-curation")
        weekly = client.read_deployment_by_name("weekly-fine-tune/weekly-fine-tune")
    assert nightly.work_pool_name == weekly.work_pool_name == "gpu-pool"
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert [s.schedule.cron for s in weekly.schedules] == ["0 4 * * 0"]
    assert nightly.entrypoint == "pipelines/flows.py:curation_flow"
    assert nightly.parameters["env"] == "cluster"
    assert nightly.parameters["ray_address"] == "ray://ray-head:10001"
    assert nightly.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
    ]


def test_ray_address_reaches_kedro_as_curation_params():
    assert cluster_ray_address(ROOT) == "ray://ray-head:10001"
    assert cluster_ray_address(ROOT, "base") is None
    params = _with_ray({"seed": 3}, "ray://ray-head:10001")
    command = kedro_command("curation", env="cluster", params=params)
    # what Kedro's CLI makes of the --params string: the nested runtime parameters
    from kedro.framework.cli.utils import _split_params

    parsed = _split_params(None, None, command[-1].removeprefix("--params="))
    assert parsed == {"seed": 3, "curation": {"executor": "ray", "ray": {"address": "ray://ray-head:10001"}}}
    assert _with_ray(None, None) is None


def test_curation_cannot_overlap_training_on_the_cluster(harness, tmp_path):
    """While a training run holds the cluster's slot, the nightly curation waits at most
    slot_timeout_seconds, then fails without running a pipeline; once free, it runs."""
    from prefect.concurrency.sync import concurrency

    not_a_project = tmp_path / "empty"
    not_a_project.mkdir()
    with concurrency(CLUSTER_LIMIT, occupy=1, strict=True):  # a training run on the cluster
        state = curation_flow(project_dir=str(not_a_project), pipelines=["ingestion"], retries=0,
                              slot_timeout_seconds=1, return_state=True)
    assert state.is_failed()
    with pytest.raises(TimeoutError):
        state.result()
    assert _task_runs(state.state_details.flow_run_id) == []  # no pipeline started
    # slot free: the flow gets past it (and fails on the not-a-project directory, in its task)
    state = training_flow(project_dir=str(not_a_project), pipelines=["stage1"], retries=0,
                          slot_timeout_seconds=5, return_state=True)
    with pytest.raises(FileNotFoundError, match="not a Kedro project"):
        state.result()
    assert [t.name for t in _task_runs(state.state_details.flow_run_id)] == ["kedro-stage1"]


def test_a_pipeline_past_its_timeout_is_stopped(harness, tiny_project):
    state = kedro_flow(pipelines=["ingestion"], project_dir=str(tiny_project), retries=0, timeout_seconds=0.5,
                       return_state=True)
    assert state.is_failed()
    with pytest.raises(TimeoutError, match="ran past its 0.5 s timeout"):
        state.result()
