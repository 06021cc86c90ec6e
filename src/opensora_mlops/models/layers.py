"""Building blocks of ST-DiT-2 (see ``stdit2.py`` for the model and what it computes).

Reading order: functional helpers (timestep sinusoid, adaLN modulation, 2D sin-cos table, rotary
embedding) -> embedders (patches, timestep / micro-conditions, caption with its null embedding, RoPE
frequencies) -> attention, MLP and the ST-DiT-2 block -> the final layer. Module and attribute names
follow Open-Sora 1.1's state-dict keys so that its released checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CaptionEmbedder",
    "CrossAttention",
    "Mlp",
    "PatchEmbed3D",
    "RMSNorm",
    "RotaryEmbedding",
    "STDiT2Block",
    "SelfAttention",
    "SizeEmbedder",
    "T2IFinalLayer",
    "TimestepEmbedder",
    "apply_rope",
    "frame_modulation",
    "modulate",
    "rope_tables",
    "sincos_position_embedding_2d",
    "timestep_sinusoid",
]


# ---------------------------------------------------------------------------------------------------
# Small functional helpers
# ---------------------------------------------------------------------------------------------------


def timestep_sinusoid(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """GLIDE/DiT sinusoid of a 1-D tensor of (possibly fractional) scalars -> ``[N, dim]`` float32,
    cosines first then sines."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN-single modulation ``x * (1 + scale) + shift`` as one fused kernel."""
    return torch.addcmul(shift, x, 1 + scale)


