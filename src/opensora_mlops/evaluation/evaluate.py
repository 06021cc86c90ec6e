"""The evaluation run: generate the suite's prompts with the trained and an untrained model, collect
real clips, score everything, measure the validation loss by timestep range.

Every prompt is generated with several seeds (``samples_per_prompt`` or ``generation.seeds``), and every
score is reported with a bootstrap confidence interval over prompts (the samples of one prompt are
resampled together) and, for prompt adherence, beside the score a uniform guess gets. Prompts are split
into *seen* (their colour/shape/background/direction combination occurs among the captions of the clips
the model was trained on: the training splits of the stages' latent caches) and *held-out*; besides the
suite, ``training_prompts`` training captions are evaluated so that the seen split is never empty.

The Kedro nodes in ``opensora_mlops.pipelines.evaluation`` are thin wrappers around these functions.
A *stage manifest* is what the training pipeline writes as ``stageN.model``: ``weights_dir`` (an
STDiT2 ``save_pretrained`` directory), ``text_encoder`` (a ``build_text_encoder`` config) and ``vae``
(a VAE manifest, ``{"from_pretrained": dir}``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
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
from opensora_mlops.evaluation.statistics import cluster_bootstrap
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

GENERATION_KEYS = ("num_frames", "height", "width", "fps", "steps", "cfg_scale", "seed", "seeds", "batch_size",
                   "dtype")
#: ``generation.dtype``: the denoiser's dtype while sampling (the VAE decodes in float32 either way)
SAMPLING_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VALIDATION_KEYS = ("num_ranges", "timesteps_per_range", "max_clips", "seed")
REAL_KEYS = ("max_clips", "max_frames")
ADHERENCE_KEYS = ("min_subject_fraction", "min_background_fraction", "max_background_spread", "min_track_consistency")
STATISTICS_KEYS = ("confidence", "resamples", "seed")
#: VBench dimensions scored on the training prompts added to the suite (the cheap ones that need no
#: motion in the caption).
TRAINING_PROMPT_DIMENSIONS = ("subject_consistency", "background_consistency", "color", "object_class")


@dataclass(frozen=True)
class EvaluationConfig:
    """``parameters_evaluation.yml`` → ``evaluation`` (unknown keys are errors)."""

    suite_path: str | None = None  # None: the bundled synthetic-vocabulary suite
    max_prompts: int = 6
    samples_per_prompt: int = 3  # seeds per prompt (generation.seeds, when given, wins)
    training_prompts: int = 6  # training captions added to the suite (seen combinations)
    groups: tuple[str, ...] = ("trained", "untrained")
    untrained_seed: int = 0
    # seeds per prompt for the untrained model (None: samples_per_prompt); its output is a flat frame
    # whatever the seed, so one is enough for the no-training floor and saves a third of the generation
    untrained_samples_per_prompt: int | None = None
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
            "dtype": "fp32",
        }
    )
    real_clips: dict[str, Any] = field(default_factory=lambda: {"max_clips": 8, "max_frames": 32})
    adherence: dict[str, Any] = field(
        default_factory=lambda: {
            "min_subject_fraction": 0.6,
            "min_background_fraction": 0.8,
            "max_background_spread": 8.0,
            "min_track_consistency": 0.8,
        }
    )
    statistics: dict[str, Any] = field(
        default_factory=lambda: {"confidence": 0.95, "resamples": 2000, "seed": 0}
    )
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
        check_keys(self.adherence, ADHERENCE_KEYS, "evaluation.adherence")
        check_keys(self.statistics, STATISTICS_KEYS, "evaluation.statistics")
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
        untrained = self.untrained_samples_per_prompt
        if untrained is not None and (isinstance(untrained, bool) or not isinstance(untrained, int) or untrained < 1):
            raise ConfigError(f"evaluation.untrained_samples_per_prompt must be an int >= 1 or null, got {untrained!r}")
        if self.training_prompts < 0:
            raise ConfigError(f"evaluation.training_prompts must be >= 0, got {self.training_prompts}")
        seeds = self.generation.get("seeds")
        if seeds is not None and (
            not isinstance(seeds, list | tuple)
            or not seeds
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds)
            or len(set(seeds)) != len(seeds)
        ):
            raise ConfigError(f"evaluation.generation.seeds must be a non-empty list of distinct integers, got {seeds!r}")
        dtype = self.generation.get("dtype", "fp32")
        if not isinstance(dtype, str) or dtype not in (*SAMPLING_DTYPES, "auto"):
            raise ConfigError(f"evaluation.generation.dtype must be one of {sorted(SAMPLING_DTYPES)} or auto, "
                              f"got {dtype!r}")
        confidence = float(self.statistics.get("confidence", 0.95))
        if not 0.0 < confidence < 1.0 or int(self.statistics.get("resamples", 2000)) < 1:
            raise ConfigError(
                "evaluation.statistics: confidence must be in (0, 1) and resamples >= 1, got "
                f"{self.statistics}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> EvaluationConfig:
        return strict_dataclass(cls, dict(values or {}), "evaluation")

    def generation_settings(self) -> dict[str, Any]:
        return {**EvaluationConfig().generation, **self.generation}

    def adherence_settings(self) -> dict[str, float]:
        return {k: float(v) for k, v in {**EvaluationConfig().adherence, **self.adherence}.items()}

    def statistics_settings(self) -> dict[str, Any]:
        return {**EvaluationConfig().statistics, **self.statistics}

    def seeds(self, group: str = "trained") -> list[int]:
        """One generation seed per sample of a prompt: ``generation.seeds``, else ``generation.seed`` +
        0 .. ``samples_per_prompt`` - 1; the untrained group takes the first
        ``untrained_samples_per_prompt`` of them when that is set."""
        if self.generation.get("seeds") is not None:
            seeds = [int(v) for v in self.generation["seeds"]]
        else:
            seeds = [int(self.generation_settings()["seed"]) + k for k in range(self.samples_per_prompt)]
        if group == "untrained" and self.untrained_samples_per_prompt is not None:
            return seeds[: self.untrained_samples_per_prompt]
        return seeds


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


def training_captions(manifests: Sequence[Mapping[str, Any] | None]) -> list[str]:
    """Captions of the clips the stages trained on, from their latent cache manifests: the ``train_dir``
    split of a cached stage (its held-out clips are not trained on), the whole ``bucket_table`` of an
    online one. Missing manifests (None) are skipped."""
    from opensora_mlops.training.latents import INDEX_FILE

    captions: list[str] = []
    for manifest in manifests:
        if not manifest:
            continue
        if manifest.get("train_dir"):
            table_path = Path(manifest["train_dir"]) / INDEX_FILE
        elif manifest.get("bucket_table"):
            table_path = Path(manifest["bucket_table"])
        else:
            raise ConfigError(
                f"latent cache manifest of {manifest.get('stage', '?')} names neither train_dir nor "
                f"bucket_table (keys: {sorted(manifest)})"
            )
        if not table_path.is_file():
            raise FileNotFoundError(f"training clip table of {manifest.get('stage', '?')} not found: {table_path}")
        captions += [str(t) for t in pd.read_parquet(table_path, columns=["text"])["text"]]
    return captions


def suite_entries(config: EvaluationConfig, training: Sequence[str] = ()) -> list[SuiteEntry]:
    """The suite's first ``max_prompts`` entries, then up to ``training_prompts`` training captions whose
    combinations the suite lacks (distinct combinations, a seeded draw; worded as in training, scored on
    :data:`TRAINING_PROMPT_DIMENSIONS`)."""
    entries = load_prompt_suite(config.suite_path)[: config.max_prompts]
    if not config.training_prompts:
        return entries
    taken = {prompt_adherence.combination_of(e.prompt) for e in entries}
    by_combination: dict[tuple[str, str, str, str], str] = {}
    for caption in sorted(set(training)):
        combination = prompt_adherence.combination_of(caption)
        if combination is not None and combination not in taken:
            by_combination.setdefault(combination, caption)
    candidates = [by_combination[c] for c in sorted(by_combination)]
    rng = np.random.default_rng(int(config.statistics_settings()["seed"]))
    count = min(config.training_prompts, len(candidates))
    chosen = sorted(rng.choice(len(candidates), size=count, replace=False).tolist()) if count else []
    return entries + [SuiteEntry(candidates[i], TRAINING_PROMPT_DIMENSIONS) for i in chosen]


def generation_for_model(config: EvaluationConfig, train_conditions: Mapping[str, Any] | None,
                         scheduler: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The generation settings with every null value filled from the model: ``cfg_scale`` from the
    scheduler config saved with its weights (the guidance it was trained to be sampled with, so that
    evaluation, export and ``generate`` sample alike), the others (e.g. ``fps``) from what it trained on."""
    gen = config.generation_settings()
    if gen.get("cfg_scale") is None:
        from opensora_mlops.diffusion import build_scheduler

        gen["cfg_scale"] = build_scheduler(scheduler).cfg_scale
    gen["dtype"] = resolve_sampling_dtype(str(gen.get("dtype", "fp32")))  # the pipeline samples on the CPU
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
    """Generate one video per suite entry and seed (:meth:`EvaluationConfig.seeds`); MP4 + GIF + JSON
    sidecar under ``output_dir/<group>``. Returns one record per video: group, prompt, dimensions, seed,
    sample (the seed's index), files. Prompts are batched ``batch_size`` at a time; a batch's noise comes
    from one generator seeded with the sample's seed and the batch index, so a sample is reproducible
    given the suite and the batch size.

    ``scheduler`` is the config the model was trained with (its ``scheduler.json``; default 1.1's ε
    IDDPM), sampled with the evaluation's steps and guidance. Generation settings left null (``fps``)
    take the value the model trained on (``train_conditions``, from the stage manifest).

    ``generation.dtype: bf16`` samples with a bfloat16 copy of the denoiser (``model`` itself is left in
    its dtype); the noise, the sampler's arithmetic and the VAE decode stay float32."""
    from opensora_mlops.diffusion import build_scheduler
    from opensora_mlops.inference.generate import generate, save_generation

    gen = generation_for_model(config, train_conditions, scheduler)
    sampler = build_scheduler(scheduler, steps=int(gen["steps"]), cfg_scale=float(gen["cfg_scale"]))
    model = sampling_model(model, str(gen["dtype"]))
    batch = int(gen["batch_size"])
    jobs = [(k, seed, start) for k, seed in enumerate(config.seeds(group)) for start in range(0, len(entries), batch)]
    records: list[dict[str, Any]] = []
    out_dir = Path(config.output_dir) / group
    for sample, seed, start in tqdm(jobs, desc=f"generate ({group})", disable=not config.progress):
        chunk_entries = entries[start : start + batch]
        chunk = [e.prompt for e in chunk_entries]
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
            seed=batch_seed(seed, start // batch),
            progress=False,
            extra_settings={"evaluation_group": group, "evaluation_seed": seed, "dtype": gen["dtype"]},
        )
        files = save_generation(result, out_dir, name=f"seed{seed}_{start:04d}")
        for entry, written in zip(chunk_entries, files, strict=True):
            records.append(
                {
                    "group": group,
                    "prompt": entry.prompt,
                    "dimensions": list(entry.dimensions),
                    "seed": seed,
                    "sample": sample,
                    **written,
                }
            )
    return records


