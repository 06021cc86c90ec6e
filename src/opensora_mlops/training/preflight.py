"""Before a stage encodes or trains anything: can its bucket table give every rank a batch?

The sampler (:class:`opensora_mlops.data.sampler.VariableVideoBatchSampler`, with the stored buckets
as training uses it) trains every row once per epoch — a bucket's last batch may be partial — and
splits batches so every rank gets the same number; its epoch is empty only when a stage has fewer
clips than ranks (or, with 1.1's ``drop_last``, no full batch). :func:`check_stage_batches` runs the
sampler's own planning on the rows training will see (after the held-out split) and turns an empty
epoch into one line naming the stage, its buckets and counts, and the settings to change — before
any latent is encoded. :func:`batch_summary` counts clips and full batches per bucket (the
bucketing pipeline warns when a stage has no full batch at all).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from opensora_mlops.config import ConfigError


class StageDataError(ConfigError):
    """A stage's data cannot form one batch per rank; the message is one line with the fix."""


def batch_summary(kept: pd.DataFrame, batch_scale: float = 1.0) -> list[tuple[str, int, int, int]]:
    """``(bucket_id, clips, batch size, full batches)`` per bucket of a table's kept rows, batch sizes
    scaled as training scales them, largest first."""
    from opensora_mlops.training.latents import bucket_config_from_table

    if kept.empty:
        return []
    config = bucket_config_from_table(kept, batch_scale)
    out = []
    for bucket, group in kept.groupby("bucket_id", sort=True):
        res, frames, _ = str(bucket).split("/")
        size = int(config.spec(res, int(frames)).batch_size)
        out.append((str(bucket), len(group), size, len(group) // size))
    return sorted(out, key=lambda b: (-b[1], b[0]))


def describe_buckets(summary: list[tuple[str, int, int, int]], limit: int = 6) -> str:
    """"144p/8/0.56: 3 clips < batch 4, 240p/1/1.00: 1 clip < batch 4" (largest buckets first)."""
    parts = [f"{b}: {n} clip{'s' if n != 1 else ''} {'<' if full == 0 else '>='} batch {size}"
             for b, n, size, full in summary[:limit]]
    if len(summary) > limit:
        parts.append(f"{len(summary) - limit} more")
    return ", ".join(parts) or "no kept clips"


def check_stage_batches(kept: pd.DataFrame, stage: str, *, world_size: int = 1, batch_scale: float = 1.0,
                        holdout_fraction: float = 0.0, seed: int = 0) -> None:
    """Raise :class:`StageDataError` (one line) when the rows training will sample — ``kept`` minus the
    held-out clips — cannot give ``world_size`` ranks a batch each under the sampler's rules."""
    from opensora_mlops.data.sampler import EmptyEpochError, VariableVideoBatchSampler
    from opensora_mlops.training.latents import bucket_config_from_table, holdout_mask

    train = kept
    held = 0
    if holdout_fraction > 0:
        mask = holdout_mask(kept["path"], holdout_fraction, seed)
        held = int(np.sum(mask))
        train = kept[~mask].reset_index(drop=True)
    note = f" after holding out {held} for validation" if held else ""
    settings = (f"lower the batch sizes in bucketing.stages.{stage}.bucket_config or {stage}'s batch_scale, "
                "or give the stage more clips (curation.stages thresholds)")
    if train.empty:
        raise StageDataError(f"{stage}: no training clip left of {len(kept)}{note}; {settings}")
    try:
        VariableVideoBatchSampler(train, bucket_config_from_table(train, batch_scale), num_replicas=world_size,
                                  rank=0, shuffle=False, seed=seed, reassign_each_epoch=False)
    except EmptyEpochError:
        summary = batch_summary(train, batch_scale)
        raise StageDataError(
            f"{stage}: cannot train: {len(train)} clip{'s' if len(train) != 1 else ''}{note} cannot give each of "
            f"{world_size} rank(s) a batch ({describe_buckets(summary)}); {settings}"
        ) from None
