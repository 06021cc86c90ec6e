"""Aspect-ratio tables: for each named resolution, the (H, W) used for every supported aspect ratio.

The tables are Open-Sora 1.1's (10 resolutions from 144p to 4k, 17 ratios each where the resolution
defines them), shipped with the package in :func:`opensora_mlops.resources.load_reference`, so a
bucket config never carries its own copy. Ratios are keyed and compared as **H/W** everywhere (1.1
trained with W/H and sampled with H/W; this project fixes that, defect #1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import numpy as np

from opensora_mlops.config import ConfigError
from opensora_mlops.resources import load_reference

# Samples whose pixel count is at least this fraction of a resolution's nominal pixel count may be
# placed at that resolution (they are upscaled a little at most). 1.1's value.
PIXEL_SLACK = 0.8


@dataclass(frozen=True)
class AspectTable:
    """One resolution's table: nominal pixel count and ratio key (H/W, 2 decimals) -> (H, W)."""

    name: str
    pixels: int
    ratios: Mapping[str, tuple[int, int]]

    @property
    def ratio_keys(self) -> list[str]:
        return list(self.ratios)

    @property
    def ratio_values(self) -> np.ndarray:
        """The ratio keys as floats, in table order (used for nearest-ratio search)."""
        return np.array([float(k) for k in self.ratios], dtype=np.float64)

    def closest_ratio(self, height: float, width: float) -> str:
        """The key of the ratio nearest to ``height / width`` (first in table order on a tie)."""
        if height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive, got {height}x{width}")
        values = self.ratio_values
        return self.ratio_keys[int(np.argmin(np.abs(values - height / width)))]

    def closest_ratio_many(self, height: np.ndarray, width: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`closest_ratio`: index into :attr:`ratio_keys` for every (height, width)."""
        ratio = np.asarray(height, dtype=np.float64) / np.asarray(width, dtype=np.float64)
        values = self.ratio_values
        if values.size < 2 or np.any(np.diff(values) <= 0):
            # argmin returns the first minimum, the same tie rule as closest_ratio
            return np.argmin(np.abs(ratio[:, None] - values[None, :]), axis=1)
        # sorted keys: the nearest is one of the two neighbours of the insertion point; comparing the
        # same |difference| values as argmin (lower index on a tie) gives identical answers
        upper = np.clip(np.searchsorted(values, ratio), 1, values.size - 1)
        lower = upper - 1
        return np.where(np.abs(ratio - values[lower]) <= np.abs(ratio - values[upper]), lower, upper)

    def size(self, ratio_key: str) -> tuple[int, int]:
        """(H, W) of a ratio key; KeyError names the valid keys."""
        try:
            return self.ratios[ratio_key]
        except KeyError:
            raise KeyError(
                f"ratio {ratio_key!r} not in the {self.name} table; valid: {', '.join(self.ratios)}"
            ) from None


@cache
def aspect_tables() -> dict[str, AspectTable]:
    """All resolution tables from the package reference, keyed by name ("144p", "256", …, "4k")."""
    tables = {}
    for name, entry in load_reference()["aspect_ratios"].items():
        ratios = {key: (int(hw[0]), int(hw[1])) for key, hw in entry["ratios_h_over_w"].items()}
        tables[name] = AspectTable(name=name, pixels=int(entry["pixels"]), ratios=ratios)
    return tables


def resolution_names() -> list[str]:
    """Valid resolution names, smallest pixel count first."""
    return sorted(aspect_tables(), key=lambda n: aspect_tables()[n].pixels)


def get_aspect_table(name: str) -> AspectTable:
    """The table for ``name``; :class:`ConfigError` names the unknown resolution and the valid ones."""
    tables = aspect_tables()
    key = str(name)
    if key not in tables:
        raise ConfigError(
            f"unknown resolution {name!r}; valid resolutions are: {', '.join(resolution_names())}"
        )
    return tables[key]


def closest_size(resolution: str, height: float, width: float) -> tuple[str, tuple[int, int]]:
    """The ratio key and bucket (H, W) nearest to a ``height`` × ``width`` frame at ``resolution``.

    This is what inference uses to turn a requested size into a supported one.
    """
    table = get_aspect_table(resolution)
    key = table.closest_ratio(height, width)
    return key, table.ratios[key]