def resolve_sampling_dtype(dtype: str, device: torch.device | str = "cpu") -> str:
    """``auto``: bf16 on CUDA or on a CPU that computes bfloat16 natively (AVX512-BF16 or AMX; sampling
    1.9x faster than fp32 there, BENCHMARKS.md), fp32 elsewhere (emulated bf16 is slower); others as given."""
    if dtype != "auto":
        return dtype
    from opensora_mlops.models.vae import bf16_is_fast

    return "bf16" if torch.device(device).type == "cuda" or bf16_is_fast() else "fp32"


def sampling_model(model: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """``model`` when it already has the sampling ``dtype`` (``SAMPLING_DTYPES``, or ``auto``: see
    :func:`resolve_sampling_dtype`), else a copy cast to it: ``Module.to`` casts in place, and the
    caller's model may be used again in its own precision."""
    dtype = resolve_sampling_dtype(dtype, next(model.parameters()).device)
    if dtype not in SAMPLING_DTYPES:
        raise ConfigError(f"evaluation.generation.dtype must be one of {sorted(SAMPLING_DTYPES)}, got {dtype!r}")
    target = SAMPLING_DTYPES[dtype]
    if all(p.dtype == target for p in model.parameters()):
        return model
    return copy.deepcopy(model).to(target)


def batch_seed(seed: int, batch_index: int) -> int:
    """Generator seed of one batch: distinct for every (seed, batch) pair with under a million batches."""
    return int(seed) * 1_000_003 + int(batch_index)


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
    records: Sequence[Mapping[str, Any]],
    config: EvaluationConfig,
    seen: Iterable[Sequence[str]] = (),
) -> tuple[dict[str, Any], pd.DataFrame]:
    """VBench-style scores per group and the prompt adherence table (one row per clip).

    ``seen`` holds the (colour, shape, background, direction) combinations of the training captions
    (:func:`prompt_adherence.training_combinations`); each clip's prompt is tagged seen or held-out.

    Returns ``(summary, adherence_table)``; ``summary`` has ``vbench`` {group: {dim: mean}},
    ``vbench_ci`` {group: {dim_low, dim_high}}, ``adherence`` {group: {metric, metric_low, metric_high,
    n, prompts}} and the same per split in ``adherence_seen`` / ``adherence_held_out``, ``chance``
    {metric: guess score}, ``splits`` {split: prompts}, ``methods``, ``implemented``,
    ``not_implemented``, ``not_applicable``.
    """
    seen_set = {tuple(c) for c in seen}
    stats = config.statistics_settings()
    interval_kwargs = {
        "confidence": float(stats["confidence"]),
        "num_resamples": int(stats["resamples"]),
        "seed": int(stats["seed"]),
    }
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
    vbench_ci: dict[str, dict[str, float]] = {}
    methods: dict[str, str] = {}
    not_implemented: set[str] = set()
    not_applicable: dict[str, list[str]] = {}
    adherence_tables = []
    for group, items in by_group.items():
        samples = [(e, f) for e, f, _ in items]
        result = score_suite(samples, scorers, progress=config.progress)
        vbench[group] = result.scores
        vbench_ci[group] = {}
        for dim, rows in result.per_video.groupby("dimension", sort=True):
            interval = cluster_bootstrap(rows["value"].to_numpy(), rows["prompt"].to_numpy(), **interval_kwargs)
            vbench_ci[group] |= {f"{dim}_low": interval.low, f"{dim}_high": interval.high}
        methods.update(result.methods)
        not_implemented.update(result.not_implemented)
        for dim, prompts in result.not_applicable.items():
            not_applicable.setdefault(dim, [])
            not_applicable[dim] += [p for p in prompts if p not in not_applicable[dim]]
        clips = [(e.prompt, f) for e, f, _ in items if parse_caption(e.prompt) is not None]
        if clips:
            table = prompt_adherence.score_clips(clips, group, **config.adherence_settings())
            table["video"] = [v for e, _, v in items if parse_caption(e.prompt) is not None]
            table["split"] = [prompt_adherence.split_of(c, seen_set) for c in table["caption"]]
            adherence_tables.append(table)
    adherence_table = (
        pd.concat(adherence_tables, ignore_index=True)
        if adherence_tables
        else pd.DataFrame(
            columns=["group", *prompt_adherence.AdherenceScore.__dataclass_fields__, "video", "split"]
        )
    )
    summary: dict[str, Any] = {
        "vbench": vbench,
        "vbench_ci": vbench_ci,
        "methods": methods,
        "implemented": list(IMPLEMENTED_DIMENSIONS),
        "not_implemented": sorted(not_implemented),
        "not_applicable": not_applicable,
        "chance": dict(prompt_adherence.CHANCE),
    }
    for key, rows in (
        ("adherence", adherence_table),
        ("adherence_seen", adherence_table[adherence_table["split"] == prompt_adherence.SEEN]),
        ("adherence_held_out", adherence_table[adherence_table["split"] == prompt_adherence.HELD_OUT]),
    ):
        summary[key] = prompt_adherence.summarise_with_intervals(rows, **interval_kwargs) if len(rows) else {}
    summary["splits"] = {
        split: sorted(set(adherence_table.loc[adherence_table["split"] == split, "caption"]))
        for split in (prompt_adherence.SEEN, prompt_adherence.HELD_OUT)
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
def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    return {
        str(k): float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)
    }


