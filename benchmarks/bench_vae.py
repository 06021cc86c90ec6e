"""The embedded VAE: what each tiny autoencoder recipe keeps of the captions' subjects, and what its fit costs.

For the generated samples to show a caption's colour, shape and motion, the VAE must first carry them:
this script fits each recipe, reconstructs clips through encode -> decode at 144x256 and scores the
reconstructions with the prompt-adherence detector (the same classical CV the evaluation pipeline uses on
generated videos). The scores are a ceiling for every model trained on that VAE's latents.

Fitting data: what the autoencoder pipeline fits on (``training_frames``: curated frames when ``--clips``
names a curated table, plus the vocabulary renders the recipe asks for). Evaluation clips: one per
colour x shape x background of the synthetic vocabulary (84), rendered with ``render_shot`` at positions
and sizes no fitting frame used, moving in every direction at both speeds; 4 frames each (every 4th of
13). They are scored twice: subjects sized like the corpus's ``SHAPE_SIZE_RANGE`` (0.28-0.38 of the shorter
side) and the smaller ones it drew before (0.2-0.32); the corpus-sized clips are scored a third time after
an H.264 round trip at the corpus's quality (CRF 18), as the curated clips have been through. ``--clips``
also scores 16 curated clips.

Every recipe is fitted with ``--seeds`` seeds, the recipes interleaved within each seed so that a shared
machine slows all of them alike; the table gives the mean over seeds and, after ±, half the range. Fit
time is CPU time of the process (all threads summed: on a machine shared with other work it stays near
what an idle machine spends, where wall time does not) and wall time.

    python benchmarks/bench_vae.py                      # rendered clips only
    python benchmarks/bench_vae.py --clips data/04_feature/stage1_filtered_clips.parquet

(run from the project root; the curated table exists after ``make demo``).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from opensora_mlops.curation.synthetic import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPE_SIZE_RANGE,
    SHAPES,
    SPEEDS,
    ShotSpec,
    caption_for,
    render_shot,
)
from opensora_mlops.data.dataset import decode_all_frames, resize_crop, to_model_range
from opensora_mlops.data.video_io import write_video
from opensora_mlops.evaluation.prompt_adherence import adherence_scores
from opensora_mlops.models.vae import VideoAutoencoder, fit_autoencoder
from opensora_mlops.pipelines.autoencoder.nodes import fit_options, training_frames

HEIGHT, WIDTH = 144, 256
#: Subject size ranges the rendered evaluation clips are scored at (fractions of the shorter side): the
#: corpus's ``SHAPE_SIZE_RANGE`` and the smaller subjects it drew before (0.2-0.32).
SIZE_RANGES: dict[str, tuple[float, float]] = {"corpus": SHAPE_SIZE_RANGE, "small": (0.2, 0.32)}

#: name -> overrides of conf/base/parameters_autoencoder.yml ("default": none). "previous" is the recipe the
#: default replaced, on the same fitting frames: 600 float32 steps at lr 2e-3 (no warm-up). "default, 600
#: steps" takes the longer fit back; "default + subject weight 4" adds the subject-weighted loss. A plain
#: run fits PRIMARY; ``--recipes`` picks others.
RECIPES: dict[str, dict] = {
    "previous (600 steps, lr 2e-3, L1+MSE)": {"steps": 600, "lr": 2.0e-3, "warmup_steps": 0, "subject_weight": 0.0,
                                              "edge_weight": 0.0, "bf16": False},
    "default, 600 steps": {"steps": 600},
    "default + subject weight 4": {"subject_weight": 4.0},
    "default": {},
}
PRIMARY = ["previous (600 steps, lr 2e-3, L1+MSE)", "default"]


def evaluation_clips(size_range: tuple[float, float], seed: int, frames: int = 13, stride: int = 4,
                     h264: bool = False) -> list[tuple[str, np.ndarray]]:
    """(caption, uint8 frames) for every colour x shape x background, sizes drawn from ``size_range``;
    ``h264``: through an H.264 round trip at the corpus's quality (CRF 18), as the curated clips are."""
    rng = np.random.default_rng(seed)
    clips = []
    directions, speeds = list(DIRECTIONS), list(SPEEDS)
    for i, (colour, shape, background) in enumerate(itertools.product(COLOURS, SHAPES, BACKGROUNDS)):
        spec = ShotSpec(colour, shape, background, directions[i % len(directions)], speeds[(i // 4) % len(speeds)])
        size = float(rng.uniform(*size_range) * min(HEIGHT, WIDTH))
        # keep the subject inside the frame for the whole clip (the detector scores shape off the border)
        margin = size / 2 + 0.05 * min(HEIGHT, WIDTH)
        dx, dy = DIRECTIONS[spec.direction]
        travel = SPEEDS[spec.speed] * (frames - 1)
        centre = []
        for step, length in ((dx * travel * WIDTH, WIDTH), (dy * travel * HEIGHT, HEIGHT)):
            low, high = margin + max(0.0, -step), length - margin - max(0.0, step)
            centre.append(float(rng.uniform(low, high)) if low < high else (length - step) / 2)
        video = render_shot(spec, HEIGHT, WIDTH, frames, size, tuple(centre))
        if h264:
            with tempfile.TemporaryDirectory() as tmp:
                video, _ = decode_all_frames(write_video(Path(tmp) / "clip.mp4", video, fps=24.0, crf=18))
        clips.append((caption_for(spec), video[::stride]))
    return clips


def curated_clips(clips: pd.DataFrame, count: int, frames: int = 16) -> list[tuple[str, np.ndarray]]:
    out = []
    for path, caption in list(zip(clips["path"], clips["text"], strict=True))[:count]:
        video, _ = decode_all_frames(path)
        out.append((caption, resize_crop(video[:frames], HEIGHT, WIDTH)))
    return out


def reconstruction_scores(vae: VideoAutoencoder | None, clips: list[tuple[str, np.ndarray]]) -> dict[str, float]:
    """Mean PSNR and detector checks of the clips through ``vae`` (``None``: of the clips themselves)."""
    psnr, colour, shape, direction = [], [], [], []
    for caption, frames in clips:
        recon_frames = frames
        if vae is not None:
            x = to_model_range(frames)[None]
            recon = vae.decode(vae.encode(x), size=(HEIGHT, WIDTH))
            psnr.append(float(10 * torch.log10(4.0 / (recon - x).pow(2).mean())))
            recon_frames = ((recon[0].permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()
        score = adherence_scores(recon_frames, caption)
        colour.append(score.colour_ok)
        shape.append(score.shape_ok)
        direction.append(score.direction_ok)
    return {"psnr": float(np.mean(psnr)) if psnr else float("inf"), "colour": float(np.mean(colour)), "shape": float(np.mean(shape)),
            "direction": float(np.mean(direction))}


def _cell(values: list[float], digits: int = 2) -> str:
    mean, half_range = float(np.mean(values)), (max(values) - min(values)) / 2
    return f"{mean:.{digits}f}±{half_range:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="conf/base/parameters_autoencoder.yml",
                        help="the autoencoder parameters the recipes override")
    parser.add_argument("--clips", default=None, help="curated clip table (path, text): fit on its frames too "
                        "and score 16 of its clips")
    parser.add_argument("--seeds", type=int, default=2, help="fit seeds per recipe")
    parser.add_argument("--recipes", nargs="*", default=None, help=f"recipes to fit, in order (default: {PRIMARY}); known: {list(RECIPES)}")
    parser.add_argument("--quick", action="store_true", help="a tenth of the fitting steps, one seed, the corpus suite only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    base = yaml.safe_load(Path(args.params).read_text())["autoencoder"]
    table = None
    if args.clips:
        if not Path(args.clips).is_file():
            print(f"bench_vae: no curated clip table at {args.clips} (run `make demo` first)")
            return 1
        table = pd.read_parquet(args.clips)
    names = args.recipes or PRIMARY
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; known: {list(RECIPES)}")
    seeds = [0] if args.quick else list(range(args.seeds))
    suites = {name: evaluation_clips(size_range, seed=1000 + i) for i, (name, size_range) in enumerate(SIZE_RANGES.items())}
    if args.quick:
        suites = {"corpus": suites["corpus"]}
    else:
        suites["H.264"] = evaluation_clips(SIZE_RANGES["corpus"], seed=1000, h264=True)
    if table is not None:
        suites["curated"] = curated_clips(table, 16)

    results: dict[str, list[dict]] = {name: [] for name in names}
    for seed in seeds:
        for name in names:
            params = {**base, **RECIPES[name], "seed": seed}
            if args.quick:
                params["steps"] = max(10, int(params["steps"]) // 10)
            frames = training_frames(table, params)
            vae = VideoAutoencoder.tiny(seed=seed, arch=str(params.get("arch", "taesd")))
            options = fit_options(params) | {"progress": False}
            cpu, wall = time.process_time(), time.perf_counter()
            fit_autoencoder(vae, frames, **options)
            row = {"steps": options["steps"], "frames": len(frames), "cpu_s": time.process_time() - cpu,
                   "wall_s": time.perf_counter() - wall}
            for suite, clips in suites.items():
                row[suite] = reconstruction_scores(vae, clips)
            results[name].append(row)
            print(f"  seed {seed} {name}: fit {row['cpu_s']:.0f} CPU s / {row['wall_s']:.0f} s wall, "
                  + ", ".join(f"{s} colour {row[s]['colour']:.2f} shape {row[s]['shape']:.2f}" for s in suites),
                  flush=True)

    first = results[names[0]][0]
    print(f"\n{first['frames']} fitting frames ({'curated + ' if table is not None else ''}vocabulary renders); "
          f"{', '.join(f'{s}: {len(c)} clips' for s, c in suites.items())}; {args.threads} threads; "
          f"seeds {seeds}; mean ± half the range over seeds")
    for suite, clips in suites.items():
        truth = reconstruction_scores(None, clips)
        print(f"  {suite} clips themselves (no autoencoder): colour {truth['colour']:.2f}, shape {truth['shape']:.2f}, "
              f"direction {truth['direction']:.2f}")
    header = f"{'recipe':38s} {'steps':>5s} {'fit CPU s':>10s} {'wall s':>7s} {'suite':>8s} " \
             f"{'colour':>9s} {'shape':>9s} {'direction':>9s} {'PSNR dB':>11s}"
    print(header)
    for name in names:
        rows = results[name]
        for i, suite in enumerate(suites):
            lead = (f"{name:38s} {rows[0]['steps']:5d} {_cell([r['cpu_s'] for r in rows], 0):>10s} "
                    f"{_cell([r['wall_s'] for r in rows], 0):>7s}" if i == 0 else " " * 63)
            print(f"{lead} {suite:>8s} " + " ".join(f"{_cell([r[suite][k] for r in rows]):>9s}"
                                                     for k in ("colour", "shape", "direction"))
                  + f" {_cell([r[suite]['psnr'] for r in rows], 1):>11s}")
    last = names[-1]
    mean = {k: float(np.mean([r["corpus"][k] for r in results[last]])) for k in ("colour", "shape", "direction")}
    print(f"summary: {last}: reconstructions of corpus-sized subjects keep colour {mean['colour']:.2f}, "
          f"shape {mean['shape']:.2f}, direction {mean['direction']:.2f} "
          f"(fit {np.mean([r['cpu_s'] for r in results[last]]):.0f} CPU s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
