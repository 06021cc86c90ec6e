"""Evaluation nodes: thin wrappers around :mod:`opensora_mlops.evaluation.evaluate`; MLflow logging here
(the library never imports mlflow)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from opensora_mlops.evaluation import evaluate, prompt_adherence, verdict
from opensora_mlops.evaluation.report import ReportContent, SampleGif, write_report
from opensora_mlops.export import ExportConfig

logger = logging.getLogger(__name__)


def _config(params: dict[str, Any]) -> evaluate.EvaluationConfig:
    cfg = evaluate.EvaluationConfig.from_dict(params)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    return cfg


def training_combinations(*latent_caches: dict[str, Any] | None) -> dict[str, Any]:
    """What the evaluated model was trained on: the captions of every stage's training split (stage 3
    starts from stage 2, which starts from stage 1) and their attribute combinations."""
    captions = evaluate.training_captions(latent_caches)
    combinations = sorted(prompt_adherence.training_combinations(captions))
    logger.info("evaluation: %d training captions, %d distinct (colour, shape, background, direction) "
                "combinations", len(captions), len(combinations))
    return {"captions": sorted(set(captions)), "combinations": [list(c) for c in combinations]}


def generate_samples(stage_model: dict[str, Any], training: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Generate the suite's prompts (and ``training_prompts`` training captions) with every seed, with
    the trained model and an untrained one of the same config."""
    cfg = _config(params)
    model, vae, encoder = evaluate.load_stage_components(stage_model)
    entries = evaluate.suite_entries(cfg, training.get("captions", []))
    models = {"trained": model, "untrained": evaluate.untrained_like(model, cfg.untrained_seed)}
    seen = {tuple(c) for c in training.get("combinations", [])}
    records = []
    seconds: dict[str, float] = {}
    for group in cfg.groups:
        started = time.perf_counter()
        records += evaluate.generate_group(group, models[group], vae, encoder, entries, cfg,
                                           scheduler=stage_model.get("scheduler"),
                                           train_conditions=stage_model.get("train_conditions"))
        seconds[group] = round(time.perf_counter() - started, 2)
    for record in records:
        record["split"] = prompt_adherence.split_of(record["prompt"], seen)
    return {
        "records": records,
        "stage": stage_model.get("stage"),
        "weights_dir": stage_model["weights_dir"],
        "generation": evaluate.generation_for_model(cfg, stage_model.get("train_conditions"),
                                                    stage_model.get("scheduler")),
        "scheduler": stage_model.get("scheduler"),
        "prompts": [e.prompt for e in entries],
        "seeds": {group: cfg.seeds(group) for group in cfg.groups},
        "splits": {e.prompt: prompt_adherence.split_of(e.prompt, seen) for e in entries},
        "seen_combinations": training.get("combinations", []),
        "timing": {"generate_s": seconds, "videos": len(records)},
    }


def score_samples(
    samples: dict[str, Any], real_clips: pd.DataFrame, params: dict[str, Any]
) -> tuple[dict[str, Any], pd.DataFrame]:
    """VBench-style dimensions and prompt adherence for generated and real clips, each prompt tagged
    seen or held-out against the training combinations."""
    cfg = _config(params)
    started = time.perf_counter()
    records = list(samples["records"]) + evaluate.real_clip_records(real_clips, cfg)
    scores, table = evaluate.score_records(records, cfg, seen=samples.get("seen_combinations", []))
    scores["timing"] = {"score_s": round(time.perf_counter() - started, 2), "videos": len(records)}
    return scores, table


def validation_loss(
    stage_model: dict[str, Any], latent_cache: dict[str, Any], params: dict[str, Any]
) -> pd.DataFrame:
    """Loss by timestep range of the trained and the untrained model on the stage's held-out clips
    (its training clips when nothing was held out)."""
    cfg = _config(params)
    cache_dir = latent_cache.get("val_dir") or latent_cache.get("train_dir")
    if not cache_dir:
        logger.warning("evaluation: the latent cache manifest names no val_dir/train_dir; no validation loss")
        return pd.DataFrame(
            columns=["group", "clip", "range_start", "range_end", "timestep", "loss", "mse", "vb", "x0_mse"]
        )
    if not latent_cache.get("val_dir"):
        logger.warning("evaluation: no held-out clips; the loss by timestep is measured on training clips")
    model, _, _ = evaluate.load_stage_components(stage_model)
    models = {"trained": model, "untrained": evaluate.untrained_like(model, cfg.untrained_seed)}
    return evaluate.validation_loss_table({g: models[g] for g in cfg.groups}, cache_dir, cfg,
                                          scheduler=stage_model.get("scheduler"))


def run_info() -> dict[str, str]:
    """The active MLflow run for the report header: ``run_id``, ``experiment_id``, ``tracking_uri``, ``url``
    and ``git_commit`` (the ``kedro run`` parent's tag, set by the project's hooks); {} without a run."""
    import mlflow

    from opensora_mlops.pipelines.export.registry import git_commit_of_run

    run = mlflow.active_run()
    if run is None:
        return {}
    commit = git_commit_of_run(mlflow.MlflowClient(), run.info.run_id)
    uri = mlflow.get_tracking_uri()
    return {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "tracking_uri": uri,
        "url": verdict.mlflow_run_url(uri, run.info.experiment_id, run.info.run_id),
        "git_commit": commit or "unknown",
    }


