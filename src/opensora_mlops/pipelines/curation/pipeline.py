"""Curation pipeline wiring (nodes in :mod:`.nodes`)."""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node

from opensora_mlops.pipelines.curation import nodes

STAGES = ("stage1", "stage2", "stage3")


def _stage_filter(stage: str):
    func = partial(nodes.filter_stage, stage=stage)
    return update_wrapper(func, nodes.filter_stage)


def create_pipeline(**kwargs) -> Pipeline:
    params = "params:curation"
    stage_nodes = [
        node(_stage_filter(stage), ["clip_metadata", params], [f"{stage}.filtered_clips", f"curation.{stage}_dropped"],
             name=f"filter_{stage}")
        for stage in STAGES
    ]
    return Pipeline(
        [
            node(nodes.detect_scenes, ["raw_metadata", params], ["curation.scene_table", "curation.scene_dropped"],
                 name="detect_scenes"),
            node(nodes.cut_clips, ["raw_metadata", "curation.scene_table", params],
                 ["curation.clip_table", "curation.cut_dropped"], name="cut_clips"),
            node(nodes.caption_clips, ["curation.clip_table", params, "curation.scene_dropped", "curation.cut_dropped"],
                 ["curation.captioned_clips", "curation.caption_dropped"], name="caption_clips"),
            node(nodes.score_clips, ["curation.captioned_clips", params], ["clip_metadata", "curation.score_dropped"],
                 name="score_clips"),
            *stage_nodes,
            node(nodes.collect_quarantine,
                 ["curation.scene_dropped", "curation.cut_dropped", "curation.caption_dropped",
                  "curation.score_dropped", *(f"curation.{s}_dropped" for s in STAGES)],
                 "curation_quarantine", name="collect_curation_quarantine"),
            node(nodes.curation_report,
                 ["raw_metadata", "curation.scene_table", "clip_metadata", "curation_quarantine",
                  *(f"{s}.filtered_clips" for s in STAGES), params],
                 "curation_report", name="curation_report"),
        ]
    )
