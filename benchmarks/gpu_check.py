"""The GPU check in one call: STDiT2-XL/2 speed, MFU and memory, ColossalAI zero2, and a tiny training.

Run through ``benchmarks/gpu_check.sh`` (which sets up the import path and carried packages; see its
header), or directly:

    python benchmarks/gpu_check.py --out gpu_check.jsonl          # on a CUDA GPU, < 8 min
    python benchmarks/gpu_check.py --dry-run --out dry.jsonl      # every case at a tiny size on CPU, < 1 min
    python benchmarks/gpu_check.py --list                         # the cases, in run order

Cases, in run order (each writes one JSON line, also echoed to stdout):

* ``tiny_train``: STDiT2-tiny trained 20 steps (AdamW, IDDPM loss, one fixed batch). The loss on a
  fixed evaluation set (fixed timesteps and noise) must fall, or the script exits with status 1.
* ``train_eager[_ckpt]_{F}f``: one training step of STDiT2-XL/2 in bf16 at 240x426 pixels and F frames
  (F = 16, 64; latent [B, 4, F, 30, 53]: Open-Sora 1.1's image VAE, 8x spatially, 1x in time):
  IDDPM loss with one conditioning frame, backward, fused AdamW step; without / with gradient
  checkpointing.
* ``sample_cfg_eager_{F}f``: one sampling step with classifier-free guidance (the doubled batch
  ``[x; x]`` with ``[caption; null caption]``, guidance, the IDDPM posterior step).
* ``zero2_hybridadam_{F}f``: the trainer's GPU path: ColossalAI ``LowLevelZeroPlugin(stage=2, bf16)`` and
  ``HybridAdam`` built by ``opensora_mlops.training.booster`` on one GPU (a 1-process NCCL group), one
  warm-up and a few timed training steps of XL/2 in fp32 master weights.
* ``train_compiled[_ckpt]_{F}f``, ``sample_cfg_compiled_{F}f``: the same steps with ``torch.compile``
  (``--compile-scope blocks``: each ST-DiT-2 block compiled, one compilation shared by all 28 of them;
  ``model``: the whole model).

Figures: ``s_per_step`` is the median of the timed steps (``step_s`` lists them; ``first_step_s``
includes compilation). ``flops_per_step`` is counted with ``torch.utils.flop_counter.FlopCounterMode``
on one eager step without checkpointing (model FLOPs: recomputation is not counted), so compiled and
checkpointed cases use their eager twin's count. ``mfu`` = flops_per_step / s_per_step / peak, with the
peak ``--peak-tflops`` (989 = H100/H200 dense bf16), on CUDA only. ``peak_memory_gib`` is
``torch.cuda.max_memory_allocated`` during the case.

Every case runs inside try/except: a failure is recorded in its line (``status: "error"``, ``error``,
``traceback``) and the next case runs. A case that would start after ``--budget-s`` seconds is recorded
as skipped. Exit status: 1 when the tiny training failed or its loss did not fall, else 2 when some other
case failed, else 0 (skipped cases are not failures).

``--dry-run`` builds every case at a tiny size on CPU in fp32: XL/2's layout at depth 2 and width 48,
48x80 pixels, 2 and 4 frames, ``torch.compile`` with the ``eager`` backend (Dynamo's graph capture
without code generation); zero2 and HybridAdam need CUDA: where a GPU is present they run at the tiny
size on it, otherwise the case is skipped with that reason.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from opensora_mlops.diffusion import IDDPM
from opensora_mlops.models.stdit2 import STDiT2, build_model

VAE_SPATIAL_FACTOR = 8  # 1.1's image VAE (SD-VAE): 8x spatially, no temporal compression
MODEL_NAME = "STDiT2-XL/2"
# the dry run keeps XL/2's layout (patch, channels, every branch) at a size a CPU steps in milliseconds
DRY_MODEL = dict(depth=2, hidden_size=48, num_heads=2, caption_channels=32, model_max_length=8)
TINY_NAME = "STDiT2-tiny"
EXIT_TINY_FAILED, EXIT_CASE_FAILED = 1, 2


@dataclass
class Settings:
    dry_run: bool
    device: torch.device
    dtype: torch.dtype
    model_overrides: dict[str, Any]
    height: int
    width: int
    frames: list[int]
    train_batch: dict[int, int]
    sample_batch: int
    warmup: int
    repeats: int
    compile_backend: str
    compile_scope: str
    peak_tflops: float
    budget_s: float
    zero2_frames: int
    zero2_batch: int
    zero2_grad_checkpointing: bool
    zero2_steps: int
    tiny_steps: int
    tiny_latent: tuple[int, int, int]
    tiny_batch: int
    cfg_scale: float = 7.0
    seed: int = 0

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // VAE_SPATIAL_FACTOR, self.width // VAE_SPATIAL_FACTOR


@dataclass
class Case:
    name: str
    kind: str
    run: Callable[[dict[str, Any]], None]
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> tuple[float, list[float]]:
    """(seconds of the first call, seconds of each timed call after ``warmup`` calls in total)."""
    first = None
    for _ in range(warmup):
        start = time.perf_counter()
        step()
        _sync(device)
        first = time.perf_counter() - start if first is None else first
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return (first if first is not None else times[0]), times


def _register_cpu_attention_flops() -> None:
    """FlopCounterMode has formulas for the CUDA attention kernels only; give the CPU flash kernel the
    same ones, so that a dry run counts attention too."""
    from torch.utils import flop_counter

    aten = torch.ops.aten
    pairs = [
        ("_scaled_dot_product_flash_attention_for_cpu", flop_counter.sdpa_flop_count, False),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", flop_counter.sdpa_backward_flop_count, True),
    ]
    for op_name, formula, backward in pairs:
        op = getattr(aten, op_name, None)
        if op is None or op in flop_counter.flop_registry:
            continue

        def count(*args, _formula=formula, _backward=backward, out_shape=None, **kwargs) -> int:
            if _backward:  # (grad_out, query, key, value, ...)
                return _formula(args[0], args[1], args[2], args[3])
            return _formula(args[0], args[1], args[2])  # (query, key, value, ...)

        flop_counter.register_flop_formula(op)(count)


def count_flops(step: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def dynamo_counts() -> tuple[int, int]:
    """(graph breaks, graphs compiled) so far in this process."""
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values()), int(counters["stats"].get("unique_graphs", 0))


# ---------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------
def make_batch(model: STDiT2, batch: int, frames: int, lat_h: int, lat_w: int, device, dtype, seed: int) -> dict:
    """Latents, captions (60% real tokens), micro-conditions and a frame mask with one conditioning
    frame (1.1's training always passes one), generated on the CPU for the same values everywhere."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    length = cfg.model_max_length
    mask = torch.zeros(batch, length, dtype=torch.long)
    mask[:, : max(1, length * 3 // 5)] = 1
    x_mask = torch.ones(batch, frames, dtype=torch.bool)
    x_mask[0, 0] = False
    conditions = dict(
        height=torch.full((batch,), float(lat_h * VAE_SPATIAL_FACTOR)),
        width=torch.full((batch,), float(lat_w * VAE_SPATIAL_FACTOR)),
        ar=torch.full((batch,), lat_h / lat_w),
        fps=torch.full((batch,), 24.0),
        num_frames=torch.full((batch,), float(frames)),
    )
    return dict(
        x0=torch.randn(batch, cfg.in_channels, frames, lat_h, lat_w, generator=g).to(device, dtype),
        noise=torch.randn(batch, cfg.in_channels, frames, lat_h, lat_w, generator=g).to(device, dtype),
        t=torch.randint(0, 1000, (batch,), generator=g).to(device),
        model_kwargs=dict(
            y=torch.randn(batch, length, cfg.caption_channels, generator=g).to(device, dtype),
            mask=mask.to(device),
            **{k: v.to(device) for k, v in conditions.items()},
        ),
        x_mask=x_mask.to(device),
    )


def train_step_fn(model: Callable, optimizer, diffusion: IDDPM, data: dict, backward=None) -> Callable[[], float]:
    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        losses = diffusion.training_losses(model, data["x0"], data["t"], data["model_kwargs"],
                                           x_mask=data["x_mask"], noise=data["noise"])  # fmt: skip
        loss = losses["loss"].float().mean()
        if backward is None:
            loss.backward()
        else:
            backward(loss, optimizer)
        optimizer.step()
        return loss.detach()

    return step


def sample_step_fn(model: Callable, diffusion: IDDPM, null_text: torch.Tensor, data: dict) -> Callable[[], None]:
    kwargs = {k: v for k, v in data["model_kwargs"].items() if k not in ("y", "mask")}
    step_index = torch.full_like(data["t"], diffusion.num_sampling_steps // 2)

    @torch.no_grad()
    def step() -> torch.Tensor:
        x = data["noise"]
        out = diffusion.guided_output(model, x, diffusion.model_timesteps(step_index), data["model_kwargs"]["y"],
                                      data["model_kwargs"]["mask"], null_text, kwargs)  # fmt: skip
        posterior = diffusion.diffusion.p_mean_variance(out, x, step_index)
        return posterior["mean"] + torch.exp(0.5 * posterior["log_variance"]) * data["x0"].float()

    return step


# ---------------------------------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------------------------------
class GpuCheck:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.flops: dict[tuple, int] = {}
        self._model: STDiT2 | None = None
        self._compiled_blocks = False

    # --- shared XL/2 model (bf16 on GPU) ---------------------------------------------------------
    def model(self) -> STDiT2:
        if self._model is None:
            torch.manual_seed(self.s.seed)
            with torch.device(self.s.device):  # initialise on the device: XL/2 on a CPU takes long
                model = build_model(MODEL_NAME, class_dropout_prob=0.0, **self.s.model_overrides)
            self._model = model.to(dtype=self.s.dtype).train()
        return self._model

    def runner(self, compiled: bool) -> Callable:
        model = self.model()
        if not compiled:
            return model
        if self.s.compile_scope == "model":
            return torch.compile(model, backend=self.s.compile_backend, dynamic=False)
        if not self._compiled_blocks:
            for block in model.blocks:  # in place: checkpointing then wraps the compiled block
                block.compile(backend=self.s.compile_backend, dynamic=False)
            self._compiled_blocks = True
        return model

    def optimizer(self, model: STDiT2):
        fused = self.s.device.type == "cuda"
        return torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, fused=fused)

    def diffusion(self, sampling: bool = False) -> IDDPM:
        """1.1's IDDPM: training on the full 1000-step chain, sampling on 100 respaced steps with CFG."""
        if sampling:
            return IDDPM(num_timesteps=1000, timestep_respacing="100", cfg_scale=self.s.cfg_scale)
        return IDDPM(num_timesteps=1000)

    def describe(self, record: dict, frames: int, batch: int) -> None:
        lat_h, lat_w = self.s.latent_hw
        model = self.model()
        record.update(model=MODEL_NAME, params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                      frames=frames, height=self.s.height, width=self.s.width, batch=batch,
                      latent=[batch, model.config.in_channels, frames, lat_h, lat_w])  # fmt: skip

    def finish(self, record: dict, first: float, times: list[float], flops: int | None) -> None:
        s_per_step = statistics.median(times)
        record.update(first_step_s=round(first, 4), step_s=[round(t, 4) for t in times], s_per_step=round(s_per_step, 5),
                      flops_per_step=flops)  # fmt: skip
        if flops:
            record["tflops_per_s"] = float(f"{flops / s_per_step / 1e12:.4g}")
            if self.s.device.type == "cuda":
                record["mfu"] = round(flops / s_per_step / (self.s.peak_tflops * 1e12), 4)

    # --- training and sampling steps of XL/2 ---------------------------------------------------------
    def train_case(self, frames: int, compiled: bool, checkpointing: bool) -> Callable[[dict], None]:
        def run(record: dict) -> None:
            batch = self.s.train_batch[frames]
            model = self.model()
            self.describe(record, frames, batch)
            record.update(grad_checkpointing=checkpointing, optimizer="torch.optim.AdamW on the bf16 weights"
                          if self.s.dtype == torch.bfloat16 else "torch.optim.AdamW")  # fmt: skip
            data = make_batch(model, batch, frames, *self.s.latent_hw, self.s.device, self.s.dtype, self.s.seed)
            optimizer = self.optimizer(model)
            diffusion = self.diffusion()
            key = ("train", frames, batch)
            try:
                if key not in self.flops and not compiled:
                    model.config.grad_checkpointing = False
                    self.flops[key] = count_flops(train_step_fn(model, optimizer, diffusion, data))
                model.config.grad_checkpointing = checkpointing
                step = train_step_fn(self.runner(compiled), optimizer, diffusion, data)
                first, times = timed_steps(step, self.s.device, self.s.warmup, self.s.repeats)
                record["loss"] = float(step())
            finally:
                model.config.grad_checkpointing = False
                model.zero_grad(set_to_none=True)
            self.finish(record, first, times, self.flops.get(key))

        return run

    def sample_case(self, frames: int, compiled: bool) -> Callable[[dict], None]:
        def run(record: dict) -> None:
            batch = self.s.sample_batch
            model = self.model()
            self.describe(record, frames, batch)
            record.update(cfg_scale=self.s.cfg_scale, network_batch=2 * batch)
            data = make_batch(model, batch, frames, *self.s.latent_hw, self.s.device, self.s.dtype, self.s.seed)
            diffusion = self.diffusion(sampling=True)
            null_text = model.null_text(batch)
            model.eval()
            key = ("sample", frames, batch)
            try:
                if key not in self.flops and not compiled:
                    self.flops[key] = count_flops(sample_step_fn(model, diffusion, null_text, data))
                step = sample_step_fn(self.runner(compiled), diffusion, null_text, data)
                first, times = timed_steps(step, self.s.device, self.s.warmup, self.s.repeats)
                record["finite"] = bool(torch.isfinite(step()).all())
            finally:
                model.train()
            self.finish(record, first, times, self.flops.get(key))

        return run

    # --- ColossalAI zero2 + HybridAdam -----------------------------------------------------------------
    def zero2_case(self) -> Callable[[dict], None]:
        def run(record: dict) -> None:
            from opensora_mlops.training import booster as boost

            frames, batch = self.s.zero2_frames, self.s.zero2_batch
            record.update(model=MODEL_NAME, frames=frames, height=self.s.height, width=self.s.width, batch=batch,
                          grad_checkpointing=self.s.zero2_grad_checkpointing,
                          plugin="LowLevelZeroPlugin(stage=2, precision=bf16)", optimizer="HybridAdam")  # fmt: skip
            if not torch.cuda.is_available():
                record.update(status="skipped", reason="CUDA is absent: LowLevelZeroPlugin and HybridAdam need a GPU")
                return
            self.release_model()  # room for fp32 master weights and optimizer state
            boost.check_plugin("zero2", "bf16", "hybrid_adam")
            ctx = boost.init_distributed(seed=self.s.seed)
            try:
                torch.manual_seed(self.s.seed)
                with torch.device(ctx.device):
                    model = build_model(MODEL_NAME, class_dropout_prob=0.0, **self.s.model_overrides,
                                        grad_checkpointing=self.s.zero2_grad_checkpointing)  # fmt: skip
                record["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
                lat_h, lat_w = self.s.latent_hw
                record["latent"] = [batch, model.config.in_channels, frames, lat_h, lat_w]
                data = make_batch(model, batch, frames, lat_h, lat_w, ctx.device, torch.bfloat16, self.s.seed)
                model.train()
                optimizer = boost.build_optimizer(model, "hybrid_adam", lr=2e-5, weight_decay=0.0, eps=1e-8,
                                                  betas=(0.9, 0.999))  # fmt: skip
                booster = boost.make_booster(boost.build_plugin("zero2", grad_clip=1.0))
                model, optimizer, *_ = booster.boost(model, optimizer)
                step = train_step_fn(model, optimizer, self.diffusion(), data, backward=booster.backward)
                first, times = timed_steps(step, ctx.device, 1, self.s.zero2_steps)
                losses = [float(step()) for _ in range(2)]
                record.update(losses=losses, finite=all(math.isfinite(v) for v in losses))
                flops = self.flops.get(("train", frames, batch))
                if flops is None:
                    record["flops_note"] = "no eager count for this size; not counted under ZeRO"
                self.finish(record, first, times, flops)
                del model, optimizer, booster
            finally:
                boost.shutdown_distributed(ctx)

        return run

    # --- tiny training: the loss must fall --------------------------------------------------------------
    def tiny_case(self) -> Callable[[dict], None]:
        def run(record: dict) -> None:
            device = self.s.device
            torch.manual_seed(self.s.seed)
            model = build_model(TINY_NAME, class_dropout_prob=0.0).to(device).train()
            frames, lat_h, lat_w = self.s.tiny_latent
            batch = self.s.tiny_batch
            data = make_batch(model, batch, frames, lat_h, lat_w, device, torch.float32, self.s.seed + 1)
            # smooth, learnable latents instead of white noise: a moving blob per sample
            grid = torch.linspace(-1, 1, lat_w, device=device)[None, :] + torch.linspace(-1, 1, lat_h, device=device)[:, None]
            phase = torch.arange(frames, device=device)[:, None, None] * 0.3
            data["x0"] = torch.stack([torch.sin(3 * grid + phase + c) for c in range(model.config.in_channels)])[None]
            data["x0"] = data["x0"].expand(batch, -1, -1, -1, -1).contiguous()
            diffusion = IDDPM(num_timesteps=1000)
            optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
            autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                        else contextlib.nullcontext())  # fmt: skip
            g = torch.Generator().manual_seed(self.s.seed + 2)
            eval_t = torch.linspace(0, 999, 8).long()
            eval_noise = torch.randn(8, *data["x0"].shape[1:], generator=g)

            @torch.no_grad()
            def eval_loss() -> float:
                model.eval()
                total = 0.0
                for i in range(8):
                    one = {k: v[:1] for k, v in data["model_kwargs"].items()}
                    with autocast:
                        losses = diffusion.training_losses(model, data["x0"][:1], eval_t[i : i + 1].to(device), one,
                                                           noise=eval_noise[i : i + 1].to(device))  # fmt: skip
                    total += float(losses["loss"].float().mean())
                model.train()
                return total / 8

            before = eval_loss()
            losses = []
            start = time.perf_counter()
            for _ in range(self.s.tiny_steps):
                optimizer.zero_grad(set_to_none=True)
                t = torch.randint(0, 1000, (batch,), generator=g).to(device)
                with autocast:
                    loss = diffusion.training_losses(model, data["x0"], t, data["model_kwargs"])["loss"].float().mean()
                loss.backward()
                optimizer.step()
                losses.append(round(float(loss.detach()), 5))
            seconds = time.perf_counter() - start
            after = eval_loss()
            fell = after < 0.9 * before
            record.update(model=TINY_NAME, latent=[batch, model.config.in_channels, frames, lat_h, lat_w],
                          steps=self.s.tiny_steps, losses=losses, eval_loss_before=round(before, 5),
                          eval_loss_after=round(after, 5), loss_fell=fell, s_per_step=round(seconds / len(losses), 5),
                          dtype="float32", autocast="bfloat16" if device.type == "cuda" else None)  # fmt: skip
            if not fell:
                raise AssertionError(f"the evaluation loss did not fall by 10% in {self.s.tiny_steps} steps: "
                                     f"{before:.4f} -> {after:.4f}")  # fmt: skip

        return run

    def release_model(self) -> None:
        self._model = None
        self._compiled_blocks = False
        gc.collect()
        if self.s.device.type == "cuda":
            torch.cuda.empty_cache()

    # --- the plan --------------------------------------------------------------------------------------
    def cases(self) -> list[Case]:
        frames = self.s.frames
        plan = [Case("tiny_train", "tiny_train", self.tiny_case())]
        for f in frames:
            plan.append(Case(f"train_eager_{f}f", "train", self.train_case(f, False, False)))
            plan.append(Case(f"train_eager_ckpt_{f}f", "train", self.train_case(f, False, True)))
        for f in frames:
            plan.append(Case(f"sample_cfg_eager_{f}f", "sample_cfg", self.sample_case(f, False)))
        plan.append(Case(f"zero2_hybridadam_{self.s.zero2_frames}f", "zero2_train", self.zero2_case()))
        for f in frames:
            plan.append(Case(f"train_compiled_{f}f", "train", self.train_case(f, True, False)))
            plan.append(Case(f"train_compiled_ckpt_{f}f", "train", self.train_case(f, True, True)))
        for f in frames:
            plan.append(Case(f"sample_cfg_compiled_{f}f", "sample_cfg", self.sample_case(f, True)))
        return plan


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _write(record: dict[str, Any], sink) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if sink is not None:
        sink.write(line + "\n")
        sink.flush()


def run_all(settings: Settings, out: Path | None, only: list[str] | None) -> int:
    check = GpuCheck(settings)
    plan = [c for c in check.cases() if not only or any(pattern in c.name for pattern in only)]
    if not plan:
        raise SystemExit(f"--cases {only} matches no case")
    sink = out.open("w") if out is not None else None
    started = time.perf_counter()
    failures: dict[str, str] = {}
    common = dict(device=device_name(settings.device), dtype=str(settings.dtype).removeprefix("torch."),
                  torch=torch.__version__, dry_run=settings.dry_run, peak_tflops=settings.peak_tflops)  # fmt: skip
    record: dict[str, Any] | None = None
    done = 0
    try:
        for case in plan:
            compiled = "compiled" in case.name
            record: dict[str, Any] = dict(case=case.name, kind=case.kind, status="ok", **common,
                                          compile=(f"{settings.compile_backend}/{settings.compile_scope}"
                                                   if compiled else None))  # fmt: skip
            elapsed = time.perf_counter() - started
            if elapsed > settings.budget_s:
                record.update(status="skipped", reason=f"time budget: {elapsed:.0f} s of --budget-s {settings.budget_s:.0f} used")
            else:
                print(f"[gpu_check] {case.name} ...", file=sys.stderr, flush=True)
                if settings.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(settings.device)
                breaks0, graphs0 = dynamo_counts()
                case_start = time.perf_counter()
                try:
                    case.run(record)
                except KeyboardInterrupt:
                    record.update(status="error", error="interrupted (the wrapper's timeout?)")
                    raise
                except Exception as exc:  # noqa: BLE001 - record any failure and go on to the next case
                    record.update(status="error", error=f"{type(exc).__name__}: {exc}"[:2000],
                                  traceback=traceback.format_exc()[-4000:])  # fmt: skip
                finally:
                    record["wall_s"] = round(time.perf_counter() - case_start, 3)
                    if settings.device.type == "cuda":
                        record["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(settings.device) / 2**30, 3)
                    else:
                        record["peak_memory_gib"] = None
                    if compiled:
                        breaks1, graphs1 = dynamo_counts()
                        record.update(graph_breaks=breaks1 - breaks0, graphs_compiled=graphs1 - graphs0)
                    gc.collect()
                    if settings.device.type == "cuda":
                        torch.cuda.empty_cache()
            if record["status"] == "error":
                failures[case.name] = record["error"]
            _write(record, sink)
            record = None
            done += 1
    except KeyboardInterrupt:
        interrupted = "interrupted (the wrapper's timeout?)"
        if record is not None:  # the case that was running
            record.update(status="error", error=record.get("error") or interrupted)
            _write(record, sink)
            failures[record["case"]] = interrupted
            done += 1
        for case in plan[done:]:  # still one line per case
            _write(dict(case=case.name, kind=case.kind, status="skipped", reason=interrupted, **common,
                        compile=None), sink)  # fmt: skip
    finally:
        if sink is not None:
            sink.close()
    total = time.perf_counter() - started
    print(f"[gpu_check] {done} of {len(plan)} cases run in {total:.1f} s; failed: {', '.join(failures) or 'none'}",
          file=sys.stderr)  # fmt: skip
    if "tiny_train" in failures:
        return EXIT_TINY_FAILED
    return EXIT_CASE_FAILED if failures else 0


def settings_from_args(args: argparse.Namespace) -> Settings:
    if args.dry_run:
        device, dtype = torch.device("cpu"), torch.float32
        return Settings(
            dry_run=True, device=device, dtype=dtype, model_overrides=dict(DRY_MODEL), height=48, width=80,
            frames=[2, 4], train_batch={2: 2, 4: 1}, sample_batch=1, warmup=1, repeats=2,
            compile_backend=args.compile_backend or "eager", compile_scope=args.compile_scope,
            peak_tflops=args.peak_tflops, budget_s=args.budget_s or 600.0, zero2_frames=4, zero2_batch=1,
            zero2_grad_checkpointing=True, zero2_steps=2, tiny_steps=args.tiny_steps, tiny_latent=(2, 8, 8),
            tiny_batch=2,
        )  # fmt: skip
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or use --dry-run to build every case at a tiny size on CPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    frames = args.frames or [16, 64]
    # about 26k video tokens per training step at both lengths (1.1's compiled figure: batch 1, 64 frames)
    batch = {f: (args.batch or max(1, 64 // f)) for f in frames}
    return Settings(
        dry_run=False, device=torch.device("cuda", torch.cuda.current_device()), dtype=torch.bfloat16,
        model_overrides={}, height=240, width=426, frames=frames, train_batch=batch, sample_batch=args.sample_batch,
        warmup=args.warmup, repeats=args.repeats, compile_backend=args.compile_backend or "inductor",
        compile_scope=args.compile_scope, peak_tflops=args.peak_tflops, budget_s=args.budget_s or 420.0,
        zero2_frames=args.zero2_frames, zero2_batch=args.zero2_batch,
        zero2_grad_checkpointing=not args.zero2_no_checkpointing, zero2_steps=3, tiny_steps=args.tiny_steps,
        tiny_latent=(8, 16, 16), tiny_batch=4,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every case at a tiny size on CPU (fp32)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON lines here too")
    parser.add_argument("--list", action="store_true", help="print the case names in run order and exit")
    parser.add_argument("--cases", default=None, help="comma-separated substrings: run only matching cases")
    parser.add_argument("--frames", type=int, nargs="+", default=None, help="frame counts (default 16 64)")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default 64 // frames)")
    parser.add_argument("--sample-batch", type=int, default=1, help="prompts per sampling step (network sees 2x)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per case (the first compiles)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per case")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (inductor; dry run: eager)")
    parser.add_argument("--compile-scope", choices=["blocks", "model"], default="blocks",
                        help="compile each block (one compilation shared by all) or the whole model")  # fmt: skip
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="peak for MFU (989: H100/H200 bf16 dense)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no case after this many seconds (default 420 on GPU)")  # fmt: skip
    parser.add_argument("--zero2-frames", type=int, default=64)
    parser.add_argument("--zero2-batch", type=int, default=1)
    parser.add_argument("--zero2-no-checkpointing", action="store_true",
                        help="zero2 without gradient checkpointing (1.1 shipped it on)")  # fmt: skip
    parser.add_argument("--tiny-steps", type=int, default=20)
    args = parser.parse_args(argv)
    if min(args.warmup, args.repeats, args.tiny_steps) < 1:
        parser.error("--warmup, --repeats and --tiny-steps must be >= 1")
    settings = settings_from_args(args)
    _register_cpu_attention_flops()
    if args.list:
        print("\n".join(case.name for case in GpuCheck(settings).cases()))
        return 0
    torch.manual_seed(settings.seed)
    only = [p.strip() for p in args.cases.split(",") if p.strip()] if args.cases else None
    return run_all(settings, args.out, only)


if __name__ == "__main__":
    raise SystemExit(main())
