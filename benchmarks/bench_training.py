"""Training throughput and orchestration overhead.

CPU (always): samples/s and tokens/s per bucket for the tiny config (torch_ddp, fp32, gloo, 1 process),
and the overhead of running a stage through Kedro + the MLflow hooks against calling the trainer
directly (same cache, same steps): fixed start-up seconds and per-step %.
GPU (``--gpu``, needs CUDA): STDiT2-XL/2 with zero2 + bf16 at 240x426 x 64 frames: step time, peak
memory and MFU (model FLOPs from torch's FLOP counter over 989 TFLOP/s bf16 dense, H100/H200).

``--quick`` finishes in about a minute on 2 cores. The table is printed, the last line is a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from opensora_mlops.training import tiny  # noqa: E402
from opensora_mlops.training.latents import write_latent_cache  # noqa: E402
from opensora_mlops.training.launch import launch  # noqa: E402

PEAK_BF16_FLOPS = 989e12


def synthetic_cache(directory: Path, resolution: str, num_frames: int, batch_size: int, samples: int,
                    channels: int = 4, text_len: int = 32, text_dim: int = 384) -> Path:
    """A latent cache of random latents for one bucket: the trainer's input, without encoding video.

    Throughput does not depend on latent values, so the benchmark skips the VAE and writes latents of
    the bucket's shape directly through the cache writer the pipeline uses.
    """
    from opensora_mlops.data.aspect import get_aspect_table

    key = "0.56" if "0.56" in get_aspect_table(resolution).ratios else get_aspect_table(resolution).ratio_keys[0]
    h, w = get_aspect_table(resolution).size(key)
    table = pd.DataFrame({
        "path": [f"synthetic_{i}.mp4" for i in range(samples)], "text": ["a red square"] * samples,
        "num_frames": num_frames, "height": h, "width": w, "fps": 8.0,
        "bucket_id": f"{resolution}/{num_frames}/{key}", "bucket_resolution": resolution,
        "bucket_num_frames": num_frames, "bucket_height": h, "bucket_width": w, "batch_size": batch_size,
        "keep": True,
    })  # fmt: skip
    gen = torch.Generator().manual_seed(0)

    def encode_video(video: torch.Tensor) -> torch.Tensor:
        b, _, t, hh, ww = video.shape
        return torch.randn(b, channels, t, -(-hh // 8), -(-ww // 8), generator=gen)

    def encode_text(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.zeros(len(texts), text_len, dtype=torch.long)
        mask[:, :6] = 1
        return torch.randn(len(texts), text_len, text_dim, generator=gen), mask

    return write_latent_cache(directory, table, lambda key: torch.zeros(3, num_frames, h, w), encode_video,
                              encode_text, {"synthetic": True}, batch_size=8)


def step_times(run_dir: Path, skip: int) -> list[float]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e["step_time_s"] for e in events if e["event"] == "metrics" and e["step"] > skip]


def bench_buckets(work: Path, buckets: list[tuple[str, int, int]], steps: int, warmup: int) -> list[dict]:
    rows = []
    for resolution, frames, batch in buckets:
        cache = synthetic_cache(work / f"cache_{resolution}_{frames}", resolution, frames, batch, samples=batch * 4)
        run = work / f"run_{resolution}_{frames}"
        result = launch(tiny.train_config(run, cache, max_steps=steps + warmup, ckpt_every=0,
                                          model={"name": "STDiT2-tiny"}), progress=False)
        t = quartile(step_times(run, warmup))
        latent_h, latent_w = -(-tiny_size(resolution)[0] // 8), -(-tiny_size(resolution)[1] // 8)
        tokens = frames * (latent_h // 2) * (latent_w // 2)
        rows.append({"bucket": f"{resolution}/{frames}", "batch": batch, "step_s": t, "samples_per_s": batch / t,
                     "tokens_per_s": batch * tokens / t, "final_loss": result.last_loss})
    return rows


def tiny_size(resolution: str) -> tuple[int, int]:
    from opensora_mlops.data.aspect import get_aspect_table

    table = get_aspect_table(resolution)
    return table.size("0.56" if "0.56" in table.ratios else table.ratio_keys[0])


def quartile(values: list[float]) -> float:
    """Lower quartile: on a shared machine the least-disturbed steps say what the code costs."""
    return float(np.percentile(values, 25))


def bench_overhead(work: Path, steps: int, threads: int, repeats: int, bucket: tuple[str, int, int]) -> dict:
    """The same stage (cache ready) run directly and through `kedro run` with the MLflow hooks."""
    import yaml
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    resolution, frames, batch = bucket
    cache = synthetic_cache(work / "ov_cache" / "train", resolution, frames, batch, samples=batch * 4)
    shutil.copytree(cache, work / "ov_cache" / "val")
    manifest = {"source": "cache", "stage": "stage1", "train_dir": str(cache), "table_hash": "bench",
                "frame_interval": 1}
    (work / "latent_cache.json").write_text(json.dumps(manifest))
    (work / "vae.json").write_text(json.dumps({"type": "tiny"}))

    def direct_run(name: str, n: int) -> float:
        t0 = time.perf_counter()
        launch(tiny.train_config(work / name, cache, max_steps=n, ckpt_every=0, model={"name": "STDiT2-tiny"},
                                 ema_decay=0.95, seed=42), progress=False)
        return time.perf_counter() - t0

    direct_run("warmup", 2)  # imports and first-call costs are paid here, not by either contender

    conf = work / "conf"
    shutil.copytree(ROOT / "conf" / "base", conf / "base")
    (conf / "local").mkdir()
    catalog = {
        "stage1.latent_cache": {"type": "json.JSONDataset", "filepath": str(work / "latent_cache.json")},
        "vae_model": {"type": "json.JSONDataset", "filepath": str(work / "vae.json")},
        **{f"stage1.{n}": {"type": "json.JSONDataset", "filepath": str(work / "out" / f"{n}.json")}
           for n in ("model", "training_metrics")},
    }  # fmt: skip
    (conf / "local" / "catalog.yml").write_text(yaml.safe_dump(catalog))
    (conf / "local" / "parameters.yml").write_text(yaml.safe_dump({
        "training_shared": {"runs_root": str(work / "kedro_runs"), "ckpt_every": 0, "warmup_steps": 0,
                            "threads": threads, "sample_every": 0},
        "stage1": {"training": {"max_steps": steps, "lr": 1e-3}}}))
    (conf / "local" / "mlflow.yml").write_text(yaml.safe_dump({
        "tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "artifact_location": str(work / "artifacts"),
        "experiment_name": "bench", "log_weights": True}))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    bootstrap_project(ROOT)

    def kedro_run(i: int) -> float:
        shutil.rmtree(work / "kedro_runs", ignore_errors=True)
        t0 = time.perf_counter()
        with KedroSession.create(project_path=ROOT, conf_source=str(conf), env="local") as session:
            session.run(pipeline_names=["stage1"], node_names=["stage1.train"])
        return time.perf_counter() - t0

    # interleaved repeats; the minimum of each is the run least disturbed by other work on the machine
    direct_totals, kedro_totals, d_steps, k_steps = [], [], [], []
    for i in range(repeats):
        direct_totals.append(direct_run(f"direct{i}", steps))
        d_steps += step_times(work / f"direct{i}", 1)
        kedro_totals.append(kedro_run(i))
        k_steps += step_times(work / "kedro_runs" / "stage1", 1)
    direct_total, kedro_total = min(direct_totals), min(kedro_totals)
    return {"steps": steps, "repeats": repeats, "direct_total_s": direct_total, "kedro_total_s": kedro_total,
            "direct_step_s": statistics.median(d_steps), "kedro_step_s": statistics.median(k_steps),
            "direct_step_p25_s": quartile(d_steps), "kedro_step_p25_s": quartile(k_steps),
            "per_step_overhead_pct": 100 * (quartile(k_steps) / quartile(d_steps) - 1),
            "total_overhead_pct": 100 * (kedro_total / direct_total - 1),
            "fixed_overhead_s": kedro_total - direct_total}


def bench_gpu(batch: int = 1, steps: int = 5) -> dict:
    """STDiT2-XL/2, zero2 + bf16, 240x426 x 64 frames on one GPU: step time, peak memory, MFU."""
    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA GPU (this machine has none)")
    from torch.utils.flop_counter import FlopCounterMode

    from opensora_mlops.diffusion import IDDPM
    from opensora_mlops.models.stdit2 import build_model
    from opensora_mlops.training import booster as boost

    ctx = boost.init_distributed(seed=0)
    model = build_model("STDiT2-XL/2", grad_checkpointing=False)
    optimizer = boost.build_optimizer(model, "hybrid_adam", 2e-5, 0.0, 1e-8, (0.9, 0.999))
    bst = boost.make_booster(boost.build_plugin("zero2", 1.0))
    model, optimizer, *_ = bst.boost(model, optimizer)
    diffusion = IDDPM()
    dev = ctx.device
    x = torch.randn(batch, 4, 64, 30, 54, device=dev, dtype=torch.bfloat16)
    kwargs = {"y": torch.randn(batch, 200, 4096, device=dev, dtype=torch.bfloat16),
              "mask": torch.ones(batch, 200, dtype=torch.long, device=dev),
              **{k: torch.full((batch,), v, device=dev) for k, v in
                 (("fps", 24.0), ("height", 240.0), ("width", 426.0), ("ar", 240 / 426), ("num_frames", 64.0))}}

    def step() -> None:
        t = diffusion.sample_timesteps(batch, device=dev)
        loss = diffusion.training_losses(model, x, t, kwargs)["loss"].mean()
        bst.backward(loss, optimizer)
        optimizer.step()
        optimizer.zero_grad()

    step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    out = {"batch": batch, "step_s": dt, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
           "tflop_per_step": flops / 1e12, "mfu_pct": 100 * flops / dt / PEAK_BF16_FLOPS,
           "gpu": torch.cuda.get_device_name()}
    boost.shutdown_distributed(ctx)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer buckets and steps (about a minute)")
    parser.add_argument("--gpu", action="store_true", help="also the STDiT2-XL/2 zero2 bf16 GPU step")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (both runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    work = Path(tempfile.mkdtemp(prefix="bench_training_"))
    try:
        if args.quick:
            buckets, steps, warmup, ov_steps = [("144p", 1, 8), ("144p", 4, 2)], 6, 2, 12
        else:
            buckets, steps, warmup, ov_steps = [("144p", 1, 8), ("144p", 4, 2), ("144p", 8, 1),
                                                ("240p", 4, 1)], 10, 3, 30
        rows = bench_buckets(work, buckets, steps, warmup)
        print("tiny STDiT2 (2 blocks, 96 wide), torch_ddp fp32, 1 process; step time = lower quartile")
        print(f"{'bucket':<12}{'batch':>6}{'step s':>10}{'samples/s':>12}{'tokens/s':>12}")
        for r in rows:
            print(f"{r['bucket']:<12}{r['batch']:>6}{r['step_s']:>10.3f}{r['samples_per_s']:>12.2f}"
                  f"{r['tokens_per_s']:>12.0f}")
        # quick: a short 2-frame stage; full: the embedded default's stage 1 (144p x 8 frames, batch 4, 30 steps)
        ov_bucket = ("144p", 2, 2) if args.quick else ("144p", 8, 4)
        ov = bench_overhead(work, ov_steps, args.threads, repeats=2 if args.quick else 3, bucket=ov_bucket)
        print(f"\nKedro + MLflow vs direct trainer ({ov['steps']} steps of {'/'.join(map(str, ov_bucket))}, same "
              f"cache, best of {ov['repeats']}):")
        for name in ("direct", "kedro"):
            print(f"  {name:<6}: total {ov[f'{name}_total_s']:.1f} s, step median {ov[f'{name}_step_s'] * 1000:.0f} ms, "
                  f"lower quartile {ov[f'{name}_step_p25_s'] * 1000:.0f} ms")
        print(f"  per-step overhead (lower quartiles) {ov['per_step_overhead_pct']:+.1f}%; whole stage "
              f"{ov['total_overhead_pct']:+.1f}% ({ov['fixed_overhead_s']:+.1f} s: Kedro session, config, registry, "
              f"MLflow run, weights artifact)")
        gpu = None
        if args.gpu:
            gpu = bench_gpu()
            print(f"\nGPU {gpu['gpu']}: STDiT2-XL/2 zero2 bf16 240x426x64, batch {gpu['batch']}: "
                  f"{gpu['step_s']:.2f} s/step, peak {gpu['peak_mem_gib']:.1f} GiB, MFU {gpu['mfu_pct']:.1f}%")
        best = max(rows, key=lambda r: r["tokens_per_s"])
        summary = (f"SUMMARY training: tiny CPU {best['bucket']} {best['samples_per_s']:.2f} samples/s "
                   f"{best['tokens_per_s']:.0f} tokens/s; Kedro+MLflow overhead per step "
                   f"{ov['per_step_overhead_pct']:+.1f}%, whole {ov['steps']}-step stage {ov['total_overhead_pct']:+.1f}%")
        if gpu:
            summary += f"; GPU XL/2 {gpu['step_s']:.2f} s/step MFU {gpu['mfu_pct']:.1f}%"
        else:
            summary += "; GPU path not run (no CUDA)"
        print(summary)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
