"""Curation pipeline wiring (nodes in :mod:`.nodes`), in the Kedro namespace ``curation``.

The template names its datasets plainly (``scene_table``, ``cut_dropped`` …); the namespace makes them
``curation.scene_table`` … (the catalog's names). What other pipelines read or write keeps its own
name: ``raw_metadata`` in, ``clip_metadata``, ``curation_quarantine``, ``curation_report`` and each
stage's ``stageN.filtered_clips`` (bucketing's input in namespace ``stageN``) out, and
``params:curation`` is shared. Node names get the prefix too (``curation.detect_scenes``), so
``kedro run --namespaces=curation`` selects them.
"""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node, pipeline

from opensora_mlops.pipelines.curation import nodes

NAMESPACE = "curation"
STAGES = ("stage1", "stage2", "stage3")
SHARED_INPUTS = ("raw_metadata",)
SHARED_OUTPUTS = ("clip_metadata", "curation_quarantine", "curation_report")


def _stage_filter(stage: str):
    func = partial(nodes.filter_stage, stage=stage)
    return update_wrapper(func, nodes.filter_stage)


def create_template() -> Pipeline:
    """The curation nodes with plain dataset names (see the module doc for which ones stay global)."""
    params = "params:curation"
    stage_nodes = [
        node(_stage_filter(stage), ["clip_metadata", params], [f"{stage}_filtered_clips", f"{stage}_dropped"],
             name=f"filter_{stage}")
        for stage in STAGES
    ]
    return Pipeline(
        [
            node(nodes.detect_scenes, ["raw_metadata", params], ["scene_table", "scene_dropped"],
                 name="detect_scenes"),
            node(nodes.cut_clips, ["raw_metadata", "scene_table", params], ["clip_table", "cut_dropped"],
                 name="cut_clips"),
            node(nodes.caption_clips, ["clip_table", params, "scene_dropped", "cut_dropped"],
                 ["captioned_clips", "caption_dropped"], name="caption_clips"),
            node(nodes.score_clips, ["captioned_clips", params], ["clip_metadata", "score_dropped"],
                 name="score_clips"),
            *stage_nodes,
            node(nodes.collect_quarantine,
                 ["scene_dropped", "cut_dropped", "caption_dropped", "score_dropped",
                  *(f"{s}_dropped" for s in STAGES)],
                 "curation_quarantine", name="collect_curation_quarantine"),
            node(nodes.curation_report,
                 ["raw_metadata", "scene_table", "clip_metadata", "curation_quarantine",
                  *(f"{s}_filtered_clips" for s in STAGES), params],
                 "curation_report", name="curation_report"),
        ],
        tags=["curation"],
    )


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        create_template(),
        namespace=NAMESPACE,
        inputs={name: name for name in SHARED_INPUTS},
        outputs={**{name: name for name in SHARED_OUTPUTS},
                 **{f"{s}_filtered_clips": f"{s}.filtered_clips" for s in STAGES}},
        parameters={"params:curation": "params:curation"},
    )