def sincos_position_embedding_2d(
    dim: int, height: int, width: int, scale: float | torch.Tensor = 1.0, base_size: int | None = None
) -> torch.Tensor:
    """2D sin-cos table ``[height*width, dim]`` (row-major tokens), float32.

    Grid coordinates are ``arange(n) / scale``, stretched by ``base_size / n`` when ``base_size`` is
    given so that every aspect ratio spans the same range. The first half of the channels encodes the
    column (x) coordinate, the second half the row (y); each half is ``[sin, cos]`` over ``dim/4``
    frequencies ``10000 ** (-2i / (dim/2))`` (the MAE/PixArt convention the released weights expect).

    ``scale`` may be a float32 tensor ``[B]`` of per-sample scales: the result is then ``[B, height*width,
    dim]`` on its device, built without reading the scales on the host (so the model traces as one graph
    under ``torch.compile``), and each row equals the table of the float ``scale`` bit for bit.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding needs dim divisible by 4, got {dim}")
    per_sample = isinstance(scale, torch.Tensor)
    device = scale.device if per_sample else None
    half = dim // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, half, 2, device=device).float() / half))
    divisor = scale[:, None] if per_sample else scale  # [B, 1] over [n] coordinates
    rows = torch.arange(height, device=device) / divisor
    cols = torch.arange(width, device=device) / divisor
    if base_size is not None:
        rows = rows * (base_size / height)
        cols = cols * (base_size / width)

    def sincos(coord: torch.Tensor) -> torch.Tensor:
        out = coord[..., None] * inv_freq
        return torch.cat([torch.sin(out), torch.cos(out)], dim=-1)

    lead = rows.shape[:-1]  # () or (B,)
    col_emb = sincos(cols).unsqueeze(-3).expand(*lead, height, width, half)
    row_emb = sincos(rows).unsqueeze(-2).expand(*lead, height, width, half)
    return torch.cat([col_emb, row_emb], dim=-1).reshape(*lead, height * width, dim)


def rope_tables(freqs: torch.Tensor, length: int) -> torch.Tensor:
    """Rotations ``[length, head_dim/2]`` (complex64, unit modulus) of interleaved-pair rotary embedding:
    channel pair (2i, 2i+1) at position ``p`` turns by angle ``p * freqs[i]`` (rotary-embedding-torch's
    layout, which the released weights expect)."""
    angles = torch.arange(length, device=freqs.device, dtype=torch.float32)[:, None] * freqs.float()[None]
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x [..., D]`` by ``rotation [..., D/2]`` (broadcast, e.g. ``[L, D/2]`` for
    ``x [..., L, D]``): one complex multiply (one memory pass each way, several times cheaper than the
    cos/sin/rotate-half form), in float32."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------------------------------


class PatchEmbed3D(nn.Module):
    """Zero-pad ``[B, C, T, H, W]`` to a multiple of the patch, Conv3d with kernel = stride = patch,
    and return tokens ``[B, T', H'*W', hidden]``."""

    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pt, ph, pw = self.patch_size
        _, _, t, h, w = x.shape
        pad = (-w % pw, -h % ph, -t % pt)
        if any(pad):
            x = F.pad(x, (0, pad[0], 0, pad[1], 0, pad[2]))
        x = self.proj(x)  # [B, hidden, T', H', W']
        return x.flatten(3).permute(0, 2, 3, 1)


class TimestepEmbedder(nn.Module):
    """Scalar -> 256-d sinusoid -> Linear, SiLU, Linear (DiT). Also embeds micro-conditions."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_sinusoid(t, self.frequency_dim).to(self.mlp[0].weight.dtype))


class SizeEmbedder(TimestepEmbedder):
    """Embeds each column of ``[B, k]`` scalars separately and concatenates: ``[B, k * hidden]``."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        batch = s.shape[0]
        return super().forward(s.reshape(-1)).reshape(batch, -1)


class CaptionEmbedder(nn.Module):
    """Projects caption tokens (timm-Mlp layout: fc1, tanh-GELU, fc2) and holds the null caption.

    ``y_embedding`` is a fixed random buffer, not a parameter, exactly as in Open-Sora 1.1: the null
    caption used for class dropout and classifier-free guidance is whatever this buffer holds.
    """

    def __init__(self, caption_channels: int, hidden_size: int, token_num: int) -> None:
        super().__init__()
        self.y_proj = Mlp(caption_channels, hidden_size, hidden_size)
        self.register_buffer("y_embedding", torch.randn(token_num, caption_channels) / caption_channels**0.5)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.y_proj(y)


class RotaryEmbedding(nn.Module):
    """Rotary frequencies ``theta ** (-2i / dim)``, kept as the buffer ``rope.freqs`` (rotary-embedding-
    torch's state-dict key) so released checkpoints load.

    :meth:`rotations` recomputes the frequencies in float32 instead of reading the buffer: after
    ``model.to(torch.bfloat16)`` the buffer holds bf16-rounded frequencies (a 0.4% error that grows
    with the frame position), and they are fixed, never learned.
    """

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.dim, self.theta = dim, theta
        self.register_buffer("freqs", self.exact_freqs())

    def exact_freqs(self, device: torch.device | None = None) -> torch.Tensor:
        return 1.0 / self.theta ** (torch.arange(0, self.dim, 2, device=device).float() / self.dim)

    def rotations(self, length: int, device: torch.device) -> torch.Tensor:
        """Complex rotations ``[length, dim/2]`` for positions ``0 .. length-1``."""
        return rope_tables(self.exact_freqs(device), length)


# ---------------------------------------------------------------------------------------------------
# Attention, MLP, block
# ---------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a learned weight (statistics in float32, like LlamaRMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), eps=self.eps) * self.weight


class SelfAttention(nn.Module):
    """Multi-head self-attention on ``[N, L, C]`` with optional QK-RMSNorm and rotary embedding."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, qk_norm_legacy: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(dim // num_heads) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dim // num_heads) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.qk_norm_legacy = qk_norm_legacy

    def qk_norm(self, qk: torch.Tensor) -> torch.Tensor:
        """RMSNorm of stacked ``[..., 2, heads, head_dim]`` queries and keys in one kernel, each its own weight."""
        if isinstance(self.q_norm, nn.Identity):
            return qk
        weight = torch.stack([self.q_norm.weight, self.k_norm.weight])[:, None]  # [2, 1, head_dim]
        return F.rms_norm(qk, (qk.shape[-1],), eps=self.q_norm.eps) * weight

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        n, length, dim = x.shape
        # split (not slicing/indexing) into views of the [N, L, 3, heads, D] projection: its backward writes the
        # three gradients into one buffer in the layout the linear's backward reads, with no zero-filled
        # [3, ...] buffers and no permuted copy
        qk, v = self.qkv(x).view(n, length, 3, self.num_heads, -1).split([2, 1], dim=2)
        if rope is not None:
            rope = rope[:, None, None]  # [L, 1, 1, D/2] over [N, L, 2, heads, D/2]
        if rope is not None and self.qk_norm_legacy:  # 1.1: rotate, then normalise the rotated vectors
            qk = self.qk_norm(apply_rope(qk, rope))
        else:
            qk = self.qk_norm(qk)
            if rope is not None:
                qk = apply_rope(qk, rope)
        q, k = (a.transpose(1, 2) for a in qk.unbind(2))  # [N, heads, L, D] views
        out = F.scaled_dot_product_attention(q, k, v[:, :, 0].transpose(1, 2))  # [N, heads, L, head_dim]
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class CrossAttention(nn.Module):
    """Video tokens ``[B, N, C]`` attend to caption tokens ``[B, L, C]``; ``attn_mask [B, 1, 1, L]``
    (True = real token) keeps each sample on its own non-padding tokens."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, attn_mask: torch.Tensor | None, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, n, dim = x.shape
        q = self.q_linear(x).view(b, n, self.num_heads, -1).transpose(1, 2)
        k, v = self.kv_linear(cond).view(b, cond.shape[1], 2, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if keep is not None:
            # [B] 0/1: a caption with no real token (attending everywhere, see STDiT2._caption_mask) gets zero
            # values, hence a zero attention output; scaling the L caption values costs far less than
            # scaling the output of every video token, and a factor of 1 changes no bit
            v = v * keep[:, None, None, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, dim))


class Mlp(nn.Module):
    """fc1 -> tanh-GELU -> fc2 (timm's Mlp key layout)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def frame_modulation(
    table: torch.Tensor, cond: torch.Tensor, cond0: torch.Tensor | None, x_mask: torch.Tensor | None
) -> tuple[torch.Tensor, ...]:
    """Per-frame adaLN parameters: ``table [k, C] + cond [B, k*C]`` -> k tensors ``[B, T|1, 1, C]``.

    ``cond`` may also be ``[B, C]``, added to every row (the final layer). With ``x_mask`` the frames
    marked False (conditioning frames) take ``table + cond0`` (timestep 0).
    """
    dim = table.shape[1]
    mod = (table + cond.view(cond.shape[0], -1, dim))[:, None]  # [B, 1, k, C]
    if x_mask is not None:
        mod0 = (table + cond0.view(cond0.shape[0], -1, dim))[:, None]
        mod = torch.where(x_mask[:, :, None, None], mod, mod0)  # [B, T, k, C]
    return mod.unsqueeze(3).unbind(2)


class STDiT2Block(nn.Module):
    """Spatial attn -> temporal attn (RoPE) -> cross attn -> MLP on ``x [B, T, S, C]``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = True, qk_norm_legacy: bool = False
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn = SelfAttention(dim, num_heads, qk_norm)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)
        self.norm_temp = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn_temp = SelfAttention(dim, num_heads, qk_norm, qk_norm_legacy=qk_norm_legacy)
        self.scale_shift_table_temporal = nn.Parameter(torch.randn(3, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, S, C]
        y: torch.Tensor,  # [B, L, C] projected caption
        y_mask: torch.Tensor | None,  # [B, 1, 1, L] bool or None (attend everywhere)
        y_keep: torch.Tensor | None,  # [B] 0/1, zero for all-padding captions; None without a caption mask
        t_spatial: torch.Tensor,  # [B, 6C]
        t_temporal: torch.Tensor,  # [B, 3C]
        t0_spatial: torch.Tensor | None,
        t0_temporal: torch.Tensor | None,
        x_mask: torch.Tensor | None,  # [B, T] bool
        rope: torch.Tensor,  # [T, head_dim/2] complex rotations
    ) -> torch.Tensor:
        b, t, s, c = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = frame_modulation(
            self.scale_shift_table, t_spatial, t0_spatial, x_mask
        )
        shift_tmp, scale_tmp, gate_tmp = frame_modulation(
            self.scale_shift_table_temporal, t_temporal, t0_temporal, x_mask
        )

        # spatial self-attention: each frame's S tokens
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        h = self.attn(h.reshape(b * t, s, c)).view(b, t, s, c)
        x = torch.addcmul(x, gate_msa, h)

        # temporal self-attention: each location's T tokens, rotary positions over frames
        h = modulate(self.norm_temp(x), shift_tmp, scale_tmp).transpose(1, 2).reshape(b * s, t, c)
        h = self.attn_temp(h, rope=rope).view(b, s, t, c).transpose(1, 2)
        x = torch.addcmul(x, gate_tmp, h)

        # cross-attention to the caption (not modulated)
        x = x + self.cross_attn(x.reshape(b, t * s, c), y, y_mask, y_keep).view(b, t, s, c)

        # MLP
        h = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return torch.addcmul(x, gate_mlp, h)


class T2IFinalLayer(nn.Module):
    """LayerNorm, adaLN-single modulation from ``table [2, C] + t``, linear to patch * out_channels."""

    def __init__(self, hidden_size: int, num_patch: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, num_patch * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        t0: torch.Tensor | None,
        x_mask: torch.Tensor | None,
        legacy: bool = False,
    ) -> torch.Tensor:
        # t, t0: [B, C]; the table's two rows are shift and scale.
        if legacy and x_mask is not None:
            # 1.1: conditioning frames re-normalised the already modulated tokens, then modulated them
            # again with t0 + data_info (passed in as t0).
            shift, scale = frame_modulation(self.scale_shift_table, t, None, None)
            noisy = modulate(self.norm_final(x), shift, scale)
            shift0, scale0 = frame_modulation(self.scale_shift_table, t0, None, None)
            conditioned = modulate(self.norm_final(noisy), shift0, scale0)
            return self.linear(torch.where(x_mask[:, :, None, None], noisy, conditioned))
        shift, scale = frame_modulation(self.scale_shift_table, t, t0, x_mask)
        return self.linear(modulate(self.norm_final(x), shift, scale))
