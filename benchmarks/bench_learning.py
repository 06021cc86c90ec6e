"""Does the embedded model learn what its captions say? The instruments, and the objectives compared.

Two modes, both on a stage's latent cache (what `kedro run --pipelines=stage1` or `make demo` leaves in
data/05_model_input/stage1_latents/):

  diagnose  one trained model: one-step x̂_0 MSE per timestep (beside predicting zero), caption effect
            (own vs null vs another clip's caption), per-frame spread of x̂_0 from noise, and the
            oracle-sampler check (opensora_mlops.evaluation.learning).

      .venv/bin/python benchmarks/bench_learning.py diagnose --weights data/06_models/stage1/final/ema \
          --cache data/05_model_input/stage1_latents/train

  compare   trains STDiT2-tiny with each objective (ε IDDPM, v IDDPM, rectified flow) on the same cache
            for the same steps (equal CPU time: the objectives cost the same per step), and at each
            milestone prints the diagnostics and the prompt adherence of generated clips (decoded with
            the stage's VAE, scored by opensora_mlops.evaluation.prompt_adherence) on the cache's captions.
            --model / --dtype train another size or precision (compare variants by train_cpu_s, not steps).

      .venv/bin/python benchmarks/bench_learning.py compare --cache data/05_model_input/stage1_latents/train \
          --vae data/06_models/vae --steps 200,400,800 --seeds 0,1

--quick (used by `make bench`) runs `compare` on a tiny synthetic cache it builds itself (a smoke test of
the instruments, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from opensora_mlops.diffusion import build_scheduler, load_scheduler_config  # noqa: E402
from opensora_mlops.evaluation.learning import diagnostic_batch, learning_report  # noqa: E402
from opensora_mlops.training.latents import LatentCache, training_conditions  # noqa: E402

OBJECTIVES: dict[str, dict[str, Any]] = {
    "eps": {"type": "iddpm", "prediction": "epsilon"},
    "v": {"type": "iddpm", "prediction": "v"},
    "rflow": {"type": "rflow"},
}


ADHERENCE_FIELDS = ("background_ok", "background_stable", "colour_ok", "shape_ok", "direction_ok", "adherence",
                    "overall")


def adherence_of_samples(model, scheduler_cfg, vae, encoder, prompts, cond, seeds, steps, cfg_scale):
    """Mean per-attribute adherence of one generated clip per (prompt, seed)."""
    from opensora_mlops.evaluation.prompt_adherence import adherence_scores
    from opensora_mlops.training.validation import sample_video

    rows = []
    for prompt in prompts:
        for seed in seeds:
            frames = sample_video(model, vae, encoder, prompt, cond["num_frames"], cond["height"], cond["width"],
                                  fps=cond["fps"], steps=steps, cfg_scale=cfg_scale, seed=seed,
                                  scheduler=scheduler_cfg)
            score = adherence_scores(frames, prompt)
            rows.append({k: getattr(score, k) for k in ADHERENCE_FIELDS})
    table = pd.DataFrame(rows)
    return {c: float(table[c].mean()) for c in ADHERENCE_FIELDS}


def diagnose(args: argparse.Namespace) -> None:
    from opensora_mlops.models.stdit2 import STDiT2

    model = STDiT2.from_pretrained(args.weights).eval()
    scheduler = build_scheduler(load_scheduler_config(args.weights) if args.scheduler is None
                                else json.loads(args.scheduler))
    batch = diagnostic_batch(LatentCache(args.cache), args.batch)
    report = learning_report(model, scheduler, batch)
    print(f"model {args.weights}  scheduler {scheduler}")
    print(f"{'t':>5} {'x0 MSE':>10} {'predict 0':>10}")
    for row in report["x0_by_timestep"]:
        flag = "  worse than a constant" if row["x0_mse"] > row["zero_mse"] else ""
        print(f"{row['timestep']:>5} {row['x0_mse']:>10.4f} {row['zero_mse']:>10.4f}{flag}")
    s = report["summary"]
    print(f"caption: x̂0 shift without caption {s['caption_null_shift']:.4f} vs x̂0 error "
          f"{report['caption']['x0_mse']:.4f}; own caption predicts better than another's "
          f"{s['caption_own_wins']:.2f} of the time (0.5 = ignored)")
    print(f"per-frame mean spread of x̂0 from noise {s['x0_frame_spread']:.4f} vs data {s['data_frame_spread']:.4f}")
    print(f"oracle sampler max error {s['oracle_max_error']:.2e} (the sampler itself is exact when ~0)")


def _train_config(run_dir: Path, cache_dir: str, objective: dict[str, Any], steps: int, seed: int,
                  stage: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The trainer config of one compared run; ``extra`` overlays it (``data`` merged key by key)."""
    config = {
        "stage": "stage1", "run_dir": str(run_dir), "model": stage["model"], "dtype": stage["dtype"],
        "data": {"source": "cache", "cache_dir": cache_dir}, "max_steps": steps, "lr": stage["lr"],
        "ema_decay": stage["ema_decay"], "warmup_steps": stage["warmup_steps"], "ckpt_every": 0,
        "seed": seed, "scheduler": objective, "mask_ratios": stage.get("mask_ratios"),
    }
    for key, value in (extra or {}).items():
        config[key] = {**config["data"], **value} if key == "data" else value
    return config


