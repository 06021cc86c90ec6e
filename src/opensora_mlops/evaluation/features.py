"""Pretrained image features for the evaluation dimensions, loaded from local directories only.

VBench measures subject consistency with DINO ViT-B/16, background consistency with CLIP ViT-B/32,
aesthetic quality with the LAION aesthetic predictor (an MLP on L2-normalised CLIP ViT-L/14 image
embeddings, outputs 1–10) and imaging quality with MUSIQ; for the last, this module offers CLIP-IQA
(Wang et al., 2023: CLIP's preference for "Good photo." over "Bad photo.", no extra weights). When ``EvaluationModels`` names local paths for these, the evaluation uses
them; otherwise :mod:`opensora_mlops.evaluation.metrics` falls back to its classical features and the
report says so. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opensora_mlops.config import ConfigError, strict_dataclass


@dataclass(frozen=True)
class EvaluationModels:
    """Local paths of optional pretrained evaluators (``None``: use the classical method).

    ``subject_features``: a transformers image model directory (DINO/DINOv2/ViT/CLIP) for subject
    consistency; ``background_features``: a CLIP directory for background consistency;
    ``aesthetic_clip`` + ``aesthetic_head``: a CLIP directory and the LAION aesthetic MLP weights
    (``.safetensors``, or ``.pth`` loaded with ``weights_only=True``); ``imaging_clip``: a full CLIP
    directory (image and text towers + tokenizer) for CLIP-IQA imaging quality.
    """

    subject_features: str | None = None
    background_features: str | None = None
    aesthetic_clip: str | None = None
    aesthetic_head: str | None = None
    imaging_clip: str | None = None
    device: str = "cpu"

    @classmethod
    def from_dict(cls, values: dict | None) -> EvaluationModels:
        models = strict_dataclass(cls, dict(values or {}), "evaluation.pretrained")
        if (models.aesthetic_clip is None) != (models.aesthetic_head is None):
            raise ConfigError(
                "evaluation.pretrained: aesthetic_clip and aesthetic_head must be given together, got "
                f"aesthetic_clip={models.aesthetic_clip!r}, aesthetic_head={models.aesthetic_head!r}"
            )
        for name in (
            "subject_features",
            "background_features",
            "aesthetic_clip",
            "aesthetic_head",
            "imaging_clip",
        ):
            path = getattr(models, name)
            if path is not None and not Path(path).exists():
                raise ConfigError(f"evaluation.pretrained.{name}: path does not exist: {path}")
        return models


class TransformersImageFeatures:
    """Per-frame image embeddings [T, D] from a local transformers vision model.

    CLIP models give their projected image embeddings; other backbones (DINO, DINOv2, ViT) give the
    CLS token of the last hidden state, as VBench does for DINO.
    """

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 16):
        import transformers

        self.path = str(path)
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"image feature model directory not found: {self.path}")
        self.processor = transformers.AutoImageProcessor.from_pretrained(self.path, local_files_only=True)
        # the saved architecture, so a CLIP vision tower keeps its projection head (AutoModel drops it)
        config = transformers.AutoConfig.from_pretrained(self.path, local_files_only=True)
        architecture = (getattr(config, "architectures", None) or [None])[0]
        model_class = getattr(transformers, architecture, None) if architecture else None
        model_class = model_class or transformers.AutoModel
        self.model = model_class.from_pretrained(self.path, local_files_only=True).to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.name = f"{type(self.model).__name__}({Path(self.path).name})"

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        outputs = []
        for start in range(0, len(frames), self.batch_size):
            batch = list(frames[start : start + self.batch_size])
            pixel_values = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            outputs.append(self._embed(pixel_values).float().cpu().numpy())
        return np.concatenate(outputs)

    def _embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "get_image_features"):
            features = self.model.get_image_features(pixel_values=pixel_values)
            # transformers 5 may return a model output instead of a tensor
            if not isinstance(features, torch.Tensor):
                features = features.pooler_output
            return features
        out = self.model(pixel_values=pixel_values)
        if getattr(out, "image_embeds", None) is not None:
            return out.image_embeds
        return out.last_hidden_state[:, 0]


def _load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


class LinearStack(torch.nn.Module):
    """A stack of Linear layers with no activations, as in LAION's improved aesthetic predictor
    (its dropouts are identity at inference). Layers come from ``<prefix>.<index>.weight`` keys."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        weights = sorted((k for k in state if k.endswith(".weight")), key=lambda k: int(k.split(".")[-2]))
        if not weights:
            raise ValueError("aesthetic head: no '<prefix>.<index>.weight' keys in the state dict")
        layers = []
        for key in weights:
            weight = state[key]
            bias = state.get(key[: -len("weight")] + "bias")
            layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            layer.weight.data.copy_(weight)
            if bias is not None:
                layer.bias.data.copy_(bias)
            layers.append(layer)
        for previous, following in zip(layers[:-1], layers[1:]):
            if previous.out_features != following.in_features:
                raise ValueError(
                    f"aesthetic head: layer sizes do not chain ({previous.out_features} -> {following.in_features})"
                )
        if layers[-1].out_features != 1:
            raise ValueError(f"aesthetic head must output 1 value, got {layers[-1].out_features}")
        self.layers = torch.nn.Sequential(*layers)
        self.in_features = layers[0].in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LaionAestheticScorer:
    """Aesthetic score per frame in [0, 1]: LAION MLP(L2-normalised CLIP image embedding) / 10."""

    def __init__(self, clip_path: str | Path, head_path: str | Path, device: str = "cpu"):
        self.features = TransformersImageFeatures(clip_path, device=device)
        self.head = LinearStack(_load_state_dict(head_path)).to(device).eval()
        self.device = device
        self.name = f"LAION aesthetic MLP on {self.features.name}"

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        embeddings = torch.from_numpy(self.features(frames)).to(self.device)
        if embeddings.shape[1] != self.head.in_features:
            raise ValueError(
                f"aesthetic head expects {self.head.in_features}-d CLIP embeddings, the CLIP model at "
                f"{self.features.path} gives {embeddings.shape[1]}"
            )
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return (self.head(embeddings).squeeze(-1) / 10.0).clamp(0.0, 1.0).cpu().numpy()


