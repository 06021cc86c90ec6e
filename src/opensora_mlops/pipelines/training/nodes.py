"""Nodes of the training template. Thin: the trainer lives in :mod:`opensora_mlops.training`.

Each stage's parameters are ``training_shared`` (common to every stage) overlaid with the stage's own
``<stage>.training`` block; unknown keys are errors. Metrics reach MLflow through the callback
:func:`tracking_callback` supplies; the run itself is opened by the project hooks
(:mod:`opensora_mlops.hooks`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from opensora_mlops.config import ConfigError, check_keys
from opensora_mlops.training.trainer import TrainConfig, load_train_config

logger = logging.getLogger(__name__)

# keys used by the pipeline around the trainer (everything else goes to TrainConfig)
PIPELINE_KEYS = ("name", "batch_scale", "frame_interval", "text_encoder", "data_source", "cache", "validation",
                 "runs_root", "cache_root", "launcher", "video_root", "threads", "image_views", "image_batch_size")
TRAIN_KEYS = tuple(f for f in TrainConfig.__dataclass_fields__ if f not in ("stage", "run_dir", "data"))
CACHE_KEYS = ("holdout_fraction", "batch_size", "executor", "ray", "device")
VALIDATION_KEYS = ("timesteps", "batch_size", "seed")


def stage_settings(stage: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    """``shared`` overlaid with ``stage``; unknown keys raise :class:`ConfigError` naming them."""
    name = stage.get("name", "stage")
    check_keys(shared, (*PIPELINE_KEYS, *TRAIN_KEYS), "training_shared parameters")
    check_keys(stage, (*PIPELINE_KEYS, *TRAIN_KEYS), f"{name}.training parameters")
    merged = {**shared, **stage}
    if "name" not in merged:
        raise ConfigError("every stage's training parameters need a 'name' (stage1, stage2, …)")
    check_keys(merged.get("cache") or {}, CACHE_KEYS, f"{name}.cache")
    check_keys(merged.get("validation") or {}, VALIDATION_KEYS, f"{name}.validation")
    return merged


def _train_config(settings: dict[str, Any], data: dict[str, Any], init_from: str | None) -> dict[str, Any]:
    values = {k: settings[k] for k in TRAIN_KEYS if k in settings}
    values.update(stage=settings["name"], run_dir=str(Path(settings.get("runs_root", "data/06_models")) / settings["name"]),
                  data=data)
    if init_from is not None:
        values["init_from"] = init_from
    return values


def frame_interval_of(settings: dict[str, Any], bucketing: dict[str, Any] | None) -> int:
    """The stage's temporal stride: the bucketing pipeline's value (its buckets were sized with it)."""
    stages = (bucketing or {}).get("stages") or {}
    from_bucketing = (stages.get(settings["name"]) or {}).get("frame_interval")
    value = settings.get("frame_interval", from_bucketing if from_bucketing is not None else 1)
    if from_bucketing is not None and int(value) != int(from_bucketing):
        raise ConfigError(f"{settings['name']}: frame_interval {value} differs from the bucketing pipeline's "
                          f"{from_bucketing} for this stage")
    return int(value)


def _encoder_identity(vae_model: dict[str, Any], text_encoder: dict[str, Any]) -> dict[str, Any]:
    """What the cached latents depend on besides the table: encoder configs and the VAE's weights."""
    from opensora_mlops.training.trainer import weights_digest

    identity: dict[str, Any] = {"vae": dict(vae_model), "text_encoder": dict(text_encoder)}
    if vae_model.get("from_pretrained") and Path(vae_model["from_pretrained"]).is_dir():
        identity["vae_weights"] = weights_digest(Path(vae_model["from_pretrained"]))
    return identity


