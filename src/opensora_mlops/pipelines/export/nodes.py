"""Export nodes: the model directory (library :mod:`opensora_mlops.export`) and its MLflow registration."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from opensora_mlops.evaluation.evaluate import flatten_metrics
from opensora_mlops.export import CARD_FILE, ExportConfig, export_model

logger = logging.getLogger(__name__)


def data_summary(clips: pd.DataFrame, stage_model: dict[str, Any]) -> dict[str, Any]:
    """What the model was trained on, for the model card."""
    summary: dict[str, Any] = {
        "stage": stage_model.get("stage"),
        "data_version": stage_model.get("data_version"),
        "steps": stage_model.get("steps"),
        "clips": int(len(clips)),
    }
    if len(clips):
        if "duration" in clips:
            summary["hours"] = round(float(clips["duration"].sum()) / 3600.0, 4)
        if {"height", "width"} <= set(clips.columns):
            summary["resolutions"] = ", ".join(
                sorted({f"{h}x{w}" for h, w in zip(clips["height"], clips["width"])})[:8]
            )
        if "fps" in clips:
            summary["fps"] = ", ".join(
                str(round(float(f), 2)) for f in sorted(clips["fps"].dropna().unique())[:8]
            )
    return summary


def export_stage_model(
    stage_model: dict[str, Any], metrics: dict[str, Any], clips: pd.DataFrame, params: dict[str, Any]
) -> dict[str, Any]:
    """Write the export directory for the stage's weights; returns the export manifest."""
    config = ExportConfig.from_dict(params)
    return export_model(
        stage_model["weights_dir"],
        stage_model["vae"],
        stage_model["text_encoder"],
        config,
        data_summary=data_summary(clips, stage_model),
        scores=flatten_metrics(metrics),
        source={k: stage_model.get(k) for k in ("stage", "run_dir", "weights_dir", "data_version", "steps")},
    )


def register_model(manifest: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Log the export as an MLflow pyfunc in a nested ``export`` run of the active ``kedro run`` and
    register it; returns ``{"registered", "model_uri", "registered_model_name", "version", "run_id",
    "alias", "reason"}``.

    The ``export`` run gets the evaluation scores as metrics and stage, steps, data version and model
    names as params. The version gets the model card as description, the scores as ``eval.*`` tags, the
    provenance tags, and the alias ``champion`` when it beats the current champion's headline score
    (``adherence.trained.adherence``), else ``candidate`` (:mod:`.registry`)."""
    import mlflow

    from opensora_mlops.pipelines.export import registry
    from opensora_mlops.pipelines.export.pyfunc import log_pyfunc

    config = ExportConfig.from_dict(params)
    name = config.registered_model_name or config.model_name
    parent = mlflow.active_run()
    if not config.register or parent is None:
        reason = (
            "export.register is false" if not config.register else "no active MLflow run (tracking disabled)"
        )
        logger.info("export: not registering the model: %s", reason)
        return {"registered": False, "reason": reason, "export_dir": config.out_dir}
    commit = registry.git_commit_of_run(mlflow.MlflowClient(), parent.info.run_id)
    provenance = registry.provenance(manifest, commit)
    scores = dict(manifest.get("scores") or {})
    card_path = Path(config.out_dir) / CARD_FILE
    with mlflow.start_run(run_name="export", nested=True, experiment_id=parent.info.experiment_id) as run:
        mlflow.set_tag("namespace", "export")
        mlflow.log_params({**provenance, "model_name": config.model_name, "registered_model_name": name})
        if scores:
            mlflow.log_metrics(scores)
        mlflow.log_artifact(str(card_path), artifact_path="model_card")
        info = log_pyfunc(config.out_dir, registered_model_name=name, output_root=config.pyfunc_output_root,
                          max_pixels=config.pyfunc_max_pixels)
    version = str(getattr(info, "registered_model_version", None))
    promotion = registry.annotate_and_alias(
        mlflow.MlflowClient(), name, version, card_path.read_text(encoding="utf-8"), scores,
        {**provenance, "source_run_id": run.info.run_id},
    )
    logger.info("export: registered %s version %s as %s: %s", name, version, promotion["alias"],
                promotion["reason"])
    return {
        "registered": True,
        "registered_model_name": name,
        "version": version,
        "model_uri": f"models:/{name}/{version}",
        "alias_uri": f"models:/{name}@{promotion['alias']}",
        "logged_model_uri": info.model_uri,
        "run_id": run.info.run_id,
        "export_dir": config.out_dir,
        **promotion,
    }
