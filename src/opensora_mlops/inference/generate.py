"""Generate images and videos with a trained STDiT2: the library call and the ``generate`` command.

One function, :func:`generate`, covers every Open-Sora 1.1 inference mode; the mode is set by the
number of frames, the references and the mask strategy (see
:mod:`opensora_mlops.inference.mask_strategy` for the strategy syntax):

==========================  =============================================================================
text -> image               ``num_frames=1``
text -> video               ``num_frames=T``
image -> video              ``reference_paths="cat.png", mask_strategy="0"``
connect two images          ``reference_paths="a.png;b.png", mask_strategy="0;0,1,0,-1,1"``
video extension             ``reference_paths="clip.mp4", mask_strategy="0,0,0,0,8"``
video editing               ``reference_paths="clip.mp4", mask_strategy="0,0,0,0,16,0.4"`` (edit ratio 0.4)
long video                  ``loops=3, condition_frames=4``, per-loop prompts ``"|0|text A|2|text B"``
==========================  =============================================================================

Everything that can be wrong with a request (unknown resolution, too small a size, a missing or
unreadable reference, strategy indices outside the references or the clip, loop ids beyond ``loops``,
component mismatches) raises before the model runs.

:func:`save_generation` writes each sample as MP4 + GIF (PNG for a single frame) with a JSON sidecar
holding every setting needed to reproduce it.

The command line (``python -m opensora_mlops generate …``) loads the components from an exported
model directory::

    <model-dir>/model/             STDiT2.save_pretrained (config.json + model.safetensors)
    <model-dir>/vae/               VideoAutoencoder.save_pretrained (an AutoencoderKL or AutoencoderTiny directory)
    <model-dir>/text_encoder.json  build_text_encoder config, e.g. {"type": "minilm", "max_length": 32};
                                   a relative "from_pretrained" is resolved against <model-dir>
    <model-dir>/scheduler.json     the training scheduler (opensora_mlops.diffusion.build_scheduler config,
                                   e.g. {"type": "iddpm", "prediction": "v"}); absent: 1.1's ε IDDPM

or from separate ``--model``/``--vae``/``--text-encoder`` paths (which also override the directory's),
or from a released Open-Sora 1.1 checkpoint (``--checkpoint`` with ``--model-name STDiT2-XL/2``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opensora_mlops.data.dataset import IMAGE_FPS
from opensora_mlops.inference.sampling import (
    GenerationError,
    SamplePlan,
    TargetSize,
    frames_to_video_tensor,
    join_loops,
    load_reference_frames,
    plan_samples,
    resolve_size,
    sample_loops,
)

__all__ = [
    "GenerationResult",
    "add_generate_arguments",
    "check_components",
    "check_request",
    "generate",
    "load_components",
    "run_generate",
    "save_generation",
]

DEFAULT_STEPS = 100
DEFAULT_CFG_SCALE = 7.0
#: frames x height x width of one sample's output above which a request is refused before any work:
#: 128 frames at 480p (52 M pixels). 1.1-sized requests fit; a typo such as 10000 frames, which grew past
#: 11 GB, does not. Raise it with ``max_pixels`` (``--max-pixels``), or pass None to lift the limit.
DEFAULT_MAX_PIXELS = 128 * 480 * 854


@dataclass
class GenerationResult:
    """Per sample: frames (T, H, W, 3) uint8, final latents [C, T_total, h, w], encoded references,
    settings (the sidecar), and each loop's latents [C, T, h, w] before the overlaps were joined."""

    videos: list[np.ndarray]
    latents: list[torch.Tensor]
    reference_latents: list[list[torch.Tensor]]
    settings: list[dict[str, Any]]
    loop_latents: list[list[torch.Tensor]]


