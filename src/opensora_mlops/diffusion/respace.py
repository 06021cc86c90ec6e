"""Timestep respacing: run a diffusion on a subset of its original timesteps.

Keeping original steps ``k_0 < k_1 < ... < k_{n-1}`` defines a new Markov chain whose cumulative
products equal the original ones at the kept steps; its betas are recomputed as
``β'_j = 1 - ᾱ_{k_j} / ᾱ_{k_{j-1}}`` (with ``ᾱ_{k_{-1}} = 1``). The model is still called with the
original timestep ``k_j``, so a network trained on 1000 steps samples in 100.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from opensora_mlops.config import ConfigError


def _section_counts(num_timesteps: int, spec: str | int | Sequence[int] | None) -> list[int]:
    if spec is None or (isinstance(spec, str) and spec.strip() == ""):
        return [num_timesteps]
    if isinstance(spec, bool):
        raise ConfigError(f"timestep_respacing must be a step count, got {spec!r}")
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",")]
        counts = []
        for part in parts:
            if not part.lstrip("-").isdigit():
                raise ConfigError(
                    f"timestep_respacing {spec!r}: {part!r} is not an integer step count "
                    "(use e.g. '100', '10,15,20' or 'ddim50')"
                )
            counts.append(int(part))
        return counts
    if isinstance(spec, Sequence) and all(isinstance(c, int) and not isinstance(c, bool) for c in spec):
        return list(spec)
    raise ConfigError(f"timestep_respacing must be None, an int, a string or a list of ints, got {spec!r}")


def space_timesteps(num_timesteps: int, spec: str | int | Sequence[int] | None) -> list[int]:
    """The sorted original timesteps kept by a respacing spec.

    ``spec`` is None or "" (keep all), an int or "N" (N evenly spaced steps over the whole range),
    "a,b,c" (the range cut into equal sections, each strided to its count, as improved diffusion does),
    or "ddimN" (the fixed integer stride of the DDIM paper). With two or more steps in a section the
    section's first and last original steps are always kept, so "100" keeps 0 and 999.
    """
    if isinstance(spec, str) and spec.strip().startswith("ddim"):
        text = spec.strip()[4:]
        if not text.isdigit():
            raise ConfigError(f"timestep_respacing {spec!r}: expected 'ddim<N>' with an integer N")
        wanted = int(text)
        for stride in range(1, num_timesteps):
            kept = list(range(0, num_timesteps, stride))
            if len(kept) == wanted:
                return kept
        raise ConfigError(f"timestep_respacing {spec!r}: no integer stride gives {wanted} of {num_timesteps} steps")

    counts = _section_counts(num_timesteps, spec)
    if any(c < 1 for c in counts):
        raise ConfigError(f"timestep_respacing {spec!r}: every section needs at least one step, got {counts}")
    base, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for index, count in enumerate(counts):
        size = base + (1 if index < extra else 0)
        if count > size:
            raise ConfigError(
                f"timestep_respacing {spec!r}: cannot take {count} steps from a section of {size} "
                f"(num_timesteps={num_timesteps})"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        # Accumulate the fractional position step by step (not index * stride): this reproduces
        # improved diffusion's rounding exactly, so respaced samplers visit the same timesteps.
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def respaced_betas(alphas_cumprod: torch.Tensor, kept: Sequence[int]) -> torch.Tensor:
    """Betas of the chain that visits only the ``kept`` steps with the same cumulative products there."""
    if len(kept) == 0:
        raise ConfigError("respacing kept no timesteps")
    kept_ac = alphas_cumprod[torch.as_tensor(list(kept), dtype=torch.long)].to(torch.float64)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), kept_ac[:-1]])
    return 1.0 - kept_ac / previous
