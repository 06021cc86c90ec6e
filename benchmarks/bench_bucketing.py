"""Bucket assignment speed: this project's vectorised assignment vs Open-Sora 1.1's per-row loop, same rows.

    python benchmarks/bench_bucketing.py --quick                 # 10k and 100k rows, < 1 min
    python benchmarks/bench_bucketing.py                         # 10k, 100k and 1M rows (~2 min)
    python benchmarks/bench_bucketing.py --timer cpu             # process CPU time (shared machines)
    python benchmarks/bench_bucketing.py --reference-repo /tmp/opensora-v1.1.0   # also run 1.1's own code

The table is synthetic metadata shaped like a web-video corpus (sizes from 144p to 4k in common aspect
ratios, log-normal clip lengths, 10% images), bucketed with Open-Sora 1.1's stage-2 config (28 buckets) at
frame_interval 3. For every row count, each repeat times, interleaved, on the same rows:

* ``ours default``: :func:`assign_buckets` (fix #4), whole table in, bucket columns out;
* ``ours v11_compat``: the same with ``v11_compat=True`` (1.1's walk);
* ``1.1 per-row loop``: 1.1's ``Bucket.get_bucket_id`` walk in a plain Python loop over the rows
  (:class:`V11BucketWalk`: 1.1's data layout, a fresh ``numpy.random.default_rng`` per draw, the
  ratio by ``min`` over string keys), returning 1.1's (resolution, frames, ratio) tuples. 1.1 ran this
  through ``pandarallel``'s ``parallel_apply``; a plain loop is the cheapest single-worker form of it.

Speed-ups are loop time / our time of the same repeat; the table shows the median and the range over
repeats. Checks on the same rows: ``v11_compat`` equals the 1.1 walk fed this project's hash draws (all
rows up to ``--check-rows``), and the default equals the row-by-row reference :func:`assign_buckets_reference`.
``--reference-repo`` (a local checkout of hpcaitech/Open-Sora at tag v1.1.0, never part of this project)
also runs 1.1's own ``opensora/datasets/bucket.py`` on the rows and checks that it returns exactly what
:class:`V11BucketWalk` with 1.1's draws returns, and how long each takes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd

from opensora_mlops.data.buckets import (
    BucketConfig,
    V11BucketWalk,
    assign_arrays,
    assign_buckets,
    assign_buckets_reference,
)
from opensora_mlops.resources import load_reference

SIZES = [(144, 256), (240, 426), (360, 640), (480, 854), (720, 1280), (1080, 1920), (2160, 3840),
         (1280, 720), (1920, 1080), (480, 640), (720, 720), (1080, 1440), (368, 640), (404, 720)]  # fmt: skip
FRAME_INTERVAL, SEED, EPOCH = 3, 42, 0


def corpus(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    hw = np.array(SIZES)[rng.integers(len(SIZES), size=n)]
    frames = np.clip(rng.lognormal(np.log(150), 0.9, size=n).astype(np.int64), 2, 3000)
    frames[rng.random(n) < 0.1] = 1
    return pd.DataFrame({"num_frames": frames, "height": hw[:, 0], "width": hw[:, 1]})


def v11_loop(table: pd.DataFrame, walk: V11BucketWalk, draws: str = "v11") -> list:
    """1.1's bucket build as a plain loop: one walk per row, its draws seeded per sample and bucket."""
    make_draw = walk.v11_draws if draws == "v11" else walk.hash_draws
    rows = zip(table["num_frames"].tolist(), table["height"].tolist(), table["width"].tolist(), strict=True)
    return [
        walk.bucket_of(t, h, w, FRAME_INTERVAL, make_draw(SEED, EPOCH, i))
        for i, (t, h, w) in enumerate(rows)
    ]


def as_tuples(frame: pd.DataFrame) -> list:
    """Our bucket columns in 1.1's return form: (resolution, frames, ratio key) or None."""
    kept = frame["keep"].tolist()
    res, t, ar = frame["bucket_resolution"].tolist(), frame["bucket_num_frames"].tolist(), frame["ar_key"].tolist()
    return [(r, int(f), a) if k else None for k, r, f, a in zip(kept, res, t, ar, strict=True)]