def check_components(model: Any, vae: Any, text_encoder: Any) -> None:
    """The three components must agree on latent channels, caption width and caption length."""
    cfg = model.config
    problems = []
    if int(vae.latent_channels) != int(cfg.in_channels):
        problems.append(f"the VAE has {vae.latent_channels} latent channels, the model expects {cfg.in_channels}")
    if int(text_encoder.output_dim) != int(cfg.caption_channels):
        problems.append(f"the text encoder outputs {text_encoder.output_dim}-d tokens, the model expects "
                        f"caption_channels={cfg.caption_channels}")
    if int(text_encoder.model_max_length) != int(cfg.model_max_length):
        problems.append(f"the text encoder pads to {text_encoder.model_max_length} tokens, the model's null caption "
                        f"has model_max_length={cfg.model_max_length}")
    if problems:
        raise GenerationError("model, VAE and text encoder do not fit together: " + "; ".join(problems))


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GenerationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_request(
    num_frames: int = 16,
    height: int | None = None,
    width: int | None = None,
    resolution: str | None = None,
    aspect_ratio: str | float | None = None,
    fps: float = 24.0,
    frame_interval: int = 1,
    loops: int = 1,
    condition_frames: int = 4,
    steps: int | None = None,
    cfg_scale: float | None = None,
    batch_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    downsample_factor: int = 8,
) -> TargetSize:
    """Every cheap check of a generation request, before any model loads; returns the target size.

    The size budget counts the whole output of one sample (all loops joined): frames x H x W must stay
    within ``max_pixels`` (None: no limit).
    """
    _positive_int(num_frames, "num_frames")
    _positive_int(loops, "loops")
    _positive_int(frame_interval, "frame_interval")
    if loops > 1:
        _positive_int(condition_frames, "condition_frames", 0)
        if condition_frames >= num_frames:
            raise GenerationError(f"condition_frames ({condition_frames}) must be fewer than num_frames "
                                  f"({num_frames}): each loop must add new frames")
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < float(fps) <= 240:
        raise GenerationError(f"fps must be in (0, 240], got {fps!r}")
    if steps is not None:
        _positive_int(steps, "steps", 2)
    if cfg_scale is not None and (isinstance(cfg_scale, bool) or not isinstance(cfg_scale, int | float)
                                  or not math.isfinite(cfg_scale)):
        raise GenerationError(f"cfg_scale must be a finite number, got {cfg_scale!r}")
    if batch_size is not None:
        _positive_int(batch_size, "batch_size")
    size = resolve_size(height, width, resolution, aspect_ratio, downsample_factor)
    total_frames = loops * num_frames - (loops - 1) * (condition_frames if loops > 1 else 0)
    pixels = total_frames * size.height * size.width
    if max_pixels is not None and pixels > int(max_pixels):
        raise GenerationError(
            f"the request asks for {total_frames} frames of {size.height}x{size.width} = {pixels / 1e6:.0f} M "
            f"pixels per sample, over the limit of {int(max_pixels) / 1e6:.0f} M (max_pixels / --max-pixels): "
            "ask for fewer frames or a smaller size, or raise the limit if the machine has the memory")
    return size


