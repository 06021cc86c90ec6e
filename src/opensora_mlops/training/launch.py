"""Run one training stage: in this process, or as N processes under torchrun.

``python -m opensora_mlops.training.launch --config stage.json`` is the entry point every process
runs (torchrun / ``colossalai run`` set RANK, WORLD_SIZE, MASTER_ADDR/PORT). :func:`launch` is what the
Kedro node calls: for ``world_size`` 1 it trains in-process; otherwise it starts
``python -m torch.distributed.run --nproc_per_node N -m opensora_mlops.training.launch`` and forwards
the run's ``events.jsonl`` to the callback while it runs. Running the same command again after a kill
resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from opensora_mlops.config import ConfigError
from opensora_mlops.training.trainer import (
    EVENTS_FILE,
    FINAL_DIR,
    EventCallback,
    TrainConfig,
    TrainResult,
    load_train_config,
    train_stage,
)


class OnlineBatches:
    """Batches decoded from video and encoded by the VAE / text encoder on the fly (the cluster path)."""

    def __init__(self, table: pd.DataFrame, cfg: TrainConfig, rank: int, world_size: int) -> None:
        from opensora_mlops.data.dataset import VideoBucketDataset, collate_bucket_batch
        from opensora_mlops.data.sampler import VariableVideoBatchSampler
        from opensora_mlops.models.text_encoder import build_text_encoder
        from opensora_mlops.training.components import build_vae
        from opensora_mlops.training.latents import bucket_config_from_table, check_bucket_table

        data = cfg.data
        kept = check_bucket_table(table)
        self.sampler = VariableVideoBatchSampler(
            kept, bucket_config_from_table(kept, float(data.get("batch_scale", 1.0))), num_replicas=world_size,
            rank=rank, shuffle=bool(data.get("shuffle", True)), seed=cfg.seed, reassign_each_epoch=False,
        )  # fmt: skip
        self.dataset = VideoBucketDataset(kept, frame_interval=int(data.get("frame_interval", 1)),
                                          root=data.get("video_root"), seed=cfg.seed, rank=rank)
        self.collate = collate_bucket_batch
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else "cpu"
        self.vae = build_vae(data["vae"]).to(device)
        self.text_encoder = build_text_encoder({**data["text_encoder"]})
        self.device = device

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            for keys in self.sampler:
                batch = self.collate([self.dataset[k] for k in keys])
                with torch.no_grad():
                    x = self.vae.encode(batch["video"].to(self.device))
                    y, mask = self.text_encoder.encode(batch["text"])
                yield {"x": x, "y": y, "mask": mask,
                       **{k: batch[k] for k in ("fps", "height", "width", "ar", "num_frames")}}
            self.sampler.set_epoch(self.sampler.epoch + 1)
            self.dataset.set_epoch(self.sampler.epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sampler.load_state_dict(dict(state))


def build_batches(cfg: TrainConfig, rank: int = 0, world_size: int = 1) -> Any:
    from opensora_mlops.data.sampler import VariableVideoBatchSampler
    from opensora_mlops.training.latents import CachedBatches, LatentCache, bucket_config_from_table

    data = cfg.data
    source = data.get("source", "cache")
    if source == "cache":
        if not data.get("cache_dir"):
            raise ConfigError(f"{cfg.stage}.data.cache_dir is required for source 'cache'")
        cache = LatentCache(data["cache_dir"], image_views=int(data.get("image_views") or 0),
                            image_batch_size=data.get("image_batch_size"))
        sampler = VariableVideoBatchSampler(
            cache.index, bucket_config_from_table(cache.index, float(data.get("batch_scale", 1.0))),
            num_replicas=world_size, rank=rank, shuffle=bool(data.get("shuffle", True)), seed=cfg.seed,
            reassign_each_epoch=False,
        )  # fmt: skip
        return CachedBatches(cache, sampler)
    for key in ("bucket_table", "vae", "text_encoder"):
        if not data.get(key):
            raise ConfigError(f"{cfg.stage}.data.{key} is required for source 'online'")
    if data.get("image_views"):
        raise ConfigError(f"{cfg.stage}: image_views reads frames of cached clips; it needs data_source: cache")
    return OnlineBatches(pd.read_parquet(data["bucket_table"]), cfg, rank, world_size)


def build_sample_fn(cfg: TrainConfig) -> Any:
    if not cfg.sample_every:
        return None
    from opensora_mlops.training.validation import GifSampler

    for key in ("vae", "text_encoder"):
        if not cfg.data.get(key):
            raise ConfigError(f"{cfg.stage}: sample_every > 0 needs data.{key} to decode sample videos")
    return GifSampler(Path(cfg.run_dir) / "samples", cfg.data["vae"], cfg.data["text_encoder"], cfg.sample,
                      scheduler=cfg.scheduler)


def run_in_process(cfg: TrainConfig, callback: EventCallback | None = None, progress: bool = True) -> TrainResult:
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    batches = build_batches(cfg, rank, world)
    return train_stage(cfg, batches, callback=callback, sample_fn=build_sample_fn(cfg), progress=progress)


def _follow(path: Path, offset: int, callback: EventCallback | None) -> int:
    """Forward complete new lines of the events file to ``callback``; returns the new offset."""
    if not path.exists():
        return offset
    with open(path) as handle:
        handle.seek(offset)
        while True:
            line = handle.readline()
            if not line or not line.endswith("\n"):
                break
            offset += len(line.encode())
            record = json.loads(line)
            kind = record.pop("event")
            record.pop("time", None)
            if callback is not None:
                callback(kind, record)
    return offset


def launch(
    cfg_values: Mapping[str, Any],
    callback: EventCallback | None = None,
    progress: bool = True,
    launcher: str = "torchrun",
    extra_env: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train a stage from a config dict: in-process (world_size 1) or under torchrun (world_size > 1)."""
    cfg = load_train_config(cfg_values, where=f"training stage {cfg_values.get('stage', '?')}")
    if cfg.world_size == 1:
        return run_in_process(cfg, callback, progress)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "launch_config.json"
    config_path.write_text(json.dumps(cfg.to_dict(), indent=2))
    from opensora_mlops.training.booster import free_port

    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(cfg.world_size),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "opensora_mlops.training.launch", "--config", str(config_path)]
    elif launcher == "colossalai":
        cmd = ["colossalai", "run", "--nproc_per_node", str(cfg.world_size), "--master_port", str(free_port()),
               "-m", "opensora_mlops.training.launch", "--config", str(config_path)]
    else:
        raise ConfigError(f"launcher must be 'torchrun' or 'colossalai', got {launcher!r}")
    events = run_dir / EVENTS_FILE
    offset = events.stat().st_size if events.exists() else 0
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **dict(extra_env or {})}
    if not progress:
        env["OPENSORA_NO_PROGRESS"] = "1"
    proc = subprocess.Popen(cmd, env=env)
    try:
        while proc.poll() is None:
            offset = _follow(events, offset, callback)
            time.sleep(0.5)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    _follow(events, offset, callback)
    if proc.returncode != 0:
        raise RuntimeError(f"{cfg.stage}: training processes exited with code {proc.returncode} (command: {cmd})")
    state = json.loads((run_dir / FINAL_DIR / "train_state.json").read_text())
    return TrainResult(stage=cfg.stage, run_dir=str(run_dir), final_dir=str(run_dir / FINAL_DIR),
                       steps=int(state["steps"]), resumed_from=state["resumed_from"],
                       last_loss=float(state["last_loss"]), samples_seen=int(state["samples_seen"]),
                       wall_seconds=float(state.get("wall_seconds", 0.0)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="train one stage (run under torchrun for several processes)")
    parser.add_argument("--config", required=True, help="stage config JSON (TrainConfig fields)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_train_config(json.loads(Path(args.config).read_text()), where=args.config)
    run_in_process(cfg, progress=os.environ.get("OPENSORA_NO_PROGRESS") != "1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
