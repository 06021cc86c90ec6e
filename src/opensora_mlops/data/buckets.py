"""Bucket configs and bucket assignment (Open-Sora 1.1 semantics, vectorised, plus fix #4).

A *bucket config* maps resolution name -> number of frames -> ``[keep_prob, batch_size]``. A sample
(T frames of H × W) is assigned as follows. Resolutions are scanned from the largest pixel count
down; a resolution is eligible when ``H·W >= 0.8 · pixels``. Images (T = 1) can only go to the
resolution's 1-frame bucket. A video fits a frame count t (t > 1) when ``T > t · frame_interval``
(strict). At the chosen (resolution, t) a uniform draw decides whether the sample is kept there
(``u < keep_prob``); if not, the scan goes on. The bucket's (H, W) is the resolution table's entry for
the ratio nearest to the sample's H/W.

Open-Sora 1.1 tried only the *longest* fitting frame count at each resolution before dropping to a
lower resolution. Here a failed draw first falls back to shorter frame counts at the same resolution
(fix #4, design note "Known defects"); ``v11_compat=True`` restores 1.1 exactly.

Draws are a counter-based hash (splitmix64) of (seed, epoch, sample index, bucket), so the vectorised
assignment and the row-by-row reference agree bit for bit, and a sample's draws do not depend on the
other rows or on the order rows are processed in.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from opensora_mlops.config import ConfigError, check_keys
from opensora_mlops.data.aspect import PIXEL_SLACK, AspectTable, get_aspect_table

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB

# drop reasons
REASON_NO_FIT = "no_bucket_fits"  # too few pixels or frames for every bucket (or an image with no 1-frame bucket)
REASON_NOT_DRAWN = "not_drawn"  # some bucket fits, but every keep_prob draw failed


# --------------------------------------------------------------------------------------------------
# counter-based random numbers
# --------------------------------------------------------------------------------------------------
def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = np.asarray(x, dtype=np.uint64) + np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def _splitmix64_int(x: int) -> int:
    """Pure-Python splitmix64, an independent implementation for the row-by-row reference."""
    z = (x + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def _check_seed(seed: int, epoch: int) -> None:
    if not 0 <= int(seed) <= _MASK64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    if not 0 <= int(epoch) <= _MASK64:
        raise ValueError(f"epoch must be a non-negative integer, got {epoch}")


def _epoch_base(seed: int, epoch: int) -> int:
    _check_seed(seed, epoch)
    return _splitmix64_int(_splitmix64_int(int(seed)) ^ int(epoch))


def bucket_key(resolution: str, num_frames: int) -> int:
    """A stable 64-bit key for a (resolution, frames) bucket: draws survive edits to other buckets."""
    return _splitmix64_int(zlib.crc32(f"{resolution}/{int(num_frames)}".encode()))


def uniform_draws(seed: int, epoch: int, sample_ids: np.ndarray, bucket_keys: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) draws, shape [len(sample_ids), len(bucket_keys)], one per (sample, bucket)."""
    base = np.uint64(_epoch_base(seed, epoch))
    per_sample = splitmix64(np.asarray(sample_ids, dtype=np.uint64) ^ base)
    bits = splitmix64(per_sample[:, None] ^ np.asarray(bucket_keys, dtype=np.uint64)[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def uniform_draw(seed: int, epoch: int, sample_id: int, key: int) -> float:
    """One draw of :func:`uniform_draws`, computed with Python integers."""
    per_sample = _splitmix64_int(int(sample_id) ^ _epoch_base(seed, epoch))
    return (_splitmix64_int(per_sample ^ key) >> 11) * (1.0 / (1 << 53))


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BucketSpec:
    """One (resolution, frame count) bucket; its aspect-ratio sub-buckets come from the table."""

    resolution: str
    num_frames: int
    keep_prob: float
    batch_size: int | None
    key: int

    @property
    def label(self) -> str:
        return f"{self.resolution}/{self.num_frames}"


def _parse_frames(key: Any, where: str) -> int:
    if isinstance(key, bool):
        raise ConfigError(f"{where}: frame count must be a positive integer, got {key!r}")
    try:
        value = int(str(key).strip())
    except ValueError:
        raise ConfigError(f"{where}: frame count must be a positive integer, got {key!r}") from None
    if value < 1 or str(value) != str(key).strip():
        raise ConfigError(f"{where}: frame count must be a positive integer, got {key!r}")
    return value


def _parse_entry(value: Any, where: str) -> tuple[float, int | None]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ConfigError(f"{where}: expected [keep_prob, batch_size], got {value!r}")
    prob, batch = value
    if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0.0 <= float(prob) <= 1.0:
        raise ConfigError(f"{where}: keep_prob must be a number in [0, 1], got {prob!r}")
    if batch is None:
        if float(prob) != 0.0:
            raise ConfigError(f"{where}: batch_size may be null only when keep_prob is 0, got keep_prob {prob}")
        return 0.0, None
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"{where}: batch_size must be a positive integer, got {batch!r}")
    return float(prob), int(batch)


class BucketConfig:
    """A validated bucket config; :attr:`specs` lists the buckets in 1.1's scan order.

    Scan order: resolutions by nominal pixel count, largest first; within one, frame counts longest
    first.
    """

    def __init__(self, raw: Mapping[Any, Any], where: str = "bucket_config") -> None:
        if not isinstance(raw, Mapping) or not raw:
            raise ConfigError(f"{where} must be a non-empty mapping resolution -> frames -> [keep_prob, batch]")
        parsed: dict[str, dict[int, tuple[float, int | None]]] = {}
        for res_key, frames in raw.items():
            name = str(res_key)
            table = get_aspect_table(name)  # ConfigError naming the resolution and the valid ones
            if name in parsed:
                raise ConfigError(f"{where}: resolution {name!r} appears twice")
            if not isinstance(frames, Mapping) or not frames:
                raise ConfigError(f"{where}.{name} must be a non-empty mapping frames -> [keep_prob, batch]")
            entries: dict[int, tuple[float, int | None]] = {}
            for t_key, value in frames.items():
                t = _parse_frames(t_key, f"{where}.{name}")
                if t in entries:
                    raise ConfigError(f"{where}.{name}: frame count {t} appears twice")
                entries[t] = _parse_entry(value, f"{where}.{name}.{t}")
            parsed[table.name] = entries
        self._raw = parsed
        self.tables: dict[str, AspectTable] = {name: get_aspect_table(name) for name in parsed}
        self.resolutions: list[str] = sorted(parsed, key=lambda n: self.tables[n].pixels, reverse=True)
        self.specs: list[BucketSpec] = [
            BucketSpec(res, t, parsed[res][t][0], parsed[res][t][1], bucket_key(res, t))
            for res in self.resolutions
            for t in sorted(parsed[res], reverse=True)
        ]
        self._index = {(s.resolution, s.num_frames): i for i, s in enumerate(self.specs)}

    def spec(self, resolution: str, num_frames: int) -> BucketSpec:
        try:
            return self.specs[self._index[(str(resolution), int(num_frames))]]
        except KeyError:
            raise KeyError(
                f"no bucket {resolution}/{num_frames}; buckets: {', '.join(s.label for s in self.specs)}"
            ) from None

    def to_dict(self) -> dict[str, dict[int, list[Any]]]:
        return {res: {t: [p, b] for t, (p, b) in entries.items()} for res, entries in self._raw.items()}

    def __len__(self) -> int:
        return len(self.specs)

    def __repr__(self) -> str:
        return f"BucketConfig({', '.join(s.label for s in self.specs)})"


@dataclass(frozen=True)
class StageBucketing:
    """A training stage's bucketing parameters (``bucketing.stageN`` in parameters_bucketing.yml)."""

    frame_interval: int
    bucket_config: BucketConfig

    @classmethod
    def from_params(cls, params: Mapping[str, Any], where: str = "bucketing stage") -> StageBucketing:
        if not isinstance(params, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {type(params).__name__}")
        check_keys(params, ["frame_interval", "bucket_config"], where)
        missing = [k for k in ("frame_interval", "bucket_config") if k not in params]
        if missing:
            raise ConfigError(f"missing key(s) in {where}: {', '.join(missing)}")
        interval = params["frame_interval"]
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ConfigError(f"{where}.frame_interval must be a positive integer, got {interval!r}")
        return cls(interval, BucketConfig(params["bucket_config"], f"{where}.bucket_config"))


# --------------------------------------------------------------------------------------------------
# assignment
# --------------------------------------------------------------------------------------------------
@dataclass
class Assignment:
    """Per-sample result arrays: ``bucket`` indexes ``config.specs`` (-1 = dropped), ``ratio`` indexes
    that resolution's ratio keys (-1 = dropped), ``reason`` is "" when kept."""

    bucket: np.ndarray
    ratio: np.ndarray
    reason: np.ndarray


def _validate_sizes(num_frames: np.ndarray, height: np.ndarray, width: np.ndarray) -> None:
    for name, values in (("num_frames", num_frames), ("height", height), ("width", width)):
        bad = np.flatnonzero(~(values >= 1))
        if bad.size:
            raise ValueError(
                f"{name} must be >= 1 for every row; {bad.size} row(s) are not, e.g. row {bad[0]} = {values[bad[0]]}"
            )


def assign_arrays(
    num_frames: np.ndarray,
    height: np.ndarray,
    width: np.ndarray,
    config: BucketConfig,
    *,
    frame_interval: int,
    seed: int,
    epoch: int = 0,
    v11_compat: bool = False,
    sample_ids: np.ndarray | None = None,
    chunk_size: int = 1 << 16,
) -> Assignment:
    """Vectorised bucket assignment over whole arrays (processed in chunks to bound memory)."""
    num_frames = np.asarray(num_frames, dtype=np.int64)
    height = np.asarray(height, dtype=np.int64)
    width = np.asarray(width, dtype=np.int64)
    n = num_frames.shape[0]
    if not (height.shape[0] == width.shape[0] == n):
        raise ValueError("num_frames, height and width must have the same length")
    if frame_interval < 1:
        raise ValueError(f"frame_interval must be >= 1, got {frame_interval}")
    _validate_sizes(num_frames, height, width)
    ids = np.arange(n, dtype=np.uint64) if sample_ids is None else np.asarray(sample_ids, dtype=np.uint64)
    _check_seed(seed, epoch)

    specs = config.specs
    k_frames = np.array([s.num_frames for s in specs], dtype=np.int64)
    k_min_pixels = np.array([config.tables[s.resolution].pixels * PIXEL_SLACK for s in specs])
    k_prob = np.array([s.keep_prob for s in specs])
    k_keys = np.array([s.key for s in specs], dtype=np.uint64)
    res_of = np.array([config.resolutions.index(s.resolution) for s in specs])
    # group boundaries: buckets of one resolution are contiguous in scan order
    group_start = np.array([np.flatnonzero(res_of == r)[0] for r in res_of])

    bucket = np.full(n, -1, dtype=np.int64)
    reason_code = np.zeros(n, dtype=np.int8)  # 0 kept, 1 no bucket fits, 2 not drawn
    for lo in range(0, n, chunk_size):
        hi = min(n, lo + chunk_size)
        t = num_frames[lo:hi, None]
        hw = (height[lo:hi] * width[lo:hi]).astype(np.float64)[:, None]
        is_image = t == 1
        fits_frames = np.where(is_image, k_frames[None, :] == 1, (k_frames[None, :] != 1) & (t > k_frames * frame_interval))
        candidate = (hw >= k_min_pixels[None, :]) & fits_frames
        if v11_compat:
            # 1.1 tries only the longest fitting frame count of each resolution
            running = np.cumsum(candidate, axis=1)
            before_group = np.where(group_start > 0, running[:, group_start - 1], 0)
            candidate &= (running - before_group) == 1
        accepted = candidate & (uniform_draws(seed, epoch, ids[lo:hi], k_keys) < k_prob[None, :])
        has = accepted.any(axis=1)
        bucket[lo:hi] = np.where(has, accepted.argmax(axis=1), -1)
        reason_code[lo:hi] = np.where(has, 0, np.where(candidate.any(axis=1), 2, 1))

    ratio = np.full(n, -1, dtype=np.int64)
    for r, name in enumerate(config.resolutions):
        rows = np.flatnonzero(np.isin(bucket, np.flatnonzero(res_of == r)))
        if rows.size:
            ratio[rows] = config.tables[name].closest_ratio_many(height[rows], width[rows])
    reason = np.array(["", REASON_NO_FIT, REASON_NOT_DRAWN], dtype=object)[reason_code]
    return Assignment(bucket=bucket, ratio=ratio, reason=reason)


BUCKET_COLUMNS = [
    "bucket_id",
    "bucket_resolution",
    "bucket_num_frames",
    "bucket_height",
    "bucket_width",
    "ar_key",
    "keep",
    "batch_size",
    "drop_reason",
]


def assignment_frame(assignment: Assignment, config: BucketConfig, index: pd.Index | None = None) -> pd.DataFrame:
    """The bucket columns (:data:`BUCKET_COLUMNS`) for an :class:`Assignment`."""
    labels, res_l, t_l, h_l, w_l, ar_l, bs_l = [], [], [], [], [], [], []
    offsets = []
    for spec in config.specs:
        table = config.tables[spec.resolution]
        offsets.append(len(labels))
        for key, (h, w) in table.ratios.items():
            labels.append(f"{spec.resolution}/{spec.num_frames}/{key}")
            res_l.append(spec.resolution)
            t_l.append(spec.num_frames)
            h_l.append(h)
            w_l.append(w)
            ar_l.append(key)
            bs_l.append(spec.batch_size)
    kept = assignment.bucket >= 0
    code = np.full(assignment.bucket.shape, -1, dtype=np.int64)
    code[kept] = np.asarray(offsets, dtype=np.int64)[assignment.bucket[kept]] + assignment.ratio[kept]

    def column(values: list, dtype: str) -> pd.Series:
        lookup = pd.array(values + [None], dtype=dtype)
        return pd.Series(lookup.take(np.where(kept, code, len(values))), index=index)

    return pd.DataFrame(
        {
            "bucket_id": column(labels, "string"),
            "bucket_resolution": column(res_l, "string"),
            "bucket_num_frames": column(t_l, "Int64"),
            "bucket_height": column(h_l, "Int64"),
            "bucket_width": column(w_l, "Int64"),
            "ar_key": column(ar_l, "string"),
            "keep": pd.Series(kept, index=index),
            "batch_size": column(bs_l, "Int64"),
            "drop_reason": pd.Series(pd.array(np.where(kept, None, assignment.reason), dtype="string"), index=index),
        },
        index=index,
    )


def assign_buckets(
    table: pd.DataFrame,
    config: BucketConfig,
    *,
    frame_interval: int,
    seed: int,
    epoch: int = 0,
    v11_compat: bool = False,
) -> pd.DataFrame:
    """A copy of ``table`` (columns ``num_frames``, ``height``, ``width``) with the bucket columns.

    Row positions (0..n-1) are the sample indices the draws are keyed on. Existing bucket columns
    are replaced.
    """
    missing = [c for c in ("num_frames", "height", "width") if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {', '.join(missing)}; has {', '.join(map(str, table.columns))}")
    assignment = assign_arrays(
        table["num_frames"].to_numpy(),
        table["height"].to_numpy(),
        table["width"].to_numpy(),
        config,
        frame_interval=frame_interval,
        seed=seed,
        epoch=epoch,
        v11_compat=v11_compat,
    )
    out = table.drop(columns=[c for c in BUCKET_COLUMNS if c in table.columns])
    return pd.concat([out, assignment_frame(assignment, config, index=table.index)], axis=1)


# --------------------------------------------------------------------------------------------------
# row-by-row reference (1.1's algorithm, one sample at a time) for tests and the benchmark
# --------------------------------------------------------------------------------------------------
def assign_one(
    num_frames: int,
    height: int,
    width: int,
    sample_id: int,
    config: BucketConfig,
    *,
    frame_interval: int,
    seed: int,
    epoch: int = 0,
    v11_compat: bool = False,
) -> tuple[BucketSpec, str] | tuple[None, str]:
    """Assign one sample the way 1.1's ``Bucket.get_bucket_id`` scans; returns (spec, ratio key) or
    (None, drop reason)."""
    pixels = height * width
    any_candidate = False
    for resolution in config.resolutions:
        table = config.tables[resolution]
        if pixels < table.pixels * PIXEL_SLACK:
            continue
        frame_counts = [s.num_frames for s in config.specs if s.resolution == resolution]
        if num_frames == 1:
            tries = [1] if 1 in frame_counts else []
        else:
            tries = [t for t in frame_counts if t != 1 and num_frames > t * frame_interval]
            if v11_compat:
                tries = tries[:1]
        for t in tries:
            any_candidate = True
            spec = config.spec(resolution, t)
            if uniform_draw(seed, epoch, sample_id, spec.key) < spec.keep_prob:
                return spec, table.closest_ratio(height, width)
    return None, REASON_NOT_DRAWN if any_candidate else REASON_NO_FIT


def assign_buckets_reference(
    table: pd.DataFrame,
    config: BucketConfig,
    *,
    frame_interval: int,
    seed: int,
    epoch: int = 0,
    v11_compat: bool = False,
) -> pd.DataFrame:
    """Row-by-row counterpart of :func:`assign_buckets` (same output, a Python loop per row)."""
    bucket = np.full(len(table), -1, dtype=np.int64)
    ratio = np.full(len(table), -1, dtype=np.int64)
    reason = np.full(len(table), "", dtype=object)
    index_of = {(s.resolution, s.num_frames): i for i, s in enumerate(config.specs)}
    rows = zip(table["num_frames"], table["height"], table["width"], strict=True)
    for i, (t, h, w) in enumerate(rows):
        spec, detail = assign_one(
            int(t), int(h), int(w), i, config,
            frame_interval=frame_interval, seed=seed, epoch=epoch, v11_compat=v11_compat,
        )  # fmt: skip
        if spec is None:
            reason[i] = detail
        else:
            bucket[i] = index_of[(spec.resolution, spec.num_frames)]
            ratio[i] = config.tables[spec.resolution].ratio_keys.index(detail)
    out = table.drop(columns=[c for c in BUCKET_COLUMNS if c in table.columns])
    frame = assignment_frame(Assignment(bucket, ratio, reason), config, index=table.index)
    return pd.concat([out, frame], axis=1)


# --------------------------------------------------------------------------------------------------
# row checks for the bucket table's data contract (pure pandas; registered by the pipeline)
# --------------------------------------------------------------------------------------------------
def bucket_columns_consistent(table: pd.DataFrame) -> pd.Series:
    """True where a row is either kept with a complete bucket (id = resolution/frames/ratio) and no
    drop reason, or dropped with a reason and no bucket."""
    keep = table["keep"].astype(bool)
    label = (
        table["bucket_resolution"].astype("string") + "/" + table["bucket_num_frames"].astype("string")
        + "/" + table["ar_key"].astype("string")
    )  # fmt: skip
    kept_ok = (
        table["bucket_id"].notna() & (table["bucket_id"].astype("string") == label).fillna(False)
        & table["batch_size"].notna() & table["drop_reason"].isna()
    )  # fmt: skip
    dropped_ok = table["bucket_id"].isna() & table["drop_reason"].notna()
    return pd.Series(np.where(keep, kept_ok, dropped_ok), index=table.index)


def bucket_fits_sample(table: pd.DataFrame) -> pd.Series:
    """True where a kept row's bucket is no larger than the sample allows: images only in 1-frame
    buckets, videos only in buckets of fewer frames than they have, ``H·W >= 0.8 · pixels`` of the
    bucket resolution, and (bucket H, W) the resolution table's entry for ``ar_key``."""
    from opensora_mlops.data.aspect import aspect_tables

    tables = aspect_tables()
    ok = pd.Series(True, index=table.index)
    kept = table["keep"].astype(bool).to_numpy()
    if not kept.any():
        return ok
    sub = table[kept]
    t = sub["num_frames"].to_numpy(dtype=np.int64)
    bt = sub["bucket_num_frames"].to_numpy(dtype=np.int64)
    frames_ok = np.where(t == 1, bt == 1, (bt != 1) & (t > bt))
    res = sub["bucket_resolution"].astype(str).to_numpy()
    pixels = np.array([tables[r].pixels if r in tables else np.inf for r in res])
    hw = sub["height"].to_numpy(dtype=np.float64) * sub["width"].to_numpy(dtype=np.float64)
    size_ok = np.array(
        [
            r in tables and tables[r].ratios.get(k) == (int(h), int(w))
            for r, k, h, w in zip(res, sub["ar_key"].astype(str), sub["bucket_height"], sub["bucket_width"], strict=True)
        ]
    )
    ok.loc[kept] = frames_ok & (hw >= PIXEL_SLACK * pixels) & size_ok
    return ok
