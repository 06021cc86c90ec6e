"""Exporting a trained model: a self-contained model directory and an Open-Sora-1.1-compatible checkpoint.

Directory layout (what :mod:`opensora_mlops.inference.generate` loads)::

    <out>/model/                 STDiT2.save_pretrained: config.json + model.safetensors
    <out>/vae/                   VideoAutoencoder.save_pretrained (copied when small enough)
    <out>/text_encoder.json      the build_text_encoder config (MiniLM ships in a package; T5 by path)
    <out>/scheduler.json         the training objective and sampler (opensora_mlops.diffusion.build_scheduler)
    <out>/export.json            manifest: format, model config, file hashes, VAE / text-encoder references,
                                 data summary, evaluation scores, 1.1 compatibility notes
    <out>/README.md              model card
    <out>/opensora_v1_1/         config.json (1.1's STDiT2Config fields, model_type "STDiT2") +
                                 model.safetensors with 1.1's key names: loads with 1.1's
                                 ``STDiT2.from_pretrained(dir)`` or ``load_checkpoint`` (optional .pth)

Components too large to copy (a T5-XXL, a big VAE) are referenced by path in ``export.json`` and
``text_encoder.json``; whoever loads the export needs them at those paths.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from opensora_mlops.config import ConfigError, strict_dataclass
from opensora_mlops.diffusion import SCHEDULER_FILE, build_scheduler, load_scheduler_config, save_scheduler
from opensora_mlops.inference.generate import DEFAULT_MAX_PIXELS
from opensora_mlops.resources import load_reference

EXPORT_FORMAT = "opensora-mlops-export/1"
MODEL_SUBDIR, VAE_SUBDIR, V11_SUBDIR = "model", "vae", "opensora_v1_1"
TEXT_ENCODER_FILE, MANIFEST_FILE, CARD_FILE = "text_encoder.json", "export.json", "README.md"


@dataclass(frozen=True)
class ExportConfig:
    """``parameters_export.yml`` → ``export``."""

    out_dir: str = "data/06_models/export"
    model_name: str = "opensora-mlops-stdit2"
    copy_vae: bool = True
    copy_vae_max_mb: float = 1024.0
    write_v1_1: bool = True
    write_v1_1_pth: bool = False
    license: str = "Apache-2.0"
    # MLflow model registry (used by the export pipeline's registration node, not by this module)
    register: bool = True
    registered_model_name: str | None = None  # None: model_name
    # the served pyfunc writes only under this folder (relative: to the serving process's working dir)
    pyfunc_output_root: str = "data/07_model_output/pyfunc"
    pyfunc_max_pixels: int | None = DEFAULT_MAX_PIXELS  # frames x H x W per video; None: no limit

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> ExportConfig:
        cfg = strict_dataclass(cls, dict(values or {}), "export")
        if cfg.copy_vae_max_mb < 0:
            raise ConfigError(f"export.copy_vae_max_mb must be >= 0, got {cfg.copy_vae_max_mb}")
        return cfg


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dir_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _copy_dir(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)


def vae_directory(vae: Mapping[str, Any] | str | Path) -> Path:
    """The local VAE directory from a VAE manifest (``{"type": "pretrained", "from_pretrained": dir}``,
    as the autoencoder pipeline writes) or a path."""
    if isinstance(vae, Mapping):
        if "from_pretrained" not in vae:
            raise ConfigError(f"VAE manifest has no 'from_pretrained' directory: {dict(vae)}")
        vae = vae["from_pretrained"]
    path = Path(vae)
    if not path.is_dir():
        raise FileNotFoundError(f"VAE directory not found: {path}")
    return path


# ------------------------------------------------------------------------------ Open-Sora 1.1 format
def v1_1_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """1.1's ``STDiT2Config`` (a transformers ``PretrainedConfig``, model_type "STDiT2") for our config."""
    return {
        "architectures": ["STDiT2"],
        "model_type": "STDiT2",
        "input_size": [None, None, None],
        "input_sq_size": int(model_config["input_sq_size"]),
        "in_channels": int(model_config["in_channels"]),
        "patch_size": [int(p) for p in model_config["patch_size"]],
        "hidden_size": int(model_config["hidden_size"]),
        "depth": int(model_config["depth"]),
        "num_heads": int(model_config["num_heads"]),
        "mlp_ratio": float(model_config["mlp_ratio"]),
        "class_dropout_prob": float(model_config["class_dropout_prob"]),
        "pred_sigma": bool(model_config["pred_sigma"]),
        "drop_path": 0.0,
        "no_temporal_pos_emb": False,
        "caption_channels": int(model_config["caption_channels"]),
        "model_max_length": int(model_config["model_max_length"]),
        "freeze": None,
        "qk_norm": bool(model_config["qk_norm"]),
        "enable_flash_attn": False,
        "enable_layernorm_kernel": False,
    }


