"""The exported model as an MLflow pyfunc: prompts in, video files out.

``mlflow.pyfunc.load_model("models:/<name>/<version>").predict(pd.DataFrame({"prompt": [...]}),
params={"num_frames": 16, ...})`` returns one row per prompt with the written MP4 (and GIF) and its
JSON sidecar. The export directory travels as the model's artifact ``model_dir``.

A served model takes requests from anyone who can reach it, so it writes only under its configured
``output_root`` (``output_dir`` is a relative folder inside it; absolute paths and ``..`` are refused)
and refuses requests over its size budget (``max_pixels``, frames x H x W per video) before sampling.
It samples with the scheduler the weights were trained with (the export's ``scheduler.json``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from opensora_mlops.inference.generate import DEFAULT_MAX_PIXELS

#: predict() parameters and their defaults (also the model signature's params schema).
PREDICT_DEFAULTS: dict[str, Any] = {
    "num_frames": 16,
    "height": 144,
    "width": 256,
    "fps": 8.0,
    "steps": 100,
    "cfg_scale": 7.0,  # replaced at logging time by the guidance saved with the weights (scheduler.json)
    "seed": 0,
    "output_dir": "",
    "gif": True,
}
DEFAULT_OUTPUT_ROOT = "data/07_model_output/pyfunc"


def confined_output_dir(root: str | Path, requested: str) -> Path:
    """The folder a request writes to: ``requested`` (relative) inside ``root``, or a fresh one there.

    Raises ValueError for an absolute path or one that leaves the root (``..``, symlinks resolved).
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if not requested:
        return Path(tempfile.mkdtemp(prefix="request_", dir=root))
    if Path(requested).is_absolute():
        raise ValueError(f"output_dir must be a folder relative to the model's output root {root}, got {requested!r}")
    target = (root / requested).resolve()
    if not target.is_relative_to(root):
        raise ValueError(f"output_dir {requested!r} leaves the model's output root {root}")
    return target


OUTPUT_COLUMNS = ["prompt", "video_path", "gif_path", "settings_path", "num_frames", "height", "width"]


class OpenSoraPyfunc(mlflow.pyfunc.PythonModel):
    """Text-to-video generation with an opensora-mlops export directory."""

    def load_context(self, context) -> None:
        from opensora_mlops.inference.generate import load_components

        model_dir = Path(context.artifacts["model_dir"])
        manifest = json.loads((model_dir / "export.json").read_text())
        vae = manifest["vae"]
        vae_path = None if vae["copied"] else vae["location"]
        (self.model, self.vae, self.text_encoder, self.scheduler, self.settings) = load_components(
            model_dir=model_dir, vae_path=vae_path
        )
        self.model_dir = model_dir
        config = dict(getattr(context, "model_config", None) or {})
        self.output_root = Path(config.get("output_root") or DEFAULT_OUTPUT_ROOT)
        self.max_pixels = config.get("max_pixels", DEFAULT_MAX_PIXELS)

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from opensora_mlops.inference.generate import generate, save_generation

        if not isinstance(model_input, pd.DataFrame) or "prompt" not in model_input.columns:
            raise ValueError("model_input must be a DataFrame with a 'prompt' column")
        prompts = [str(p) for p in model_input["prompt"].tolist()]
        if not prompts:
            return pd.DataFrame(columns=OUTPUT_COLUMNS)
        unknown = sorted(set(params or {}) - set(PREDICT_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown predict params {unknown}; known: {sorted(PREDICT_DEFAULTS)}")
        p = {**PREDICT_DEFAULTS, "cfg_scale": self.scheduler.cfg_scale, **(params or {})}
        out_dir = confined_output_dir(self.output_root, str(p["output_dir"] or ""))
        result = generate(
            self.model,
            self.vae,
            self.text_encoder,
            self.scheduler.with_sampling(steps=int(p["steps"]), cfg_scale=float(p["cfg_scale"])),
            prompts=prompts,
            num_frames=int(p["num_frames"]),
            height=int(p["height"]),
            width=int(p["width"]),
            fps=float(p["fps"]),
            seed=int(p["seed"]),
            progress=False,
            extra_settings={"model_dir": str(self.model_dir)},
            max_pixels=self.max_pixels,
        )
        files = save_generation(result, out_dir, name="video", gif=bool(p["gif"]))
        rows = []
        for prompt, written, settings in zip(prompts, files, result.settings, strict=True):
            rows.append(
                {
                    "prompt": prompt,
                    "video_path": written.get("video") or written.get("image"),
                    "gif_path": written.get("gif", ""),
                    "settings_path": written["settings"],
                    "num_frames": int(settings["total_frames"]),
                    "height": int(settings["height"]),
                    "width": int(settings["width"]),
                }
            )
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def model_signature(cfg_scale: float | None = None):
    """The pyfunc's signature; its ``cfg_scale`` default is the exported model's own guidance (MLflow fills
    a request's missing params from these defaults)."""
    from mlflow.models import infer_signature

    example_in = pd.DataFrame({"prompt": ["a red circle moving left quickly on a gray background"]})
    example_out = pd.DataFrame(
        [
            {
                "prompt": "p",
                "video_path": "v.mp4",
                "gif_path": "v.gif",
                "settings_path": "v.json",
                "num_frames": 16,
                "height": 144,
                "width": 256,
            }
        ]
    )
    params = {**PREDICT_DEFAULTS, **({} if cfg_scale is None else {"cfg_scale": float(cfg_scale)})}
    return infer_signature(example_in, example_out, params=params), example_in


def log_pyfunc(
    export_dir: str | Path, registered_model_name: str | None, artifact_path: str = "model",
    output_root: str = DEFAULT_OUTPUT_ROOT, max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Any:
    """Log the export as a pyfunc model into the active run (and register it when a name is given);
    returns MLflow's ModelInfo (``model_uri``, ``registered_model_version``). ``output_root`` and
    ``max_pixels`` travel as the model's config: where a served model may write, and how large a request
    it accepts."""
    from opensora_mlops.diffusion import build_scheduler, load_scheduler_config

    signature, example = model_signature(build_scheduler(load_scheduler_config(export_dir)).cfg_scale)
    return mlflow.pyfunc.log_model(
        name=artifact_path,
        python_model=OpenSoraPyfunc(),
        artifacts={"model_dir": str(export_dir)},
        signature=signature,
        registered_model_name=registered_model_name,
        pip_requirements=["opensora-mlops"],
        model_config={"output_root": str(output_root), "max_pixels": max_pixels},
    )
