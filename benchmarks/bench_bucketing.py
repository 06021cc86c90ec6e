"""Bucket assignment speed: vectorised (NumPy, whole table) vs row by row (Open-Sora 1.1's algorithm).

    python benchmarks/bench_bucketing.py --quick      # 200,000 rows, < 1 min
    python benchmarks/bench_bucketing.py              # 1,000,000 rows

The table is synthetic metadata shaped like a web-video corpus (sizes from 144p to 4k in common aspect
ratios, log-normal clip lengths, 10% images), bucketed with Open-Sora 1.1's stage-2 config at
frame_interval 3. Row-by-row timings run on a subsample and are extrapolated per row:

* ``row-by-row reference``: :func:`assign_one` in a Python loop (same hash draws as the vectorised
  code; the outputs are compared for equality on the subsample);
* ``1.1-style apply``: ``DataFrame.apply(axis=1)`` of a function that walks the buckets like 1.1's
  ``Bucket.get_bucket_id`` and seeds ``numpy.random.default_rng`` per draw, as 1.1 did (one worker;
  1.1 spread this over ``pandarallel`` workers).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd

from opensora_mlops.data.aspect import PIXEL_SLACK
from opensora_mlops.data.buckets import BucketConfig, assign_buckets, assign_buckets_reference
from opensora_mlops.resources import load_reference

SIZES = [(144, 256), (240, 426), (360, 640), (480, 854), (720, 1280), (1080, 1920), (2160, 3840),
         (1280, 720), (1920, 1080), (480, 640), (720, 720), (1080, 1440), (368, 640), (404, 720)]  # fmt: skip


def corpus(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    hw = np.array(SIZES)[rng.integers(len(SIZES), size=n)]
    frames = np.clip(rng.lognormal(np.log(150), 0.9, size=n).astype(np.int64), 2, 3000)
    frames[rng.random(n) < 0.1] = 1
    return pd.DataFrame({"num_frames": frames, "height": hw[:, 0], "width": hw[:, 1]})


def v11_style_apply(table: pd.DataFrame, config: BucketConfig, frame_interval: int, seed: int) -> pd.Series:
    """Row-wise apply with a fresh default_rng per draw, the cost profile of 1.1's bucket build."""
    order = {(s.resolution, s.num_frames): i for i, s in enumerate(config.specs)}
    per_res = {r: [s for s in config.specs if s.resolution == r] for r in config.resolutions}
    num_buckets = len(config.specs)

    def one(row: pd.Series):
        t, h, w, sample_id = int(row["num_frames"]), int(row["height"]), int(row["width"]), int(row.name)
        base = seed + sample_id * num_buckets
        for res in config.resolutions:
            table = config.tables[res]
            if h * w < table.pixels * PIXEL_SLACK:
                continue
            if t == 1:
                tries = [s for s in per_res[res] if s.num_frames == 1]
            else:
                tries = [s for s in per_res[res] if s.num_frames != 1 and t > s.num_frames * frame_interval][:1]
            for spec in tries:
                rng = np.random.default_rng(base + order[(spec.resolution, spec.num_frames)])
                if spec.keep_prob == 1 or rng.random() < spec.keep_prob:
                    return res, spec.num_frames, table.closest_ratio(h, w)
        return None

    return table.apply(one, axis=1)


def timed(fn, repeat: int = 1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200k rows, small subsample (< 1 min)")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--subsample", type=int, default=None, help="rows for the row-by-row timings")
    args = parser.parse_args()
    n = args.rows or (200_000 if args.quick else 1_000_000)
    sub = args.subsample or (5_000 if args.quick else 20_000)
    config = BucketConfig(load_reference()["stages"]["stage2"]["bucket_config"])
    fi, seed = 3, 42

    table = corpus(n)
    kwargs = dict(frame_interval=fi, seed=seed, epoch=0)
    t_fast, fast = timed(lambda: assign_buckets(table, config, **kwargs), repeat=2)
    t_fast_v11, _ = timed(lambda: assign_buckets(table, config, v11_compat=True, **kwargs), repeat=2)
    head = table.iloc[:sub]
    t_ref, ref = timed(lambda: assign_buckets_reference(head, config, **kwargs))
    equal = fast.iloc[:sub].equals(ref)
    t_apply, _ = timed(lambda: v11_style_apply(head, config, fi, seed))

    per_row_ref = t_ref / sub
    per_row_apply = t_apply / sub
    rows = [
        ("vectorised (fix #4)", n, t_fast, t_fast / n),
        ("vectorised (v11_compat)", n, t_fast_v11, t_fast_v11 / n),
        ("row-by-row reference", sub, t_ref, per_row_ref),
        ("1.1-style apply + default_rng", sub, t_apply, per_row_apply),
    ]
    print(f"bucket assignment, Open-Sora 1.1 stage-2 config ({len(config)} buckets), frame_interval {fi}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'method':32s} {'rows':>10s} {'seconds':>9s} {'us/row':>8s} {f'{n:,} rows (s)':>16s}")
    for name, count, seconds, per_row in rows:
        print(f"{name:32s} {count:10d} {seconds:9.3f} {per_row * 1e6:8.2f} {per_row * n:16.2f}")
    kept = fast["keep"].mean()
    print(f"kept {kept:.1%} of rows in {fast['bucket_id'].nunique()} buckets; vectorised == row-by-row on "
          f"{sub} rows: {equal}")
    print(
        f"SUMMARY: {n:,} rows bucketed in {t_fast:.2f} s vectorised ({t_fast / n * 1e6:.2f} us/row); "
        f"{per_row_ref / (t_fast / n):.0f}x faster per row than the row-by-row reference, "
        f"{per_row_apply / (t_fast / n):.0f}x than 1.1-style apply; outputs equal: {equal}"
    )


if __name__ == "__main__":
    main()
