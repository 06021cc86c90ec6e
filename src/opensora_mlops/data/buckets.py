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
other rows or on the order rows are processed in. The vectorised assignment computes a draw only where
it can decide something: for a row still unassigned at a bucket with 0 < keep_prob < 1.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

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
    z = np.asarray(x, dtype=np.uint64) + np.uint64(_GOLDEN)  # a fresh array: the rest works in place
    z ^= z >> np.uint64(30)
    z *= np.uint64(_MIX1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_MIX2)
    z ^= z >> np.uint64(31)
    return z


def _draw_bits(per_sample: np.ndarray, key: np.uint64) -> np.ndarray:
    """The 53 random bits of each draw: ``splitmix64(per_sample ^ key) >> 11``, in place on one array."""
    z = per_sample ^ key
    z += np.uint64(_GOLDEN)
    z ^= z >> np.uint64(30)
    z *= np.uint64(_MIX1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_MIX2)
    z ^= z >> np.uint64(31)
    z >>= np.uint64(11)
    return z


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
        self._walk_plans: dict[tuple[int, bool], _WalkPlan] = {}
        self._lookups: _ColumnLookups | None = None

    def walk_plan(self, frame_interval: int, v11_compat: bool) -> _WalkPlan:
        """The tabulated bucket walk for one frame interval and mode (built once, then reused)."""
        key = (int(frame_interval), bool(v11_compat))
        if key not in self._walk_plans:
            self._walk_plans[key] = _build_walk_plan(self, *key)
        return self._walk_plans[key]

    def column_lookups(self) -> _ColumnLookups:
        """Every sub-bucket's column values, for building bucket columns by lookup (built once)."""
        if self._lookups is None:
            self._lookups = _column_lookups(self)
        return self._lookups

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
# drop reasons by code, as stored in :attr:`Assignment.reason_code`
_REASON_BY_CODE = ("", REASON_NO_FIT, REASON_NOT_DRAWN)


@dataclass
class Assignment:
    """Per-sample result arrays: ``bucket`` indexes ``config.specs`` (-1 = dropped), ``ratio`` indexes
    that resolution's ratio keys (-1 = dropped), ``reason_code`` is 0 when kept, 1 when no bucket fits,
    2 when buckets fit but no keep-probability draw succeeded. ``num_draws`` counts the draws computed."""

    bucket: np.ndarray
    ratio: np.ndarray
    reason_code: np.ndarray
    num_draws: int = 0

    @property
    def reason(self) -> np.ndarray:
        """The drop reason of every row as a string ("" when kept)."""
        return np.array(_REASON_BY_CODE, dtype=object)[self.reason_code]


def _validate_sizes(num_frames: np.ndarray, height: np.ndarray, width: np.ndarray) -> None:
    for name, values in (("num_frames", num_frames), ("height", height), ("width", width)):
        if values.size and values.min() >= 1:
            continue
        bad = np.flatnonzero(~(values >= 1))
        if bad.size:
            raise ValueError(
                f"{name} must be >= 1 for every row; {bad.size} row(s) are not, e.g. row {bad[0]} = {values[bad[0]]}"
            )


