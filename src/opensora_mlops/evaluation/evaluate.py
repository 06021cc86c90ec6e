"""The evaluation run: generate the suite's prompts with the trained and an untrained model, collect
real clips, score everything, measure the validation loss by timestep range.

The Kedro nodes in ``opensora_mlops.pipelines.evaluation`` are thin wrappers around these functions.
A *stage manifest* is what the training pipeline writes as ``stageN.model``: ``weights_dir`` (an
STDiT2 ``save_pretrained`` directory), ``text_encoder`` (a ``build_text_encoder`` config) and ``vae``
(a VAE manifest, ``{"from_pretrained": dir}``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from opensora_mlops.config import ConfigError, check_keys, strict_dataclass
from opensora_mlops.curation.synthetic import parse_caption
from opensora_mlops.evaluation import prompt_adherence
from opensora_mlops.evaluation.features import EvaluationModels
from opensora_mlops.evaluation.validation import loss_by_timestep, timestep_ranges
from opensora_mlops.evaluation.vbench import (
    IMPLEMENTED_DIMENSIONS,
    QUALITY_DIMENSIONS,
    SYNTHETIC_DIMENSIONS,
    Scorers,
    SuiteEntry,
    load_prompt_suite,
    score_suite,
)

GENERATION_KEYS = ("num_frames", "height", "width", "fps", "steps", "cfg_scale", "seed", "batch_size")
VALIDATION_KEYS = ("num_ranges", "timesteps_per_range", "max_clips", "seed")
REAL_KEYS = ("max_clips", "max_frames")


@dataclass(frozen=True)
class EvaluationConfig:
    """``parameters_evaluation.yml`` → ``evaluation`` (unknown keys are errors)."""

    suite_path: str | None = None  # None: the bundled synthetic-vocabulary suite
    max_prompts: int = 6
    samples_per_prompt: int = 1
    groups: tuple[str, ...] = ("trained", "untrained")
    untrained_seed: int = 0
    generation: dict[str, Any] = field(
        default_factory=lambda: {
            "num_frames": 8,
            "height": 144,
            "width": 256,
            "fps": 8.0,
            "steps": 10,
            "cfg_scale": 7.0,
            "seed": 0,
            "batch_size": 4,
        }
    )
    real_clips: dict[str, Any] = field(default_factory=lambda: {"max_clips": 8, "max_frames": 32})
    validation: dict[str, Any] = field(
        default_factory=lambda: {"num_ranges": 4, "timesteps_per_range": 2, "max_clips": 4, "seed": 0}
    )
    pretrained: dict[str, Any] = field(default_factory=dict)
    output_dir: str = "data/07_model_output/evaluation"
    report_dir: str = "data/08_reporting/evaluation"
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))
        check_keys(self.generation, GENERATION_KEYS, "evaluation.generation")
        check_keys(self.validation, VALIDATION_KEYS, "evaluation.validation")
        check_keys(self.real_clips, REAL_KEYS, "evaluation.real_clips")
        unknown = [g for g in self.groups if g not in ("trained", "untrained")]
        if unknown or not self.groups:
            raise ConfigError(
                f"evaluation.groups must be a non-empty subset of [trained, untrained], got {list(self.groups)}"
            )
        if self.max_prompts < 1 or self.samples_per_prompt < 1:
            raise ConfigError(
                f"evaluation.max_prompts and samples_per_prompt must be >= 1, got {self.max_prompts}, "
                f"{self.samples_per_prompt}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> EvaluationConfig:
        return strict_dataclass(cls, dict(values or {}), "evaluation")

    def generation_settings(self) -> dict[str, Any]:
        return {**EvaluationConfig().generation, **self.generation}


# ------------------------------------------------------------------------------ components
def load_stage_components(manifest: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """(model, vae, text encoder) of a training stage manifest."""
    from opensora_mlops.export import vae_directory
    from opensora_mlops.models.stdit2 import STDiT2
    from opensora_mlops.models.text_encoder import build_text_encoder
    from opensora_mlops.models.vae import VideoAutoencoder

    for key in ("weights_dir", "text_encoder", "vae"):
        if key not in manifest:
            raise ConfigError(f"stage model manifest has no {key!r} (keys: {sorted(manifest)})")
    model = STDiT2.from_pretrained(manifest["weights_dir"]).eval()
    vae = VideoAutoencoder.from_pretrained(vae_directory(manifest["vae"]))
    encoder = build_text_encoder(manifest["text_encoder"])
    return model, vae, encoder


def untrained_like(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A freshly initialised model with the same config (the no-training baseline), seeded."""
    torch.manual_seed(seed)
    return type(model)(model.config).eval()


def suite_entries(config: EvaluationConfig) -> list[SuiteEntry]:
    return load_prompt_suite(config.suite_path)[: config.max_prompts]


