"""ColossalAI Booster setup: process group, plugin, precision and optimizer.

``torch_ddp`` → ``TorchDDPPlugin`` (runs on CPU with gloo: the embedded default);
``zero2`` → ``LowLevelZeroPlugin(stage=2, precision="bf16")`` (GPU only: refused without CUDA).
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from opensora_mlops.config import ConfigError

PLUGINS = ("torch_ddp", "zero2")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
OPTIMIZERS = ("auto", "adamw", "hybrid_adam")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # True when this module created the process group and must destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _quiet_colossalai_import() -> None:
    # colossalai warns about optional CUDA kernels (apex, tensornvme) at import; irrelevant here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import colossalai  # noqa: F401
        import colossalai.booster  # noqa: F401


def init_distributed(seed: int = 0) -> DistributedContext:
    """Join the process group started by torchrun / ``colossalai run``, or make a 1-process one.

    Under torchrun (``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` set) this is
    ``colossalai.launch_from_torch``; otherwise a single-process gloo group on a free localhost
    port, so the same Booster code path runs inside a Kedro node.
    """
    _quiet_colossalai_import()
    import colossalai

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        owns = False
    elif all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        colossalai.launch_from_torch(seed=seed, verbose=False)
        rank, world = dist.get_rank(), dist.get_world_size()
        owns = True
    else:
        colossalai.launch(rank=0, world_size=1, host="127.0.0.1", port=free_port(), local_rank=0, seed=seed,
                          verbose=False)
        rank, world = 0, 1
        owns = True
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return DistributedContext(rank=rank, world_size=world, local_rank=local_rank, device=device, owns_group=owns)


def shutdown_distributed(ctx: DistributedContext) -> None:
    if ctx.owns_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_plugin(plugin: str, dtype: str, optimizer: str) -> None:
    """Refuse an impossible plugin/precision/optimizer combination before any work starts."""
    if plugin not in PLUGINS:
        raise ConfigError(f"plugin must be one of {list(PLUGINS)}, got {plugin!r}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    if plugin == "zero2" and not torch.cuda.is_available():
        raise ConfigError(
            "plugin 'zero2' (ColossalAI LowLevelZeroPlugin, stage 2, bf16) needs CUDA GPUs and this machine has "
            "none; use plugin: torch_ddp (with dtype: fp32) for CPU training"
        )
    if plugin == "zero2" and dtype != "bf16":
        raise ConfigError(f"plugin 'zero2' trains in bf16 with fp32 master weights; got dtype {dtype!r}")
    if optimizer == "hybrid_adam" and not torch.cuda.is_available():
        raise ConfigError("optimizer 'hybrid_adam' (colossalai.nn.optimizer.HybridAdam) needs CUDA; use adamw")


def build_plugin(plugin: str, grad_clip: float, find_unused_parameters: bool = False) -> Any:
    _quiet_colossalai_import()
    from colossalai.booster.plugin import LowLevelZeroPlugin, TorchDDPPlugin

    if plugin == "torch_ddp":
        return TorchDDPPlugin(find_unused_parameters=find_unused_parameters)
    if plugin == "zero2":
        # the plugin clips inside its own step (grads are sharded across ranks)
        return LowLevelZeroPlugin(stage=2, precision="bf16", max_norm=float(grad_clip or 0.0), initial_scale=2**16)
    raise ConfigError(f"plugin must be one of {list(PLUGINS)}, got {plugin!r}")


def build_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, eps: float, betas: tuple[float, float]
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "auto":
        name = "hybrid_adam" if torch.cuda.is_available() else "adamw"
    if name == "hybrid_adam":
        _quiet_colossalai_import()
        from colossalai.nn.optimizer import HybridAdam

        return HybridAdam(params, lr=lr, weight_decay=weight_decay, eps=eps, betas=betas, adamw_mode=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=eps, betas=betas)


def make_booster(plugin_obj: Any) -> Any:
    _quiet_colossalai_import()
    from colossalai.booster import Booster

    return Booster(plugin=plugin_obj)


def autocast(plugin: str, dtype: str, device: torch.device):
    """bf16 autocast for the DDP plugin (ZeRO casts the model itself); a no-op for fp32.

    On CPU the attention runs on the math SDPA kernel under bf16: the CPU flash kernel's bf16 backward
    is slow, so a depth-4 STDiT2 training step in bf16 is 1.35-1.65x fp32 with flash and 1.93x with math
    (BENCHMARKS.md, bf16 on CPU); in fp32 both kernels cost the same and nothing changes.
    """
    if plugin == "torch_ddp" and dtype == "bf16":
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast(device_type=device.type, dtype=torch.bfloat16))
        if device.type == "cpu":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        return stack
    return contextlib.nullcontext()
