"""Building blocks of reference-conditioned, looped sampling (used by :mod:`.generate`).

* :func:`resolve_size` turns ``height``/``width`` or a resolution name + aspect ratio (Open-Sora 1.1's
  aspect tables, H/W keys) into a target pixel size.
* :func:`load_reference_frames` / :func:`frames_to_video_tensor` read an image or video file and
  resize-to-cover + centre-crop it to the target size, in [-1, 1].
* :func:`plan_samples` checks prompts, loop prompts, mask strategies and references *before any model
  runs* and expands a plan per sample: the user's instructions plus, for every loop ``i > 0``, the
  instruction that conditions the first ``condition_frames`` frames on the last ones of loop ``i - 1``.
* :func:`sample_loops` runs the IDDPM sampler loop by loop on latents.

Frame indices in mask strategies are latent frames; the VAE does not compress time, so they are video
frames too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from opensora_mlops.data.aspect import get_aspect_table
from opensora_mlops.inference.mask_strategy import (
    MaskInstruction,
    MaskStrategyError,
    build_condition,
    format_mask_strategy,
    loop_condition_instruction,
    loop_prompts,
    parse_mask_strategy,
)

__all__ = [
    "GenerationError",
    "SamplePlan",
    "TargetSize",
    "frames_to_video_tensor",
    "join_loops",
    "load_reference_frames",
    "parse_aspect_ratio",
    "plan_samples",
    "resolve_size",
    "sample_loops",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".gif", ".m4v"}


class GenerationError(ValueError):
    """A generation request cannot run: bad size, reference, strategy or component mismatch."""


# ---- size --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSize:
    """The pixel size to generate, and how it was chosen."""

    height: int
    width: int
    resolution: str | None = None
    aspect_ratio: str | None = None  # the aspect table key (H/W) when a resolution was named


def parse_aspect_ratio(text: str | float) -> float:
    """``"9:16"`` (H:W) or a number H/W (``"0.56"``, ``0.5625``) -> H/W as a float."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*", str(text))
        try:
            value = float(match.group(1)) / float(match.group(2)) if match else float(text)
        except (ValueError, ZeroDivisionError):
            raise GenerationError(f"aspect ratio must be 'H:W' (e.g. '9:16') or a number H/W, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise GenerationError(f"aspect ratio must be positive and finite, got {text!r}")
    return value


def resolve_size(height: int | None = None, width: int | None = None, resolution: str | None = None,
                 aspect_ratio: str | float | None = None, downsample_factor: int = 8) -> TargetSize:
    """The target size from explicit ``height``/``width`` or ``resolution`` (+ ``aspect_ratio``).

    With a resolution name ("144p", "240p", "256", …) the size is the aspect table's entry nearest to
    ``aspect_ratio`` (H/W or "H:W"; default 1:1).  Any positive size of at least ``downsample_factor``
    pixels per side is accepted: the VAE pads it up to a multiple of the factor and the decoded video is
    cropped back (see :mod:`opensora_mlops.models.vae`), and STDiT2 pads its patch grid likewise.
    """
    if resolution is not None:
        if height is not None or width is not None:
            raise GenerationError("give either height and width or a resolution (with an aspect ratio), not both")
        table = get_aspect_table(resolution)  # ConfigError naming the valid resolutions
        ratio = parse_aspect_ratio(aspect_ratio if aspect_ratio is not None else 1.0)
        key = table.closest_ratio(ratio, 1.0)
        h, w = table.size(key)
        size = TargetSize(int(h), int(w), str(resolution), key)
    else:
        if aspect_ratio is not None:
            raise GenerationError("aspect_ratio needs a resolution name; with height and width give neither")
        if height is None or width is None:
            raise GenerationError("give height and width, or a resolution name such as '240p'")
        size = TargetSize(int(height), int(width))
        if size.height != height or size.width != width:
            raise GenerationError(f"height and width must be integers, got {height!r} x {width!r}")
    if size.height < downsample_factor or size.width < downsample_factor:
        raise GenerationError(
            f"size {size.height}x{size.width} is too small: each side needs at least {downsample_factor} pixels "
            f"(the VAE downsample factor)"
        )
    return size


# ---- references --------------------------------------------------------------------------------


def check_reference_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
        raise GenerationError(
            f"reference {path} has an unsupported extension {suffix!r}; images: {sorted(IMAGE_SUFFIXES)}, "
            f"videos: {sorted(VIDEO_SUFFIXES)}"
        )
    return path


def load_reference_frames(path: str | Path) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of an image (T = 1) or a video file."""
    from opensora_mlops.data.video_io import read_video

    path = check_reference_path(path)
    try:
        frames, _ = read_video(path)
    except (OSError, ValueError) as error:  # av.error.* derive from OSError/ValueError
        raise GenerationError(f"cannot read reference {path}: {error}") from error
    return frames


def frames_to_video_tensor(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(T, H0, W0, 3) uint8 -> [3, T, height, width] float in [-1, 1].

    Scales so the frame covers the target (keeping its aspect ratio; bicubic with antialiasing), then
    crops the centre, as Open-Sora's reference transform does.
    """
    # np.array copies: frames from a decoder can be read-only, which torch.from_numpy warns about
    video = torch.from_numpy(np.array(frames, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    _, _, h0, w0 = video.shape
    scale = max(height / h0, width / w0)
    new_h, new_w = max(height, round(h0 * scale)), max(width, round(w0 * scale))
    if (new_h, new_w) != (h0, w0):
        video = F.interpolate(video, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    video = video[:, :, top : top + height, left : left + width].clamp(-1.0, 1.0)
    return video.permute(1, 0, 2, 3).contiguous()


# ---- planning ----------------------------------------------------------------------------------


@dataclass
class SamplePlan:
    """Everything about one output sample that is known before the model runs."""

    index: int
    prompt: str  # as given (may be a loop prompt "|0|…|2|…")
    loop_prompts: list[str]  # the text used in each loop
    reference_paths: list[Path]
    reference_frames: list[int]  # frame counts of the references (as read)
    user_instructions: list[MaskInstruction]
    instructions: list[MaskInstruction] = field(default_factory=list)  # user + loop conditioning

    @property
    def mask_strategy(self) -> str:
        """Canonical strategy string of every instruction applied (including loop conditioning)."""
        return format_mask_strategy(self.instructions)


def _per_prompt(value: Any, count: int, what: str) -> list[Any]:
    """A single value for every prompt, or a list with one entry per prompt."""
    if value is None or isinstance(value, str | Path):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise GenerationError(f"{what} has {len(values)} entries for {count} prompt(s); give one per prompt or one for all")
    return values


def _split_paths(entry: Any) -> list[Path]:
    if entry is None:
        return []
    if isinstance(entry, Path):
        return [entry]
    if isinstance(entry, str):
        return [Path(p.strip()) for p in entry.split(";") if p.strip()]
    return [Path(p) for p in entry]


def plan_samples(
    prompts: Sequence[str],
    num_frames: int,
    loops: int = 1,
    condition_frames: int = 4,
    mask_strategy: str | Sequence[str | None] | None = None,
    reference_paths: str | Path | Sequence[Any] | None = None,
    reference_frame_count: Callable[[Path], int] | None = None,
) -> list[SamplePlan]:
    """Validate a request and expand it into one :class:`SamplePlan` per prompt.

    ``mask_strategy`` and ``reference_paths`` are either one value for all prompts or a list with one
    entry per prompt; a reference entry is a path, a ``;``-separated string of paths or a list of
    paths (``ref_id`` indexes that list).  In loop ``i > 0`` the previous loop's output is appended as
    reference ``len(references) + i - 1`` and conditions the first ``condition_frames`` frames.

    ``reference_frame_count(path)`` gives a reference's frame count (the caller reads the file once);
    every instruction's frame ranges are checked against it here, so a bad index fails before any
    compute.  Missing files are a FileNotFoundError naming the file.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise GenerationError("no prompts given")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise GenerationError(f"prompt {i} must be a string, got {type(prompt).__name__}")
    if not isinstance(num_frames, int) or num_frames < 1:
        raise GenerationError(f"num_frames must be a positive integer, got {num_frames!r}")
    if not isinstance(loops, int) or loops < 1:
        raise GenerationError(f"loops must be a positive integer, got {loops!r}")
    if loops > 1 and not 1 <= condition_frames < num_frames:
        raise GenerationError(
            f"condition_frames must be in [1, num_frames - 1] = [1, {num_frames - 1}] when looping, got "
            f"{condition_frames} (each loop must generate at least one new frame)"
        )
    strategies = _per_prompt(mask_strategy, len(prompts), "mask_strategy")
    references = _per_prompt(reference_paths, len(prompts), "reference_paths")

    plans = []
    for index, (prompt, strategy, refs) in enumerate(zip(prompts, strategies, references, strict=True)):
        where = f"prompt {index} ({prompt[:40]!r})"
        try:
            texts = loop_prompts(prompt, loops)
            user = parse_mask_strategy(strategy)
        except MaskStrategyError as error:
            raise GenerationError(f"{where}: {error}") from None
        paths = [check_reference_path(p) for p in _split_paths(refs)]
        for instruction in user:
            if instruction.loop_id >= loops:
                raise GenerationError(
                    f"{where}: mask strategy tuple {instruction.to_string()!r} is for loop {instruction.loop_id} "
                    f"but only {loops} loop(s) run"
                )
        conditioning = [
            loop_condition_instruction(loop, len(paths) + loop - 1, condition_frames) for loop in range(1, loops)
        ]
        plan = SamplePlan(index, prompt, texts, paths, [], user, user + conditioning)
        if paths and reference_frame_count is None:
            raise GenerationError(f"{where}: reference_frame_count is needed to check the mask strategy")
        plan.reference_frames = [int(reference_frame_count(p)) for p in paths]
        # Dry run of every loop's condition on 1-channel, 1-pixel stand-ins: checks ref ids and frame ranges.
        stand_ins = [torch.zeros(1, n, 1, 1) for n in plan.reference_frames]
        stand_ins += [torch.zeros(1, num_frames, 1, 1)] * (loops - 1)
        for loop in range(loops):
            available = stand_ins[: len(paths) + loop]
            try:
                build_condition(plan.instructions, loop, available, num_frames, latent_shape=(1, 1, 1))
            except MaskStrategyError as error:
                raise GenerationError(
                    f"{where}, loop {loop}: {error} (references: "
                    f"{', '.join(f'{i}: {p.name} ({n} frames)' for i, (p, n) in enumerate(zip(paths, plan.reference_frames, strict=True))) or 'none'})"
                ) from None
        plans.append(plan)
    return plans


# ---- sampling ----------------------------------------------------------------------------------


def micro_conditions(batch: int, height: int, width: int, fps: float, num_frames: int,
                     device: torch.device) -> dict[str, torch.Tensor]:
    """STDiT2's micro-conditions as [B] float tensors: pixel height, width, ar = H/W, fps, num_frames."""
    def full(value: float) -> torch.Tensor:
        return torch.full((batch,), float(value), device=device)

    return {"height": full(height), "width": full(width), "ar": full(height / width), "fps": full(fps),
            "num_frames": full(num_frames)}


@torch.no_grad()
def sample_loops(
    model: torch.nn.Module,
    text_encoder: Any,
    scheduler: Any,
    plans: list[SamplePlan],
    reference_latents: list[list[torch.Tensor]],
    latent_shape: tuple[int, int, int, int],
    size: TargetSize,
    fps: float,
    condition_frames: int,
    generator: torch.Generator,
    progress: bool = True,
) -> list[list[torch.Tensor]]:
    """Sample every loop for a batch of plans; returns per sample the list of per-loop latents
    [C, T, h, w] (join them with :func:`join_loops`).

    Loop ``i > 0`` starts with the last ``condition_frames`` latents of loop ``i - 1``, kept exactly.
    The previous loop's latents are used directly (1.1 decoded and re-encoded them, which only adds
    VAE error).
    """
    channels, frames, lat_h, lat_w = latent_shape
    device = next(model.parameters()).device
    batch = len(plans)
    loops = len(plans[0].loop_prompts)
    outputs: list[list[torch.Tensor]] = [[] for _ in plans]
    for loop in range(loops):
        y, y_mask = text_encoder.encode([plan.loop_prompts[loop] for plan in plans])
        y, y_mask = y.to(device), y_mask.to(device)
        conds, masks = [], []
        for plan, refs, previous in zip(plans, reference_latents, outputs, strict=True):
            available = [r.to(device) for r in refs] + previous
            x_cond, frame_mask = build_condition(plan.instructions, loop, available, frames,
                                                 latent_shape=(channels, lat_h, lat_w))
            conds.append(x_cond)
            masks.append(frame_mask)
        x_mask = torch.stack(masks)
        x_cond = torch.stack(conds).float() if bool((x_mask < 1).any()) else None
        if x_cond is None:
            x_mask = None
        noise = torch.randn((batch, channels, frames, lat_h, lat_w), generator=generator,
                            device=generator.device).to(device)
        latents = scheduler.sample(
            model, noise, y, y_mask, model.null_text(batch).to(device),
            micro_conditions(batch, size.height, size.width, fps, frames, device),
            x_cond=x_cond, x_mask=x_mask, progress=progress, generator=generator,
        )
        for out, latent in zip(outputs, latents, strict=True):
            out.append(latent)
    return outputs


def join_loops(loop_latents: list[torch.Tensor], condition_frames: int) -> torch.Tensor:
    """Concatenate one sample's per-loop latents [C, T, h, w], keeping each overlap once."""
    pieces = [loop_latents[0]] + [later[:, condition_frames:] for later in loop_latents[1:]]
    return torch.cat(pieces, dim=1)
