"""Training frame masks: which latent frames are noised (learned) and which condition the model.

Each sample draws one mask type with the probabilities in ``mask_ratios`` (Open-Sora 1.1's defaults:
75% no mask, the rest split over "quarter" and "image" masks at random/head/tail/head+tail
positions). The result is a bool [B, T] tensor, True = noised frame to learn, False = conditioned
frame (fed nearly clean, excluded from the loss).

Frame patterns for T latent frames, with ``q = max(1, T // 4)``:

* ``mask_no``: every frame noised.
* ``mask_quarter_random``: a run of n ~ U{1..q} frames conditioned at a uniformly random start.
* ``mask_quarter_head`` / ``mask_quarter_tail``: the first / last n ~ U{1..q} frames conditioned.
* ``mask_quarter_head_tail``: the first n and the last n frames conditioned (the same n ~ U{1..q}).
* ``mask_image_*``: as the quarter masks with n = 1.

Invariant (where 1.1 could fail): at least one frame is always noised. A single-frame sample is never
masked; a size is clamped to leave a noised frame (head+tail: n <= (T - 1) // 2, others n <= T - 1), and
a pattern that cannot leave one (head+tail on 2 frames) falls back to no mask. 1.1 crashed on quarter
masks for T in {2, 3} (``randint(1, 0)``) and conditioned every frame for image head+tail at T = 2,
which divides the loss by zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from opensora_mlops.config import ConfigError, check_keys

MASK_NAMES = (
    "mask_no",
    "mask_quarter_random",
    "mask_quarter_head",
    "mask_quarter_tail",
    "mask_quarter_head_tail",
    "mask_image_random",
    "mask_image_head",
    "mask_image_tail",
    "mask_image_head_tail",
)


def default_mask_ratios() -> dict[str, float]:
    """Open-Sora 1.1's mask ratios (stage 1; all three stages use the same)."""
    from opensora_mlops.resources import load_reference

    return dict(load_reference()["stages"]["stage1"]["mask_ratios"])


class MaskGenerator:
    """Draws per-sample training frame masks with configurable mask-type probabilities."""

    def __init__(self, mask_ratios: Mapping[str, float] | None = None):
        ratios = default_mask_ratios() if mask_ratios is None else dict(mask_ratios)
        check_keys(ratios, MASK_NAMES, "mask_ratios")
        for name, ratio in ratios.items():
            if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= ratio <= 1.0:
                raise ConfigError(f"mask_ratios[{name!r}] must be a number in [0, 1], got {ratio!r}")
        total = sum(ratios.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ConfigError(f"mask_ratios must sum to 1, got {total!r} from {ratios}")
        # Keep the canonical order so a seeded generator gives the same masks whatever the dict order.
        self.mask_ratios = {name: float(ratios.get(name, 0.0)) for name in MASK_NAMES}
        probabilities = torch.tensor(list(self.mask_ratios.values()), dtype=torch.float64)
        self._cumulative = torch.cumsum(probabilities, dim=0)

    def __repr__(self) -> str:
        nonzero = {k: v for k, v in self.mask_ratios.items() if v > 0}
        return f"MaskGenerator({nonzero})"

    def draw_mask_types(self, batch: int, generator: torch.Generator | None = None) -> list[str]:
        """The mask type of each of ``batch`` samples."""
        u = torch.rand(batch, generator=generator, dtype=torch.float64, device=_device(generator))
        index = torch.searchsorted(self._cumulative.to(u.device), u, right=True)
        # Guard u landing on a total just under 1 because of rounding: use the last type with mass.
        last_nonzero = max(i for i, p in enumerate(self.mask_ratios.values()) if p > 0)
        index = index.clamp(max=last_nonzero)
        return [MASK_NAMES[i] for i in index.tolist()]

    def frame_mask(self, mask_name: str, num_frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """One sample's bool [num_frames] mask for a given mask type (True = noised)."""
        if mask_name not in MASK_NAMES:
            raise ConfigError(f"unknown mask type {mask_name!r}; known: {', '.join(MASK_NAMES)}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        mask = torch.ones(num_frames, dtype=torch.bool)
        if mask_name == "mask_no" or num_frames == 1:
            return mask
        kind, place = mask_name[len("mask_") :].split("_", 1)
        head_tail = place == "head_tail"
        largest = (num_frames - 1) // 2 if head_tail else num_frames - 1
        if largest < 1:
            return mask
        if kind == "quarter":
            upper = min(max(1, num_frames // 4), largest)
            size = int(torch.randint(1, upper + 1, (1,), generator=generator, device=_device(generator)).item())
        else:
            size = 1
        if place == "random":
            start = int(
                torch.randint(0, num_frames - size + 1, (1,), generator=generator, device=_device(generator)).item()
            )
            mask[start : start + size] = False
        if place in ("head", "head_tail"):
            mask[:size] = False
        if place in ("tail", "head_tail"):
            mask[num_frames - size :] = False
        return mask

    def get_masks(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Bool [B, T] masks for a latent batch ``x`` [B, C, T, H, W] (True = noised frame to learn)."""
        if x.dim() != 5:
            raise ValueError(f"x must be a latent batch [B, C, T, H, W], got shape {tuple(x.shape)}")
        batch, num_frames = x.shape[0], x.shape[2]
        names = self.draw_mask_types(batch, generator)
        masks = torch.stack([self.frame_mask(name, num_frames, generator) for name in names])
        return masks.to(x.device)


def _device(generator: torch.Generator | None):
    return generator.device if generator is not None else "cpu"
