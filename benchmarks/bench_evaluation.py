"""What the evaluation costs: generation per video and batch size, scoring per clip, and the total for
the configured default (``conf/base/parameters_evaluation.yml``: the bundled suite plus the training
prompts, every seed, trained and untrained).

The model is an untrained STDiT2 of the training config with the embedded tiny VAE and MiniLM: the
sampling cost does not depend on the weights. Batch sizes run interleaved, ``--repeats`` times each,
and the table gives the median and the spread (min-max) of the seconds per video, wall clock and CPU
(process time over all threads: less sensitive to other load on a shared machine). Prints a table;
the last line is a one-line summary.

    python benchmarks/bench_evaluation.py            # 2 repeats of batch sizes 1, 3, 6
    python benchmarks/bench_evaluation.py --quick    # 1 repeat, 5 steps (a smoke run)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from opensora_mlops.curation.synthetic import ShotSpec, caption_for, render_shot
from opensora_mlops.evaluation.evaluate import TRAINING_PROMPT_DIMENSIONS, EvaluationConfig
from opensora_mlops.evaluation.prompt_adherence import adherence_scores
from opensora_mlops.evaluation.vbench import Scorers, SuiteEntry, load_prompt_suite, score_suite

ROOT = Path(__file__).resolve().parents[1]


def _conf(name: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / "base" / name).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 3, 6])
    parser.add_argument("--quick", action="store_true", help="1 repeat, 5 sampling steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from opensora_mlops.diffusion import build_scheduler
    from opensora_mlops.inference.generate import generate
    from opensora_mlops.models.stdit2 import build_model
    from opensora_mlops.models.text_encoder import build_text_encoder
    from opensora_mlops.models.vae import VideoAutoencoder

    evaluation = EvaluationConfig.from_dict(_conf("parameters_evaluation.yml")["evaluation"])
    training = _conf("parameters_training.yml")["training_shared"]
    gen = evaluation.generation_settings()
    steps = 5 if args.quick else int(gen["steps"])
    repeats = 1 if args.quick else args.repeats
    fps = float(gen["fps"]) if gen.get("fps") is not None else 24.0
    torch.manual_seed(0)
    model = build_model(training["model"]["name"]).eval()
    vae = VideoAutoencoder.tiny(seed=0, arch=_conf("parameters_autoencoder.yml")["autoencoder"].get("arch", "taesd"))
    encoder = build_text_encoder(training["text_encoder"])
    scheduler = build_scheduler(training.get("scheduler"), steps=steps, cfg_scale=float(gen["cfg_scale"]))
    prompts = [e.prompt for e in load_prompt_suite()]

    per_video: dict[int, dict[str, list[float]]] = {b: {"wall": [], "cpu": []} for b in args.batch_sizes}
    videos = []
    for repeat in range(repeats):
        for batch in args.batch_sizes:  # interleaved: load changes hit every batch size alike
            chunk = prompts[:batch]
            wall, cpu = time.perf_counter(), time.process_time()
            result = generate(model, vae, encoder, scheduler=scheduler, prompts=chunk,
                              num_frames=int(gen["num_frames"]), height=int(gen["height"]),
                              width=int(gen["width"]), fps=fps, seed=repeat, batch_size=batch, progress=False)
            per_video[batch]["wall"].append((time.perf_counter() - wall) / batch)
            per_video[batch]["cpu"].append((time.process_time() - cpu) / batch)
            videos += [(SuiteEntry(p, tuple(e.dimensions)), v) for p, v, e in
                       zip(chunk, result.videos, load_prompt_suite()[:batch], strict=True)]

    # scoring: the generated clips on their suite dimensions + real-like rendered clips
    spec = ShotSpec("red", "circle", "gray", "left", "quickly")
    real = render_shot(spec, int(gen["height"]), int(gen["width"]), int(gen["num_frames"]), 40.0, (180.0, 72.0))
    sample = videos[: max(3, min(6, len(videos)))]
    wall = time.perf_counter()
    score_suite(sample + [(SuiteEntry(caption_for(spec), TRAINING_PROMPT_DIMENSIONS), real)], Scorers(),
                progress=False)
    for entry, frames in sample:
        adherence_scores(frames, entry.prompt)
    score_s = (time.perf_counter() - wall) / (len(sample) + 1)

    n_prompts = min(evaluation.max_prompts, len(prompts)) + evaluation.training_prompts
    n_videos = n_prompts * len(evaluation.seeds()) * len(evaluation.groups)
    default_batch = int(gen["batch_size"])
    print(f"STDiT2 {training['model']['name']}, {gen['num_frames']}x{gen['height']}x{gen['width']}, {steps} "
          f"steps, cfg {gen['cfg_scale']}, scheduler {training.get('scheduler', {}).get('type', 'iddpm')}; "
          f"{args.threads} threads, {repeats} repeat(s) interleaved")
    print(f"{'batch':>5s} {'s/video wall (min-max)':>24s} {'s/video CPU (min-max)':>24s}")
    for batch, values in per_video.items():
        w, c = np.array(values["wall"]), np.array(values["cpu"])
        print(f"{batch:5d} {np.median(w):9.2f} ({w.min():5.2f}-{w.max():5.2f})      "
              f"{np.median(c):9.2f} ({c.min():5.2f}-{c.max():5.2f})")
    print(f"scoring (VBench-style dimensions + adherence): {score_s:.2f} s per clip")
    if default_batch in per_video:
        generation_s = n_videos * float(np.median(per_video[default_batch]["wall"]))
        total_scored = n_videos + int(evaluation.real_clips.get("max_clips", 8))
        total = generation_s + total_scored * score_s
        note = " (at --quick's 5 steps)" if args.quick else ""
        print(f"summary: the default evaluation ({n_prompts} prompts x {len(evaluation.seeds())} seeds x "
              f"{len(evaluation.groups)} groups = {n_videos} videos, batch {default_batch}) costs about "
              f"{generation_s / 60:.1f} min of generation + {total_scored * score_s / 60:.1f} min of scoring = "
              f"{total / 60:.1f} min{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