def v1_1_notes(model_config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What a 1.1 user must know about this checkpoint (written to the manifest and the card)."""
    reference = load_reference()["stdit2_xl2"]
    ref_config = reference["config"]
    y_embedding = list(state["y_embedder.y_embedding"].shape) if "y_embedder.y_embedding" in state else None
    xl2_shapes = all(
        list(state[k].shape) == shape for k, shape in reference["state_dict_shapes"].items() if k in state
    ) and set(state) == set(reference["state_dict_shapes"])
    return {
        "key_names": "Open-Sora 1.1 STDiT2 (identical module names)",
        "matches_released_xl2_shapes": bool(xl2_shapes),
        "y_embedding_shape": y_embedding,
        "released_y_embedding_shape": [ref_config["model_max_length"], ref_config["caption_channels"]],
        "caption_channels": int(model_config["caption_channels"]),
        "model_max_length": int(model_config["model_max_length"]),
        "qk_norm_legacy": bool(model_config.get("qk_norm_legacy", False)),
        "final_layer_legacy": bool(model_config.get("final_layer_legacy", False)),
        "aspect_ratio_convention": "H/W (1.1 trained with W/H and sampled with H/W)",
    }


def write_v1_1_checkpoint(
    model_dir: str | Path, out_dir: str | Path, write_pth: bool = False
) -> dict[str, Any]:
    """Write ``out_dir/config.json`` + ``model.safetensors`` (and ``model.pth`` if asked) in Open-Sora
    1.1's format from an STDiT2 ``save_pretrained`` directory; returns the compatibility notes."""
    from safetensors.torch import load_file

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model_config = json.loads((model_dir / "config.json").read_text())
    state = load_file(str(model_dir / "model.safetensors"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(v1_1_config(model_config), indent=2) + "\n")
    tensors = {k: v.contiguous() for k, v in state.items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    if write_pth:
        torch.save(tensors, out_dir / "model.pth")
    return v1_1_notes(model_config, state)


# ------------------------------------------------------------------------------ model card
def _table(rows: Mapping[str, Any]) -> str:
    lines = ["| | |", "|---|---|"]
    for key, value in rows.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {text} |")
    return "\n".join(lines)


def _diffusion_line(scheduler: Mapping[str, Any] | None) -> str:
    values = dict(scheduler or {"type": "iddpm", "prediction": "epsilon"})
    if values.get("type", "iddpm") == "rflow":
        return (f"rectified flow (Open-Sora 1.2 style), logit-normal training times; Euler sampling, "
                f"CFG {values.get('cfg_scale', 7.0)} (`{SCHEDULER_FILE}`)")
    return (f"IDDPM, {values.get('num_timesteps', 1000)} steps, {values.get('prediction', 'epsilon')}-prediction, "
            f"learned variance; sample with 100 respaced steps, CFG {values.get('cfg_scale', 7.0)} (`{SCHEDULER_FILE}`)")


def model_card(manifest: Mapping[str, Any]) -> str:
    """The README.md of an export (markdown)."""
    cfg = manifest["model_config"]
    notes = manifest.get("opensora_v1_1")
    parts = [
        f"# {manifest['model_name']}",
        "",
        "An ST-DiT-2 text-to-video diffusion model (the Open-Sora 1.1 architecture) trained with the "
        "opensora-mlops pipelines.",
        "",
        "## Model",
        _table(
            {
                "architecture": f"STDiT2, depth {cfg['depth']}, hidden {cfg['hidden_size']}, "
                f"{cfg['num_heads']} heads, patch {tuple(cfg['patch_size'])}",
                "parameters": f"{manifest['num_parameters']:,}",
                "caption channels / tokens": f"{cfg['caption_channels']} / {cfg['model_max_length']}",
                "diffusion": _diffusion_line(manifest.get("scheduler")),
                "weights": f"{MODEL_SUBDIR}/model.safetensors (sha256 {manifest['files'][MODEL_SUBDIR + '/model.safetensors'][:12]}…)",
            }
        ),
        "",
        "## Components",
        _table(
            {
                "text encoder": json.dumps(manifest["text_encoder"]),
                "VAE": manifest["vae"]["location"]
                + (" (copied)" if manifest["vae"]["copied"] else " (referenced path)"),
            }
        ),
        "",
        "## Training data",
        _table(manifest.get("data_summary") or {"summary": "not recorded"}),
        "",
        "## Evaluation",
        _table(manifest.get("scores") or {"scores": "not evaluated"}),
        "",
        "## Use",
        "```python",
        "import mlflow",
        f'model = mlflow.pyfunc.load_model("models:/{manifest["model_name"]}/latest")',
        'model.predict(pandas.DataFrame({"prompt": ["a red circle moving left quickly on a gray background"]}))',
        "```",
        "or `python -m opensora_mlops generate --model-dir <this directory> --prompt …`.",
    ]
    if notes:
        parts += [
            "",
            "## Open-Sora 1.1 compatibility",
            f"`{V11_SUBDIR}/` holds the weights under Open-Sora 1.1's key names with 1.1's `STDiT2Config` "
            "(`config.json`, model_type `STDiT2`): it loads with 1.1's `STDiT2.from_pretrained(dir)`.",
            "",
            _table(
                {
                    "y_embedding (null caption) shape": notes["y_embedding_shape"],
                    "released 1.1 y_embedding shape": notes["released_y_embedding_shape"],
                    "same shapes as the released XL/2": notes["matches_released_xl2_shapes"],
                    "qk_norm_legacy (RoPE before QK-norm, as 1.1)": notes["qk_norm_legacy"],
                    "final_layer_legacy (1.1's conditioning-frame output)": notes["final_layer_legacy"],
                    "aspect ratio micro-condition": notes["aspect_ratio_convention"],
                }
            ),
            "",
            "With both legacy flags False this model was trained with the fixed behaviour; 1.1's code "
            "runs the legacy behaviour, so outputs there differ unless the flags are True. A text encoder "
            "other than T5-XXL (4096 channels, 200 tokens) needs 1.1's config edited to match.",
        ]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------ the export
def export_model(
    weights_dir: str | Path,
    vae: Mapping[str, Any] | str | Path,
    text_encoder: Mapping[str, Any],
    config: ExportConfig | Mapping[str, Any] | None = None,
    data_summary: Mapping[str, Any] | None = None,
    scores: Mapping[str, float] | None = None,
    source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the export directory; returns its manifest (also written to ``export.json``).

    ``weights_dir``: an STDiT2 ``save_pretrained`` directory (loaded once to check it); ``vae``: a VAE
    manifest or directory; ``text_encoder``: the ``build_text_encoder`` config; ``source``: provenance
    (stage, run ids, data version) recorded as is.
    """
    from opensora_mlops.models.stdit2 import STDiT2
    from opensora_mlops.models.text_encoder import build_text_encoder
    from opensora_mlops.models.vae import VideoAutoencoder

    cfg = config if isinstance(config, ExportConfig) else ExportConfig.from_dict(config)
    weights_dir = Path(weights_dir)
    model = STDiT2.from_pretrained(weights_dir)  # a broken checkpoint fails here, not at load time
    text_encoder = dict(text_encoder)
    encoder = build_text_encoder(text_encoder)
    if encoder.output_dim != model.config.caption_channels:
        raise ConfigError(
            f"text encoder gives {encoder.output_dim}-d embeddings, the model expects "
            f"{model.config.caption_channels} (caption_channels)"
        )
    vae_dir = vae_directory(vae)
    vae_model = VideoAutoencoder.from_pretrained(vae_dir)
    if vae_model.latent_channels != model.config.in_channels:
        raise ConfigError(
            f"VAE latent channels {vae_model.latent_channels} != model in_channels {model.config.in_channels}"
        )

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / MODEL_SUBDIR)
    copy_vae = cfg.copy_vae and _dir_size_mb(vae_dir) <= cfg.copy_vae_max_mb
    if copy_vae:
        _copy_dir(vae_dir, out / VAE_SUBDIR)
    elif (out / VAE_SUBDIR).exists():
        shutil.rmtree(out / VAE_SUBDIR)
    (out / TEXT_ENCODER_FILE).write_text(json.dumps(text_encoder, indent=2) + "\n")
    # the objective the weights were trained with; generate/pyfunc sample with it (absent: 1.1's ε IDDPM)
    scheduler = build_scheduler(load_scheduler_config(weights_dir))
    save_scheduler(scheduler, out)

    model_config = json.loads((out / MODEL_SUBDIR / "config.json").read_text())
    manifest: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "model_name": cfg.model_name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "license": cfg.license,
        "model_config": model_config,
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "text_encoder": text_encoder,
        "scheduler": scheduler.to_config(),
        "vae": {
            "location": VAE_SUBDIR if copy_vae else str(vae_dir.resolve()),
            "copied": bool(copy_vae),
            "latent_channels": int(vae_model.latent_channels),
            "downsample_factor": int(vae_model.downsample_factor),
            "scale_factor": float(vae_model.scale_factor),
        },
        "data_summary": dict(data_summary or {}),
        "scores": {k: float(v) for k, v in (scores or {}).items()},
        "source": dict(source or {}),
    }
    if cfg.write_v1_1:
        manifest["opensora_v1_1"] = write_v1_1_checkpoint(
            out / MODEL_SUBDIR, out / V11_SUBDIR, cfg.write_v1_1_pth
        )
    elif (out / V11_SUBDIR).exists():
        shutil.rmtree(out / V11_SUBDIR)
    manifest["files"] = {
        str(p.relative_to(out)): _sha256(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST_FILE, CARD_FILE)
    }
    (out / CARD_FILE).write_text(model_card(manifest), encoding="utf-8")
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify_export(directory: str | Path) -> dict[str, Any]:
    """Re-hash every file listed in ``export.json``; raises ValueError naming any missing or changed file."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{directory} is not an export: {MANIFEST_FILE} missing")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"{manifest_path}: unknown format {manifest.get('format')!r} (expected {EXPORT_FORMAT})"
        )
    problems = []
    for name, digest in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif _sha256(path) != digest:
            problems.append(f"{name} changed")
    if problems:
        raise ValueError(f"export {directory} is damaged: " + "; ".join(problems))
    return manifest


__all__ = [
    "EXPORT_FORMAT",
    "ExportConfig",
    "export_model",
    "model_card",
    "v1_1_config",
    "v1_1_notes",
    "verify_export",
    "write_v1_1_checkpoint",
]
