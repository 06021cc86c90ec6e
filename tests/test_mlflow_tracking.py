"""The MLflow hooks driven by Kedro's real runner over small real pipelines, into a real SQLite store:
which run each node logs into, global steps across stages, each number once, runs of killed processes,
the experiment's kind, and a store copied with its checkout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from kedro.framework.hooks.manager import _create_hook_manager
from kedro.io import DataCatalog
from kedro.pipeline import Pipeline, node
from kedro.runner import SequentialRunner

from opensora_mlops.hooks import EXPERIMENT_KIND, MLflowHooks, owner_alive, process_owner

STEPS = {"stage1": 3, "stage2": 2}


def _bucket(stage: str):
    def assign(clips: list[str]) -> list[str]:
        time.sleep(0.05)  # so the stage runs visibly start after bucketing
        return [f"{stage}:{c}" for c in clips]
    return assign


def _train(stage: str, run_dir: Path):
    def train(table: list[str], init: dict | None = None) -> tuple[dict, dict]:
        # what the trainer does: an event log in the run folder and per-step metrics from its callback
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / "events.jsonl").open("w") as log:
            log.write(json.dumps({"event": "start", "step": 0}) + "\n")
            for step in range(1, STEPS[stage] + 1):
                loss = 1.0 / step + (0.5 if stage == "stage1" else 0.0)
                log.write(json.dumps({"event": "metrics", "step": step, "loss": loss}) + "\n")
                mlflow.log_metrics({"loss": loss, "samples_per_s": 10.0 + step}, step=step)
        manifest = {"stage": stage, "run_dir": str(run_dir), "steps": STEPS[stage]}
        return manifest, {"steps": STEPS[stage], "last_loss": loss, "samples_per_s": 12.0, "resumed_from": None}
    return train


def _validate(stage: str):
    def validate(model: dict) -> dict:
        mlflow.log_metrics({"val_loss": 0.25})  # as the validation node does itself
        return {"stage": stage, "val_loss": 0.25, "val_count": 4.0, "timesteps": [1, 2]}
    return validate


def _pipeline(tmp_path: Path) -> Pipeline:
    nodes = []
    for stage in STAGES_USED:
        nodes.append(node(_bucket(stage), "clips", f"{stage}.bucket_table", name="assign", namespace=stage,
                          tags=["bucketing"]))
    for index, stage in enumerate(STAGES_USED):
        inputs = [f"{stage}.bucket_table"] + ([f"{STAGES_USED[index - 1]}.model"] if index else [])
        nodes += [
            node(_train(stage, tmp_path / "runs" / stage), inputs, [f"{stage}.model", f"{stage}.training_metrics"],
                 name="train", namespace=stage, tags=["training"]),
            node(_validate(stage), f"{stage}.model", f"{stage}.validation_metrics", name="validate",
                 namespace=stage, tags=["training"]),
        ]
    return Pipeline(nodes)


STAGES_USED = ("stage1", "stage2")


def _hooks(root: Path, uri: str | None = None) -> MLflowHooks:
    hooks = MLflowHooks()
    hooks.root = root
    hooks.settings = {"tracking_uri": uri or "sqlite:///mlruns/mlflow.db", "experiment_name": "tracking-test",
                      "log_weights": False}
    hooks.params = {"training_shared": {"seed": 1}, "stage1": {"training": {"lr": 0.1}},
                    "stage2": {"training": {"lr": 0.05}}, "bucketing": {"v11_compat": False}}
    return hooks


def _catalog(clips: list[str]) -> DataCatalog:
    catalog = DataCatalog()
    catalog["clips"] = clips  # raw data becomes a MemoryDataset
    return catalog


def _kedro_run(hooks: MLflowHooks, pipeline: Pipeline, catalog: DataCatalog) -> None:
    manager = _create_hook_manager()
    manager.register(hooks)
    run_params = {"pipeline_names": ["bucketing", "stage1", "stage2"], "session_id": "test"}
    hooks.before_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)
    SequentialRunner().run(pipeline, catalog, hook_manager=manager)
    hooks.after_pipeline_run(run_params=run_params, run_result={}, pipeline=pipeline, catalog=catalog)


@pytest.fixture
def store(tmp_path, monkeypatch, mlflow_sqlite_store):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPENSORA_MLFLOW", raising=False)
    (tmp_path / "mlruns").mkdir()
    uri = mlflow_sqlite_store(tmp_path / "mlruns" / "mlflow.db")
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _runs(uri: str) -> dict[str, mlflow.entities.Run]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tracking-test")
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def _history(uri: str, run, key: str) -> list[tuple[int, float]]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.filterwarnings("ignore:One or more dataset names contain")
def test_stage_runs_hold_their_own_nodes_and_steps_add_up_across_stages(tmp_path, store):
    _kedro_run(_hooks(tmp_path, store), _pipeline(tmp_path), _catalog(["a", "b"]))
    runs = _runs(store)
    parent = runs["kedro run bucketing,stage1,stage2"]
    assert {"bucketing", "stage1", "stage2"} <= set(runs)
    for name in ("bucketing", "stage1", "stage2"):
        assert runs[name].data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert runs[name].info.status == "FINISHED"
    # bucketing's per-stage nodes went to the bucketing run, so stage 1 starts after them
    assert runs["stage1"].info.start_time >= runs["bucketing"].info.end_time
    assert runs["stage1"].data.params == {"seed": "1", "lr": "0.1"}
    for name in ("bucketing", "stage1", "stage2"):  # the time of the run's own nodes
        run = runs[name]
        assert 0 < run.data.metrics["node_seconds"] <= (run.info.end_time - run.info.start_time) / 1000 + 0.01
    assert runs["bucketing"].data.metrics["node_seconds"] >= 0.1  # two stages' bucketing nodes
    assert runs["bucketing"].data.params == {"v11_compat": "False"}
    # global steps: stage 2 continues where stage 1 stopped, in the stage run and on the parent
    assert _history(store, runs["stage1"], "global_step") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert _history(store, runs["stage2"], "global_step") == [(1, 4.0), (2, 5.0)]
    assert runs["stage2"].data.tags["global_step_offset"] == "3"
    assert [s for s, _ in _history(store, parent, "loss")] == [1, 2, 3, 4, 5]
    assert _history(store, parent, "loss")[3] == (4, 1.0)  # stage 2's first step
    # each number once in a stage run; the summaries on the parent
    stage1 = runs["stage1"]
    assert len(_history(store, stage1, "val_loss")) == 1
    assert len(_history(store, stage1, "samples_per_s")) == 3  # per step only, no summary point
    assert stage1.data.metrics["val_count"] == 4.0 and stage1.data.metrics["steps"] == 3.0
    assert not any("." in key for key in stage1.data.metrics)  # no training_metrics.* copies
    assert parent.data.metrics["stage1.val_loss"] == 0.25 and parent.data.metrics["stage2.steps"] == 2.0
    assert parent.data.tags["opensora.pid"] == stage1.data.tags["opensora.pid"]
    experiment = mlflow.MlflowClient(tracking_uri=store).get_experiment_by_name("tracking-test")
    assert {k: experiment.tags.get(k) for k in EXPERIMENT_KIND} == EXPERIMENT_KIND


KILLED = """
import os, sys
import mlflow
from opensora_mlops.hooks import process_owner
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("tracking-test")
mlflow.start_run(run_name="killed", tags=process_owner())
mlflow.log_metric("loss", 1.0, step=1)
os.kill(os.getpid(), 9)
"""


def test_a_run_left_running_by_a_killed_process_is_marked_failed_at_the_next_start(tmp_path, store):
    done = subprocess.run([sys.executable, "-c", KILLED, store], capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    client = mlflow.MlflowClient(tracking_uri=store)
    experiment_id = client.get_experiment_by_name("tracking-test").experiment_id
    alive = client.create_run(experiment_id, run_name="alive", tags=process_owner())  # this process
    client.create_run(experiment_id, run_name="unowned")  # logged by someone else's code
    assert _runs(store)["killed"].info.status == "RUNNING"
    assert owner_alive(_runs(store)["killed"].data.tags) is False
    assert owner_alive(alive.data.tags) is True and owner_alive({}) is None

    _kedro_run(_hooks(tmp_path, store), _pipeline(tmp_path), _catalog(["a"]))
    runs = _runs(store)
    assert runs["killed"].info.status == "FAILED"
    assert "ended without closing this run" in runs["killed"].data.tags["error"]
    assert runs["alive"].info.status == "RUNNING" and runs["unowned"].info.status == "RUNNING"
    assert owner_alive({**process_owner(), "opensora.process_started": "1.0"}) is False  # a reused pid


def test_a_checkout_copied_with_its_store_logs_into_its_own_folders(tmp_path, mlflow_sqlite_store, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPENSORA_MLFLOW", raising=False)
    original = tmp_path / "original"
    (original / "mlruns").mkdir(parents=True)
    mlflow_sqlite_store(original / "mlruns" / "mlflow.db")
    _kedro_run(_hooks(original), _pipeline(original), _catalog(["a"]))
    first = _runs(f"sqlite:///{original}/mlruns/mlflow.db")["stage1"]
    assert first.info.artifact_uri.startswith((original / "mlruns" / "artifacts").as_uri())

    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    hooks = _hooks(copy)
    _kedro_run(hooks, _pipeline(copy), _catalog(["a"]))
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{copy}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("tracking-test")
    assert experiment.artifact_location == (copy / "mlruns" / "artifacts").resolve().as_uri()
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 * 4  # both kedro runs (parent, bucketing, stage1, stage2), in the copy's store
    assert all(r.info.artifact_uri.startswith(experiment.artifact_location) for r in runs)
    with mlflow.start_run(run_id=runs[0].info.run_id):
        mlflow.log_dict({"x": 1}, "probe.json")
    assert list((copy / "mlruns" / "artifacts").rglob("probe.json"))
    assert not list((original / "mlruns" / "artifacts").rglob("probe.json"))
    # the original store is untouched
    assert mlflow.MlflowClient(tracking_uri=f"sqlite:///{original}/mlruns/mlflow.db").get_experiment_by_name(
        "tracking-test").artifact_location == (original / "mlruns" / "artifacts").resolve().as_uri()


def _report(tmp_path: Path):
    def build(clips: list[str]) -> tuple[dict, dict]:
        time.sleep(0.05)
        out = tmp_path / "report"
        out.mkdir(exist_ok=True)
        (out / "index.html").write_text("<html></html>")
        return {"adherence": {"trained": {"adherence": 0.75}}, "clips": float(len(clips))}, {"report_dir": str(out)}
    return build


def _curate(clips: list[str]) -> list[str]:
    return sorted(clips)


def test_a_namespace_whose_node_opens_its_run_keeps_that_one_run(tmp_path, store):
    """Evaluation's report logger opens the ``evaluation`` run itself: the hooks open none for that
    namespace, then give the node's run the namespace's parameters and node time. Another namespace
    (curation) gets the run the hooks open."""
    from kedro.pipeline import pipeline

    from opensora_mlops.hooks import OWN_RUN_TAG
    from opensora_mlops.pipelines.evaluation.nodes import log_to_mlflow

    evaluation = pipeline(Pipeline([
        node(_report(tmp_path), "curated", ["evaluation_metrics", "report"], name="build_report"),
        node(log_to_mlflow, ["evaluation_metrics", "report"], None, name="log", tags=[OWN_RUN_TAG]),
    ]), namespace="evaluation", inputs={"curated": "curated"}, outputs={"evaluation_metrics": "evaluation_metrics"})
    curation = pipeline(Pipeline([node(_curate, "clips", "curated", name="curate")]), namespace="curation",
                        inputs={"clips": "clips"}, outputs={"curated": "curated"})
    hooks = _hooks(tmp_path, store)
    hooks.params |= {"evaluation": {"max_prompts": 2}, "curation": {"scoring": {"ocr_detector": "classical"}}}
    _kedro_run(hooks, curation + evaluation, _catalog(["b", "a"]))

    client = mlflow.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("tracking-test")
    runs = client.search_runs([experiment.experiment_id])
    parent, = (r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    names = sorted(r.info.run_name for r in runs if r is not parent)
    assert names == ["curation", "evaluation"]  # one run each, no run nested in the evaluation run
    nested = {r.info.run_name: r for r in runs if r is not parent}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in nested.values())
    evaluation_run = nested["evaluation"]
    assert evaluation_run.data.metrics["adherence.trained.adherence"] == 0.75  # what the node logged
    assert evaluation_run.data.params == {"max_prompts": "2"}
    assert evaluation_run.data.metrics["node_seconds"] >= 0.05  # both its nodes
    assert "evaluation_report/index.html" in {
        a.path for a in client.list_artifacts(evaluation_run.info.run_id, "evaluation_report")}
    assert nested["curation"].data.params == {"scoring.ocr_detector": "classical"}
    assert nested["curation"].data.metrics["node_seconds"] > 0