@dataclass(frozen=True)
class _WalkPlan:
    """1.1's bucket walk tabulated per *profile* of a sample.

    Whether a bucket fits a sample depends on two things only: which resolutions its pixel count
    reaches (a suffix of the scan order, since thresholds fall along it) and which frame counts its
    length exceeds (a prefix of the sorted distinct frame counts), or that it is an image. So every
    sample has one of (resolutions + 1) x (frame levels + 2) profiles. A profile's walk is the
    *segments* of the resolutions it reaches, in scan order: at each, the buckets its level tries
    (longest first; only the longest fitting one in ``v11_compat``). A sample that fails every draw
    of one resolution's segment goes on exactly like a sample whose first reachable resolution is
    the next one, so the rows of one level can walk the resolutions together.

    Buckets with keep probability 0 never accept and are left out of the segments; a bucket with
    keep probability 1 always accepts, so it ends a segment. Only the buckets in between need draws.
    """

    pixel_thresholds: tuple[float, ...]  # nominal pixels x PIXEL_SLACK per resolution, in scan order
    frame_steps: tuple[int, ...]  # ascending: distinct frame counts > 1, times the frame interval
    segments: tuple[tuple[tuple[int, ...], ...], ...]  # [resolution][level] bucket indices to try
    reason_if_dropped: np.ndarray  # [profiles] int8 reason code of a row of that profile that is dropped
    # resolutions with the same ratio keys share one nearest-ratio search (1.1's tables mostly do)
    ratio_tables: tuple[AspectTable, ...]
    ratio_group: np.ndarray  # [buckets] index into ratio_tables

    @property
    def levels(self) -> int:
        """Frame levels per resolution: videos exceeding 0..m frame steps, then images."""
        return len(self.frame_steps) + 2

    def profiles(self, num_frames: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """Each sample's profile, first reachable resolution x levels + level (uint8/uint16, so that
        a stable argsort is a radix sort)."""
        dtype = np.uint8 if self.reason_if_dropped.size <= 256 else np.uint16
        # resolutions out of reach: thresholds fall along the scan order, so they are its first ones
        skipped = np.zeros(pixels.shape, dtype=dtype)
        for threshold in self.pixel_thresholds:
            skipped += pixels < threshold
        level = np.zeros(num_frames.shape, dtype=dtype)
        for frame_step in self.frame_steps:
            level += num_frames > frame_step
        level[num_frames == 1] = self.levels - 1
        skipped *= self.levels
        skipped += level
        return skipped


def _build_walk_plan(config: BucketConfig, frame_interval: int, v11_compat: bool) -> _WalkPlan:
    specs = config.specs
    frame_counts = sorted({s.num_frames for s in specs if s.num_frames != 1})
    image_level = len(frame_counts) + 1
    fitting: list[list[list[int]]] = []  # [resolution][level] buckets that fit, in scan order
    for resolution in config.resolutions:
        indices = [i for i, s in enumerate(specs) if s.resolution == resolution]  # longest first
        per_level = []
        for level in range(image_level + 1):
            allowed = {1} if level == image_level else set(frame_counts[:level])
            here = [i for i in indices if specs[i].num_frames in allowed]
            per_level.append(here[:1] if v11_compat else here)
        fitting.append(per_level)
    segments = []
    for per_level in fitting:
        cut = []
        for here in per_level:
            tries = []
            for i in here:
                if specs[i].keep_prob > 0.0:
                    tries.append(i)
                    if specs[i].keep_prob >= 1.0:
                        break
            cut.append(tuple(tries))
        segments.append(tuple(cut))
    any_fit = [
        any(fitting[r][level] for r in range(first, len(config.resolutions)))
        for first in range(len(config.resolutions) + 1)
        for level in range(image_level + 1)
    ]
    group_of_keys: dict[tuple[str, ...], int] = {}
    ratio_tables: list[AspectTable] = []
    for name in config.resolutions:
        keys = tuple(config.tables[name].ratio_keys)
        if keys not in group_of_keys:
            group_of_keys[keys] = len(ratio_tables)
            ratio_tables.append(config.tables[name])
    return _WalkPlan(
        pixel_thresholds=tuple(config.tables[r].pixels * PIXEL_SLACK for r in config.resolutions),
        frame_steps=tuple(t * int(frame_interval) for t in frame_counts),
        segments=tuple(segments),
        reason_if_dropped=np.where(any_fit, 2, 1).astype(np.int8),
        ratio_tables=tuple(ratio_tables),
        ratio_group=np.array([group_of_keys[tuple(config.tables[s.resolution].ratio_keys)] for s in specs]),
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
) -> Assignment:
    """Vectorised bucket assignment over whole arrays.

    Rows are grouped by profile (:class:`_WalkPlan`) and walk the resolutions level by level; a
    keep-probability draw is computed only for the rows still unassigned at a bucket with
    0 < keep_prob < 1. A draw at keep_prob 0 or 1 could not change the outcome (``u < 0`` never
    holds, ``u < 1`` always), so the result equals drawing at every bucket tried, as
    :func:`assign_one` does, with the same draws.
    """
    num_frames = np.asarray(num_frames, dtype=np.int64)
    height = np.asarray(height, dtype=np.int64)
    width = np.asarray(width, dtype=np.int64)
    n = num_frames.shape[0]
    if not (height.shape[0] == width.shape[0] == n):
        raise ValueError("num_frames, height and width must have the same length")
    if frame_interval < 1:
        raise ValueError(f"frame_interval must be >= 1, got {frame_interval}")
    _validate_sizes(num_frames, height, width)
    if sample_ids is not None:
        sample_ids = np.asarray(sample_ids, dtype=np.uint64)
        if sample_ids.shape != (n,):
            raise ValueError(f"sample_ids has shape {sample_ids.shape} for {n} rows")
    base = np.uint64(_epoch_base(seed, epoch))
    plan = config.walk_plan(frame_interval, v11_compat)
    specs = config.specs

    profile = plan.profiles(num_frames, (height * width).astype(np.float64))
    levels, resolutions = plan.levels, len(plan.segments)
    count = np.bincount(profile, minlength=plan.reason_if_dropped.size)
    order = np.argsort(profile, kind="stable")  # rows grouped by profile
    group_end = np.cumsum(count)
    ids = np.arange(n, dtype=np.uint64) if sample_ids is None else sample_ids
    hashed = splitmix64(ids[order] ^ base)  # per-sample half of every draw, in `order`
    # u < p  <=>  (bits >> 11) < ceil(p * 2**53): the integer form of the same comparison
    keys = [np.uint64(s.key) for s in specs]
    limits = [np.uint64(math.ceil(s.keep_prob * 2.0**53)) for s in specs]
    bucket = np.full(n, -1, dtype=np.int64)
    num_draws = 0
    for level in range(levels):
        rows = order[:0]
        per_sample = hashed[:0]
        for first in range(resolutions):  # rows of the resolutions above that drew nothing come along
            p = first * levels + level
            if count[p]:
                group = slice(group_end[p] - count[p], group_end[p])
                if rows.size:
                    rows, per_sample = np.concatenate([rows, order[group]]), np.concatenate([per_sample, hashed[group]])
                else:
                    rows, per_sample = order[group], hashed[group]
            for b in plan.segments[first][level]:
                if not rows.size:
                    break
                if specs[b].keep_prob >= 1.0:
                    bucket[rows] = b
                    rows, per_sample = rows[:0], per_sample[:0]
                    break
                accepted = _draw_bits(per_sample, keys[b]) < limits[b]
                num_draws += rows.size
                bucket[rows[accepted]] = b
                rejected = ~accepted
                rows, per_sample = rows[rejected], per_sample[rejected]

    kept = bucket >= 0
    reason_code = plan.reason_if_dropped[profile]
    reason_code[kept] = 0
    ratio = np.full(n, -1, dtype=np.int64)
    kept_rows = np.flatnonzero(kept)
    if len(plan.ratio_tables) == 1:
        ratio[kept_rows] = plan.ratio_tables[0].closest_ratio_many(height[kept_rows], width[kept_rows])
    else:
        row_group = plan.ratio_group[bucket[kept_rows]]
        for g, ratio_table in enumerate(plan.ratio_tables):
            here = kept_rows[row_group == g]
            if here.size:
                ratio[here] = ratio_table.closest_ratio_many(height[here], width[here])
    return Assignment(bucket=bucket, ratio=ratio, reason_code=reason_code, num_draws=num_draws)


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


@dataclass(frozen=True)
class _ColumnLookups:
    """The bucket columns' values for every (bucket, ratio) sub-bucket, in code order; the last entry
    of each is missing (the code of a dropped row)."""

    offsets: np.ndarray  # [buckets] code of a bucket's first ratio
    strings: dict[str, pa.Array]
    integers: dict[str, tuple[np.ndarray, np.ndarray]]  # column -> (values, missing)
    reasons: pa.Array  # drop reason by reason code, then missing


def _column_lookups(config: BucketConfig) -> _ColumnLookups:
    strings: dict[str, list] = {"bucket_id": [], "bucket_resolution": [], "ar_key": []}
    integers: dict[str, list] = {"bucket_num_frames": [], "bucket_height": [], "bucket_width": [], "batch_size": []}
    offsets = []
    for spec in config.specs:
        offsets.append(len(strings["bucket_id"]))
        for key, (h, w) in config.tables[spec.resolution].ratios.items():
            strings["bucket_id"].append(f"{spec.resolution}/{spec.num_frames}/{key}")
            strings["bucket_resolution"].append(spec.resolution)
            strings["ar_key"].append(key)
            for name, value in zip(integers, (spec.num_frames, h, w, spec.batch_size), strict=True):
                integers[name].append(value)
    return _ColumnLookups(
        offsets=np.array(offsets, dtype=np.int64),
        strings={name: pa.array([*values, None], type=pa.large_string()) for name, values in strings.items()},
        integers={
            name: (np.array([0 if v is None else v for v in values] + [0], dtype=np.int64),
                   np.array([v is None for v in values] + [True]))
            for name, values in integers.items()
        },  # fmt: skip
        reasons=pa.array([*_REASON_BY_CODE, None], type=pa.large_string()),
    )


def assignment_frame(assignment: Assignment, config: BucketConfig, index: pd.Index | None = None) -> pd.DataFrame:
    """The bucket columns (:data:`BUCKET_COLUMNS`) for an :class:`Assignment`."""
    lookups = config.column_lookups()
    kept = assignment.bucket >= 0
    missing = len(lookups.strings["bucket_id"]) - 1
    code = np.where(kept, lookups.offsets[np.maximum(assignment.bucket, 0)] + assignment.ratio, missing)
    columns: dict[str, Any] = {}
    for name in BUCKET_COLUMNS:
        if name in lookups.strings:
            # Arrow's take builds a string column without a Python object per row
            columns[name] = pd.array(lookups.strings[name].take(code), dtype="string")
        elif name in lookups.integers:
            values, absent = lookups.integers[name]
            columns[name] = pd.arrays.IntegerArray(values[code], absent[code])
    columns["keep"] = kept
    reason = np.where(kept, len(_REASON_BY_CODE), assignment.reason_code)
    columns["drop_reason"] = pd.array(lookups.reasons.take(reason), dtype="string")
    frame = pd.DataFrame({name: columns[name] for name in BUCKET_COLUMNS}, copy=False)
    if index is not None:
        frame.index = index
    return frame


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
    present = [c for c in BUCKET_COLUMNS if c in table.columns]
    out = table.drop(columns=present) if present else table
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
    reason = np.zeros(len(table), dtype=np.int8)
    index_of = {(s.resolution, s.num_frames): i for i, s in enumerate(config.specs)}
    rows = zip(table["num_frames"], table["height"], table["width"], strict=True)
    for i, (t, h, w) in enumerate(rows):
        spec, detail = assign_one(
            int(t), int(h), int(w), i, config,
            frame_interval=frame_interval, seed=seed, epoch=epoch, v11_compat=v11_compat,
        )  # fmt: skip
        if spec is None:
            reason[i] = _REASON_BY_CODE.index(detail)
        else:
            bucket[i] = index_of[(spec.resolution, spec.num_frames)]
            ratio[i] = config.tables[spec.resolution].ratio_keys.index(detail)
    out = table.drop(columns=[c for c in BUCKET_COLUMNS if c in table.columns])
    frame = assignment_frame(Assignment(bucket, ratio, reason), config, index=table.index)
    return pd.concat([out, frame], axis=1)


class V11BucketWalk:
    """Open-Sora 1.1's per-sample bucket walk (``Bucket.get_bucket_id``) with its data layout, for
    comparing against: nested dicts in scan order, one call per sample, the nearest ratio found by
    ``min`` over the ratio keys as strings.

    The draw source is a parameter. :meth:`v11_draws` reproduces 1.1's: a fresh
    ``numpy.random.default_rng(seed + epoch + sample_index * sub_buckets + bucket_index)`` per draw,
    and no draw for a video bucket with keep probability 1. :meth:`hash_draws` gives this project's
    counter-based draws, with which the walk equals ``assign_buckets(..., v11_compat=True)``.
    """

    def __init__(self, config: BucketConfig) -> None:
        self.config = config
        self.pixels = {r: config.tables[r].pixels for r in config.resolutions}
        self.keep_prob: dict[str, dict[int, float]] = {r: {} for r in config.resolutions}
        self.bucket_index: dict[str, dict[int, int]] = {r: {} for r in config.resolutions}
        for i, spec in enumerate(config.specs):  # specs are in scan order: frames longest first
            self.keep_prob[spec.resolution][spec.num_frames] = spec.keep_prob
            self.bucket_index[spec.resolution][spec.num_frames] = i
        self.ratios = {r: dict(config.tables[r].ratios) for r in config.resolutions}
        # 1.1 spaced the seeds of consecutive samples by the number of (bucket, ratio) sub-buckets
        self.sub_buckets = sum(len(config.tables[s.resolution].ratios) for s in config.specs)

    def v11_draws(self, seed: int, epoch: int, sample_index: int):
        base = seed + epoch + sample_index * self.sub_buckets

        def draw(bucket: int) -> float:
            return float(np.random.default_rng(base + bucket).random())

        return draw

    def hash_draws(self, seed: int, epoch: int, sample_index: int):
        specs = self.config.specs

        def draw(bucket: int) -> float:
            return uniform_draw(seed, epoch, sample_index, specs[bucket].key)

        return draw

    def bucket_of(self, num_frames: int, height: int, width: int, frame_interval: int, draw) -> tuple | None:
        """(resolution, frames, ratio key) of one sample, or None when it is dropped."""
        pixels = height * width
        for resolution, probs in self.keep_prob.items():
            if pixels < self.pixels[resolution] * PIXEL_SLACK:
                continue
            if num_frames == 1:
                # an image tries the 1-frame bucket only; a failed draw moves on to the next resolution
                if 1 in probs and draw(self.bucket_index[resolution][1]) < probs[1]:
                    return resolution, 1, self._closest_ratio(resolution, height, width)
                continue
            longest = next((t for t in probs if t != 1 and num_frames > t * frame_interval), None)
            if longest is None:
                continue
            prob = probs[longest]
            if prob == 1 or draw(self.bucket_index[resolution][longest]) < prob:
                return resolution, longest, self._closest_ratio(resolution, height, width)
        return None

    def _closest_ratio(self, resolution: str, height: int, width: int) -> str:
        aspect = height / width
        return min(self.ratios[resolution], key=lambda key: abs(float(key) - aspect))


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
