"""The latent cache through Ray: actors on a local 2-CPU cluster (127.0.0.1, started and stopped here)
encode a stage's clips into the clip store as shards; the cache the trainer assembles from them equals
the one encoded in-process; a rerun encodes only missing shards; a clip that fails every retry is named
and the others are kept."""

from __future__ import annotations

import sys

import pytest
import ray
import torch

import test_latents_windows
from opensora_mlops.config import ConfigError
from opensora_mlops.curation.ray_executor import PartitionFailures, RayConfig
from opensora_mlops.training.latents import LatentCache, build_stage_caches
from opensora_mlops.training.ray_latents import store_filler
from test_latents_windows import INTERVAL, HashText, PoolingVAE, stage_clips

IDENTITY = {"vae": "pooling", "text": "hash"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return stage_clips(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():  # pragma: no cover - another module left one running
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    for module in (sys.modules[__name__], test_latents_windows):  # the workers cannot import test modules
        ray.cloudpickle.register_pickle_by_value(module)
    yield ray
    ray.shutdown()


class FailingVAE(PoolingVAE):
    """Raises on clips of ``failing_frames`` strided frames (one clip of the fixture's corpus)."""

    def __init__(self, failing_frames: int) -> None:
        self.failing_frames = failing_frames

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        if video.shape[2] == self.failing_frames:
            raise RuntimeError("VAE failure on this clip")
        return super().encode(video)


def _build(stage, out, vae=None, **kwargs):
    return build_stage_caches(stage, out, vae or PoolingVAE(), HashText(), frame_interval=INTERVAL,
                              reuse_key=IDENTITY, **kwargs)


def test_ray_actors_fill_the_clip_store_and_the_cache_equals_the_local_one(clips, tmp_path, cluster):
    stage, _ = clips
    config = RayConfig(max_in_flight=3)
    on_ray = _build(stage, tmp_path / "ray" / "stage1_latents", encode_missing=store_filler(config))
    shards = sorted((tmp_path / "ray" / "latent_clips").glob("*.safetensors"))
    assert len(shards) == len(stage)
    # every clip was in the store before the cache was assembled: this process encoded none
    assert on_ray["num_train_reused"] == on_ray["num_train"] == len(stage)
    local = _build(stage, tmp_path / "local" / "stage1_latents")
    assert local["num_train_reused"] == 0
    a, b = LatentCache(on_ray["train_dir"]), LatentCache(local["train_dir"])
    assert a.index.equals(b.index)
    assert a.tensors.keys() == b.tensors.keys()
    for name in a.tensors:
        torch.testing.assert_close(a.tensors[name], b.tensors[name], rtol=0, atol=0)

    # a lost shard: the rerun encodes that one only, the others are not touched
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    shards[0].unlink()
    again = _build(stage, tmp_path / "ray" / "rerun_latents", encode_missing=store_filler(config))
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "latent_clips").glob("*.safetensors")}
    assert after.keys() == before.keys() and again["num_train_reused"] == len(stage)
    assert [n for n in after if after[n] != before[n]] == [shards[0].name]


def test_a_clip_failing_every_retry_is_named_and_the_others_are_stored(clips, tmp_path, cluster):
    stage, total_frames = clips
    strided = [-(-n // INTERVAL) for n in total_frames]  # latent frames of each clip (the image: 1)
    unique = [n for n in strided if strided.count(n) == 1 and n > 1]
    assert unique, strided
    with pytest.raises(PartitionFailures, match="1 video") as failed:
        _build(stage, tmp_path / "stage1_latents", vae=FailingVAE(unique[0]),
               encode_missing=store_filler(RayConfig(max_retries=1)))
    assert "VAE failure on this clip" in str(failed.value)
    assert len(list((tmp_path / "latent_clips").glob("*.safetensors"))) == len(stage) - 1


def test_ray_latents_need_the_clip_store(clips, tmp_path):
    stage, _ = clips
    with pytest.raises(ConfigError, match="needs clip_store"):
        _build(stage, tmp_path / "a", encode_missing=store_filler(RayConfig()), clip_store=False)
