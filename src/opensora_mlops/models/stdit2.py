"""ST-DiT-2: the spatial-temporal diffusion transformer of Open-Sora 1.1, written from its description.

Reading order: configuration and the registry of named configs -> the model -> checkpoints ->
``build_model``. The building blocks (embedders, attention, the block, the final layer) are in
``layers.py``.

The network (shapes for a latent video ``x`` of ``[B, C, T, H, W]``):

* patch-embed with a Conv3d of kernel = stride = ``patch_size`` (1x2x2) after zero-padding T/H/W up to
  a multiple of the patch, giving tokens ``[B, T', S = H'*W', hidden]``;
* add a 2D sin-cos position embedding *scaled to the resolution* (PixArt style): the grid of ``H' x W'``
  patches is stretched to ``base_size = round(sqrt(S))`` and divided by
  ``scale = sqrt(height * width) / input_sq_size`` where ``height, width`` are the pixel-size
  micro-conditions;
* ``depth`` blocks, each: spatial self-attention over the S tokens of a frame, temporal self-attention
  over the T' frames of a location (rotary position embedding on q/k), cross-attention to the caption
  tokens, MLP. The self-attention and MLP branches are modulated adaLN-single style (``x*(1+scale)+shift``
  and a residual gate) from a per-block learned table plus a projection of the conditioning: a spatial
  table (6 x hidden, conditioning = timestep + size/aspect-ratio embedding) and a temporal table
  (3 x hidden, conditioning = timestep + num_frames/fps embedding). q and k pass through RMSNorm;
* a final adaLN layer (2 x hidden table + timestep embedding) and a linear projection to
  ``prod(patch) * out_channels`` (out_channels = 2 * in_channels: epsilon and the learned variance),
  unpatchified and cropped back to the input size.

Frames marked ``x_mask == False`` are conditioning frames (given, nearly clean): their modulation is the
one of timestep 0 instead of the sample's timestep.

Deliberate differences from the 1.1 code (see DESIGN.md "Known defects"):

1. Aspect ratio: the model simply embeds the ``ar`` it is given. The project passes H/W everywhere;
   1.1 trained with W/H and sampled with H/W. When ``ar`` is omitted it defaults to ``height / width``.
2. Temporal attention applies QK-RMSNorm *before* the rotary embedding (a rotation of normalised
   vectors). 1.1 rotated first and normalised the rotated vectors, which breaks RoPE's relative-position
   property; ``qk_norm_legacy=True`` restores that order for the released weights.
3. The final layer conditions every frame on its own timestep embedding alone (the sample's ``t`` for
   noisy frames, ``t = 0`` for conditioning frames), normalising once. 1.1 used ``t`` for noisy frames
   but, for conditioning frames, ``t0 + size/aspect-ratio embedding`` applied to the *already modulated*
   tokens (LayerNorm -> modulate(t) -> LayerNorm -> modulate(t0 + data_info)). Only the outputs at
   conditioning frames differ, and neither the loss nor the sampler uses those;
   ``final_layer_legacy=True`` restores the 1.1 arithmetic.

Implementation choices for speed: activations stay in ``[B, T', S, C]`` so spatial attention needs no
copy; every attention goes through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels
on GPU) and the caption padding mask becomes an SDPA boolean mask; modulation and gated residuals are
single ``addcmul`` kernels; q and k are normalised together in one RMSNorm call; RoPE is one complex
multiply with rotations built once per forward; nothing in the forward reads tensor values on the
host (no device sync, one ``torch.compile`` graph with ``fullgraph=True``); nothing is
cast to float32 except normalisation statistics, sinusoid inputs, the RoPE product and the returned
prediction.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from opensora_mlops.config import ConfigError, strict_dataclass
from opensora_mlops.models.layers import (
    CaptionEmbedder,
    PatchEmbed3D,
    RotaryEmbedding,
    SizeEmbedder,
    STDiT2Block,
    T2IFinalLayer,
    TimestepEmbedder,
    sincos_position_embedding_2d,
)

__all__ = [
    "MODEL_CONFIGS",
    "STDiT2",
    "STDiT2Config",
    "build_model",
    "load_opensora_checkpoint",
    "sincos_position_embedding_2d",
]

DEFAULT_FPS = 24.0  # the fps micro-condition when none is given (Open-Sora 1.1's sampling default)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


# ---------------------------------------------------------------------------------------------------
# Configuration and the registry of named configurations
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class STDiT2Config:
    """Architecture and behaviour flags of an ST-DiT-2 model. Unknown keys are a ConfigError."""

    depth: int = 28
    hidden_size: int = 1152
    num_heads: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    in_channels: int = 4
    pred_sigma: bool = True  # predict the variance too: out_channels = 2 * in_channels
    mlp_ratio: float = 4.0
    caption_channels: int = 4096  # text-encoder width (T5-XXL 4096, MiniLM 384)
    model_max_length: int = 200  # caption tokens; also the length of the null caption
    input_sq_size: int = 512  # pixel side of the square resolution the position embedding is tuned to
    qk_norm: bool = True
    class_dropout_prob: float = 0.1  # training only: probability of replacing a caption by the null one
    qk_norm_legacy: bool = False  # True: 1.1's RoPE-then-norm order in temporal attention
    final_layer_legacy: bool = False  # True: 1.1's double-normalised t0 + data_info output for conditioning frames
    grad_checkpointing: bool = False
    vae_downsample_factor: int = 8  # pixel/latent ratio, used only for default height/width conditions

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(p) for p in self.patch_size)  # JSON gives lists
        problems = []
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            problems.append(f"patch_size must be three positive ints, got {self.patch_size}")
        for name in ("depth", "hidden_size", "num_heads", "in_channels", "caption_channels",
                     "model_max_length", "input_sq_size", "vae_downsample_factor"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        elif (self.hidden_size // self.num_heads) % 2:
            problems.append(f"head dim {self.hidden_size // self.num_heads} must be even (rotary embedding)")
        if self.hidden_size % 12:
            # thirds for the (height, width, aspect-ratio) embedders, quarters for the 2D sin-cos table
            problems.append(f"hidden_size {self.hidden_size} must be divisible by 12")
        if not 0.0 <= self.class_dropout_prob <= 1.0:
            problems.append(f"class_dropout_prob must be in [0, 1], got {self.class_dropout_prob}")
        if problems:
            raise ConfigError("invalid STDiT2 config: " + "; ".join(problems))

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.pred_sigma else self.in_channels

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    # The released Open-Sora 1.1 model (T5-XXL captions of 200 tokens, trained around 512x512).
    "STDiT2-XL/2": dict(depth=28, hidden_size=1152, num_heads=16, patch_size=(1, 2, 2), in_channels=4,
                        caption_channels=4096, model_max_length=200, input_sq_size=512),
    # DiT-S sized model for small GPUs / long CPU runs, MiniLM captions.
    "STDiT2-S/2": dict(depth=12, hidden_size=384, num_heads=6, patch_size=(1, 2, 2), in_channels=4,
                       caption_channels=384, model_max_length=32, input_sq_size=256),
    # CPU-sized: tests, the embedded default pipelines, laptops. input_sq_size 256 (not 128): at 144x256 the
    # sin-cos table then steps ~1 radian per token at its highest frequency instead of 0.5, so 96 channels
    # tell neighbouring tokens apart (BENCHMARKS.md, "Schedule, learning rate, batch, image views and position scale").
    "STDiT2-tiny": dict(depth=2, hidden_size=96, num_heads=4, patch_size=(1, 2, 2), in_channels=4,
                        caption_channels=384, model_max_length=32, input_sq_size=256),
}


# ---------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------


def _check_condition(name: str, value: torch.Tensor | float | None, batch: int) -> torch.Tensor | None:
    """Micro-conditions are 1-D ``[B]`` tensors (a Python number is broadcast)."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        return torch.full((batch,), float(value))
    if value.ndim == 2 and value.shape[1] == 1:  # 1.1 sometimes passes [B, 1]
        value = value[:, 0]
    if value.shape != (batch,):
        raise ValueError(f"micro-condition {name!r} must have shape [B]=[{batch}], got {list(value.shape)}")
    return value


