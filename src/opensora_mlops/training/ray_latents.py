"""A stage's latent cache encoded on a Ray cluster: the clips' VAE latents computed by a pool of Ray
actors (one per GPU on a cluster, one per CPU on a laptop), each writing every finished clip as its own
shard of the :class:`~opensora_mlops.training.latents.ClipLatentStore` (``<address>.safetensors``,
content-addressed, written atomically). The training process then assembles the stage's cache from
those shards without loading a video or running the VAE itself, as Open-Sora's successors precompute
latents offline.

Why actors: an actor loads the VAE once and keeps it on its GPU for every clip it is given; a task per
clip would load it again each time. A failed clip is retried (a dead actor is replaced), finished shards
are kept whatever happens to the others, and a rerun encodes only the missing ones, because the store is
looked up by address before anything is submitted. The store folder must be one every node reaches
(a shared mount): the actors write there and the trainer reads there.

Text embeddings are not sharded here: the trainer encodes the captions of the whole stage in batches
while it assembles the cache (cheap beside the VAE for the embedded encoder; the cluster's T5-XXL
setup trains ``data_source: online``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from opensora_mlops.curation.ray_executor import ActorPool, RayConfig, connect, import_ray, map_with_retries
from opensora_mlops.data.sampler import SampleKey

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipJob:
    """One clip to encode: its store address, the sample key its split's loader takes, its caption."""

    address: str
    key: SampleKey
    text: str
    split: str = "train"


class _ClipEncoderActor:
    """Holds the VAE (on ``device``) and the stage's clip loaders (per split); encodes clips into the store."""

    def __init__(self, vae: Any, loads: Mapping[str, Callable[[SampleKey], Any]], store_dir: str,
                 device: str | None) -> None:
        from opensora_mlops.training.latents import ClipLatentStore

        self.device = device
        self.vae = vae.to(device) if device else vae
        self.loads = dict(loads)
        self.store = ClipLatentStore(store_dir)

    def _encode_video(self, video):
        return self.vae.encode(video.to(self.device) if self.device else video)

    def encode(self, job: ClipJob) -> str:
        from opensora_mlops.training.latents import _encode_clip

        clip = _encode_clip(job.key, self.loads[job.split](job.key), self._encode_video, job.text)
        if clip["row"] == job.key.row:  # a broken file's stand-in is not this clip: the trainer handles it
            self.store.put(job.address, clip)
        return job.address


def encode_clips_on_ray(
    jobs: Sequence[ClipJob],
    loads: Mapping[str, Callable[[SampleKey], Any]],
    vae: Any,
    store_dir: str | Path,
    config: RayConfig,
    device: str | None = None,
    desc: str = "latents",
) -> int:
    """Encode ``jobs`` into the clip store at ``store_dir`` on the cluster of ``config`` (each job
    loaded by ``loads[job.split]``); the number encoded. ``device`` "cuda…": GPU actors (``gpus_per_actor`` each; a ConfigError on a cluster without
    GPUs); otherwise CPU actors of ``cpus_per_task`` CPUs, as many as the cluster's CPUs hold. Raises
    :class:`~opensora_mlops.curation.ray_executor.PartitionFailures` naming clips that failed every retry
    (the others are stored)."""
    if not jobs:
        return 0
    ray = import_ray()
    connect(config)
    gpu = bool(device) and str(device).startswith("cuda")
    actor_cls = ray.remote(_ClipEncoderActor)
    pool = ActorPool(actor_cls, config, desc, len(jobs), gpu=gpu,
                     args=(ray.put(vae), loads, str(Path(store_dir).absolute()), device if gpu else None))
    log.info("%s: %d clip(s) to encode in %d Ray actor(s)", desc, len(jobs), len(pool.actors))
    with tqdm(total=len(jobs), desc=f"{desc} (ray, {len(pool.actors)} actors)", unit="clip") as bar:
        map_with_retries(jobs, lambda job: job.address, lambda job, actor: actor.encode.remote(job), config, desc,
                         lambda _name: bar.update(), pool)
    return len(jobs)


def store_filler(config: RayConfig, device: str | None = None, desc: str = "latents"):
    """``encode_missing`` for :func:`~opensora_mlops.training.latents.build_stage_caches`: the clips of
    every split that the store lacks, encoded into it on the Ray cluster of ``config``."""

    def encode_missing(splits: Mapping[str, tuple[Any, Callable, Callable]], vae: Any, store: Any) -> None:
        from opensora_mlops.training.latents import row_key

        jobs = []
        for split, (rows, _load, address) in splits.items():
            for r in range(len(rows)):
                key = row_key(rows, r)
                where = address(key)
                if where is not None and not store.has(where):
                    jobs.append(ClipJob(where, key, str(rows.iloc[r]["text"]), split))
        loads = {split: load for split, (_rows, load, _address) in splits.items()}
        encode_clips_on_ray(jobs, loads, vae, store.directory, config, device=device, desc=desc)

    return encode_missing
