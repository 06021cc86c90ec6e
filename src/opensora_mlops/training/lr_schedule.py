"""Learning-rate schedules shared by the diffusion trainer and the autoencoder fit: plain arithmetic, no
torch, so any training loop can use them."""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine")


def lr_at(step: int, base_lr: float, warmup_steps: int, max_steps: int | None = None,
          schedule: str = "constant", final: float = 0.0) -> float:
    """The learning rate of optimizer step ``step`` (0-based): a linear warm-up over ``warmup_steps``,
    then constant (Open-Sora 1.1) or, with ``schedule="cosine"``, a half cosine from ``base_lr`` down to
    ``final x base_lr`` at ``max_steps``. For the embedded diffusion model the decay measured no better
    than the constant rate (BENCHMARKS.md, "Schedule, learning rate, batch, image views and position
    scale"); the autoencoder fit decays to 0."""
    rate = base_lr * (min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0)
    if schedule == "constant" or max_steps is None:
        return rate
    progress = min(1.0, max(0.0, (step - warmup_steps) / max(1, max_steps - warmup_steps)))
    return rate * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress)))