def generation_for_model(config: EvaluationConfig, train_conditions: Mapping[str, Any] | None) -> dict[str, Any]:
    """The generation settings with every null value (e.g. ``fps``) filled from what the model trained on."""
    gen = config.generation_settings()
    for key, value in list(gen.items()):
        if value is None:
            if not train_conditions or train_conditions.get(key) is None:
                raise ConfigError(f"evaluation.generation.{key} is null (use the training value) but the stage "
                                  f"manifest records no training {key}; set it explicitly")
            gen[key] = train_conditions[key]
    return gen


def generate_group(
    group: str,
    model: torch.nn.Module,
    vae: Any,
    encoder: Any,
    entries: Sequence[SuiteEntry],
    config: EvaluationConfig,
    scheduler: Mapping[str, Any] | None = None,
    train_conditions: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Generate ``samples_per_prompt`` videos per suite entry; MP4 + GIF + JSON sidecar under
    ``output_dir/<group>``. Returns one record per video: group, prompt, dimensions, files.

    ``scheduler`` is the config the model was trained with (its ``scheduler.json``; default 1.1's ε
    IDDPM), sampled with the evaluation's steps and guidance. Generation settings left null (``fps``)
    take the value the model trained on (``train_conditions``, from the stage manifest)."""
    from opensora_mlops.diffusion import build_scheduler
    from opensora_mlops.inference.generate import generate, save_generation

    gen = generation_for_model(config, train_conditions)
    sampler = build_scheduler(scheduler, steps=int(gen["steps"]), cfg_scale=float(gen["cfg_scale"]))
    prompts = [e.prompt for e in entries for _ in range(config.samples_per_prompt)]
    dims = [list(e.dimensions) for e in entries for _ in range(config.samples_per_prompt)]
    batch = int(gen["batch_size"])
    records: list[dict[str, Any]] = []
    out_dir = Path(config.output_dir) / group
    for start in tqdm(range(0, len(prompts), batch), desc=f"generate ({group})", disable=not config.progress):
        chunk = prompts[start : start + batch]
        result = generate(
            model,
            vae,
            encoder,
            prompts=chunk,
            num_frames=int(gen["num_frames"]),
            height=int(gen["height"]),
            width=int(gen["width"]),
            fps=float(gen["fps"]),
            scheduler=sampler,
            seed=int(gen["seed"]) + start,
            progress=False,
            extra_settings={"evaluation_group": group},
        )
        files = save_generation(result, out_dir, name=f"sample_{start:04d}")
        for offset, written in enumerate(files):
            index = start + offset
            records.append({"group": group, "prompt": prompts[index], "dimensions": dims[index], **written})
    return records


def real_clip_records(table: pd.DataFrame | None, config: EvaluationConfig) -> list[dict[str, Any]]:
    """Curated clips whose caption is in the synthetic vocabulary (the adherence upper bound)."""
    if table is None or not len(table):
        return []
    missing = [c for c in ("path", "text") if c not in table.columns]
    if missing:
        raise ConfigError(f"the real-clip table lacks column(s) {missing}")
    limit = int(config.real_clips.get("max_clips", 8))
    records = []
    for path, text in zip(table["path"], table["text"]):
        if len(records) >= limit:
            break
        if parse_caption(text) is None or not Path(path).is_file():
            continue
        records.append(
            {
                "group": "real",
                "prompt": text,
                "dimensions": list(QUALITY_DIMENSIONS + SYNTHETIC_DIMENSIONS),
                "video": str(path),
            }
        )
    return records


def _read_frames(record: Mapping[str, Any], max_frames: int | None) -> np.ndarray:
    from opensora_mlops.data.video_io import read_video

    frames, _ = read_video(record.get("video") or record["image"])
    return frames[:max_frames] if max_frames else frames


# ------------------------------------------------------------------------------ scoring
def score_records(
    records: Sequence[Mapping[str, Any]], config: EvaluationConfig
) -> tuple[dict[str, Any], pd.DataFrame]:
    """VBench-style scores per group and the prompt adherence table (one row per clip).

    Returns ``({"vbench": {group: {dim: score}}, "methods", "not_implemented", "not_applicable",
    "adherence": {group: summary}}, adherence_table)``.
    """
    scorers = Scorers.from_models(EvaluationModels.from_dict(config.pretrained))
    max_frames = config.real_clips.get("max_frames")
    by_group: dict[str, list[tuple[SuiteEntry, np.ndarray, str]]] = {}
    for record in tqdm(records, desc="read clips", disable=not config.progress):
        frames = _read_frames(record, max_frames if record["group"] == "real" else None)
        entry = SuiteEntry(record["prompt"], tuple(record["dimensions"]))
        by_group.setdefault(record["group"], []).append(
            (entry, frames, record.get("video") or record.get("image"))
        )
    vbench: dict[str, dict[str, float]] = {}
    methods: dict[str, str] = {}
    not_implemented: set[str] = set()
    not_applicable: dict[str, list[str]] = {}
    adherence_tables = []
    for group, items in by_group.items():
        samples = [(e, f) for e, f, _ in items]
        result = score_suite(samples, scorers, progress=config.progress)
        vbench[group] = result.scores
        methods.update(result.methods)
        not_implemented.update(result.not_implemented)
        for dim, prompts in result.not_applicable.items():
            not_applicable.setdefault(dim, [])
            not_applicable[dim] += [p for p in prompts if p not in not_applicable[dim]]
        clips = [(e.prompt, f) for e, f, _ in items if parse_caption(e.prompt) is not None]
        if clips:
            table = prompt_adherence.score_clips(clips, group)
            table["video"] = [v for e, _, v in items if parse_caption(e.prompt) is not None]
            adherence_tables.append(table)
    adherence_table = (
        pd.concat(adherence_tables, ignore_index=True)
        if adherence_tables
        else pd.DataFrame(
            columns=["group", "caption", "colour_ok", "shape_ok", "direction_ok", "adherence", "video"]
        )
    )
    summary = {
        "vbench": vbench,
        "methods": methods,
        "implemented": list(IMPLEMENTED_DIMENSIONS),
        "not_implemented": sorted(not_implemented),
        "not_applicable": not_applicable,
        "adherence": prompt_adherence.summarise(adherence_table) if len(adherence_table) else {},
    }
    return summary, adherence_table


# ------------------------------------------------------------------------------ validation loss
def validation_loss_table(
    models: Mapping[str, torch.nn.Module],
    cache_dir: str | Path,
    config: EvaluationConfig,
    scheduler: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Loss (the training objective's, and the x̂_0 error) by timestep range for each model on the same
    cached clips (one clip per batch, so clips of different buckets mix), with the same noise per clip
    for every model. ``scheduler`` is the training scheduler's config (default 1.1's ε IDDPM)."""
    from opensora_mlops.diffusion import build_scheduler
    from opensora_mlops.training.latents import LatentCache

    v = {**EvaluationConfig().validation, **config.validation}
    cache = LatentCache(cache_dir)
    diffusion = build_scheduler(scheduler)
    ranges = timestep_ranges(diffusion.num_timesteps, int(v["num_ranges"]))
    rows = []
    count = min(len(cache), int(v["max_clips"]))
    for index in tqdm(range(count), desc="validation loss", disable=not config.progress):
        batch = cache.get([index])
        kwargs = {k: batch[k] for k in ("y", "mask", "fps", "height", "width", "ar", "num_frames")}
        for group, model in models.items():
            table = loss_by_timestep(
                model,
                diffusion,
                batch["x"],
                kwargs,
                ranges,
                int(v["timesteps_per_range"]),
                seed=int(v["seed"]) + index,
            )
            table.insert(0, "clip", index)
            table.insert(0, "group", group)
            rows.append(table)
    if not rows:
        raise ConfigError(f"latent cache {cache_dir} holds no clips to validate on")
    return pd.concat(rows, ignore_index=True)


# ------------------------------------------------------------------------------ metrics
def evaluation_metrics(scores: Mapping[str, Any], val_loss: pd.DataFrame | None) -> dict[str, Any]:
    """Nested metrics for DVC (``metrics.json``): vbench.<group>.<dim>, adherence.<group>.<metric>,
    val_loss.<group>.t<start>_<end> and val_loss.<group>.mean."""
    metrics: dict[str, Any] = {"vbench": scores.get("vbench", {}), "adherence": {}}
    for group, values in (scores.get("adherence") or {}).items():
        metrics["adherence"][group] = {k: float(v) for k, v in values.items()}
    if val_loss is not None and len(val_loss):
        metrics["val_loss"] = {}
        for group, rows in val_loss.groupby("group", sort=False):
            per_range = rows.groupby(["range_start", "range_end"], sort=True)["loss"].mean()
            metrics["val_loss"][str(group)] = {
                f"t{int(a):03d}_{int(b):03d}": float(v) for (a, b), v in per_range.items()
            } | {"mean": float(rows["loss"].mean())}
    return metrics


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1.0}`` (numbers only), for MLflow."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
            flat[name] = float(value)
    return flat


__all__ = [
    "EvaluationConfig",
    "evaluation_metrics",
    "flatten_metrics",
    "generate_group",
    "load_stage_components",
    "real_clip_records",
    "score_records",
    "suite_entries",
    "untrained_like",
    "validation_loss_table",
]
