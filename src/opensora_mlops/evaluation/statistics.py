"""Confidence intervals for evaluation scores.

An evaluation draws several samples (seeds) per prompt, and samples of one prompt are not independent:
a model that never draws triangles fails every seed of a triangle prompt. So intervals come from a
*cluster* bootstrap: whole prompts are resampled with replacement (all their samples together), the
statistic is the mean over the resampled samples, and the interval is the percentile interval of that
mean over ``num_resamples`` draws. With one cluster (or identical values) the interval collapses to the
mean: the data say nothing about the spread, and the report shows the number of prompts beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float


def cluster_bootstrap(
    values: np.ndarray,
    clusters: np.ndarray | None = None,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Mean of ``values`` with a percentile bootstrap interval, resampling whole ``clusters``.

    ``clusters`` labels each value (e.g. its prompt); None: every value is its own cluster. NaN values
    are left out. An empty input gives NaNs. Deterministic in ``seed``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    values = np.asarray(values, dtype=np.float64).ravel()
    labels = np.arange(len(values)) if clusters is None else np.asarray(clusters).ravel()
    if labels.shape != values.shape:
        raise ValueError(f"clusters must label every value: {labels.shape} labels for {values.shape} values")
    keep = np.isfinite(values)
    values, labels = values[keep], labels[keep]
    if not len(values):
        return Interval(float("nan"), float("nan"), float("nan"))
    _, index = np.unique(labels, return_inverse=True)
    sums = np.bincount(index, weights=values)
    counts = np.bincount(index).astype(np.float64)
    mean = float(sums.sum() / counts.sum())
    if len(sums) == 1:
        return Interval(mean, mean, mean)
    draws = np.random.default_rng(seed).integers(0, len(sums), size=(num_resamples, len(sums)))
    resampled = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [alpha, 1.0 - alpha])
    # the percentile interval of a mean of values in [a, b] can sit a float ulp off the mean when all agree
    return Interval(mean, float(min(low, mean)), float(max(high, mean)))


__all__ = ["Interval", "cluster_bootstrap"]