def champion(export_params: dict[str, Any] | None) -> dict[str, Any] | None:
    """The registered model's ``champion`` version (``name``, ``version``, ``scores`` from its ``eval.*``
    tags), or None: no export parameters, no active MLflow run (tracking disabled), no such model or
    alias, or a registry that does not answer (logged)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from opensora_mlops.pipelines.export.registry import champion_version

    if export_params is None or mlflow.active_run() is None:
        return None
    config = ExportConfig.from_dict(export_params)
    name = config.registered_model_name or config.model_name
    try:
        found = champion_version(mlflow.MlflowClient(), name)
    except MlflowException as error:
        logger.warning("evaluation: cannot read the champion of %s from the registry: %s", name, error)
        return None
    if found is None:
        return None
    return {"name": name, "version": found[0], "scores": verdict.scores_from_tags(found[1])}


def build_report(
    samples: dict[str, Any],
    scores: dict[str, Any],
    adherence: pd.DataFrame,
    val_loss: pd.DataFrame,
    params: dict[str, Any],
    export_params: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the HTML report (GIFs copied next to it) and return (metrics for DVC, report manifest).

    The report opens with the verdict: trained vs untrained (paired over the prompts of ``adherence``)
    and vs the registered champion of the model ``export_params`` names (when tracking is on and one
    exists), with the active MLflow run's id, link and git commit."""
    cfg = _config(params)
    out = Path(cfg.report_dir)
    gifs_dir = out / "gifs"
    if gifs_dir.exists():
        shutil.rmtree(gifs_dir)
    gifs_dir.mkdir(parents=True)
    shown = []
    for index, record in enumerate(samples["records"]):
        # the first seed of every prompt (all seeds' videos stay in the output folder)
        if record.get("gif") and int(record.get("sample", 0)) == 0:
            target = gifs_dir / f"{record['group']}_{index:03d}.gif"
            shutil.copyfile(record["gif"], target)
            split = record.get("split")
            shown.append(SampleGif(record["group"], record["prompt"], os.path.relpath(target, out),
                                   split.replace("_", "-") if split else None))
    notes = []
    if not len(val_loss):
        notes.append("No cached clips were available: the validation loss by timestep was not measured.")
    if "real" not in scores.get("adherence", {}):
        notes.append(
            "No curated clip with a synthetic-vocabulary caption was found: no real-clip upper bound."
        )
    if not samples.get("seen_combinations"):
        notes.append("No training captions were available: every prompt counts as held-out.")
    timing = dict(samples.get("timing") or {}) | {"score_s": (scores.get("timing") or {}).get("score_s")}
    stats = cfg.statistics_settings()
    header = verdict.evaluation_verdict(
        scores["adherence"], adherence, champion(export_params), run_info(),
        confidence=float(stats["confidence"]), num_resamples=int(stats["resamples"]), seed=int(stats["seed"]),
    )
    for comparison in header.comparisons:
        logger.info("evaluation verdict: trained vs %s: %s", comparison.label,
                    ("better" if comparison.better else "NOT better") if comparison.available else comparison.note)
    content = ReportContent(
        title=f"Evaluation of {samples.get('stage') or 'the trained model'}",
        vbench=scores["vbench"],
        vbench_ci=scores.get("vbench_ci", {}),
        methods=scores["methods"],
        not_implemented=scores["not_implemented"],
        not_applicable=scores["not_applicable"],
        adherence=scores["adherence"],
        adherence_splits={
            "seen": scores.get("adherence_seen", {}),
            "held-out": scores.get("adherence_held_out", {}),
        },
        chance=scores.get("chance", dict(prompt_adherence.CHANCE)),
        splits=scores.get("splits", {}),
        val_loss=val_loss if len(val_loss) else None,
        samples=shown,
        notes=notes,
        settings={
            "weights_dir": samples.get("weights_dir"),
            "generation": samples.get("generation"),
            "seeds": samples.get("seeds"),
            "timing": timing,
            "prompts": samples.get("prompts"),
        },
        verdict=header,
    )
    written = write_report(content, out)
    metrics = evaluate.evaluation_metrics(scores, val_loss if len(val_loss) else None)
    summary = {c.name: ("better" if c.better else "not better") if c.available else c.note
               for c in header.comparisons}
    return metrics, {"report_dir": str(out), **written, "gifs": [s.path for s in shown], "verdict": summary}


def log_to_mlflow(metrics: dict[str, Any], report: dict[str, Any]) -> None:
    """Log the metrics and the report folder to a nested ``evaluation`` run of the active ``kedro run``
    parent run (the project's MLflow hooks open it); without one (tracking disabled) nothing is logged."""
    import mlflow

    parent = mlflow.active_run()
    if parent is None:
        logger.info("evaluation: no active MLflow run (tracking disabled); metrics stay in metrics.json")
        return
    with mlflow.start_run(run_name="evaluation", nested=True, experiment_id=parent.info.experiment_id):
        mlflow.set_tag("namespace", "evaluation")
        mlflow.log_metrics(evaluate.flatten_metrics(metrics))
        mlflow.log_artifacts(report["report_dir"], artifact_path="evaluation_report")
