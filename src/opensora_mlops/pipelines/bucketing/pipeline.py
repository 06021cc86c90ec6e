"""Bucketing pipeline wiring: one template, namespaced ``stage1`` … ``stage3``.

Inside a namespace ``filtered_clips`` is ``stageN.filtered_clips`` (from curation) and the outputs are
``stageN.bucket_table`` (validated, Parquet), ``stageN.bucket_summary`` (CSV), ``stageN.bucket_report``
(JSON) and ``stageN.bucket_chart`` (PNG). ``params:bucketing`` and ``params:seed`` are shared.
"""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node, pipeline

from opensora_mlops.pipelines.bucketing import nodes

STAGES = ("stage1", "stage2", "stage3")


def _for_stage(func, stage: str):
    return update_wrapper(partial(func, stage=stage), func)


def create_template(stage: str) -> Pipeline:
    """The per-stage template (the stage name picks its block of ``params:bucketing``)."""
    params = "params:bucketing"
    return Pipeline(
        [
            node(_for_stage(nodes.assign_stage_buckets, stage), ["filtered_clips", params, "params:seed"],
                 "unchecked_bucket_table", name="assign_buckets"),
            node(_for_stage(nodes.validate_bucket_table, stage), ["unchecked_bucket_table", params],
                 "bucket_table", name="validate_bucket_table"),
            node(_for_stage(nodes.summarise_buckets, stage), ["bucket_table", params],
                 ["bucket_summary", "bucket_report", "bucket_chart"], name="summarise_buckets"),
        ],
        tags=["bucketing"],
    )  # fmt: skip


def create_stage_pipeline(stage: str) -> Pipeline:
    return pipeline(
        create_template(stage),
        namespace=stage,
        parameters={"params:bucketing": "params:bucketing", "params:seed": "params:seed"},
    )


def create_pipeline(**kwargs) -> Pipeline:
    """All three stages (registered as ``bucketing``)."""
    return sum((create_stage_pipeline(stage) for stage in STAGES), Pipeline([]))
