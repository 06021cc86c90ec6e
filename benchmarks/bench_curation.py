"""Curation throughput on the synthetic corpus, and the single-decode scorer design vs one decode per scorer.

Measures, on a freshly generated synthetic corpus (``--quick``: 4 short videos):

* seconds of source video curated (scene detection + cutting + captions + all scores) per wall-clock second;
* the scoring step two ways over the same clips in the same run: every clip decoded ONCE with all five
  scorers on the same frames (this project), and decoded once PER SCORER step (aesthetic, flow, OCR,
  match, camera motion each reading the clip again, camera motion computing its own flow — how 1.1's
  separate scoring scripts worked). Prints a table; the last line is a one-line summary.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args(argv)

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
    print(f"summary: curation {source_seconds / total:.1f} s of video per wall-clock second "
          f"({total:.1f} s for {source_seconds:.0f} s of video); single-decode scoring {speedup:.2f}x faster than "
          f"decoding per scorer (median clip {statistics.median(scored['num_frames']):.0f} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
