"""The files DVC compares: each pipeline ends with a node that turns its report into a small numeric
JSON (``metrics/<pipeline>.json``, a DVC metric) and, where there is a curve to draw, a CSV under
``plots/`` (DVC plots). Both live outside the git-ignored ``data/`` tree, so git versions them and
``dvc metrics diff`` / ``dvc exp show`` / ``dvc plots diff`` can compare commits and experiments.

The catalog entries are in ``conf/base/catalog_dvc.yml``; :func:`add_dvc_reports` appends the nodes to
the registered pipelines (the pipelines themselves stay unaware of DVC). The nodes carry the tag
``dvc_report`` (the MLflow hooks log nothing for them: these numbers are already in the stage runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from kedro.pipeline import Pipeline, node

from opensora_mlops.reporting import adherence_scores, loss_curve, numeric_leaves, val_loss_by_timestep

TAG = "dvc_report"
STAGES = ("stage1", "stage2", "stage3")
EVENTS_FILE = "events.jsonl"  # the trainer's event log in each stage's run folder


def ingestion_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    return numeric_leaves(summary)


def curation_metrics(report: dict[str, Any]) -> dict[str, Any]:
    # per_video holds frame lists (dropped as non-numbers); the tolerance is a setting, not a result
    return numeric_leaves(report, drop=("cut_detection.tolerance",))


def bucketing_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The bucket config and frame interval echo parameters, and the per-bucket counts have one key per
    bucket (``144p/8/1.78``), which would make every new bucket a new metric."""
    return numeric_leaves(summary, drop=("bucket_config", "frame_interval", "samples_per_bucket"))


def autoencoder_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return numeric_leaves(metrics)


def stage_report(training: dict[str, Any], validation: dict[str, Any], model: dict[str, Any]
                 ) -> tuple[dict[str, Any], pd.DataFrame]:
    """The stage's training and validation numbers, and its loss curve read from the run's event log
    (every step of the run, including steps trained before a resume)."""
    metrics = {"training": numeric_leaves(training), "validation": numeric_leaves(validation)}
    return metrics, loss_curve(Path(model["run_dir"]) / EVENTS_FILE)


def evaluation_report(metrics: dict[str, Any], val_loss: pd.DataFrame
                      ) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    return (numeric_leaves(metrics), val_loss_by_timestep(val_loss),
            adherence_scores(metrics.get("adherence") or {}))


def report_pipelines() -> dict[str, Pipeline]:
    """The report node of each registered pipeline, keyed by that pipeline's name."""
    reports = {
        "ingestion": Pipeline([node(ingestion_metrics, "ingestion_summary", "ingestion.dvc_metrics",
                                    name="dvc_report", namespace="ingestion", tags=[TAG])]),
        "curation": Pipeline([node(curation_metrics, "curation_report", "curation.dvc_metrics",
                                   name="dvc_report", namespace="curation", tags=[TAG])]),
        "bucketing": sum((Pipeline([node(bucketing_metrics, f"{s}.bucket_report", f"{s}.bucket_dvc_metrics",
                                         name="bucket_dvc_report", namespace=s, tags=[TAG])])
                          for s in STAGES), Pipeline([])),
        "autoencoder": Pipeline([node(autoencoder_metrics, "autoencoder_metrics", "autoencoder.dvc_metrics",
                                      name="dvc_report", namespace="autoencoder", tags=[TAG])]),
        "evaluation": Pipeline([node(evaluation_report, ["evaluation_metrics", "evaluation.val_loss_table"],
                                     ["evaluation.dvc_metrics", "evaluation.val_loss_plot",
                                      "evaluation.adherence_plot"],
                                     name="dvc_report", namespace="evaluation", tags=[TAG])]),
    }
    for stage in STAGES:
        reports[stage] = Pipeline([node(
            stage_report, [f"{stage}.training_metrics", f"{stage}.validation_metrics", f"{stage}.model"],
            [f"{stage}.dvc_metrics", f"{stage}.training_loss_plot"], name="dvc_report", namespace=stage,
            tags=[TAG])])
    return reports


def add_dvc_reports(pipelines: dict[str, Pipeline]) -> dict[str, Pipeline]:
    """``pipelines`` with each one's report node appended (``training`` gets the three stages')."""
    out = dict(pipelines)
    reports = report_pipelines()
    for name, report in reports.items():
        if name in out:
            out[name] = out[name] + report
    if "training" in out:
        out["training"] = out["training"] + sum((reports[s] for s in STAGES), Pipeline([]))
    return out
