"""Exponential moving average of model weights, kept in fp32.

The trained model may run in bf16 (ZeRO-2 keeps fp32 master weights inside the optimizer); the EMA
copy is always fp32 so that averaging many tiny updates is not lost to bf16 rounding.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def unwrap_module(model: nn.Module) -> nn.Module:
    """The plain module under ColossalAI/DDP wrappers (``ModelWrapper.unwrap`` or ``.module``)."""
    seen = 0
    while seen < 8:
        if hasattr(model, "unwrap") and callable(model.unwrap):
            inner = model.unwrap()
            if inner is model:
                break
            model = inner
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            break
        seen += 1
    return model


class EMA:
    """fp32 shadow copy of a model, updated as ``ema = decay * ema + (1 - decay) * param``."""

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        source = unwrap_module(model)
        self.shadow = copy.deepcopy(source).to(dtype=torch.float32)
        self.shadow.eval()
        self.shadow.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """Fold the current weights of ``model`` into the average (buffers are copied as-is)."""
        d = self.decay if decay is None else float(decay)
        source = unwrap_module(model)
        params = dict(source.named_parameters())
        for name, shadow_param in self.shadow.named_parameters():
            current = params[name].detach().to(device=shadow_param.device, dtype=torch.float32)
            shadow_param.mul_(d).add_(current, alpha=1.0 - d)
        buffers = dict(source.named_buffers())
        for name, shadow_buf in self.shadow.named_buffers():
            if name in buffers:
                shadow_buf.copy_(buffers[name].to(dtype=shadow_buf.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.shadow.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