def stage_defaults() -> dict[str, Any]:
    import yaml

    conf = yaml.safe_load((ROOT / "conf/base/parameters_training.yml").read_text())
    shared, stage1 = conf["training_shared"], conf["stage1"]["training"]
    return {"model": dict(shared["model"]), "dtype": shared["dtype"], "lr": stage1["lr"],
            "ema_decay": shared["ema_decay"],
            "warmup_steps": shared["warmup_steps"], "mask_ratios": stage1.get("mask_ratios")}


def compare(args: argparse.Namespace) -> list[dict[str, Any]]:
    from opensora_mlops.models.stdit2 import STDiT2
    from opensora_mlops.models.text_encoder import build_text_encoder
    from opensora_mlops.models.vae import VideoAutoencoder
    from opensora_mlops.training.launch import launch

    torch.set_num_threads(args.threads)
    cache = LatentCache(args.cache)
    batch = diagnostic_batch(cache, args.batch)
    cond = training_conditions(cache.index)
    videos = cache.index["bucket_num_frames"] > 1
    prompts = sorted(cache.index.loc[videos if videos.any() else slice(None), "text"].unique())[: args.prompts]
    vae = VideoAutoencoder.from_pretrained(args.vae) if args.vae else None
    encoder = build_text_encoder(json.loads(args.text_encoder))
    milestones = sorted(int(s) for s in args.steps.split(","))
    stage = stage_defaults()
    if args.lr is not None:
        stage["lr"] = args.lr
    if args.model is not None:  # e.g. '{"name": "STDiT2-tiny", "depth": 4, "hidden_size": 192}'
        stage["model"] = json.loads(args.model)
    if args.dtype is not None:
        stage["dtype"] = args.dtype
    label = args.label or " ".join([stage["model"]["name"], *(f"{k}={v}" for k, v in stage["model"].items()
                                                             if k != "name"), stage["dtype"]])
    results = []
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_learning_"))
    extra = json.loads(args.scheduler_extra) if args.scheduler_extra else {}  # e.g. {"foreground_weight": 4}
    train_extra = json.loads(args.train_extra) if args.train_extra else {}  # e.g. {"data": {"batch_scale": 2}}
    for name in args.objectives.split(","):
        objective = {**OBJECTIVES[name], **extra}
        for seed in (int(s) for s in args.seeds.split(",")):
            run = work / f"{args.label or 'run'}_{name}_seed{seed}"
            cpu_start = time.process_time()
            for steps in milestones:  # each milestone resumes the previous run (max_steps is resumable)
                launch(_train_config(run, args.cache, objective, steps, seed, stage, train_extra), progress=False)
                cpu = time.process_time() - cpu_start
                model = STDiT2.from_pretrained(run / "final" / "ema").eval()
                scheduler = build_scheduler(objective)
                s = learning_report(model, scheduler, batch)["summary"]
                row = {"variant": label, "objective": name, "seed": seed, "steps": steps,
                       "train_cpu_s": round(cpu, 1), "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                       "x0_mse_t500": s["x0_mse_t500"], "x0_mse_t900": s["x0_mse_t900"],
                       "x0_mse_t999": s["x0_mse_t999"], "zero_mse": s["zero_mse"],
                       "own_caption_wins": s["caption_own_wins"], "x0_frame_spread": s["x0_frame_spread"],
                       "data_frame_spread": s["data_frame_spread"]}
                if vae is not None and prompts:
                    row.update(adherence_of_samples(model, objective, vae, encoder, prompts, cond,
                                                    seeds=range(args.sample_seeds), steps=args.sample_steps,
                                                    cfg_scale=args.cfg_scale))
                results.append(row)
                print(json.dumps(row), flush=True)
    table = pd.DataFrame(results)
    print()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if len(table["seed"].unique()) > 1:
        metrics = [c for c in table.columns if c not in ("variant", "objective", "seed", "steps", "params_m")]
        spread = table.groupby(["variant", "objective", "steps"])[metrics].agg(["mean", "min", "max"])
        print()
        print(spread.to_string(float_format=lambda v: f"{v:.3f}"))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    return results


