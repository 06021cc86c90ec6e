"""Training checkpoints: model, EMA, optimizer, sampler position, step and RNG states.

Layout of one checkpoint (``<root>/step_000120/``)::

    model/            the model's ``save_pretrained`` layout (config.json + model.safetensors)
    ema/              the fp32 EMA weights, same layout
    optimizer.pt      optimizer state (tensors and numbers only; read back with weights_only=True)
    optimizer/        instead of optimizer.pt when the optimizer is sharded (ZeRO): Booster's layout
    rng.pt            torch / numpy / python RNG states (tensors and numbers only)
    state.json        step, samples seen, sampler state, the model config, free-form extras

Writes are atomic: everything goes to ``<root>/.tmp-step_000120`` first, which is renamed into
place only once complete, and ``<root>/latest`` (a one-line pointer) is replaced last. A process
killed at any moment leaves the previous checkpoint intact and readable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from opensora_mlops.config import ConfigError
from opensora_mlops.training.ema import EMA, unwrap_module

STEP_PREFIX = "step_"
LATEST = "latest"
STATE_FILE = "state.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit the model being trained."""


def step_dirname(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


# ---------------------------------------------------------------- model weights (safetensors)


def _config_dict(module: nn.Module) -> dict[str, Any] | None:
    cfg = getattr(module, "config", None)
    if cfg is None:
        return None
    if dataclasses.is_dataclass(cfg):
        return json.loads(json.dumps(dataclasses.asdict(cfg), default=list))
    if isinstance(cfg, Mapping):
        return json.loads(json.dumps(dict(cfg), default=list))
    return None


def save_weights(module: nn.Module, directory: str | Path) -> Path:
    """Save ``module`` as safetensors through its ``save_pretrained`` when it has one."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    module = unwrap_module(module)
    if hasattr(module, "save_pretrained"):
        module.save_pretrained(directory)
    else:
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))
        cfg = _config_dict(module)
        if cfg is not None:
            (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return directory


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of the safetensors files in a ``save_pretrained`` directory."""
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no .safetensors weights in {directory}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def read_config(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / "config.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def config_differences(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """Fields whose values differ between two model configs (JSON-normalised), sorted."""
    norm_e = json.loads(json.dumps(dict(expected), default=list))
    norm_f = json.loads(json.dumps(dict(found), default=list))
    diffs = []
    for key in sorted(set(norm_e) | set(norm_f)):
        if norm_e.get(key, "<absent>") != norm_f.get(key, "<absent>"):
            diffs.append(f"{key}: checkpoint has {norm_f.get(key, '<absent>')!r}, model has {norm_e.get(key, '<absent>')!r}")
    return diffs


def load_weights_into(module: nn.Module, directory: str | Path, what: str = "model") -> None:
    """Load a ``save_pretrained`` directory into ``module`` strictly.

    A checkpoint written for another architecture is refused before any tensor is copied, with
    the differing config fields named (or the mismatching keys/shapes when there is no config).
    """
    module = unwrap_module(module)
    expected = _config_dict(module)
    found = read_config(directory)
    if expected is not None and found is not None:
        # fields that only change how the forward runs, not the weights, may differ
        runtime_only = {"grad_checkpointing", "class_dropout_prob", "model_type"}
        diffs = [d for d in config_differences(expected, found) if d.split(":", 1)[0] not in runtime_only]
        if diffs:
            raise CheckpointError(
                f"{what} checkpoint {directory} was written for another architecture; differing config "
                f"fields: " + "; ".join(diffs)
            )
    state = read_weights(directory)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(
                "shape mismatch "
                + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes[:5])
            )
        raise CheckpointError(f"{what} checkpoint {directory} does not fit the model: " + "; ".join(parts))
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(state[name].to(dtype=tensor.dtype, device=tensor.device))


# ---------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gaussian": float(np_state[4]),
        "python_version": int(py_state[0]),
        "python_state": torch.tensor(py_state[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_cached_gaussian"]),
        )
    )
    random.setstate((int(state["python_version"]), tuple(int(v) for v in state["python_state"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- whole checkpoints


def _fsync_tree(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _barrier(world_size: int) -> None:
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def save_checkpoint(
    root: str | Path,
    step: int,
    model: nn.Module,
    ema: EMA | None,
    optimizer: torch.optim.Optimizer,
    sampler_state: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    *,
    booster: Any = None,
    sharded_optimizer: bool = False,
    keep_last: int = 2,
    rank: int = 0,
    world_size: int = 1,
) -> Path:
    """Write a complete checkpoint for ``step`` atomically; returns its final directory.

    Every rank calls this; rank 0 writes the replicated parts. With ``sharded_optimizer`` (ZeRO)
    every rank writes its optimizer shard through ``booster.save_optimizer``.
    """
    root = Path(root)
    final = root / step_dirname(step)
    tmp = root / f".tmp-{step_dirname(step)}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # left over from a save that was killed
        tmp.mkdir(parents=True)
    _barrier(world_size)
    if sharded_optimizer:
        if booster is None:
            raise CheckpointError("a sharded optimizer is saved through the Booster; none was given")
        booster.save_optimizer(optimizer, str(tmp / "optimizer"), shard=True)
    if rank == 0:
        save_weights(model, tmp / "model")
        if ema is not None:
            save_weights(ema.shadow, tmp / "ema")
        if not sharded_optimizer:
            opt = optimizer.unwrap() if hasattr(optimizer, "unwrap") else optimizer
            torch.save(opt.state_dict(), tmp / "optimizer.pt")
        torch.save(capture_rng_state(), tmp / "rng.pt")
        meta = {
            "step": int(step),
            "sampler": dict(sampler_state),
            "model_config": _config_dict(unwrap_module(model)),
            "extra": dict(extra or {}),
            "world_size": int(world_size),
        }
        (tmp / STATE_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        _fsync_tree(tmp)
        if final.exists():
            # same step saved again after a resume: swap it out, never leave a gap with no checkpoint
            trash = root / f".trash-{step_dirname(step)}-{os.getpid()}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _atomic_write_text(root / LATEST, final.name + "\n")
        _prune(root, keep_last)
    _barrier(world_size)
    return final


def _complete_checkpoints(root: Path) -> list[Path]:
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX) :]))


def _prune(root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for old in _complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (the ``latest`` pointer, else a scan)."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.exists():
        candidate = root / pointer.read_text().strip()
        if (candidate / STATE_FILE).exists():
            return candidate
    complete = _complete_checkpoints(root)
    return complete[-1] if complete else None


def read_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.exists():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    return json.loads(state_file.read_text())


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    ema: EMA | None,
    optimizer: torch.optim.Optimizer | None,
    *,
    booster: Any = None,
    sharded_optimizer: bool = False,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore everything saved by :func:`save_checkpoint`; returns the ``state.json`` content."""
    path = Path(path)
    state = read_state(path)
    load_weights_into(model, path / "model", what="model")
    if ema is not None:
        ema_dir = path / "ema"
        if ema_dir.exists():
            load_weights_into(ema.shadow, ema_dir, what="EMA")
        else:  # EMA switched on after this checkpoint was written: start it from the weights
            load_weights_into(ema.shadow, path / "model", what="EMA")
    if optimizer is not None:
        if sharded_optimizer:
            if booster is None:
                raise CheckpointError("a sharded optimizer is loaded through the Booster; none was given")
            booster.load_optimizer(optimizer, str(path / "optimizer"))
        else:
            opt = optimizer.unwrap() if hasattr(optimizer, "unwrap") else optimizer
            opt.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    if restore_rng:
        restore_rng_state(torch.load(path / "rng.pt", map_location="cpu", weights_only=True))
    return state


def check_model_config(expected: Mapping[str, Any], checkpoint_dir: str | Path) -> None:
    """Refuse a checkpoint whose model config differs from ``expected``, naming the fields."""
    found = read_config(Path(checkpoint_dir))
    if found is None:
        return
    diffs = config_differences(expected, found)
    if diffs:
        raise ConfigError(f"checkpoint {checkpoint_dir} does not match the configured model: " + "; ".join(diffs))
