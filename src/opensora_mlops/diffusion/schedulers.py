"""One scheduler interface over the diffusion objectives, chosen by config and saved with the model.

A scheduler config is a JSON-able dict with a ``type``:

* ``iddpm`` — Open-Sora 1.1's chain (1000 linear-beta steps, learned-range variance, respaced
  sampling) with ``prediction: epsilon`` (the released weights) or ``prediction: v``;
* ``rflow`` — rectified flow as Open-Sora 1.2 trains it (logit-normal times, Euler sampling).

Every scheduler offers the same calls: ``training_losses`` (``loss``, ``mse``, ``x0_mse`` per sample),
``sample_timesteps``, ``q_sample``, ``predict_xstart``, ``sample``, ``with_sampling(steps, cfg_scale)``,
``to_config`` and the attributes ``num_timesteps``, ``num_sampling_steps``, ``cfg_scale``,
``cfg_channel``, ``prediction``. Training writes ``to_config()`` beside the weights as
``scheduler.json``, and generation, evaluation and export rebuild the same parameterisation from it:
a v-trained model sampled as ε would produce noise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opensora_mlops.config import ConfigError
from opensora_mlops.diffusion.iddpm import IDDPM
from opensora_mlops.diffusion.rectified_flow import RectifiedFlow

SCHEDULER_FILE = "scheduler.json"
SCHEDULER_TYPES: dict[str, type] = {"iddpm": IDDPM, "rflow": RectifiedFlow}

Scheduler = IDDPM | RectifiedFlow


def build_scheduler(config: Mapping[str, Any] | None = None, steps: int | None = None,
                    cfg_scale: float | None = None) -> Scheduler:
    """The scheduler a config names (no config: Open-Sora 1.1's ε IDDPM), optionally re-stepped.

    ``steps`` sets the number of sampling steps (IDDPM respacing, Euler steps for rflow) and
    ``cfg_scale`` the guidance; the training parameterisation stays as configured.
    """
    values = dict(config or {})
    kind = values.get("type", "iddpm")
    if kind not in SCHEDULER_TYPES:
        raise ConfigError(f"scheduler type must be one of {sorted(SCHEDULER_TYPES)}, got {kind!r}")
    scheduler = SCHEDULER_TYPES[kind].from_config(values)
    if steps is not None or cfg_scale is not None:
        scheduler = scheduler.with_sampling(steps=steps, cfg_scale=cfg_scale)
    return scheduler


def save_scheduler(scheduler: Scheduler, directory: str | Path) -> Path:
    """Write ``scheduler.json`` into ``directory`` (beside a model's weights)."""
    path = Path(directory) / SCHEDULER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(scheduler.to_config(), indent=2) + "\n")
    return path


def load_scheduler_config(directory: str | Path) -> dict[str, Any] | None:
    """The scheduler config saved in ``directory``, or None when there is none (1.1-era weights)."""
    path = Path(directory) / SCHEDULER_FILE
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a JSON object, got {type(values).__name__}")
    return values