class STDiT2(nn.Module):
    """ST-DiT-2 denoiser. ``forward(x, timestep, y, ...)`` predicts ``[B, out_channels, T, H, W]``."""

    def __init__(self, config: STDiT2Config) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.x_embedder = PatchEmbed3D(config.patch_size, config.in_channels, dim)
        self.t_embedder = TimestepEmbedder(dim)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.t_block_temp = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.y_embedder = CaptionEmbedder(config.caption_channels, dim, config.model_max_length)
        self.rope = RotaryEmbedding(config.head_dim)
        self.blocks = nn.ModuleList(
            STDiT2Block(dim, config.num_heads, config.mlp_ratio, config.qk_norm, config.qk_norm_legacy)
            for _ in range(config.depth)
        )
        self.final_layer = T2IFinalLayer(dim, math.prod(config.patch_size), config.out_channels)
        # micro-conditions: (height, width) and aspect ratio share the spatial conditioning vector
        self.csize_embedder = SizeEmbedder(dim // 3)
        self.ar_embedder = SizeEmbedder(dim // 3)
        self.fl_embedder = SizeEmbedder(dim)
        self.fps_embedder = SizeEmbedder(dim)
        self.initialize_weights()

    # --- initialisation (PixArt/Open-Sora recipe) -------------------------------------------------

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """xavier-uniform linears with zero bias; N(0, 0.02) for the timestep and caption MLPs; zero
        output projections of cross-attention, temporal attention and the final layer so that a fresh
        model (and a freshly added temporal branch) starts as the identity on its residual stream."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for linear in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1], self.t_block_temp[1],
                       self.y_embedder.y_proj.fc1, self.y_embedder.y_proj.fc2):
            nn.init.normal_(linear.weight, std=0.02)
        for block in self.blocks:
            for linear in (block.cross_attn.proj, block.attn_temp.proj):
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # --- helpers ------------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    def null_text(self, batch_size: int) -> torch.Tensor:
        """The null caption ``[B, model_max_length, caption_channels]`` (for CFG and class dropout)."""
        return self.y_embedder.y_embedding[None].expand(batch_size, -1, -1).clone()

    def position_embedding(
        self, grid_h: int, grid_w: int, height: torch.Tensor, width: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """Resolution-scaled 2D tables ``[B, 1, grid_h*grid_w, C]`` for pixel sizes ``height, width [B]``.

        Built on the device from the size tensors each call (a few sin/cos per token, negligible next to
        one block) rather than cached per resolution: a cache keyed by the sizes' values would read them
        on the host, a device sync and a ``torch.compile`` graph break. The side ``sqrt(height * width)``
        and the scale are computed in float64 and rounded once to float32, as Python floats would be, so
        the table is the one of ``sincos_position_embedding_2d`` with a float scale, bit for bit.
        """
        side = torch.sqrt(height.double() * width.double())
        scale = (side / self.config.input_sq_size).float()
        table = sincos_position_embedding_2d(
            self.config.hidden_size, grid_h, grid_w, scale=scale, base_size=round((grid_h * grid_w) ** 0.5)
        )
        return table.to(dtype)[:, None]

    def _validate(self, x, timestep, y, mask, x_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.config
        if x.ndim != 5:
            raise ValueError(f"x must be a latent video [B, C, T, H, W], got shape {list(x.shape)}")
        b, c, t = x.shape[:3]
        if c != cfg.in_channels:
            raise ValueError(f"x has {c} channels, the model expects in_channels={cfg.in_channels}")
        if timestep.shape != (b,):
            raise ValueError(f"timestep must have shape [B]=[{b}], got {list(timestep.shape)}")
        if y.ndim == 4:
            if y.shape[1] != 1:
                raise ValueError(f"4-D caption embeddings must be [B, 1, L, C], got {list(y.shape)}")
            y = y[:, 0]
        if y.ndim != 3:
            raise ValueError(f"y must be caption embeddings [B, L, C] or [B, 1, L, C], got {list(y.shape)}")
        if y.shape[0] != b:
            raise ValueError(f"caption batch {y.shape[0]} does not match video batch {b}")
        if y.shape[2] != cfg.caption_channels:
            raise ValueError(f"caption width {y.shape[2]} != caption_channels={cfg.caption_channels}")
        if mask is not None and tuple(mask.shape) != (b, y.shape[1]):
            raise ValueError(f"mask must have shape [B, L]=[{b}, {y.shape[1]}], got {list(mask.shape)}")
        if x_mask is not None:
            if tuple(x_mask.shape) != (b, t):
                raise ValueError(f"x_mask must have shape [B, T]=[{b}, {t}], got {list(x_mask.shape)}")
            x_mask = x_mask.bool()
        return y, x_mask

    def _caption_mask(self, mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """SDPA boolean mask ``[B, 1, 1, L]`` and a ``[B]`` 0/1 multiplier that zeroes the cross-attention of
        samples whose caption is all padding (they attend to every token, avoiding a NaN softmax, and the
        result is dropped). Both are built whatever the mask holds: skipping them when nothing is padded
        would branch on the mask's values (a host sync and a ``torch.compile`` graph break), and an
        all-True SDPA mask and a factor of 1 give the same bits as no mask."""
        if mask is None:
            return None, None
        keep = mask.bool()
        empty = ~keep.any(dim=1)
        return (keep | empty[:, None])[:, None, None, :], (~empty).to(self.dtype)

    # --- forward ------------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        x_mask: torch.Tensor | None = None,
        fps: torch.Tensor | None = None,
        height: torch.Tensor | None = None,
        width: torch.Tensor | None = None,
        ar: torch.Tensor | None = None,
        num_frames: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict noise (and variance) for latent video ``x [B, C, T, H, W]`` at ``timestep [B]``.

        ``y`` caption embeddings ``[B, L, Cy]`` with ``mask [B, L]`` (1 = real token); ``x_mask [B, T]``
        (True = noisy frame, False = conditioning frame); micro-conditions ``[B]``: pixel ``height`` and
        ``width`` (default: latent size x ``vae_downsample_factor``), ``ar`` = H/W (default
        height/width), ``num_frames`` (default T), ``fps`` (default 24). Returns float32
        ``[B, out_channels, T, H, W]``.
        """
        cfg = self.config
        y, x_mask = self._validate(x, timestep, y, mask, x_mask)
        b, _, frames, lat_h, lat_w = x.shape
        dtype, device = self.dtype, x.device

        height = _check_condition("height", height, b)
        width = _check_condition("width", width, b)
        height = height if height is not None else torch.full((b,), float(lat_h * cfg.vae_downsample_factor))
        width = width if width is not None else torch.full((b,), float(lat_w * cfg.vae_downsample_factor))
        height, width = height.to(device), width.to(device)
        ar = _check_condition("ar", ar, b)
        ar = (ar if ar is not None else height.float() / width.float()).to(device)
        num_frames = _check_condition("num_frames", num_frames, b)
        num_frames = (num_frames if num_frames is not None else torch.full((b,), float(frames))).to(device)
        fps = _check_condition("fps", fps, b)
        fps = (fps if fps is not None else torch.full((b,), DEFAULT_FPS)).to(device)

        # conditioning vectors [B, C]
        data_info = torch.cat([self.csize_embedder(torch.stack([height, width], dim=1)),
                               self.ar_embedder(ar[:, None])], dim=1)
        frame_info = self.fl_embedder(num_frames[:, None]) + self.fps_embedder(fps[:, None])
        t_emb = self.t_embedder(timestep)
        t_spatial = self.t_block(t_emb + data_info)
        t_temporal = self.t_block_temp(t_emb + frame_info)
        t0_emb = t0_spatial = t0_temporal = None
        if x_mask is not None:
            t0_emb = self.t_embedder(torch.zeros_like(timestep))
            t0_spatial = self.t_block(t0_emb + data_info)
            t0_temporal = self.t_block_temp(t0_emb + frame_info)

        # caption tokens, with class dropout while training
        y = y.to(dtype)
        if self.training and cfg.class_dropout_prob > 0:
            y = self._drop_captions(y)
        y = self.y_embedder(y)
        y_mask, y_keep = self._caption_mask(mask)

        # patch tokens + resolution-scaled position embedding
        h = self.x_embedder(x.to(dtype))  # [B, T', S, C]
        grid_t = h.shape[1]
        grid_h = -(-lat_h // cfg.patch_size[1])
        grid_w = -(-lat_w // cfg.patch_size[2])
        h = h + self.position_embedding(grid_h, grid_w, height, width, dtype)
        if x_mask is not None and cfg.patch_size[0] > 1:
            # one mask value per temporal patch: a patch is noisy if any of its frames is
            x_mask = F.pad(x_mask, (0, -frames % cfg.patch_size[0])).view(b, grid_t, -1).any(dim=2)

        rope = self.rope.rotations(grid_t, device)
        for block in self.blocks:
            args = (h, y, y_mask, y_keep, t_spatial, t_temporal, t0_spatial, t0_temporal, x_mask, rope)
            if cfg.grad_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, *args, use_reentrant=False)
            else:
                h = block(*args)

        # 1.1 (final_layer_legacy): conditioning frames also saw the size/aspect-ratio embedding here
        legacy = cfg.final_layer_legacy and x_mask is not None
        t0_final = t0_emb + data_info if legacy else t0_emb
        h = self.final_layer(h, t_emb, t0_final, x_mask, legacy=legacy)  # [B, T', S, patch*out]
        return self.unpatchify(h, grid_h, grid_w, (frames, lat_h, lat_w)).float()

    def _drop_captions(self, y: torch.Tensor) -> torch.Tensor:
        null = self.y_embedder.y_embedding
        if y.shape[1:] != null.shape:
            raise ValueError(
                f"class dropout replaces captions by the null caption of shape {list(null.shape)}; "
                f"training captions must be padded to model_max_length, got {list(y.shape[1:])}"
            )
        drop = torch.rand(y.shape[0], device=y.device) < self.config.class_dropout_prob
        return torch.where(drop[:, None, None], null.to(y.dtype), y)

    def unpatchify(self, h: torch.Tensor, grid_h: int, grid_w: int, size: tuple[int, int, int]) -> torch.Tensor:
        """``[B, T', H'*W', pt*ph*pw*out]`` -> ``[B, out, T, H, W]`` cropped to the input ``size``."""
        pt, ph, pw = self.config.patch_size
        b, grid_t = h.shape[:2]
        h = h.reshape(b, grid_t, grid_h, grid_w, pt, ph, pw, self.config.out_channels)
        h = h.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, -1, grid_t * pt, grid_h * ph, grid_w * pw)
        t, hh, ww = size
        return h[:, :, :t, :hh, :ww]

    # --- persistence --------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = dataclasses.asdict(self.config)
        config["patch_size"] = list(config["patch_size"])
        (directory / CONFIG_FILE).write_text(json.dumps({"model_type": "STDiT2", **config}, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> STDiT2:
        """Load a model written by :meth:`save_pretrained` (returned in eval mode); ``overrides`` change
        behaviour flags such as ``grad_checkpointing`` or ``qk_norm_legacy``."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"STDiT2.from_pretrained: {path} not found (expected {CONFIG_FILE} and "
                                        f"{WEIGHTS_FILE} in {directory})")
        values = json.loads(config_path.read_text())
        model_type = values.pop("model_type", "STDiT2")
        if model_type != "STDiT2":
            raise ConfigError(f"{config_path} describes a {model_type!r}, not an STDiT2")
        config = strict_dataclass(STDiT2Config, {**values, **overrides}, where=str(config_path))
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(load_file(str(weights_path)), strict=True, assign=True)
        return model.eval()


# ---------------------------------------------------------------------------------------------------
# Released Open-Sora 1.1 checkpoints
# ---------------------------------------------------------------------------------------------------

_NESTING_KEYS = ("model", "state_dict", "module", "ema")
_IGNORED_KEYS = ("pos_embed", "pos_embed_temporal")  # fixed tables stored by older Open-Sora versions


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        candidates = [path / WEIGHTS_FILE, path / "ema.pt", path / "model.pt", path / "pytorch_model.bin"]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise FileNotFoundError(f"no checkpoint file in directory {path} (looked for "
                                    f"{', '.join(p.name for p in candidates)})")
        path = found[0]
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    while isinstance(state, Mapping):
        nested = [k for k in _NESTING_KEYS if isinstance(state.get(k), Mapping)]
        if not nested or any(isinstance(v, torch.Tensor) for v in state.values()):
            break
        state = state[nested[0]]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return dict(state)


def load_opensora_checkpoint(model: STDiT2, path: str | Path) -> STDiT2:
    """Load an Open-Sora 1.1 STDiT2 checkpoint (or one of ours) into ``model`` with strict checking.

    ``path``: ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` file or a directory holding
    ``model.safetensors`` (the layout of the released ``OpenSora-STDiT-v2-stage2/3``) or a 1.1 training
    checkpoint's ``ema.pt`` (its sharded ``model/`` folder is not read). Nested dicts
    (``model``, ``state_dict``, ``module``, ``ema``) and ``module.`` prefixes are unwrapped. A null caption
    ``y_embedder.y_embedding`` shorter than the model's is extended by repeating its last token (a
    longer one is truncated), as Open-Sora 1.1 does when going from 120 to 200 T5 tokens. Any other
    missing/unexpected key or shape mismatch is a ``ValueError`` listing them.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    state = _read_state_dict(path)
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    for key in _IGNORED_KEYS:
        state.pop(key, None)

    key = "y_embedder.y_embedding"
    target = model.y_embedder.y_embedding
    if key in state and state[key].ndim == 2 and state[key].shape[1] == target.shape[1]:
        null = state[key]
        if null.shape[0] < target.shape[0]:
            pad = null[-1:].expand(target.shape[0] - null.shape[0], -1)
            state[key] = torch.cat([null, pad], dim=0)
        elif null.shape[0] > target.shape[0]:
            state[key] = null[: target.shape[0]]

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        def listing(items: list[str]) -> str:
            return ", ".join(items[:10]) + (f" ... ({len(items)} in all)" if len(items) > 10 else "")

        parts = [f"{name}: {listing(items)}" for name, items in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                 if items]
        raise ValueError(f"checkpoint {path} does not match the model: " + "; ".join(parts))
    if model.config.qk_norm and not model.config.qk_norm_legacy:
        warnings.warn(
            "loading an Open-Sora checkpoint into a model with qk_norm_legacy=False: the released 1.1 weights "
            "were trained with RoPE applied before QK-norm; build the model with qk_norm_legacy=True for them",
            stacklevel=2,
        )
    # a model built under ``torch.device("meta")`` takes the checkpoint tensors themselves (no 2x memory)
    model.load_state_dict(state, strict=True, assign=any(p.is_meta for p in model.parameters()))
    return model


# ---------------------------------------------------------------------------------------------------
# Registry entry point
# ---------------------------------------------------------------------------------------------------


def build_model(name: str, **overrides: Any) -> STDiT2:
    """Build a named configuration (see ``MODEL_CONFIGS``), with keyword overrides of config fields.

    Build on the meta device (``with torch.device("meta"): build_model(...)``) to inspect shapes without
    allocating weights.
    """
    if name not in MODEL_CONFIGS:
        raise ConfigError(f"unknown STDiT2 model {name!r}; known models: {', '.join(MODEL_CONFIGS)}")
    config = strict_dataclass(STDiT2Config, {**MODEL_CONFIGS[name], **overrides}, where=f"model config {name!r}")
    return STDiT2(config)

