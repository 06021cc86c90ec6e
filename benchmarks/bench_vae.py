"""The embedded VAE: what each tiny autoencoder recipe keeps of the curated clips, and what its fit costs.

For the generated samples to show a caption's colour, shape and motion, the VAE must first carry them:
this script fits each recipe on the same frames of a curated clip table, reconstructs held clips through
encode -> decode at 144x256 and scores the reconstructions with the prompt-adherence detector (the same
classical CV the evaluation pipeline uses on generated videos). The scores are a ceiling for every model
trained on that VAE's latents. Prints a table; the last line is a one-line summary.

    python benchmarks/bench_vae.py --clips data/04_feature/stage1_filtered_clips.parquet

(the table exists after ``make demo`` or ``kedro run --pipelines=curation``; run from the project root).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from opensora_mlops.data.dataset import decode_all_frames, resize_crop, to_model_range
from opensora_mlops.evaluation.prompt_adherence import adherence_scores
from opensora_mlops.models.vae import VideoAutoencoder, fit_autoencoder
from opensora_mlops.pipelines.autoencoder.nodes import frames_for_fitting

#: name -> (arch, steps, fit keyword arguments). "kl, uniform crops" is the recipe before the switch to
#: AutoencoderTiny; "taesd" is the default in conf/base/parameters_autoencoder.yml.
RECIPES: dict[str, tuple[str, int, dict]] = {
    "kl, uniform crops (previous default)": ("kl", 300, {"lr": 2e-3}),
    "taesd, uniform crops": ("taesd", 600, {"lr": 2e-3, "cosine_decay": True}),
    "taesd, content crops (default)": ("taesd", 600, {"lr": 2e-3, "cosine_decay": True,
                                                      "crop_content_bias": 0.7}),
}


def reconstruction_scores(vae: VideoAutoencoder, clips: pd.DataFrame, num_clips: int,
                          num_frames: int) -> dict[str, float]:
    psnr, colour, shape, direction = [], [], [], []
    for path, caption in list(zip(clips["path"], clips["text"], strict=True))[:num_clips]:
        video, _ = decode_all_frames(path)
        x = to_model_range(resize_crop(video[:num_frames], 144, 256))[None]
        recon = vae.decode(vae.encode(x), size=(144, 256))
        psnr.append(float(10 * torch.log10(4.0 / (recon - x).pow(2).mean())))
        frames = ((recon[0].permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()
        score = adherence_scores(frames, caption)
        colour.append(score.colour_ok)
        shape.append(score.shape_ok)
        direction.append(score.direction_ok)
    return {"psnr": float(np.mean(psnr)), "colour": float(np.mean(colour)), "shape": float(np.mean(shape)),
            "direction": float(np.mean(direction))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", default="data/04_feature/stage1_filtered_clips.parquet",
                        help="curated clip table with synthetic captions (path, text)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the fitting steps, 6 clips")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if not Path(args.clips).is_file():
        print(f"bench_vae: skipped, no curated clip table at {args.clips} (run `make demo` or "
              "`kedro run --pipelines=ingestion,curation` first)")
        return 0
    clips = pd.read_parquet(args.clips)
    frames = frames_for_fitting(clips, {"max_clips": 24, "frames_per_clip": 4, "height": 144, "width": 256,
                                        "seed": 0})
    num_clips = 6 if args.quick else 16
    rows = []
    for name, (arch, steps, kwargs) in RECIPES.items():
        steps = max(10, steps // 10) if args.quick else steps
        vae = VideoAutoencoder.tiny(seed=0, arch=arch)
        start = time.perf_counter()
        fit_autoencoder(vae, frames, steps=steps, batch_size=8, crop=64, seed=0, progress=False, **kwargs)
        seconds = time.perf_counter() - start
        rows.append({"recipe": name, "steps": steps, "fit_s": seconds,
                     **reconstruction_scores(vae, clips, num_clips, num_frames=16)})

    print(f"{len(frames)} fitting frames from {args.clips}; {num_clips} clips x 16 frames reconstructed at 144x256; "
          f"{args.threads} threads")
    print(f"{'recipe':38s} {'steps':>5s} {'fit s':>6s} {'PSNR dB':>8s} {'colour':>7s} {'shape':>6s} {'motion':>7s}")
    for r in rows:
        print(f"{r['recipe']:38s} {r['steps']:5d} {r['fit_s']:6.0f} {r['psnr']:8.2f} {r['colour']:7.2f} "
              f"{r['shape']:6.2f} {r['direction']:7.2f}")
    first, last = rows[0], rows[-1]
    print(f"summary: reconstructed colour right {last['colour']:.2f} vs {first['colour']:.2f}, shape {last['shape']:.2f} "
          f"vs {first['shape']:.2f}, PSNR {last['psnr']:.1f} vs {first['psnr']:.1f} dB ({last['recipe']} vs {first['recipe']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
