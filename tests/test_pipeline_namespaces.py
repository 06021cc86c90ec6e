"""Kedro namespaces: curation, evaluation and export are namespaced pipelines (``kedro run
--namespaces=curation`` selects them) whose hand-overs to other pipelines keep their names, a dotted
dataset name always belongs to a real namespace, and the registry prints no dotted-name warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from kedro.pipeline import Node

from opensora_mlops.pipeline_registry import DOTTED_NAME_WARNING, register_pipelines

ROOT = Path(__file__).resolve().parents[1]
NAMESPACED = ("curation", "evaluation", "export")
STAGES = ("stage1", "stage2", "stage3")
FILTERED = {f"{s}.filtered_clips" for s in STAGES}
# what each pipeline reads from and hands to the others, by the names the catalog, dvc.yaml and the
# other pipelines use
HAND_OVERS = {
    "curation": ({"raw_metadata", "params:curation"},
                 {"clip_metadata", "curation_quarantine", "curation_report", *FILTERED}),
    "evaluation": ({"stage1.latent_cache", "stage2.latent_cache", "stage3.latent_cache", "stage3.model",
                    "stage3.filtered_clips", "params:evaluation", "params:export"}, {"evaluation_metrics"}),
    "export": ({"stage3.model", "stage3.filtered_clips", "evaluation_metrics", "params:export"},
               {"export.registration"}),
}


@pytest.fixture(scope="module")
def pipelines():
    return register_pipelines()


def _namespace(name: str) -> str | None:
    return name.split(".")[0] if "." in name and not name.startswith("params:") else None


@pytest.mark.parametrize("name", NAMESPACED)
def test_every_node_lives_in_the_pipelines_namespace(pipelines, name):
    pipe = pipelines[name]
    assert {n.namespace for n in pipe.nodes} == {name}
    assert all(n.name.startswith(f"{name}.") for n in pipe.nodes)
    assert pipe.only_nodes_with_namespaces([name]).nodes == pipe.nodes
    inputs, outputs = HAND_OVERS[name]
    assert pipe.inputs() == inputs
    assert outputs <= pipe.all_outputs()
    # the template's own datasets got the namespace prefix (the catalog's names)
    own = pipe.datasets() - pipe.inputs() - outputs
    assert own and all(_namespace(d) == name for d in own if not d.startswith("params:")), own


def test_curation_datasets_keep_the_catalogs_names(pipelines):
    datasets = pipelines["curation"].datasets()
    assert {"curation.scene_table", "curation.clip_table", "curation.captioned_clips", "curation.scene_dropped",
            "curation.stage2_dropped", "curation.dvc_metrics"} <= datasets
    assert {"evaluation.samples", "evaluation.val_loss_table", "evaluation.report"} <= pipelines["evaluation"].datasets()
    assert "export.manifest" in pipelines["export"].datasets()


def test_a_dotted_name_belongs_to_a_namespace_and_nodes_write_into_their_own(pipelines):
    """The rule Kedro's dotted-name warning stands for, without its false alarms on hand-overs between
    namespaces: every dotted name's prefix is a namespace nodes live in, and a node writes only into its
    own namespace, except curation, which writes each stage's input table."""
    nodes = pipelines["__default__"].nodes
    namespaces = {n.namespace.split(".")[0] for n in nodes if n.namespace}
    assert set(NAMESPACED) | set(STAGES) <= namespaces
    foreign_writes = set()
    for item in nodes:
        for dataset in item.inputs + item.outputs:
            prefix = _namespace(dataset)
            assert prefix is None or prefix in namespaces, f"{item.name}: {dataset} names no namespace"
        own = (item.namespace or "").split(".")[0]
        foreign_writes |= {(own, d) for d in item.outputs if _namespace(d) not in (None, own)}
    assert foreign_writes == {("curation", d) for d in FILTERED}


def _dotted_name_warnings(build, monkeypatch) -> list[str]:
    monkeypatch.setattr(Node, "__dotted_dataset_name_warned__", False, raising=False)  # Kedro warns once
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build()
    return [str(w.message) for w in caught if re.search(DOTTED_NAME_WARNING, str(w.message))]


def test_the_registry_prints_no_dotted_name_warning(monkeypatch):
    from opensora_mlops.pipeline_registry import discover_pipelines

    # the pipelines' hand-overs between namespaces are what Kedro's check warns about ...
    assert _dotted_name_warnings(discover_pipelines, monkeypatch)
    # ... and the registry (what `kedro run` loads) silences that one warning
    assert _dotted_name_warnings(register_pipelines, monkeypatch) == []


def test_kedro_registry_describe_lists_namespaced_nodes_without_warnings():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "KEDRO_DISABLE_TELEMETRY": "true"}
    done = subprocess.run([str(Path(sys.executable).parent / "kedro"), "registry", "describe", "curation"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "- curation.detect_scenes (detect_scenes)" in done.stdout
    assert "- curation.filter_stage3 (filter_stage)" in done.stdout
    assert "dataset names contain" not in done.stdout + done.stderr