def load_v11_bucket(repo: Path):
    """1.1's ``Bucket`` class from a checkout, without importing its package ``__init__`` (torch etc.)."""
    folder = repo / "opensora" / "datasets"
    if not (folder / "bucket.py").is_file() or not (folder / "aspect.py").is_file():
        raise SystemExit(f"{repo} is not an Open-Sora v1.1.0 checkout (no opensora/datasets/bucket.py)")
    package = types.ModuleType("v11_datasets")
    package.__path__ = [str(folder)]
    sys.modules["v11_datasets"] = package
    for name in ("aspect", "bucket"):
        spec = importlib.util.spec_from_file_location(f"v11_datasets.{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["v11_datasets.bucket"].Bucket


def v11_code_loop(table: pd.DataFrame, bucket) -> list:
    """1.1's own ``get_bucket_id`` per row, seeded as its sampler's ``apply`` seeds it."""
    rows = zip(table["num_frames"].tolist(), table["height"].tolist(), table["width"].tolist(), strict=True)
    return [
        bucket.get_bucket_id(t, h, w, FRAME_INTERVAL, SEED + EPOCH + i * bucket.num_bucket)
        for i, (t, h, w) in enumerate(rows)
    ]


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k rows (< 1 min)")
    parser.add_argument("--rows", type=int, nargs="+", default=None, help="row counts (default 10k 100k 1M)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of our assignment per row count")
    parser.add_argument("--loop-repeats", type=int, default=3,
                        help="timed runs of the 1.1 loop per row count up to 100k rows")
    parser.add_argument("--big-loop-repeats", type=int, default=1,
                        help="timed runs of the 1.1 loop above 100k rows (about 1 min per million rows)")
    parser.add_argument("--check-rows", type=int, default=100_000,
                        help="rows compared against the 1.1 walk with hash draws (20k for the reference)")
    parser.add_argument("--timer", choices=["wall", "cpu"], default="wall",
                        help="wall clock, or this process's CPU time (less sensitive to a shared machine)")
    parser.add_argument("--reference-repo", type=Path, default=None,
                        help="checkout of Open-Sora v1.1.0: also run its own bucket code on the rows")
    args = parser.parse_args()
    if min(args.repeats, args.loop_repeats, args.big_loop_repeats) < 1:
        parser.error("repeat counts must be >= 1")
    sizes = args.rows or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    clock = time.perf_counter if args.timer == "wall" else time.process_time
    raw = load_reference()["stages"]["stage2"]["bucket_config"]
    config = BucketConfig(raw)
    walk = V11BucketWalk(config)
    kwargs = dict(frame_interval=FRAME_INTERVAL, seed=SEED, epoch=EPOCH)

    def timed(fn):
        start = clock()
        out = fn()
        return clock() - start, out

    print(f"bucket assignment, Open-Sora 1.1 stage-2 config ({len(config)} buckets), frame_interval "
          f"{FRAME_INTERVAL}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {args.timer} time")
    header = (f"{'rows':>9s}  {'ours default (s)':>24s}  {'ours v11_compat (s)':>24s}  {'1.1 per-row loop (s)':>24s}"
              f"  {'speed-up default':>22s}  {'speed-up v11_compat':>22s}")
    print(header)
    results = []
    for n in sizes:
        table = corpus(n)
        loop_repeats = args.loop_repeats if n <= 100_000 else args.big_loop_repeats
        ours, ours_v11, loop = [], [], []
        fast = fast_v11 = v11 = None
        for rep in range(max(args.repeats, loop_repeats)):
            if rep < args.repeats:
                seconds, fast = timed(lambda: assign_buckets(table, config, **kwargs))  # noqa: B023
                ours.append(seconds)
                seconds, fast_v11 = timed(lambda: assign_buckets(table, config, v11_compat=True, **kwargs))  # noqa: B023
                ours_v11.append(seconds)
            if rep < loop_repeats:
                seconds, v11 = timed(lambda: v11_loop(table, walk))  # noqa: B023
                loop.append(seconds)
        # ratios of the same repeat; repeats without a loop run compare with the loop's median
        pairs = [(loop[i] if i < len(loop) else statistics.median(loop)) for i in range(len(ours))]
        up = [lp / o for lp, o in zip(pairs, ours, strict=True)]
        up_v11 = [lp / o for lp, o in zip(pairs, ours_v11, strict=True)]
        print(f"{n:9,d}  {spread(ours):>24s}  {spread(ours_v11):>24s}  {spread(loop):>24s}"
              f"  {spread(up, '{:.0f}x'):>22s}  {spread(up_v11, '{:.0f}x'):>22s}")

        check = min(n, args.check_rows)
        head = table.iloc[:check]
        hash_walk = v11_loop(head, walk, draws="hash")
        same_v11 = as_tuples(fast_v11.iloc[:check]) == hash_walk
        ref_rows = min(n, 20_000)
        same_ref = fast.iloc[:ref_rows].equals(assign_buckets_reference(table.iloc[:ref_rows], config, **kwargs))
        arrays = assign_arrays(table["num_frames"], table["height"], table["width"], config, **kwargs)
        kept_v11 = sum(b is not None for b in v11) / n
        results.append((n, statistics.median(ours), statistics.median(up), statistics.median(up_v11),
                        same_v11, same_ref))
        print(f"{'':9s}  draws computed: {arrays.num_draws / n:.2f} per row (the full matrix is {len(config)}); "
              f"kept {fast['keep'].mean():.1%} (v11_compat {fast_v11['keep'].mean():.1%}, 1.1 loop {kept_v11:.1%}); "
              f"v11_compat == 1.1 walk with the same draws on {check:,} rows: {same_v11}; "
              f"default == row-by-row reference on {ref_rows:,} rows: {same_ref}")

    if args.reference_repo is not None:
        # 1.1's configs are Python dicts with integer frame counts; the stored reference has string keys
        bucket = load_v11_bucket(args.reference_repo)({r: {int(t): v for t, v in f.items()} for r, f in raw.items()})
        rows = min(sizes[-1], 20_000)
        head = corpus(rows)
        t_code, from_code = timed(lambda: v11_code_loop(head, bucket))
        t_port, from_port = timed(lambda: v11_loop(head, walk))
        print(f"1.1's own bucket.py on {rows:,} rows: {t_code:.2f} s; V11BucketWalk with 1.1's draws: "
              f"{t_port:.2f} s ({t_port / t_code:.2f}x its time); identical outputs: {from_code == from_port}")

    n, seconds, up, up_v11, same_v11, same_ref = results[-1]
    print(f"SUMMARY: {n:,} rows bucketed in {seconds:.3f} s (median, default mode), {up:.0f}x faster than "
          f"1.1's per-row loop on the same rows ({up_v11:.0f}x with v11_compat); v11_compat equals the 1.1 walk "
          f"given the same draws: {same_v11}; default equals the row-by-row reference: {same_ref}")


if __name__ == "__main__":
    main()
