"""Curation throughput on the synthetic corpus, and the single-decode scorer design vs one decode per scorer.

Measures, on a freshly generated synthetic corpus (``--quick``: 4 short videos):

* seconds of source video curated (scene detection + cutting + captions + all scores) per wall-clock second;
* the scoring step two ways over the same clips in the same run: every clip decoded ONCE with all five
  scorers on the same frames (this project), and decoded once PER SCORER step (aesthetic, flow, OCR,
  match, camera motion each reading the clip again, camera motion computing its own flow — how 1.1's
  separate scoring scripts worked). Prints a table; the last line is a one-line summary.

``--executor ray`` (or ``both``) then curates the same corpus again, from scratch each time, with the
local executor and with the Ray executor on a local Ray cluster of 1 and 2 CPUs (``--ray-workers``):
wall time per executor and worker count, Ray's overhead per video against the local executor at the same
worker count, the cluster's start-up and its workers' first import of the code (one-time costs, not
counted in the overhead), whether every executor produced
the same clip table (same clips, same scores), and the throughput of a decode-per-tool chain (scene
detection, cutting, then each scorer decoding the clip again) for the ">= 3x" comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from opensora_mlops.curation.curate import CurationConfig, run_captions, run_clips, run_scenes, run_scores
from opensora_mlops.curation.scorers import ClipScorer, ScoringConfig, flow_fields, sample_clip
from opensora_mlops.curation.synthetic import SyntheticConfig, generate_corpus


def raw_table(root: Path, videos) -> pd.DataFrame:
    rows = []
    for v in videos:
        if not v.num_frames or not v.fps:
            continue
        rows.append({"path": str(root / v.path), "text": v.caption, "num_frames": v.num_frames, "height": v.height,
                     "width": v.width, "aspect_ratio": v.height / v.width, "fps": float(v.fps),
                     "resolution": v.height * v.width, "duration": v.num_frames / v.fps, "source": "synthetic"})
    return pd.DataFrame(rows)


def score_single_decode(clips: pd.DataFrame, scorer: ClipScorer, cfg: ScoringConfig) -> None:
    for path, n, text in zip(clips["path"], clips["num_frames"], clips["text"], strict=True):
        scorer.score(sample_clip(path, cfg.stride, cfg.max_frames, int(n)), text)


def score_decode_per_scorer(clips: pd.DataFrame, scorer: ClipScorer, cfg: ScoringConfig) -> None:
    for path, n, text in zip(clips["path"], clips["num_frames"], clips["text"], strict=True):
        def decode(path=path, n=n):
            return sample_clip(path, cfg.stride, cfg.max_frames, int(n))

        scorer.aesthetic(decode())
        scorer.flow(decode())
        scorer.ocr(decode())
        scorer.match(decode(), text)
        clip = decode()
        scorer.camera(clip, flow_fields(clip.frames, cfg.flow_short_side))


def _import_curation() -> None:
    import opensora_mlops.curation.curate  # noqa: F401  (torch, OpenCV, PySceneDetect, PyAV with it)

    time.sleep(0.5)  # hold the CPU, so each of the warm-up tasks lands on its own worker


def warm_workers(ray, workers: int) -> None:
    """Have each of the cluster's ``workers`` worker processes import the curation code once: a one-time
    cost per worker (about 2 s here) that a long-lived cluster pays once, timed apart from the videos."""
    task = ray.remote(_import_curation).options(num_cpus=1)
    ray.get([task.remote() for _ in range(workers)])


def curate(raw: pd.DataFrame, params: dict, folder: Path, executor: str, workers: int) -> tuple[pd.DataFrame, dict]:
    """The four curation steps from scratch into ``folder`` with ``executor`` at ``workers``: (clip table
    without paths, seconds per step). With ``ray``, a local cluster of ``workers`` CPUs is started first
    and its workers import the curation code (both timed apart) and it is stopped after."""
    config = CurationConfig.from_dict({
        **params, "executor": executor, "ray": {"num_cpus": workers, "max_in_flight": 2 * workers},
        "partitions": {**params["partitions"], "root": str(folder / "parts"), "clips_dir": str(folder / "clips"),
                       "workers": workers if executor == "local" else 1}})
    timings: dict[str, float] = {}
    ray = None
    if executor == "ray":
        import ray

        from opensora_mlops.curation.ray_executor import connect

        start = time.perf_counter()
        connect(config.ray)
        timings["ray start-up"] = time.perf_counter() - start
        start = time.perf_counter()
        warm_workers(ray, workers)
        timings["worker warm-up"] = time.perf_counter() - start
    try:
        start = time.perf_counter()
        scenes, _, _ = run_scenes(raw, config)
        clips, _, _ = run_clips(raw, scenes, config)
        captioned, _ = run_captions(clips, config)
        scored, _, _ = run_scores(captioned, config)
        timings["curation"] = time.perf_counter() - start
    finally:
        if ray is not None:
            ray.shutdown()
    table = scored.drop(columns=["path"]).sort_values("clip_id").reset_index(drop=True)
    return table, timings


def compare_executors(raw: pd.DataFrame, params: dict, tmp: Path, worker_counts: list[int],
                      executors: list[str], rounds: int) -> tuple[dict, bool]:
    """Each executor at each worker count from scratch, ``rounds`` times interleaved (so a change of
    machine load hits every executor alike): {(executor, workers): (run seconds, cluster start-ups)} and
    whether every run gave the same clip table."""
    runs: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
    reference, identical = None, True
    for r in range(rounds):
        for workers in worker_counts:
            for executor in executors:
                table, timings = curate(raw, params, tmp / f"{executor}-{workers}-{r}", executor, workers)
                seconds, startups = runs.setdefault((executor, workers), ([], []))
                seconds.append(timings["curation"])
                if "ray start-up" in timings:
                    startups.append(timings["ray start-up"] + timings["worker warm-up"])
                reference = table if reference is None else reference
                identical = identical and table.equals(reference)
    return runs, identical


def _spread(values: list[float], scale: float = 1.0, fmt: str = ".2f") -> str:
    values = sorted(v * scale for v in values)
    text = f"{statistics.median(values):{fmt}}"
    return text if len(values) == 1 else f"{text} [{values[0]:{fmt}}–{values[-1]:{fmt}}]"


def print_executors(runs: dict, identical: bool, num_videos: int, chain_seconds: float,
                    source_seconds: float) -> None:
    """The executor table: median [min–max] over rounds; ratios and overheads are per round (runs of one
    round are next to each other in time)."""
    rounds = len(next(iter(runs.values()))[0])
    print(f"\nexecutors, {rounds} interleaved round(s), median [min–max]:")
    print(f"{'executor':9s} {'workers':>7s} {'seconds':>20s} {'vs local (same round)':>22s} "
          f"{'overhead / video, ms':>22s} {'start + warm-up, s':>20s}")
    for (executor, workers), (seconds, startups) in runs.items():
        local = runs.get(("local", workers), ([], []))[0]
        ratio = _spread([loc / sec for loc, sec in zip(local, seconds, strict=True)]) if local else "-"
        overhead = (_spread([(sec - loc) / num_videos for loc, sec in zip(local, seconds, strict=True)], 1000, ".0f")
                    if local and executor != "local" else "-")
        print(f"{executor:9s} {workers:7d} {_spread(seconds):>20s} {ratio:>22s} {overhead:>22s} "
              f"{_spread(startups, fmt='.1f') if startups else '-':>20s}")
    print(f"chain, one decode per tool (scene detection, cutting, 5 scorers), 1 process: {chain_seconds:.2f} s "
          f"({source_seconds / chain_seconds:.1f} video s / s)")
    versus_chain = ", ".join(f"{e} {_spread([chain_seconds / s for s in seconds])}x"
                             for (e, w), (seconds, _) in runs.items() if w == 1)
    print(f"executors: {sum(len(s) for s, _ in runs.values())} runs, clip tables identical (clips and scores): "
          f"{identical}; throughput against the decode-per-tool chain at 1 worker: "
          f"{versus_chain or 'not run (--ray-workers without 1)'}")


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small corpus, one repeat (< 1 min)")
    parser.add_argument("--workers", type=int, default=1, help="processes per curation step")
    parser.add_argument("--executor", choices=["local", "ray", "both"], default="local",
                        help="local: the single-executor table only; ray / both: also the executor comparison "
                        "(local and Ray executors at each --ray-workers count, same corpus)")
    parser.add_argument("--ray-workers", default="1,2", help="comma-separated worker (CPU) counts for --executor ray")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds of the executor comparison (default: 3, --quick: 1)")
    args = parser.parse_args(argv)
    worker_counts = [int(w) for w in args.ray_workers.split(",")]
    if min(worker_counts) < 1 or max(worker_counts) > (os.cpu_count() or 1):
        parser.error(f"--ray-workers must be between 1 and this machine's {os.cpu_count()} CPUs")

    corpus = (SyntheticConfig(seed=1, num_videos=4, num_large=0, defects={}, num_images=0,
                              duration_seconds=(3.0, 5.0)) if args.quick
              else SyntheticConfig(seed=1, num_videos=12, num_large=1, defects={}, num_images=0))
    repeats = 1 if args.quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        videos = generate_corpus(tmp / "raw", corpus, progress=False)
        raw = raw_table(tmp / "raw", videos)
        params = {
            "scenes": {"min_scene_len": 8},
            "clips": {"min_seconds": 0.8, "max_seconds": 4.0, "shorter_side": 160},
            "captions": {"shot_separator": "; then "},
            "scoring": {"stride": 4, "max_frames": 8, "flow_short_side": 96},
            "partitions": {"root": str(tmp / "parts"), "clips_dir": str(tmp / "clips"), "workers": args.workers,
                           "progress": False},
        }
        config = CurationConfig.from_dict(params)
        source_seconds = float(raw["duration"].sum())

        timings: dict[str, float] = {}
        start = time.perf_counter()
        scenes, _, _ = run_scenes(raw, config)
        timings["scene detection"] = time.perf_counter() - start
        start = time.perf_counter()
        clips, _, _ = run_clips(raw, scenes, config)
        timings["cutting (decode + H.264)"] = time.perf_counter() - start
        start = time.perf_counter()
        captioned, _ = run_captions(clips, config)
        timings["captions"] = time.perf_counter() - start
        start = time.perf_counter()
        scored, _, _ = run_scores(captioned, config)
        timings["scores (single decode)"] = time.perf_counter() - start
        total = sum(timings.values())

        # a re-run: every partition is reused
        start = time.perf_counter()
        run_scores(run_captions(run_clips(raw, run_scenes(raw, config)[0], config)[0], config)[0], config)
        rerun = time.perf_counter() - start

        cfg = config.scoring
        scorer = ClipScorer(cfg)
        single = best_of(lambda: score_single_decode(captioned, scorer, cfg), repeats)
        per_scorer = best_of(lambda: score_decode_per_scorer(captioned, scorer, cfg), repeats)
        # the decode-per-tool chain: this run's scene detection and cutting, then one decode per scorer
        chain = timings["scene detection"] + timings["cutting (decode + H.264)"] + per_scorer
        executors = compare_executors(raw, params, tmp, worker_counts, ["local", "ray"],
                                      args.rounds or (1 if args.quick else 3)) if args.executor != "local" else None

    clip_seconds = float(scored["duration"].sum())
    print(f"corpus: {len(raw)} videos, {source_seconds:.1f} s of video, {len(scenes)} scenes, {len(scored)} clips "
          f"({clip_seconds:.1f} s); workers={args.workers}; repeats={repeats}")
    print(f"{'step':34s} {'seconds':>9s} {'video s / s':>12s}")
    for name, seconds in timings.items():
        print(f"{name:34s} {seconds:9.2f} {source_seconds / seconds:12.1f}")
    print(f"{'total curation':34s} {total:9.2f} {source_seconds / total:12.1f}")
    print(f"{'re-run (all partitions reused)':34s} {rerun:9.2f} {source_seconds / rerun:12.1f}")
    print(f"{'scoring, one decode per clip':34s} {single:9.2f} {clip_seconds / single:12.1f}")
    print(f"{'scoring, one decode per scorer':34s} {per_scorer:9.2f} {clip_seconds / per_scorer:12.1f}")
    speedup = per_scorer / single
    if executors is not None:
        print_executors(*executors, len(raw), chain, source_seconds)
    print(f"summary: curation {source_seconds / total:.1f} s of video per wall-clock second "
          f"({total:.1f} s for {source_seconds:.0f} s of video); single-decode scoring {speedup:.2f}x faster than "
          f"decoding per scorer (median clip {statistics.median(scored['num_frames']):.0f} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
