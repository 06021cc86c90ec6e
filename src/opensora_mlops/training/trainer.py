"""The training loop of one stage: Booster, diffusion loss (the configured scheduler), masks, EMA, clipping,
checkpoints, resume.

No orchestration here: metrics and events go to a callback that the caller (a Kedro node, a test, the
command line) supplies; every event is also appended to ``<run_dir>/events.jsonl`` so a parent process
can follow a multi-process run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from opensora_mlops.config import ConfigError, check_keys, strict_dataclass
from opensora_mlops.training import booster as boost
from opensora_mlops.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_weights_into,
    save_checkpoint,
    save_weights,
)
from opensora_mlops.training.ema import EMA, unwrap_module
from opensora_mlops.training.lr_schedule import LR_SCHEDULES, lr_at

logger = logging.getLogger(__name__)

EventCallback = Callable[[str, dict[str, Any]], None]
EVENTS_FILE = "events.jsonl"
FINAL_DIR = "final"

SAMPLE_KEYS = ("prompt", "num_frames", "height", "width", "fps", "steps", "cfg_scale", "seed")
DATA_KEYS = ("source", "cache_dir", "bucket_table", "batch_scale", "shuffle", "vae", "text_encoder",
             "video_root", "frame_interval", "image_views", "image_batch_size")


@dataclass
class TrainConfig:
    """One training stage. Unknown keys are errors (see :func:`load_train_config`)."""

    stage: str
    run_dir: str
    model: dict[str, Any]
    data: dict[str, Any]
    max_steps: int
    lr: float
    plugin: str = "torch_ddp"
    dtype: str = "fp32"
    optimizer: str = "auto"
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant (Open-Sora 1.1) | cosine: decay to lr_final x lr at max_steps
    lr_final: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float | None = 0.9999
    ema_warmup: bool = True  # decay min(ema_decay, (1 + n) / (10 + n)) at update n: early weights fade fast
    grad_checkpoint: bool = False
    mask_ratios: dict[str, float] | None = None
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "iddpm", "prediction": "epsilon"})
    seed: int = 42
    ckpt_every: int = 0
    keep_last: int = 2
    log_every: int = 1
    sample_every: int = 0
    sample: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    world_size: int = 1
    find_unused_parameters: bool = False
    data_version: str | None = None  # content hash of the stage's input table (part of the fingerprint)

    def validate(self) -> None:
        boost.check_plugin(self.plugin, self.dtype, self.optimizer)
        if not isinstance(self.model, Mapping) or "name" not in self.model:
            raise ConfigError(f"{self.stage}: model must be a mapping with 'name' (e.g. STDiT2-tiny), got {self.model!r}")
        check_keys(self.data, DATA_KEYS, f"{self.stage}.data")
        check_keys(self.sample, SAMPLE_KEYS, f"{self.stage}.sample")
        if self.data.get("source", "cache") not in ("cache", "online"):
            raise ConfigError(f"{self.stage}.data.source must be 'cache' or 'online', got {self.data.get('source')!r}")
        for name in ("max_steps", "world_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{self.stage}.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("ckpt_every", "sample_every", "warmup_steps", "keep_last"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{self.stage}.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"{self.stage}.lr must be > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"{self.stage}.lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0.0 <= float(self.lr_final) <= 1.0:
            raise ConfigError(f"{self.stage}.lr_final is a fraction of lr in [0, 1], got {self.lr_final}")
        if self.ema_decay is not None and not 0.0 <= float(self.ema_decay) <= 1.0:
            raise ConfigError(f"{self.stage}.ema_decay must be in [0, 1] or null, got {self.ema_decay}")
        from opensora_mlops.diffusion import build_scheduler

        build_scheduler(self.scheduler)  # an unknown type or key is an error here, before any work
        if self.init_from is not None and not Path(self.init_from).exists():
            raise ConfigError(f"{self.stage}.init_from: no checkpoint at {self.init_from}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))


# keys that may change between a kill and the resumed run without invalidating the checkpoints
RESUMABLE_KEYS = ("max_steps", "ckpt_every", "keep_last", "log_every", "sample_every", "sample", "run_dir",
                  "world_size", "find_unused_parameters")


def weights_digest(directory: Path) -> str:
    """Content hash of a weights directory (rewriting identical weights does not change it)."""
    digest = hashlib.sha256()
    for f in sorted(directory.iterdir()):
        if f.is_file():
            digest.update(f.name.encode())
            with open(f, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def config_fingerprint(cfg: TrainConfig) -> str:
    """Hash of everything that defines the optimisation trajectory (config, data version, init weights).

    A checkpoint whose fingerprint differs belongs to another configuration: resuming from it would
    silently mix two runs, so the trainer starts over instead.
    """
    values = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_KEYS}
    if cfg.init_from:
        values["init_weights"] = weights_digest(resolve_init_dir(cfg.init_from))
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_train_config(values: Mapping[str, Any], where: str = "training stage") -> TrainConfig:
    values = dict(values)
    if "adam_betas" in values:
        values["adam_betas"] = tuple(values["adam_betas"])
    cfg = strict_dataclass(TrainConfig, values, where)
    cfg.validate()
    return cfg


# ---------------------------------------------------------------- building blocks


def build_stage_model(cfg: TrainConfig) -> torch.nn.Module:
    from opensora_mlops.models.stdit2 import build_model

    overrides = {k: v for k, v in cfg.model.items() if k != "name"}
    if "grad_checkpointing" in overrides:
        raise ConfigError(f"{cfg.stage}: set gradient checkpointing with the stage key grad_checkpoint, not model")
    return build_model(cfg.model["name"], grad_checkpointing=bool(cfg.grad_checkpoint), **overrides)


def resolve_init_dir(path: str | Path) -> Path:
    """A weights directory from a stage output, a checkpoint or a ``save_pretrained`` folder.

    Accepts ``<run_dir>`` (uses ``final/ema`` or the latest checkpoint), ``<checkpoint>`` (uses its
    ``ema`` or ``model``) or a plain ``save_pretrained`` directory.
    """
    path = Path(path)
    candidates = [path / FINAL_DIR / "ema", path / FINAL_DIR / "model", path / "ema", path / "model", path]
    latest = latest_checkpoint(path / "checkpoints") if (path / "checkpoints").exists() else None
    if latest is not None:
        candidates[2:2] = [latest / "ema", latest / "model"]
    for c in candidates:
        if c.is_dir() and any(c.glob("*.safetensors")):
            return c
    raise ConfigError(f"no weights (*.safetensors) found under {path}")


def ema_decay_at(update: int, decay: float, warmup: bool) -> float:
    """The EMA decay for the ``update``-th update (0-based): with warm-up, min(decay, (1 + n) / (10 + n)).

    A fixed 0.999 would keep the random initial weights in the average for thousands of steps; a short
    run would then export mostly its initialisation. The warm-up lets the average follow early training
    and then settle on ``decay`` (0.999 averages about the last 1000 steps).
    """
    if not warmup:
        return decay
    return min(decay, (1.0 + update) / (10.0 + update))


def tokens_per_sample(x: torch.Tensor, patch_size: tuple[int, int, int]) -> int:
    t, h, w = x.shape[-3:]
    pt, ph, pw = patch_size
    return math.ceil(t / pt) * math.ceil(h / ph) * math.ceil(w / pw)


class EventLog:
    """Appends events to a JSON-lines file (rank 0) and forwards them to a callback."""

    def __init__(self, path: Path, callback: EventCallback | None, enabled: bool) -> None:
        self.path = path
        self.callback = callback
        self.enabled = enabled

    def __call__(self, kind: str, payload: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"event": kind, "time": time.time(), **payload}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, default=float) + "\n")
        if self.callback is not None:
            self.callback(kind, payload)


def _final_is_current(final: Path, step: int, fingerprint: str) -> bool:
    state_file = final / "train_state.json"
    if not state_file.exists():
        return False
    state = json.loads(state_file.read_text())
    return int(state.get("steps", -1)) == step and state.get("fingerprint") == fingerprint


# ---------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    stage: str
    run_dir: str
    final_dir: str
    steps: int
    resumed_from: int | None
    last_loss: float
    samples_seen: int
    wall_seconds: float


def train_stage(
    cfg: TrainConfig,
    batches: Any,
    callback: EventCallback | None = None,
    sample_fn: Callable[[torch.nn.Module, int], Path | None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``cfg.max_steps`` optimizer steps (resuming from ``run_dir/checkpoints`` if present).

    ``batches`` iterates dicts with ``x`` latents [B, C, T, H, W], ``y`` [B, L, Cy], ``mask`` [B, L]
    and the micro-conditions, and has ``state_dict``/``load_state_dict`` (sampler position).
    ``sample_fn(ema_model, step)`` may write a sample (e.g. a GIF) and return its path.
    """
    from opensora_mlops.diffusion import build_scheduler, save_scheduler
    from opensora_mlops.training.mask_generator import MaskGenerator

    cfg.validate()
    start_time = time.time()
    run_dir = Path(cfg.run_dir)
    ckpt_root = run_dir / "checkpoints"
    ctx = boost.init_distributed(seed=cfg.seed)
    try:
        if ctx.world_size != cfg.world_size:
            raise ConfigError(
                f"{cfg.stage}: world_size is {cfg.world_size} in the config but the process group has {ctx.world_size}"
            )
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        log = EventLog(run_dir / EVENTS_FILE, callback, enabled=ctx.is_main)

        # every rank starts from identical weights (same seed), then data/noise differ per rank
        torch.manual_seed(cfg.seed)
        model = build_stage_model(cfg)
        if cfg.init_from:
            load_weights_into(model, resolve_init_dir(cfg.init_from), what=f"{cfg.stage} init")
        ema = EMA(model, decay=cfg.ema_decay) if cfg.ema_decay is not None else None
        model.train()
        optimizer = boost.build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.adam_eps,
                                          tuple(cfg.adam_betas))
        plugin = boost.build_plugin(cfg.plugin, cfg.grad_clip, cfg.find_unused_parameters)
        booster = boost.make_booster(plugin)
        model, optimizer, *_ = booster.boost(model, optimizer)
        sharded = cfg.plugin == "zero2"
        base = unwrap_module(model)
        patch = tuple(getattr(getattr(base, "config", None), "patch_size", (1, 2, 2)))

        diffusion = build_scheduler(cfg.scheduler)
        masks = MaskGenerator(cfg.mask_ratios) if cfg.mask_ratios else None

        step = 0
        resumed_from = None
        fingerprint = config_fingerprint(cfg)
        latest = latest_checkpoint(ckpt_root)
        if latest is not None:
            from opensora_mlops.training.checkpoint import read_state

            old = read_state(latest)["extra"].get("fingerprint")
            if old != fingerprint:
                message = (f"{cfg.stage}: checkpoints in {ckpt_root} were written with another configuration "
                           f"(fingerprint {old} != {fingerprint}); starting this stage over")
                logger.warning(message)
                log("restart", {"reason": message})
                if ctx.world_size > 1:
                    torch.distributed.barrier()  # every rank has read the old state before it goes
                if ctx.is_main:
                    shutil.rmtree(ckpt_root)
                if ctx.world_size > 1:
                    torch.distributed.barrier()
                latest = None
        if latest is not None:
            state = load_checkpoint(latest, model, ema, optimizer, booster=booster, sharded_optimizer=sharded)
            step = int(state["step"])
            batches.load_state_dict(state["sampler"])
            resumed_from = step
            samples_seen = int(state["extra"].get("samples_seen", 0))
            log("resume", {"step": step, "checkpoint": str(latest)})
        else:
            samples_seen = 0
            # per-rank streams for noise/timesteps/masks after the shared init
            torch.manual_seed(cfg.seed * 1000 + ctx.rank + 1)
            np.random.seed((cfg.seed * 1000 + ctx.rank + 1) % 2**32)
        log("start", {"step": step, "config": cfg.to_dict(), "world_size": ctx.world_size})

        last_loss = float("nan")
        data_iter = iter(batches)
        bar = tqdm(total=cfg.max_steps, initial=step, desc=f"{cfg.stage}", unit="step",
                   disable=not (progress and ctx.is_main), dynamic_ncols=True)
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            batch = next(data_iter)
            x = batch["x"].to(ctx.device)
            bsz = x.shape[0]
            model_kwargs = {
                "y": batch["y"].to(ctx.device),
                "mask": batch["mask"].to(ctx.device),
                **{k: batch[k].to(ctx.device) for k in ("fps", "height", "width", "ar", "num_frames")},
            }
            if cfg.plugin == "zero2":
                x = x.to(torch.bfloat16)
                model_kwargs["y"] = model_kwargs["y"].to(torch.bfloat16)
            x_mask = masks.get_masks(x).to(ctx.device) if masks is not None else None
            t = diffusion.sample_timesteps(bsz, device=ctx.device)
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.lr_schedule, float(cfg.lr_final))
            for group in optimizer.param_groups:
                group["lr"] = lr
            with boost.autocast(cfg.plugin, cfg.dtype, ctx.device):
                losses = diffusion.training_losses(model, x, t, model_kwargs, x_mask=x_mask)
            loss = losses["loss"].float().mean()
            booster.backward(loss, optimizer)
            if sharded:
                grad_norm = float(getattr(optimizer, "_grad_norm", float("nan")) or float("nan"))
            else:
                params = [p for p in model.parameters() if p.grad is not None]
                clip = cfg.grad_clip if cfg.grad_clip and cfg.grad_clip > 0 else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            optimizer.step()
            optimizer.zero_grad()
            if ema is not None:
                ema.update(model, decay=ema_decay_at(step, float(cfg.ema_decay), cfg.ema_warmup))
            step += 1
            loss_value = loss.detach()
            if ctx.world_size > 1:
                torch.distributed.all_reduce(loss_value)
                loss_value /= ctx.world_size
            last_loss = float(loss_value)
            global_batch = bsz * ctx.world_size
            samples_seen += global_batch
            dt = time.perf_counter() - t0
            if not math.isfinite(last_loss):
                raise FloatingPointError(f"{cfg.stage}: loss became {last_loss} at step {step}")
            if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.max_steps):
                log("metrics", {
                    "step": step,
                    "loss": last_loss,
                    "mse": float(losses["mse"].detach().float().mean()),
                    "x0_mse": float(losses["x0_mse"].detach().float().mean()),
                    "grad_norm": grad_norm,
                    "lr": lr,
                    "samples_per_s": global_batch / dt,
                    "tokens_per_s": global_batch * tokens_per_sample(x, patch) / dt,
                    "step_time_s": dt,
                    "batch_size": bsz,
                })  # fmt: skip
            bar.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
            bar.update(1)
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.max_steps:
                path = save_checkpoint(ckpt_root, step, model, ema, optimizer, batches.state_dict(),
                                       {"samples_seen": samples_seen, "stage": cfg.stage, "fingerprint": fingerprint}, booster=booster,
                                       sharded_optimizer=sharded, keep_last=cfg.keep_last, rank=ctx.rank,
                                       world_size=ctx.world_size)
                log("checkpoint", {"step": step, "path": str(path)})
            if sample_fn is not None and cfg.sample_every and step % cfg.sample_every == 0 and ctx.is_main:
                sample_path = sample_fn(ema.shadow if ema is not None else unwrap_module(model), step)
                if sample_path is not None:
                    log("sample", {"step": step, "path": str(sample_path)})
        bar.close()

        final = run_dir / FINAL_DIR
        if resumed_from == cfg.max_steps and _final_is_current(final, step, fingerprint):
            # nothing was trained: leave the final weights (and their hash, which the next stage's
            # fingerprint includes) untouched
            state = json.loads((final / "train_state.json").read_text())
            result = TrainResult(stage=cfg.stage, run_dir=str(run_dir), final_dir=str(final), steps=step,
                                 resumed_from=resumed_from, last_loss=float(state["last_loss"]),
                                 samples_seen=samples_seen, wall_seconds=time.time() - start_time)
            log("end", dataclasses.asdict(result))
            return result
        path = save_checkpoint(ckpt_root, step, model, ema, optimizer, batches.state_dict(),
                               {"samples_seen": samples_seen, "stage": cfg.stage, "fingerprint": fingerprint}, booster=booster,
                               sharded_optimizer=sharded, keep_last=cfg.keep_last, rank=ctx.rank,
                               world_size=ctx.world_size)
        if ctx.is_main:
            tmp = run_dir / f".tmp-{FINAL_DIR}"
            if tmp.exists():
                shutil.rmtree(tmp)
            save_weights(model, tmp / "model")
            save_scheduler(diffusion, tmp / "model")
            if ema is not None:
                save_weights(ema.shadow, tmp / "ema")
                save_scheduler(diffusion, tmp / "ema")
            (tmp / "train_state.json").write_text(json.dumps(
                {"stage": cfg.stage, "steps": step, "samples_seen": samples_seen, "last_loss": last_loss,
                 "resumed_from": resumed_from, "checkpoint": str(path), "fingerprint": fingerprint,
                 "wall_seconds": time.time() - start_time}, indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        result = TrainResult(stage=cfg.stage, run_dir=str(run_dir), final_dir=str(final), steps=step,
                             resumed_from=resumed_from, last_loss=last_loss, samples_seen=samples_seen,
                             wall_seconds=time.time() - start_time)
        log("end", dataclasses.asdict(result))
        return result
    finally:
        boost.shutdown_distributed(ctx)