def _as_tensor(output: Any) -> torch.Tensor:
    """transformers 5 may return a model output where 4.x returned a tensor of features."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipIqaScorer:
    """CLIP-IQA imaging quality per frame in [0, 1]: softmax over the scaled cosine similarities of the
    frame to the antonym prompts ("Good photo.", "Bad photo."), probability of the first."""

    PROMPTS = ("Good photo.", "Bad photo.")

    def __init__(self, clip_path: str | Path, device: str = "cpu", batch_size: int = 16):
        import transformers

        self.path = str(clip_path)
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"CLIP directory not found: {self.path}")
        self.model = (
            transformers.CLIPModel.from_pretrained(self.path, local_files_only=True).to(device).eval()
        )
        self.processor = transformers.AutoImageProcessor.from_pretrained(self.path, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        with torch.no_grad():
            tokens = tokenizer(list(self.PROMPTS), padding=True, return_tensors="pt").to(device)
            text = _as_tensor(self.model.get_text_features(**tokens)).float()
        self.text = text / text.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.device = device
        self.batch_size = batch_size
        self.name = f"CLIP-IQA ({Path(self.path).name})"

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        scale = float(self.model.logit_scale.exp())
        out = []
        for start in range(0, len(frames), self.batch_size):
            pixels = self.processor(images=list(frames[start : start + self.batch_size]), return_tensors="pt")
            image = _as_tensor(
                self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
            )
            image = image.float() / image.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
            probabilities = torch.softmax(scale * image @ self.text.T, dim=-1)[:, 0]
            out.append(probabilities.cpu().numpy())
        return np.concatenate(out)
