"""Clip captions: from the source table's ``text`` (a sidecar or the synthetic ground truth) or from a
vision-language model loaded from a local path, then cleaned.

Clean-up (:func:`clean_caption`): decode HTML entities, collapse whitespace, strip quotes around the
whole caption, remove boilerplate openings that captioning models put in front of the content ("The
video shows", "In this video,", "This image depicts", …; matched case-insensitively, repeatedly), then
normalise the first letter (``first_letter``: "upper" sentence case, "lower", or "keep") and make sure
the caption ends with one full stop.

Captioning keeps every metadata column it is given (1.1's captioner wrote only path and text, losing
height/width: defect #7).

Where captions come from (the strategy; :func:`caption_strategy_problem` refuses a run that has none):
the source table's text (a captions CSV, or the synthetic corpus's own captions), the local VLM, or
for clips still without one the named fallback ``missing_text``: "drop" (quarantined, reason "no
caption"), "filename" (the source file's name in words, ``text_method`` "filename-fallback") or
"empty" (an empty caption: trained as the null caption). When no clip can get a caption at all, the run
stops at once with the fix instead of quarantining everything.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from opensora_mlops.config import ConfigError, strict_dataclass

MISSING_TEXT = ("drop", "empty", "filename")


class CaptionSourceError(ConfigError):
    """No caption source covers the data: the message says how to configure one."""


def missing_captions_message(what: str) -> str:
    """One paragraph: which data has no caption, and the three ways to give it captions."""
    return (f"{what}, so curation would drop every clip as 'no caption'. Give the clips captions: "
            "set ingestion.folder.captions_csv to a CSV with columns path,text (paths relative to the data "
            "root); or caption with a local vision-language model: curation.captions.source: vlm and "
            "curation.captions.vlm_path: <local transformers directory>; or pick a fallback: "
            "curation.captions.missing_text: filename (the file name becomes the caption) or empty "
            "(uncaptioned, trained with the null caption).")


def caption_strategy_problem(texts: Sequence[Any], captions: Mapping[str, Any] | CaptionConfig | None,
                             where: str) -> str | None:
    """Why these rows cannot get captions (None when they can): every text missing, no VLM and the
    fallback is "drop". ``where`` names the rows in the message ("none of the 12 files under /data")."""
    config = captions if isinstance(captions, CaptionConfig) else CaptionConfig.from_dict(captions)
    if config.source == "vlm" or config.missing_text != "drop":
        return None
    if not len(texts) or any(clean_caption(t) for t in texts):
        return None
    return missing_captions_message(where)


#: Words of camera-generated file names that say nothing about the content.
CAMERA_NAMES = frozenset({"img", "dsc", "dscn", "dscf", "mvi", "vid", "video", "pxl", "gopr", "gp", "dji", "mov",
                          "clip", "movie", "screen", "recording", "untitled", "export", "final", "copy"})


def caption_from_filename(path: str | Path) -> str:
    """A file name in words ("dog_running-on_beach.mp4" -> "dog running on beach"); "" when no word of
    two letters or more is left once camera words are ignored (IMG_2034, DSC_0001, VID_20240101)."""
    words = [w for w in re.split(r"[\s_\-.+]+", Path(str(path)).stem) if w]
    if not any(sum(ch.isalpha() for ch in w) >= 2 and w.lower() not in CAMERA_NAMES for w in words):
        return ""
    return " ".join(words)

DEFAULT_PREFIXES = (
    "the video shows",
    "the video showcases",
    "the video features",
    "the video depicts",
    "the video captures",
    "the video is",
    "this video shows",
    "this video depicts",
    "this video features",
    "in this video,",
    "in this video",
    "in the video,",
    "in the video",
    "the image shows",
    "the image depicts",
    "this image shows",
    "in this image,",
    "the scene shows",
    "the clip shows",
    "this clip shows",
    "a video of",
    "video of",
    "an image of",
)
_SPACE = re.compile(r"\s+")
_LEADING_JUNK = re.compile(r"^[\s,:;\-–—]+")


@dataclass(frozen=True)
class CaptionConfig:
    """``curation.captions`` parameters.

    ``source`` "metadata" uses the input table's ``text_column``; "vlm" runs an image-text-to-text model
    from ``vlm_path`` (a local transformers directory, on ``vlm_device``) on ``vlm_frames`` frames of each clip.
    ``missing_text`` decides what a clip without a caption gets: "drop" (quarantined), "filename" (its
    source file's name in words) or "empty".
    ``shot_separator``: a source caption that describes every shot in order, joined by this separator
    (the synthetic corpus uses "; then "), gives each clip its own shot's part — only when the number of
    parts equals the number of detected scenes; otherwise the clip keeps the whole caption.
    """

    source: str = "metadata"
    text_column: str = "text"
    shot_separator: str | None = None
    vlm_path: str | None = None
    vlm_prompt: str = "Describe this video in one sentence."
    vlm_max_new_tokens: int = 60
    vlm_frames: int = 1
    vlm_device: str = "cpu"
    prefixes: Sequence[str] = field(default=DEFAULT_PREFIXES)
    first_letter: str = "upper"
    missing_text: str = "drop"

    def __post_init__(self) -> None:
        if self.source not in {"metadata", "vlm"}:
            raise ConfigError(f"curation.captions.source must be 'metadata' or 'vlm', got {self.source!r}")
        if self.source == "vlm" and not self.vlm_path:
            raise ConfigError("curation.captions.source is 'vlm' but curation.captions.vlm_path is not set")
        if self.first_letter not in {"upper", "lower", "keep"}:
            raise ConfigError(f"curation.captions.first_letter must be upper/lower/keep, got {self.first_letter!r}")
        if self.missing_text not in MISSING_TEXT:
            raise ConfigError(f"curation.captions.missing_text must be one of {list(MISSING_TEXT)}, "
                              f"got {self.missing_text!r}")
        object.__setattr__(self, "prefixes", tuple(str(p).lower() for p in self.prefixes))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> CaptionConfig:
        return strict_dataclass(cls, dict(values or {}), "curation.captions")


def clean_caption(text: str | None, prefixes: Sequence[str] = DEFAULT_PREFIXES, first_letter: str = "upper") -> str:
    """The cleaned caption (module docstring); "" for a missing or blank caption."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    caption = _SPACE.sub(" ", html.unescape(str(text))).strip()
    if len(caption) >= 2 and caption[0] == caption[-1] and caption[0] in "\"'":
        caption = caption[1:-1].strip()
    lowered = [p.lower() for p in prefixes]
    changed = True
    while changed and caption:
        changed = False
        for prefix in sorted(lowered, key=len, reverse=True):
            if caption.lower().startswith(prefix) and (
                len(caption) == len(prefix) or not caption[len(prefix)].isalnum() or prefix.endswith(" ")
            ):
                caption = _LEADING_JUNK.sub("", caption[len(prefix):])
                changed = True
                break
    if not caption:
        return ""
    if first_letter == "upper":
        caption = caption[0].upper() + caption[1:]
    elif first_letter == "lower":
        caption = caption[0].lower() + caption[1:]
    caption = caption.rstrip(" .")
    return f"{caption}." if caption else ""


def shot_caption(text: Any, scene_index: int, num_scenes: int, separator: str) -> Any:
    """Part ``scene_index`` of a per-shot caption when it has exactly ``num_scenes`` parts, else ``text``."""
    if not isinstance(text, str):
        return text
    parts = text.split(separator)
    return parts[scene_index].strip() if len(parts) == num_scenes and 0 <= scene_index < num_scenes else text


class VLMCaptioner:
    """An image-text-to-text model from a local transformers directory (loaded lazily, offline)."""

    def __init__(self, path: str, prompt: str, max_new_tokens: int = 60, device: str = "cpu") -> None:
        if not Path(path).is_dir():
            raise ConfigError(f"curation.captions.vlm_path is not a directory: {path!r}")
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval().to(device)
        self.device = device
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens

    def __call__(self, frames: np.ndarray) -> str:
        import torch
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        messages = [{"role": "user", "content": [*({"type": "image"} for _ in images),
                                                  {"type": "text", "text": self.prompt}]}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(images=images, text=prompt, return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0]


def vlm_raw_captions(clips: pd.DataFrame, config: CaptionConfig, captioner: VLMCaptioner | None = None) -> list[str]:
    """The VLM's raw caption of every clip (``vlm_frames`` frames spread over each)."""
    from opensora_mlops.curation.scorers import sample_clip

    captioner = captioner or VLMCaptioner(config.vlm_path, config.vlm_prompt, config.vlm_max_new_tokens,
                                          config.vlm_device)
    raw = []
    for path, n in zip(clips["path"], clips["num_frames"], strict=True):
        step = max(1, int(n) // max(1, config.vlm_frames))
        clip = sample_clip(path, stride=step, max_frames=max(2, config.vlm_frames), num_frames=int(n))
        raw.append(captioner(clip.frames[: config.vlm_frames]))
    return raw


def caption_table(
    clips: pd.DataFrame, config: CaptionConfig, captioner: VLMCaptioner | None = None,
    raw_captions: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Caption and clean every clip; returns (captioned clips with ALL input columns, dropped rows).

    The raw caption is kept in ``text_raw``; ``text_method`` says where the caption came from
    ("metadata", "vlm", "filename-fallback" or "empty-fallback"). ``raw_captions``: the VLM's captions
    already computed (curation caches them), instead of running ``captioner``.
    """
    out = clips.copy()
    if config.source == "vlm":
        out["text_raw"] = list(raw_captions) if raw_captions is not None else vlm_raw_captions(out, config, captioner)
        out["text_method"] = "vlm"
    else:
        if config.text_column not in out.columns:
            out["text_raw"] = ""
        else:
            out["text_raw"] = out[config.text_column].astype("object")
            if config.shot_separator and {"scene_index", "num_scenes"} <= set(out.columns):
                out["text_raw"] = [
                    shot_caption(t, int(i), int(n), config.shot_separator)
                    for t, i, n in zip(out["text_raw"], out["scene_index"], out["num_scenes"], strict=True)
                ]
        out["text_method"] = "metadata"
    out["text"] = [clean_caption(t, config.prefixes, config.first_letter) for t in out["text_raw"]]
    out["text_raw"] = out["text_raw"].map(lambda t: "" if t is None or (isinstance(t, float) and np.isnan(t)) else str(t))
    missing = out["text"] == ""
    if config.missing_text == "filename" and missing.any():
        names = out["source_path"] if "source_path" in out.columns else out["path"]
        fallback = [clean_caption(caption_from_filename(n), config.prefixes, config.first_letter) for n in names]
        out.loc[missing, "text"] = [f for f, m in zip(fallback, missing, strict=True) if m]
        out.loc[missing & (out["text"] != ""), "text_method"] = "filename-fallback"
        missing = out["text"] == ""
    if config.missing_text == "empty":
        out.loc[missing, "text_method"] = "empty-fallback"
    elif missing.any():
        reason = "no caption" if config.missing_text == "drop" else "no caption (file name has no words)"
        dropped = out[missing].assign(reason=reason)
        return out[~missing].reset_index(drop=True), dropped.reset_index(drop=True)
    return out.reset_index(drop=True), out.iloc[0:0].assign(reason=pd.Series(dtype="object"))