def cache_stage_latents(bucket_table: pd.DataFrame, vae_model: dict[str, Any], stage: dict[str, Any],
                        shared: dict[str, Any], bucketing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Encode the stage's kept clips once (VAE latents + text embeddings) into data/05_model_input."""
    import torch

    from opensora_mlops.models.text_encoder import build_text_encoder
    from opensora_mlops.training.components import build_vae
    from opensora_mlops.training.latents import (
        bucket_config_from_table,
        build_stage_caches,
        check_bucket_table,
    )

    s = stage_settings(stage, shared)
    kept = check_bucket_table(bucket_table, f"{s['name']}.bucket_table")
    bucket_config_from_table(kept)  # an unknown resolution is an error here, before any encoding
    # an empty epoch is refused now, in one line, not after encoding every latent
    from opensora_mlops.training.preflight import check_stage_batches

    online = s.get("data_source", "cache") == "online"
    check_stage_batches(kept, s["name"], world_size=int(s.get("world_size", 1)),
                        batch_scale=float(s.get("batch_scale", 1.0)), seed=int(s.get("seed", 0)),
                        holdout_fraction=0.0 if online else float((s.get("cache") or {}).get("holdout_fraction", 0.0)))
    out_dir = Path(s.get("cache_root", "data/05_model_input")) / f"{s['name']}_latents"
    frame_interval = frame_interval_of(s, bucketing)
    if s.get("data_source", "cache") == "online":
        # the trainer processes read the kept rows themselves (under torchrun they are other processes)
        out_dir.mkdir(parents=True, exist_ok=True)
        table_path = out_dir / "online_table.parquet"
        kept.to_parquet(table_path, index=False)
        return {"source": "online", "stage": s["name"], "num_rows": len(kept), "frame_interval": frame_interval,
                "bucket_table": str(table_path)}
    if s.get("threads"):
        torch.set_num_threads(int(s["threads"]))
    cache = s.get("cache") or {}
    executor = str(cache.get("executor", "local"))
    encode_missing = None
    if executor == "ray":  # Ray actors fill the clip store; this process assembles the cache from it
        from opensora_mlops.config import strict_dataclass
        from opensora_mlops.curation.ray_executor import RayConfig
        from opensora_mlops.training.ray_latents import store_filler

        ray = strict_dataclass(RayConfig, dict(cache.get("ray") or {}), f"{s['name']}.cache.ray")
        encode_missing = store_filler(ray, cache.get("device"), f"{s['name']} latents")
    elif executor != "local":
        raise ConfigError(f"{s['name']}.cache.executor must be 'local' or 'ray', got {executor!r}")
    manifest = build_stage_caches(
        kept, out_dir, build_vae(vae_model), build_text_encoder(s["text_encoder"]),
        frame_interval=frame_interval, video_root=s.get("video_root"),
        holdout_fraction=float(cache.get("holdout_fraction", 0.0)), seed=int(s.get("seed", 0)),
        batch_size=int(cache.get("batch_size", 4)), meta={"stage": s["name"]},
        reuse_key=_encoder_identity(vae_model, s["text_encoder"]),
        encode_missing=encode_missing,
    )  # fmt: skip
    return {"source": "cache", "stage": s["name"], "frame_interval": frame_interval, **manifest}


def tracking_callback(stage: str, data_version: str | None = None, flush_every: int = 25,
                      flush_seconds: float = 15.0):
    """Trainer events -> the active MLflow run (the stage's nested run opened by the hooks).

    Per-step metrics are buffered and sent as one batch every ``flush_every`` steps / ``flush_seconds``
    and at checkpoints and the end: one store round trip per step would cost a fast CPU step several %.
    """
    import time

    import mlflow
    from mlflow.entities import Metric

    pending: list[Metric] = []
    last_flush = [time.monotonic()]

    def flush() -> None:
        run = mlflow.active_run()
        if pending and run is not None:
            mlflow.MlflowClient().log_batch(run.info.run_id, metrics=list(pending))
        pending.clear()
        last_flush[0] = time.monotonic()

    def callback(kind: str, payload: dict[str, Any]) -> None:
        if mlflow.active_run() is None:
            return
        if kind == "metrics":
            step = int(payload["step"])
            now = int(time.time() * 1000)
            pending.extend(Metric(k, float(v), now, step) for k, v in payload.items()
                           if k != "step" and isinstance(v, int | float) and math.isfinite(float(v)))
            if step % flush_every == 0 or time.monotonic() - last_flush[0] > flush_seconds:
                flush()
        elif kind == "start":
            mlflow.log_dict(payload.get("config", {}), f"config/{stage}_resolved.json")
            tags = {"stage": stage, "world_size": str(payload.get("world_size", 1))}
            if data_version:
                tags["data_version"] = data_version
            mlflow.set_tags(tags)
        elif kind == "sample":
            flush()
            mlflow.log_artifact(payload["path"], artifact_path="samples")
        elif kind == "resume":
            mlflow.set_tag("resumed_from_step", str(payload.get("step")))
        elif kind == "checkpoint":
            flush()
            mlflow.set_tag("last_checkpoint", payload.get("path", ""))
        elif kind == "end":
            flush()

    return callback


def training_conditions(latent_cache: dict[str, Any]) -> dict[str, float | int] | None:
    """The micro-conditions the stage trained on (median fps, most common video bucket size and length).

    Evaluation and export sample with these: a model asked for 8 fps when it only ever saw 24-30 is
    being asked something it never learned.
    """
    from opensora_mlops.training import latents

    if latent_cache.get("source", "cache") != "cache" or not latent_cache.get("train_dir"):
        return None
    # the index alone, not the tensors
    return latents.training_conditions(pd.read_parquet(Path(latent_cache["train_dir"]) / latents.INDEX_FILE))


def _init_from(stage_settings_: dict[str, Any], init_model: dict[str, Any] | None) -> str | None:
    if init_model is not None:
        return init_model["weights_dir"]
    return stage_settings_.get("init_from")


def train_stage(latent_cache: dict[str, Any], vae_model: dict[str, Any], stage: dict[str, Any],
                shared: dict[str, Any], init_model: dict[str, Any] | None = None
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train (or resume) the stage; returns the model manifest and the stage's training metrics."""
    import torch

    from opensora_mlops.training.launch import launch

    s = stage_settings(stage, shared)
    if s.get("threads"):
        torch.set_num_threads(int(s["threads"]))
    if latent_cache.get("stage") not in (None, s["name"]):
        raise ConfigError(f"{s['name']}: latent cache belongs to {latent_cache.get('stage')}")
    data: dict[str, Any] = {"source": latent_cache.get("source", "cache"), "batch_scale": s.get("batch_scale", 1.0),
                            "vae": vae_model, "text_encoder": s["text_encoder"]}
    if s.get("image_views"):  # launch refuses them for online data, which has no cached clips to view
        data.update(image_views=int(s["image_views"]), image_batch_size=s.get("image_batch_size"))
    if data["source"] == "cache":
        data["cache_dir"] = latent_cache["train_dir"]
    else:
        data.update(bucket_table=latent_cache["bucket_table"], frame_interval=int(latent_cache.get("frame_interval", 1)), video_root=s.get("video_root"))
    cfg = _train_config(s, data, _init_from(s, init_model))
    cfg["data_version"] = latent_cache.get("table_hash")
    losses: list[float] = []
    rates: list[float] = []
    mlflow_cb = tracking_callback(s["name"], latent_cache.get("table_hash"))

    def callback(kind: str, payload: dict[str, Any]) -> None:
        if kind == "metrics":
            losses.append(float(payload["loss"]))
            rates.append(float(payload["samples_per_s"]))
        mlflow_cb(kind, payload)

    result = launch(cfg, callback=callback, launcher=s.get("launcher", "torchrun"))
    final = Path(result.final_dir)
    weights = final / "ema" if (final / "ema").exists() else final / "model"
    model_config = json.loads((final / "model" / "config.json").read_text())
    manifest = {
        "stage": s["name"], "run_dir": result.run_dir, "final_dir": str(final), "model_dir": str(final / "model"),
        "ema_dir": str(final / "ema") if (final / "ema").exists() else None, "weights_dir": str(weights),
        "steps": result.steps, "model_config": model_config, "text_encoder": s["text_encoder"], "vae": vae_model,
        "data_version": latent_cache.get("table_hash"), "init_dir": cfg.get("init_from"),
        "scheduler": load_train_config(cfg, where=f"{s['name']} manifest").scheduler,
        "train_conditions": training_conditions(latent_cache),
    }
    tail = losses[-10:] or [result.last_loss]
    metrics = {
        "steps": result.steps, "samples_seen": result.samples_seen, "last_loss": result.last_loss,
        "mean_loss_last_10": sum(tail) / len(tail),
        "samples_per_s": (sum(rates) / len(rates)) if rates else None,
        "resumed_from": result.resumed_from, "wall_seconds": result.wall_seconds,
    }
    return manifest, metrics


def validate_stage(model: dict[str, Any], latent_cache: dict[str, Any], stage: dict[str, Any],
                   shared: dict[str, Any], reference_cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """Held-out loss (fixed timesteps and noise) of the stage's weights vs the weights it started from.

    ``val_loss`` is measured on the reference held-out set (stage 1's), the same for every stage, so the
    numbers of successive stages are comparable; ``val_loss_own`` on this stage's held-out clips.
    """
    import torch

    from opensora_mlops.models.stdit2 import STDiT2
    from opensora_mlops.training.latents import LatentCache
    from opensora_mlops.training.trainer import build_stage_model, load_train_config, resolve_init_dir
    from opensora_mlops.training.validation import DEFAULT_VAL_TIMESTEPS, validation_loss

    s = stage_settings(stage, shared)
    v = s.get("validation") or {}
    timesteps = v.get("timesteps", list(DEFAULT_VAL_TIMESTEPS))
    reference = reference_cache or latent_cache
    if not reference.get("val_dir"):
        logger.warning("%s: no held-out clips (cache.holdout_fraction is 0); skipping validation", s["name"])
        return {"stage": s["name"], "val_loss": None}
    trained = STDiT2.from_pretrained(model["weights_dir"])
    cfg = load_train_config(_train_config(s, {}, s.get("init_from")), where=f"{s['name']} validation")
    torch.manual_seed(cfg.seed)  # as the trainer seeds its fresh init
    start = build_stage_model(cfg)  # the stage's starting point: fresh init (seeded) or the given weights
    init_dir = model.get("init_dir")
    if s.get("init_from") or init_dir:
        start = STDiT2.from_pretrained(resolve_init_dir(init_dir or s["init_from"]))
    kwargs = dict(timesteps=timesteps, seed=int(v.get("seed", 0)), scheduler=cfg.scheduler,
                  batch_size=int(v.get("batch_size", 8)))
    ref = LatentCache(reference["val_dir"])
    after = validation_loss(trained, ref, **kwargs)
    before = validation_loss(start, ref, **kwargs)
    out = {"stage": s["name"], "val_loss": after["val_loss"], "val_mse": after["val_mse"],
           "val_x0_mse": after["val_x0_mse"], "val_loss_init": before["val_loss"],
           "val_x0_mse_init": before["val_x0_mse"], "val_count": after["val_count"], "timesteps": list(timesteps)}
    if latent_cache.get("val_dir") and latent_cache["val_dir"] != reference["val_dir"]:
        own = validation_loss(trained, LatentCache(latent_cache["val_dir"]), **kwargs)
        out["val_loss_own"] = own["val_loss"]
    # what sampling will consume: x̂_0 per t, caption effect, frame spread, oracle sampler (on training clips
    # with their own captions; the loss alone looked healthy while all of these were broken)
    if latent_cache.get("train_dir"):
        from opensora_mlops.diffusion import build_scheduler
        from opensora_mlops.evaluation.learning import diagnostic_batch, learning_report

        batch = diagnostic_batch(LatentCache(latent_cache["train_dir"]), seed=int(v.get("seed", 0)))
        if batch["x"].shape[0] >= 2:
            out["learning"] = learning_report(trained, build_scheduler(cfg.scheduler), batch)["summary"]
    try:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.log_metrics({k: float(out[k]) for k in ("val_loss", "val_mse", "val_x0_mse", "val_loss_init",
                                                           "val_x0_mse_init")})
            mlflow.log_metrics({f"learning_{k}": float(value) for k, value in out.get("learning", {}).items()})
    except ImportError:  # tracking is optional for the node itself
        pass
    return out
