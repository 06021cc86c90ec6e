"""Latent caching cost: one fixed window per clip (before) vs whole strided clips (default) vs tiles,
and what the shared clip store saves the later stages.

    python benchmarks/bench_latent_cache.py --quick     # 12 clips, about 1 min on 2 cores
    python benchmarks/bench_latent_cache.py             # 40 clips

Single-shot clips of the embedded corpus recipe (2-3 s, 144p sizes, 24-30 fps) are bucketed with
conf/base's stage-1 buckets (8 frames, interval 2) and cached with the embedded VAE architecture
(untrained AutoencoderTiny, the same cost as the fitted one) and MiniLM:

* ``one window``: one 8-frame window per clip (``windows="tile"``, ``max_latent_frames=8``), what the
  cache held before windows;
* ``slice``: every 2nd frame encoded once, any 8 consecutive latent frames a window (the default);
* ``tile``: every non-overlapping 16-frame window encoded on its own;
* ``stage 2 from store``: conf/base's stage-2 buckets (16 frames) on the same clips, after ``slice``
  filled the shared clip store.

Reported: windows available per clip, CPU seconds (process time; interleaved repeats, best of them)
per clip, and the ratio to ``one window``. CPU time rather than wall time, because the machine is
shared: it is what the stage costs on an idle machine with one thread.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from opensora_mlops.curation.synthetic import generate_corpus
from opensora_mlops.data.buckets import BucketConfig, assign_buckets
from opensora_mlops.models.text_encoder import build_text_encoder
from opensora_mlops.training.components import build_vae
from opensora_mlops.training.latents import build_stage_caches

ROOT = Path(__file__).resolve().parents[1]


def stage_table(clips: pd.DataFrame, stage: dict) -> pd.DataFrame:
    table = assign_buckets(clips, BucketConfig(stage["bucket_config"]), frame_interval=stage["frame_interval"], seed=0)
    return table[table["keep"]].reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clips", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    count = args.clips or (12 if args.quick else 40)
    torch.set_num_threads(1)
    stages = yaml.safe_load((ROOT / "conf/base/parameters_bucketing.yml").read_text())["bucketing"]["stages"]
    corpus = yaml.safe_load((ROOT / "conf/base/parameters_ingestion.yml").read_text())["ingestion"]["synthetic"]
    recipe = {"seed": 0, "num_single_shot": count, "single_shot_sizes": corpus["single_shot_sizes"],
              "single_shot_duration_seconds": corpus["single_shot_duration_seconds"],
              "fps_choices": corpus["fps_choices"], "num_videos": 0, "num_large": 0, "num_images": 0, "defects": {}}
    vae, text = build_vae({"type": "tiny"}), build_text_encoder({"type": "minilm", "max_length": 32})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        videos = generate_corpus(work / "corpus", recipe, progress=False)
        clips = pd.DataFrame([{"path": str(work / "corpus" / v.path), "text": v.caption, "num_frames": v.num_frames,
                               "height": v.height, "width": v.width, "fps": v.fps} for v in videos])
        stage1, stage2 = stage_table(clips, stages["stage1"]), stage_table(clips, stages["stage2"])
        interval = int(stages["stage1"]["frame_interval"])
        variants = {"one window": dict(windows="tile", max_latent_frames=8), "slice": {}, "tile": dict(windows="tile")}
        best: dict[str, float] = {}
        windows: dict[str, int] = {}
        for repeat in range(args.repeats):
            for name, kwargs in variants.items():
                out = work / f"{name}-{repeat}".replace(" ", "_")
                start = time.process_time()
                manifest = build_stage_caches(stage1, out / "stage1_latents", vae, text, frame_interval=interval,
                                              reuse_key={"bench": name, "repeat": repeat}, **kwargs)  # fmt: skip
                best[name] = min(best.get(name, float("inf")), time.process_time() - start)
                windows[name] = manifest["num_train_windows"]
                if name == "slice":
                    start = time.process_time()
                    again = build_stage_caches(stage2, out / "stage2_latents", vae, text, frame_interval=interval,
                                               reuse_key={"bench": name, "repeat": repeat})  # fmt: skip
                    key = "stage 2 from store"
                    best[key] = min(best.get(key, float("inf")), time.process_time() - start)
                    windows[key] = again["num_train_windows"]
                    assert again["num_train_reused"] == len(stage2)
                shutil.rmtree(out)
    base = best["one window"] / len(stage1)
    print(f"{len(stage1)} clips ({len(stage2)} in stage 2), stage-1 buckets of 8 frames at interval {interval}; "
          f"best of {args.repeats}")
    print(f"{'variant':<20} {'windows/clip':>12} {'CPU-s/clip':>11} {'vs one window':>14}")
    for name, seconds in best.items():
        n = len(stage2) if name.startswith("stage 2") else len(stage1)
        print(f"{name:<20} {windows[name] / n:>12.1f} {seconds / n:>11.3f} {seconds / n / base:>13.2f}x")


if __name__ == "__main__":
    main()