def quick_cache(root: Path) -> Path:
    """A tiny synthetic cache (the project's test helper) to smoke-test the instruments."""
    from opensora_mlops.training import tiny

    clips = tiny.write_clips(root / "clips", count=6)
    manifest = tiny.build_cache(tiny.bucket_table(clips), root / "cache", holdout_fraction=0.0)
    return Path(manifest["train_dir"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test on a tiny cache built on the spot")
    sub = parser.add_subparsers(dest="mode")
    d = sub.add_parser("diagnose", help="the instruments on one trained model")
    d.add_argument("--weights", required=True, help="a save_pretrained directory (e.g. .../final/ema)")
    d.add_argument("--cache", required=True, help="a latent cache split directory (.../stage1_latents/train)")
    d.add_argument("--scheduler", default=None, help="scheduler config JSON (default: scheduler.json beside the weights)")
    d.add_argument("--batch", type=int, default=8)
    c = sub.add_parser("compare", help="objectives trained side by side at equal steps")
    c.add_argument("--cache", required=True)
    c.add_argument("--vae", default=None, help="VAE directory to decode samples for adherence (omit: diagnostics only)")
    c.add_argument("--text-encoder", default='{"type": "minilm", "max_length": 32}')
    c.add_argument("--objectives", default="eps,v,rflow")
    c.add_argument("--steps", default="200,400,800", help="milestones (comma-separated optimizer steps)")
    c.add_argument("--seeds", default="0", help="training seeds (comma-separated)")
    c.add_argument("--lr", type=float, default=None, help="default: stage 1's lr from conf/base")
    c.add_argument("--model", default=None,
                   help='model block as JSON, e.g. \'{"name": "STDiT2-tiny", "depth": 4, "hidden_size": 192}\' '
                        "(default: training_shared.model from conf/base)")
    c.add_argument("--dtype", choices=("fp32", "bf16"), default=None,
                   help="training precision (bf16 on CPU: autocast with math attention; default: conf/base)")
    c.add_argument("--scheduler-extra", default=None,
                   help='JSON merged into every objective\'s scheduler config, e.g. \'{"foreground_weight": 4}\'')
    c.add_argument("--train-extra", default=None,
                   help='JSON overlaid on the trainer config, e.g. \'{"data": {"batch_scale": 2}, "ema_decay": 0.999}\'')
    c.add_argument("--label", default=None, help="name of this variant in the table (default: model/dtype)")
    c.add_argument("--prompts", type=int, default=12, help="distinct cache captions sampled per milestone")
    c.add_argument("--sample-seeds", type=int, default=2)
    c.add_argument("--sample-steps", type=int, default=25)
    c.add_argument("--cfg-scale", type=float, default=7.0)
    c.add_argument("--batch", type=int, default=8)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--work-dir", default=None)
    c.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            cache_dir = quick_cache(Path(tmp))
            compare(parser.parse_args(["compare", "--cache", str(cache_dir), "--steps", "2,4", "--prompts", "0",
                                       "--work-dir", str(Path(tmp) / "runs")]))
        return
    if args.mode == "diagnose":
        diagnose(args)
    elif args.mode == "compare":
        compare(args)
    else:
        parser.error("choose a mode: diagnose or compare (or --quick)")


if __name__ == "__main__":
    main()