def evaluation_metrics(scores: Mapping[str, Any], val_loss: pd.DataFrame | None) -> dict[str, Any]:
    """Metrics for DVC (``metrics.json``), numbers only: vbench.<group>.<dim> (and vbench_ci.<group>.
    <dim>_low/_high), adherence.<group>.<metric> (and <metric>_low/_high, n, prompts), the same per split
    under adherence_seen / adherence_held_out, chance.<metric>, val_loss.<group>.t<start>_<end> and
    val_loss.<group>.mean, and the same for the x̂_0 error under val_x0_mse when it was measured."""
    metrics: dict[str, Any] = {
        "vbench": {g: _numbers(v) for g, v in (scores.get("vbench") or {}).items()},
        "vbench_ci": {g: _numbers(v) for g, v in (scores.get("vbench_ci") or {}).items()},
        "chance": _numbers(scores.get("chance") or prompt_adherence.CHANCE),
    }
    for key in ("adherence", "adherence_seen", "adherence_held_out"):
        metrics[key] = {g: _numbers(v) for g, v in (scores.get(key) or {}).items()}
    if val_loss is not None and len(val_loss):
        metrics["val_loss"] = {}
        for group, rows in val_loss.groupby("group", sort=False):
            per_range = rows.groupby(["range_start", "range_end"], sort=True)["loss"].mean()
            metrics["val_loss"][str(group)] = {
                f"t{int(a):03d}_{int(b):03d}": float(v) for (a, b), v in per_range.items()
            } | {"mean": float(rows["loss"].mean())}
        if "x0_mse" in val_loss.columns:
            # the clean-latent error: an ε loss can look healthy while x̂_0 is worse than predicting 0
            metrics["val_x0_mse"] = {}
            for group, rows in val_loss.groupby("group", sort=False):
                per_range = rows.groupby(["range_start", "range_end"], sort=True)["x0_mse"].mean()
                metrics["val_x0_mse"][str(group)] = {
                    f"t{int(a):03d}_{int(b):03d}": float(v) for (a, b), v in per_range.items()
                } | {"mean": float(rows["x0_mse"].mean())}
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
    "sampling_model",
    "load_stage_components",
    "real_clip_records",
    "score_records",
    "suite_entries",
    "training_captions",
    "untrained_like",
    "validation_loss_table",
]