def _scheduler(scheduler: Any, steps: int | None, cfg_scale: float | None) -> Any:
    from opensora_mlops.diffusion import build_scheduler

    if scheduler is None:
        steps = DEFAULT_STEPS if steps is None else steps
        if not isinstance(steps, int) or steps < 2:
            raise GenerationError(f"steps must be an integer >= 2, got {steps!r}")
        return build_scheduler(None, steps=steps, cfg_scale=DEFAULT_CFG_SCALE if cfg_scale is None else float(cfg_scale))
    if steps is not None and steps != scheduler.num_sampling_steps:
        raise GenerationError(f"steps={steps} disagrees with the scheduler's {scheduler.num_sampling_steps} steps; "
                              "give steps or a scheduler, not both")
    if cfg_scale is not None and float(cfg_scale) != scheduler.cfg_scale:
        raise GenerationError(f"cfg_scale={cfg_scale} disagrees with the scheduler's {scheduler.cfg_scale}")
    return scheduler


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> (T, H, W, 3) uint8."""
    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    vae: Any,
    text_encoder: Any,
    scheduler: Any = None,
    prompts: str | Sequence[str] = (),
    num_frames: int = 16,
    height: int | None = None,
    width: int | None = None,
    resolution: str | None = None,
    aspect_ratio: str | float | None = None,
    fps: float = 24.0,
    frame_interval: int = 1,
    mask_strategy: str | Sequence[str | None] | None = None,
    reference_paths: str | Path | Sequence[Any] | None = None,
    loops: int = 1,
    condition_frames: int = 4,
    seed: int = 0,
    steps: int | None = None,
    cfg_scale: float | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    extra_settings: dict[str, Any] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> GenerationResult:
    """Generate one image/video per prompt (see the module docstring for the modes).

    Args:
        model, vae, text_encoder: an STDiT2, a :class:`~opensora_mlops.models.vae.VideoAutoencoder` and a
            text encoder (``encode``/``output_dim``/``model_max_length``) that fit together.
        scheduler: a scheduler of :func:`~opensora_mlops.diffusion.build_scheduler` (the one the model
            was trained with); default 1.1's ε IDDPM with ``steps`` respaced
            steps (100) and ``cfg_scale`` (7.0).
        prompts: one string or a list; a prompt may be a per-loop prompt ``"|0|text A|2|text B"``.
        num_frames: frames per loop (1 = an image).
        height, width: pixel size; or ``resolution`` ("240p", …) with ``aspect_ratio`` ("9:16" = H:W,
            or a number H/W) looked up in Open-Sora 1.1's aspect tables.
        fps, frame_interval: the fps micro-condition is the *source* frame rate, as training fed it (the
            clip's own fps, not divided by the frame interval it was subsampled with, as in 1.1); the
            written video plays at ``fps / frame_interval``.  Use the frame interval the model was trained
            with (1.1's released weights: 3).  A single frame (image) is conditioned on fps 120, the
            value training gives images (1.1's IMG_FPS).
        mask_strategy, reference_paths: one for all prompts or one per prompt; references are image or
            video files (a path, a ``;``-separated string, or a list), resized to cover the target size,
            centre-cropped and VAE-encoded.
        loops, condition_frames: long video: loop ``i > 0`` starts from the last ``condition_frames``
            frames of loop ``i - 1``; the result has ``loops * num_frames - (loops - 1) * condition_frames``
            frames.
        seed: seeds one CPU generator for the initial noise and every sampling step, so a request is
            reproducible on any device (given the same prompts and batch size).
        batch_size: prompts sampled together (default: all).
        extra_settings: merged into every sample's settings (e.g. model paths for the sidecar).
        max_pixels: the size budget of one sample (frames x H x W, see :func:`check_request`).
    """
    started = time.monotonic()
    size: TargetSize = check_request(num_frames, height, width, resolution, aspect_ratio, fps, frame_interval,
                                     loops, condition_frames, steps, cfg_scale, batch_size, max_pixels,
                                     int(vae.downsample_factor))
    check_components(model, vae, text_encoder)
    scheduler = _scheduler(scheduler, steps, cfg_scale)
    fps_condition = IMAGE_FPS if num_frames == 1 else float(fps)

    # Read every reference once (I/O only) so the plan can check frame ranges before any compute.
    frames_cache: dict[Path, np.ndarray] = {}

    def frame_count(path: Path) -> int:
        if path not in frames_cache:
            frames_cache[path] = load_reference_frames(path)
        return int(frames_cache[path].shape[0])

    plans: list[SamplePlan] = plan_samples(prompts, num_frames, loops, condition_frames, mask_strategy,
                                           reference_paths, frame_count)

    # ---- compute ---------------------------------------------------------------------------------
    _, lat_h, lat_w = vae.get_latent_size((1, size.height, size.width))
    latent_shape = (int(vae.latent_channels), num_frames, lat_h, lat_w)
    encoded = _encode_references(vae, plans, frames_cache, size)
    reference_latents = [[encoded[p] for p in plan.reference_paths] for plan in plans]

    generator = torch.Generator().manual_seed(int(seed))
    chunk = batch_size or len(plans)
    was_training = model.training
    model.eval()
    try:
        loop_latents: list[list[torch.Tensor]] = []
        for start in range(0, len(plans), chunk):
            loop_latents += sample_loops(model, text_encoder, scheduler, plans[start : start + chunk],
                                    reference_latents[start : start + chunk], latent_shape, size, fps_condition,
                                    condition_frames, generator, progress=progress)
    finally:
        model.train(was_training)
    loop_latents = [[z.float().cpu() for z in loops_of_sample] for loops_of_sample in loop_latents]
    latents = [join_loops(loops_of_sample, condition_frames) for loops_of_sample in loop_latents]
    videos = [_to_uint8(vae.decode(z[None].to(vae.device), size=(size.height, size.width))[0]) for z in latents]

    elapsed = time.monotonic() - started
    settings = []
    for plan, video in zip(plans, videos, strict=True):
        settings.append({
            "prompt": plan.prompt,
            "loop_prompts": plan.loop_prompts,
            "sample_index": plan.index,
            "seed": int(seed),
            "batch_size": chunk,
            "steps": int(scheduler.num_sampling_steps),
            "num_timesteps": int(scheduler.num_timesteps),
            "cfg_scale": float(scheduler.cfg_scale),
            "cfg_channel": scheduler.cfg_channel,
            "scheduler": scheduler.to_config(),
            "height": size.height,
            "width": size.width,
            "resolution": size.resolution,
            "aspect_ratio": size.aspect_ratio,
            "num_frames": num_frames,
            "total_frames": int(video.shape[0]),
            "fps": float(fps),
            "fps_condition": fps_condition,
            "frame_interval": frame_interval,
            "output_fps": float(fps) / frame_interval,
            "loops": loops,
            "condition_frames": condition_frames if loops > 1 else 0,
            "mask_strategy": ";".join(i.to_string() for i in plan.user_instructions) or None,
            "applied_mask_strategy": plan.mask_strategy or None,
            "reference_paths": [str(p) for p in plan.reference_paths],
            "reference_frames": plan.reference_frames,
            "latent_shape": list(latents[plan.index].shape),
            "elapsed_s": round(elapsed, 3),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": _versions(),
            **(extra_settings or {}),
        })
    return GenerationResult(videos, latents, reference_latents, settings, loop_latents)


def _used_reference_frames(plans: list[SamplePlan]) -> dict[Path, set[int]]:
    """Per reference file, the frame indices some instruction copies (negative starts resolved)."""
    used: dict[Path, set[int]] = {}
    for plan in plans:
        for instruction in plan.user_instructions:
            if instruction.ref_id >= len(plan.reference_paths):
                continue  # a previous loop's output, not a file
            path = plan.reference_paths[instruction.ref_id]
            total = plan.reference_frames[instruction.ref_id]
            start = instruction.ref_start + total if instruction.ref_start < 0 else instruction.ref_start
            used.setdefault(path, set()).update(range(start, start + instruction.length))
    return used


def _encode_references(vae: Any, plans: list[SamplePlan], frames_cache: dict[Path, np.ndarray],
                       size: TargetSize) -> dict[Path, torch.Tensor]:
    """VAE latents [C, T_ref, h, w] of each reference; only frames an instruction uses are resized and
    encoded (the VAE is per-frame, so this equals encoding the whole clip), the others stay zero.
    Extending a long clip by its first frames therefore costs those frames only."""
    used = _used_reference_frames(plans)
    _, lat_h, lat_w = vae.get_latent_size((1, size.height, size.width))
    encoded = {}
    for path, frames in frames_cache.items():
        latents = torch.zeros(int(vae.latent_channels), frames.shape[0], lat_h, lat_w)
        indices = sorted(used.get(path, ()))
        if indices:
            video = frames_to_video_tensor(frames[indices], size.height, size.width)
            latents[:, indices] = vae.encode(video[None])[0].float().cpu()
        encoded[path] = latents
    return encoded


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__}
    for name in ("opensora-mlops", "diffusers", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def save_generation(result: GenerationResult, out_dir: str | Path, name: str = "sample",
                    gif: bool = True) -> list[dict[str, str]]:
    """Write ``<name>_<i>.mp4`` (+ ``.gif``), or ``.png`` for a single frame, and ``<name>_<i>.json``.

    Returns the written paths per sample; the sidecar lists them too.
    """
    from PIL import Image

    from opensora_mlops.data.video_io import write_gif, write_video

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (video, settings) in enumerate(zip(result.videos, result.settings, strict=True)):
        stem = out_dir / f"{name}_{i:04d}"
        files: dict[str, str] = {}
        if video.shape[0] == 1:
            path = stem.with_suffix(".png")
            Image.fromarray(video[0]).save(path)
            files["image"] = str(path)
        else:
            files["video"] = str(write_video(stem.with_suffix(".mp4"), video, settings["output_fps"]))
            if gif:
                files["gif"] = str(write_gif(stem.with_suffix(".gif"), video, settings["output_fps"]))
        # what the file holds: yuv420p MP4 needs even sides, so an odd size gains one edge pixel there
        height, width = int(video.shape[1]), int(video.shape[2])
        written_size = ([height, width] if video.shape[0] == 1 else [height + height % 2, width + width % 2])
        sidecar = stem.with_suffix(".json")
        files["settings"] = str(sidecar)
        sidecar.write_text(json.dumps({**settings, "written_height": written_size[0],
                                       "written_width": written_size[1], "files": files}, indent=2) + "\n")
        written.append(files)
    return written


# ---- components ----------------------------------------------------------------------------------

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise GenerationError(f"{what} {path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise GenerationError(f"{what} {path} must hold a JSON object, got {type(value).__name__}")
    return value


def _loaded(what: str, where: Any, load: Any) -> Any:
    """``load()``, with a broken or mismatched weights file reported as one GenerationError naming it."""
    from safetensors import SafetensorError

    try:
        return load()
    except GenerationError:
        raise
    except FileNotFoundError as error:
        raise GenerationError(f"{what} not found at {where}: {error}") from None
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError, json.JSONDecodeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise GenerationError(f"could not load the {what} from {where} (corrupt, truncated or not matching its "
                              f"config?): {type(error).__name__}: {first[:300]}") from None


def load_components(
    model_dir: str | Path | None = None,
    model_path: str | Path | None = None,
    vae_path: str | Path | None = None,
    text_encoder: str | dict[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    model_name: str | None = None,
    legacy: bool = False,
    device: str = "cpu",
    dtype: str = "fp32",
    steps: int | None = None,
    cfg_scale: float | None = None,
    vae_micro_batch_size: int | None = None,
) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """Load ``(model, vae, text_encoder, scheduler, settings)`` from an exported model directory
    (layout in the module docstring) and/or explicit paths, which take precedence.

    The scheduler is the one the weights were trained with: ``<model-dir>/scheduler.json``, else the
    ``scheduler.json`` beside the weights, else Open-Sora 1.1's ε IDDPM (released checkpoints); it
    samples with ``steps`` and ``cfg_scale`` (defaults 100 steps, guidance 7.0).

    ``text_encoder`` is a config dict, a JSON string or a path to a JSON file. ``checkpoint`` loads a
    released Open-Sora 1.1 checkpoint into ``build_model(model_name)``; ``legacy`` sets the flags the
    released weights need (``qk_norm_legacy``, ``final_layer_legacy``).
    """
    from opensora_mlops.diffusion import build_scheduler, load_scheduler_config
    from opensora_mlops.models.stdit2 import STDiT2, build_model, load_opensora_checkpoint
    from opensora_mlops.models.text_encoder import build_text_encoder
    from opensora_mlops.models.vae import VideoAutoencoder

    if dtype not in _DTYPES:
        raise GenerationError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    torch_dtype = _DTYPES[dtype]
    root = Path(model_dir) if model_dir is not None else None
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"model directory not found: {root}")

    # text encoder config: explicit > <model-dir>/text_encoder.json
    base = root
    if text_encoder is None:
        if root is None or not (root / "text_encoder.json").is_file():
            raise GenerationError("no text encoder: give --text-encoder or a --model-dir with text_encoder.json")
        te_cfg = _read_json(root / "text_encoder.json", "text encoder config")
    elif isinstance(text_encoder, dict):
        te_cfg = dict(text_encoder)
    elif Path(str(text_encoder)).is_file():
        te_cfg = _read_json(Path(str(text_encoder)), "text encoder config")
        base = Path(str(text_encoder)).parent
    else:
        try:
            te_cfg = json.loads(str(text_encoder))
        except json.JSONDecodeError:
            raise GenerationError(f"--text-encoder must be a JSON object or a JSON file, got {text_encoder!r}") from None
        if not isinstance(te_cfg, dict):
            raise GenerationError(f"--text-encoder must be a JSON object, got {text_encoder!r}")
    if te_cfg.get("from_pretrained") and base is not None and not Path(te_cfg["from_pretrained"]).is_absolute():
        te_cfg["from_pretrained"] = str(base / te_cfg["from_pretrained"])

    vae_dir = Path(vae_path) if vae_path is not None else (root / "vae" if root is not None else None)
    if vae_dir is None:
        raise GenerationError("no VAE: give --vae or a --model-dir with vae/")

    if checkpoint is not None:
        if model_name is None:
            raise GenerationError("--checkpoint needs --model-name (e.g. STDiT2-XL/2)")
        flags = {"qk_norm_legacy": True, "final_layer_legacy": True} if legacy else {}
        model = _loaded("model checkpoint", checkpoint,
                        lambda: load_opensora_checkpoint(build_model(model_name, **flags), checkpoint))
        model_source = str(checkpoint)
    else:
        model_dir_path = Path(model_path) if model_path is not None else (root / "model" if root is not None else None)
        if model_dir_path is None:
            raise GenerationError("no model: give --model, --checkpoint or a --model-dir with model/")
        flags = {"qk_norm_legacy": True, "final_layer_legacy": True} if legacy else {}
        model = _loaded("model", model_dir_path, lambda: STDiT2.from_pretrained(model_dir_path, **flags))
        model_source = str(model_dir_path)
    model = model.to(device=device, dtype=torch_dtype).eval()
    vae = _loaded("VAE", vae_dir, lambda: VideoAutoencoder.from_pretrained(
        vae_dir, micro_batch_size=vae_micro_batch_size, device=device, dtype=torch_dtype))
    encoder = build_text_encoder({**te_cfg, "device": device} if "device" not in te_cfg else te_cfg)
    # the parameterisation the weights were trained with (<model-dir>/scheduler.json, else the one saved
    # beside the weights, else 1.1's ε IDDPM), sampled with the requested steps and guidance
    scheduler_cfg = None
    for where in ([root] if root is not None else []) + ([Path(model_source)] if checkpoint is None else []):
        scheduler_cfg = load_scheduler_config(where)
        if scheduler_cfg is not None:
            break
    if cfg_scale is None:
        cfg_scale = (scheduler_cfg or {}).get("cfg_scale", DEFAULT_CFG_SCALE)
    scheduler = build_scheduler(scheduler_cfg, steps=DEFAULT_STEPS if steps is None else steps, cfg_scale=cfg_scale)
    settings = {"model": model_source, "vae": str(vae_dir), "text_encoder": te_cfg, "device": device,
                "dtype": dtype, "model_dir": str(root) if root is not None else None, "legacy": legacy}
    return model, vae, encoder, scheduler, settings


# ---- command line --------------------------------------------------------------------------------


DEFAULT_MODEL_DIR = "data/06_models/export"  # where `make demo` / the export pipeline writes the model
DEFAULT_RESOLUTION = "144p"
DEFAULT_ASPECT_RATIO = "16:9"
ASPECT_RATIO_HELP = ("W:H as video tools write it: 16:9 is landscape, 9:16 portrait, 1:1 square; or the "
                     "height/width ratio as a number (0.5625 is 16:9)")


def cli_aspect_ratio(text: str) -> float:
    """``--aspect-ratio``: ``"16:9"`` (width:height, as video tools write it) or a plain number, the
    height/width ratio (``"0.5625"``) -> height/width as a float."""
    parts = str(text).split(":")
    try:
        if len(parts) == 2:
            width, height = float(parts[0]), float(parts[1])
            value = height / width
        elif len(parts) == 1:
            value = float(parts[0])
        else:
            raise ValueError(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{ASPECT_RATIO_HELP}; got {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"the aspect ratio must be positive and finite; got {text!r}")
    return value


def add_generate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``generate`` command's options to ``parser`` (argparse only); after parsing,
    :func:`finish_generate_arguments` fills the defaults that depend on other options."""
    src = parser.add_argument_group("model")
    src.add_argument("--model-dir", help="exported model directory (model/, vae/, text_encoder.json, "
                     f"scheduler.json) (default: {DEFAULT_MODEL_DIR}, what `make demo` exports)")
    src.add_argument("--model", help="STDiT2 weights directory, instead of <model-dir>/model (default: none)")
    src.add_argument("--checkpoint", help="a released Open-Sora 1.1 checkpoint (file or directory), with "
                     "--model-name (default: none)")
    src.add_argument("--model-name", help="the architecture of --checkpoint, e.g. STDiT2-XL/2 (default: none)")
    src.add_argument("--legacy", action="store_true",
                     help="run the model the way Open-Sora 1.1's code did; needed for its released checkpoints "
                     "(default: off)")
    src.add_argument("--vae", help="VAE directory (AutoencoderKL or AutoencoderTiny, e.g. sd-vae-ft-ema), "
                     "instead of <model-dir>/vae (default: none)")
    src.add_argument("--text-encoder", help="text encoder settings as JSON or a JSON file, instead of "
                     "<model-dir>/text_encoder.json, e.g. "
                     "'{\"type\": \"t5\", \"from_pretrained\": \"/models/t5-v1_1-xxl\"}' (default: none)")
    src.add_argument("--vae-micro-batch-size", type=int, default=4,
                     help="frames the VAE encodes or decodes at once: lower it to save memory, 0 = all "
                     "(default: %(default)s)")
    src.add_argument("--device", default="auto",
                     help="cpu, cuda, cuda:1, ... (default: auto, the GPU when there is one)")
    src.add_argument("--dtype", default="fp32", choices=sorted(_DTYPES),
                     help="number format of the model while sampling (default: %(default)s)")

    req = parser.add_argument_group("what to generate")
    req.add_argument("--prompt", action="append", default=[],
                     help="a caption; repeat for several videos; '|0|text A|2|text B' changes the caption "
                     "at loops 0 and 2 (default: none; give --prompt or --prompt-file)")
    req.add_argument("--prompt-file", help="a text file with one prompt per line (default: none)")
    req.add_argument("--num-frames", type=int, default=16,
                     help="frames per loop; 1 makes an image (default: %(default)s)")
    req.add_argument("--resolution", help="a resolution name: 144p, 240p, 360p, 480p, 720p, ... "
                     f"(default: {DEFAULT_RESOLUTION} unless --height and --width are given)")
    req.add_argument("--aspect-ratio", type=cli_aspect_ratio, metavar="W:H",
                     help=f"{ASPECT_RATIO_HELP}; used with --resolution (default: {DEFAULT_ASPECT_RATIO})")
    req.add_argument("--height", type=int, help="frame height in pixels, with --width, instead of "
                     "--resolution (default: none)")
    req.add_argument("--width", type=int, help="frame width in pixels, with --height (default: none)")
    req.add_argument("--fps", type=float, default=24.0,
                     help="frame rate of the footage the model should imitate (as in training); the "
                     "video plays at fps / frame-interval (default: %(default)s)")
    req.add_argument("--frame-interval", type=int, default=1,
                     help="the frame step the model was trained with (it saw every Nth source frame); "
                     "Open-Sora 1.1's released weights: 3 (default: %(default)s)")
    req.add_argument("--mask-strategy", action="append", default=[],
                     help="which frames come from references, e.g. '0' (image to video), '0,0,0,0,8' "
                     "(extend a video); once for all prompts or once per prompt (default: none)")
    req.add_argument("--reference", action="append", default=[],
                     help="reference image or video paths, ';'-separated; once for all prompts or once "
                     "per prompt (default: none)")
    req.add_argument("--loops", type=int, default=1,
                     help="generate this many clips in a row, each continuing the last (default: %(default)s)")
    req.add_argument("--condition-frames", type=int, default=4,
                     help="frames each loop takes over from the previous one (default: %(default)s)")
    req.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    req.add_argument("--steps", type=int, default=None,
                     help=f"sampling steps: more is slower and cleaner (default: {DEFAULT_STEPS})")
    req.add_argument("--cfg-scale", type=float, default=None,
                     help="how strongly to follow the prompt (default: the model's own setting in "
                     f"scheduler.json, else {DEFAULT_CFG_SCALE})")
    req.add_argument("--batch-size", type=int, default=None,
                     help="prompts sampled together (default: all of them)")
    req.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                     help="refuse a request whose frames x height x width per video exceeds this, before "
                     "anything loads; 0 lifts the limit (default: %(default)s, 128 frames at 480p)")

    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", default="data/07_model_output/generate",
                     help="where the videos go (default: %(default)s)")
    out.add_argument("--name", default="sample",
                     help="file name stem: <name>_0000.mp4, <name>_0001.mp4, ... (default: %(default)s)")
    out.add_argument("--no-gif", action="store_true", help="do not write a GIF beside each video (default: off)")
    out.add_argument("--quiet", action="store_true", help="no progress bars (default: off)")
    return parser


def finish_generate_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """The defaults that depend on other options: the model directory when no model is named, the
    resolution when no height and width are given, the aspect ratio with a resolution."""
    if args.model_dir is None and args.model is None and args.checkpoint is None:
        args.model_dir = DEFAULT_MODEL_DIR
    if args.resolution is None and args.height is None and args.width is None:
        args.resolution = DEFAULT_RESOLUTION
    if args.resolution is not None and args.aspect_ratio is None:
        args.aspect_ratio = cli_aspect_ratio(DEFAULT_ASPECT_RATIO)
    return args


def _one_or_per_prompt(values: list[str], count: int, flag: str) -> str | list[str] | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    if len(values) != count:
        raise GenerationError(f"{flag} given {len(values)} times for {count} prompt(s): give it once or once per prompt")
    return values


def run_generate(args: argparse.Namespace) -> list[dict[str, str]]:
    """Run the ``generate`` command: validate, load, sample, write. Returns the written files."""
    prompts = list(args.prompt)
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {path}")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise GenerationError("no prompt: give --prompt (repeatable) or --prompt-file")
    strategy = _one_or_per_prompt(args.mask_strategy, len(prompts), "--mask-strategy")
    references = _one_or_per_prompt(args.reference, len(prompts), "--reference")
    # Cheap checks first: a bad size, number, strategy or missing reference fails before models load.
    check_request(args.num_frames, args.height, args.width, args.resolution, args.aspect_ratio, args.fps,
                  args.frame_interval, args.loops, args.condition_frames, args.steps, args.cfg_scale,
                  args.batch_size, args.max_pixels or None)
    plan_samples(prompts, args.num_frames, args.loops, args.condition_frames, strategy, references,
                 lambda p: load_reference_frames(p).shape[0])

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, vae, encoder, scheduler, loaded = load_components(
        args.model_dir, args.model, args.vae, args.text_encoder, args.checkpoint, args.model_name, args.legacy,
        device, args.dtype, args.steps, args.cfg_scale, args.vae_micro_batch_size or None,
    )
    result = generate(
        model, vae, encoder, scheduler, prompts, num_frames=args.num_frames, height=args.height, width=args.width,
        resolution=args.resolution, aspect_ratio=args.aspect_ratio, fps=args.fps, frame_interval=args.frame_interval,
        mask_strategy=strategy,
        reference_paths=references, loops=args.loops, condition_frames=args.condition_frames, seed=args.seed,
        batch_size=args.batch_size, progress=not args.quiet,
        extra_settings=loaded, max_pixels=args.max_pixels or None,
    )
    written = save_generation(result, args.output_dir, name=args.name, gif=not args.no_gif)
    for files in written:
        print(files.get("video") or files.get("image"))
    return written
