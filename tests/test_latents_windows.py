"""Latent cache windows: a clip is cached whole (strided frames, or non-overlapping tiles), any window of
the bucket's frame count in it is a training sample, and training takes a different one each epoch
(resumable, deterministic)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from opensora_mlops.config import ConfigError
from opensora_mlops.curation.synthetic import generate_corpus
from opensora_mlops.data.buckets import BucketConfig, assign_buckets
from opensora_mlops.data.sampler import VariableVideoBatchSampler
from opensora_mlops.data.video_io import read_video
from opensora_mlops.training.latents import (
    INDEX_FILE,
    TENSORS_FILE,
    CachedBatches,
    LatentCache,
    build_stage_caches,
    window_of,
    write_latent_cache,
)

FRAMES, INTERVAL = 4, 2  # bucket of 4 frames at interval 2: windows of 8 source frames
CONFIG = BucketConfig({"144p": {1: [1.0, 2], FRAMES: [1.0, 2]}})


class PoolingVAE:
    """A deterministic stand-in encoder: 8x8 average pooling of the RGB frames (latent = what the
    frames show, so windows of a moving shape give different latents)."""

    latent_channels = 3

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        pooled = torch.nn.functional.avg_pool2d(frames, 8, ceil_mode=True)
        return pooled.reshape(b, t, c, *pooled.shape[-2:]).permute(0, 2, 1, 3, 4)


class HashText:
    """Captions to fixed embeddings (one per word position) and masks."""

    output_dim, model_max_length = 4, 12

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        emb = torch.zeros(len(texts), self.model_max_length, self.output_dim)
        mask = torch.zeros(len(texts), self.model_max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            for j, word in enumerate(text.split()[: self.model_max_length]):
                emb[i, j] = torch.tensor([(hash(word) >> k) % 7 for k in range(self.output_dim)], dtype=torch.float32)
                mask[i, j] = 1
        return emb, mask


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return stage_clips(tmp_path_factory.mktemp("corpus"))


def stage_clips(root):
    """Four single-shot clips of 18-30 frames at 144x256 and a still image, as a stage's bucket table."""
    cfg = {"seed": 2, "num_single_shot": 4, "single_shot_sizes": [[144, 256]],
           "single_shot_duration_seconds": [0.75, 1.0], "num_videos": 0, "num_large": 0, "num_images": 1,
           "sizes": [[144, 256]], "defects": {}}
    videos = generate_corpus(root, cfg, progress=False)
    table = pd.DataFrame([{"path": str(root / v.path), "text": v.caption, "num_frames": v.num_frames,
                           "height": v.height, "width": v.width, "fps": v.fps or 0.0} for v in videos])
    stage = assign_buckets(table, CONFIG, frame_interval=INTERVAL, seed=0)
    assert stage["keep"].all()
    return stage, stage["num_frames"].tolist()


def test_window_of_visits_every_window_once_per_cycle():
    for k in (1, 2, 5):
        for row in range(4):
            for cycle in range(3):
                seen = [window_of(7, cycle * k + e, row, k) for e in range(k)]
                assert sorted(seen) == list(range(k))
    assert window_of(7, 3, 2, 5) == window_of(7, 3, 2, 5)  # a function of its arguments only
    orders = {tuple(window_of(7, e, row, 5) for e in range(5)) for row in range(20)}
    assert len(orders) > 5  # clips do not share one order


@pytest.mark.parametrize("mode", ["slice", "tile"])
def test_stage_cache_holds_whole_clips_and_training_cycles_through_their_windows(clips, tmp_path, mode):
    stage, total_frames = clips
    manifest = build_stage_caches(stage, tmp_path / "cache", PoolingVAE(), HashText(),
                                  frame_interval=INTERVAL, seed=3, windows=mode)  # fmt: skip
    cache = LatentCache(manifest["train_dir"])
    is_image = cache.index["bucket_num_frames"].to_numpy() == 1
    # slice: every 2nd frame encoded once, any 4 consecutive latent frames a window; tile: each
    # non-overlapping window of 8 source frames encoded on its own
    strided = np.array([-(-n // INTERVAL) for n in total_frames])
    expected = np.where(is_image, 1, strided - FRAMES + 1 if mode == "slice" else
                        np.array(total_frames) // (FRAMES * INTERVAL))
    assert cache.num_windows.tolist() == expected.tolist() and expected[~is_image].min() >= 2
    assert manifest["num_train_windows"] == expected.sum() == cache.meta["num_windows"]
    for row in range(len(cache)):
        frames = cache.tensors[f"frames.{row}"]
        if is_image[row]:
            assert frames.tolist() == [0] and cache.latent(row).shape[1] == 1
            continue
        assert torch.all(frames[1:] > frames[:-1]) and int(frames[-1]) < total_frames[row]
        if mode == "slice":
            assert frames.tolist() == list(range(0, total_frames[row], INTERVAL))
        # each window's latent is the VAE's encoding of exactly its frames
        video = torch.from_numpy(read_video(stage["path"].iloc[row])[0]).permute(3, 0, 1, 2).float() / 127.5 - 1
        for window in range(cache.num_windows[row]):
            start = int(cache.tensors[f"starts.{row}"][window])
            picked = frames[start : start + FRAMES]
            assert len(picked) == FRAMES and picked[-1] - picked[0] < FRAMES * INTERVAL
            torch.testing.assert_close(cache.latent(row, window), PoolingVAE().encode(video[None, :, picked])[0],
                                       atol=2e-2, rtol=0)  # fmt: skip
        # a moving shape: the windows of a clip show different frames
        assert not torch.allclose(cache.latent(row, 0), cache.latent(row, 1))
    # the cache's batches: each clip at the window its epoch picks, all of them over K epochs
    sampler = VariableVideoBatchSampler(cache.index, CONFIG, seed=5, reassign_each_epoch=False)
    stream = iter(CachedBatches(cache, sampler))
    planner = VariableVideoBatchSampler(cache.index, CONFIG, seed=5, reassign_each_epoch=False)
    seen: dict[int, set] = {}
    for epoch in range(int(expected.max())):
        planner.set_epoch(epoch)
        for rows in planner.plan().batches:
            batch = next(stream)
            for i, row in enumerate(rows):
                window = window_of(5, epoch, int(row), int(expected[row]))
                torch.testing.assert_close(batch["x"][i], cache.latent(int(row), window))
                seen.setdefault(int(row), set()).add(window)
    assert all(seen[r] == set(range(expected[r])) for r in range(len(cache)) if expected[r] == expected.max())
    assert len(seen) == len(cache)  # every clip (partial batches included) every epoch


def test_cached_batches_resume_at_the_same_windows(clips, tmp_path):
    stage, _ = clips
    manifest = build_stage_caches(stage, tmp_path / "cache", PoolingVAE(), HashText(), frame_interval=INTERVAL)
    cache = LatentCache(manifest["train_dir"])
    def fresh():
        return CachedBatches(cache, VariableVideoBatchSampler(cache.index, CONFIG, seed=1, reassign_each_epoch=False))

    straight = fresh()
    stream = iter(straight)
    reference = [next(stream)["x"] for _ in range(7)]  # crosses into later epochs
    interrupted = fresh()
    stream = iter(interrupted)
    for _ in range(4):
        next(stream)
    resumed = fresh()
    resumed.load_state_dict(interrupted.state_dict())
    stream = iter(resumed)
    for expected in reference[4:]:
        torch.testing.assert_close(next(stream)["x"], expected)


def test_write_latent_cache_takes_clips_samples_and_tiles(tmp_path):
    table = pd.DataFrame({"path": ["a", "b", "c"], "text": ["one two", "three", "four"], "fps": [24.0, 30.0, 8.0],
                          "bucket_id": ["b", "b", "b"], "bucket_num_frames": [2, 2, 2], "bucket_height": [16, 16, 16],
                          "bucket_width": [16, 16, 16]})  # fmt: skip
    ramp = torch.linspace(-1, 1, 5)[None, :, None, None].expand(3, 5, 16, 16)  # frame f has value ramp[f]
    loaded = {0: [torch.full((3, 2, 16, 16), v) for v in (-0.5, 0.0, 0.5)],  # three tiles
              1: {"video": ramp, "fps": 12.0, "text": "five", "frame_indices": torch.arange(0, 10, 2)},
              2: torch.full((3, 2, 16, 16), 0.25)}
    directory = write_latent_cache(tmp_path / "c", table, lambda key: loaded[key.row], PoolingVAE().encode,
                                   HashText().encode, {"stage": "x"}, batch_size=2)
    cache = LatentCache(directory)
    assert cache.num_windows.tolist() == [3, 4, 1] and cache.index["num_latent_frames"].tolist() == [6, 5, 2]
    assert [float(cache.latent(0, w).mean()) for w in range(3)] == pytest.approx([-0.5, 0.0, 0.5])
    # a 5-frame clip in a 2-frame bucket: windows at every start, frames (f, f+1)
    for w in range(4):
        assert cache.latent(1, w)[0, :, 0, 0].tolist() == pytest.approx(ramp[0, w : w + 2, 0, 0].tolist())
    assert cache.tensors["frames.1"].tolist() == [0, 2, 4, 6, 8]
    assert cache.index["fps"].tolist() == [24.0, 12.0, 8.0]  # the sample's fps wins
    torch.testing.assert_close(cache.get([1])["y"], HashText().encode(["five"])[0])  # and its own caption
    batch = cache.get([0, 2], [2, 0])
    assert batch["x"].shape == (2, 3, 2, 2, 2) and batch["x"][:, 0, 0, 0, 0].tolist() == pytest.approx([0.5, 0.25])
    first = cache.get([0, 2])["x"]
    assert first[0, 0, 0, 0, 0] == pytest.approx(-0.5)  # window 0 by default
    with pytest.raises(IndexError, match="1 window"):
        cache.get([2], [1])
    with pytest.raises(ValueError, match="3 rows but 1 windows"):
        cache.get([0, 1, 2], [0])
    with pytest.raises(ValueError, match="at least 2"):
        write_latent_cache(tmp_path / "d", table.iloc[[2]], lambda key: torch.zeros(3, 1, 16, 16),
                           PoolingVAE().encode, HashText().encode, {})
    with pytest.raises(ValueError, match="windows='tile'"):  # a VAE that halves the frame count
        write_latent_cache(tmp_path / "e", table.iloc[[1]], lambda key: loaded[1],
                           lambda v: PoolingVAE().encode(v)[:, :, ::2], HashText().encode, {})
    # a cache written before windows (one 4-D latent per clip, no starts) still reads: one window
    tensors = load_file(str(directory / TENSORS_FILE))
    tensors = {k: (v[:, :2].contiguous() if k.startswith("latent.") else v) for k, v in tensors.items()
               if not k.startswith("starts.")}
    save_file(tensors, str(directory / TENSORS_FILE))
    pd.read_parquet(directory / INDEX_FILE).drop(columns=["num_windows"]).to_parquet(directory / INDEX_FILE)
    old = LatentCache(directory)
    assert old.num_windows.tolist() == [1, 1, 1]
    torch.testing.assert_close(old.get([0, 2])["x"], first)
    assert json.loads((directory / "meta.json").read_text())["num_windows"] == 8


def test_bad_window_settings_are_config_errors(clips, tmp_path):
    stage, _ = clips
    with pytest.raises(ConfigError, match="windows must be one of"):
        build_stage_caches(stage, tmp_path, PoolingVAE(), HashText(), windows="random")
    with pytest.raises(ConfigError, match="max_latent_frames 2 is below the longest bucket"):
        build_stage_caches(stage, tmp_path, PoolingVAE(), HashText(), max_latent_frames=2)


def test_stages_share_encoded_clips_through_the_store(clips, tmp_path):
    stage, _ = clips
    identity = {"vae": "pooling", "text": "hash"}
    first = build_stage_caches(stage, tmp_path / "stage1_latents", PoolingVAE(), HashText(),
                               frame_interval=INTERVAL, reuse_key=identity)  # fmt: skip
    assert first["num_train_reused"] == 0
    store = tmp_path / "latent_clips"
    assert len(list(store.glob("*.safetensors"))) == len(stage)
    # another stage: 2-frame windows of the same clips at the same size -> nothing encoded again
    config2 = BucketConfig({"144p": {1: [1.0, 2], 2: [1.0, 2]}})
    stage2 = assign_buckets(stage[["path", "text", "num_frames", "height", "width", "fps"]], config2,
                            frame_interval=INTERVAL, seed=0)
    encoded: list[int] = []

    class CountingVAE(PoolingVAE):
        def encode(self, video):
            encoded.append(video.shape[2])
            return super().encode(video)

    second = build_stage_caches(stage2, tmp_path / "stage2_latents", CountingVAE(), HashText(),
                                frame_interval=INTERVAL, reuse_key=identity)  # fmt: skip
    assert second["num_train_reused"] == len(stage2) and encoded == []
    fresh = build_stage_caches(stage2, tmp_path / "fresh", PoolingVAE(), HashText(), frame_interval=INTERVAL)
    shared, alone = LatentCache(second["train_dir"]), LatentCache(fresh["train_dir"])
    assert shared.num_windows.tolist() == alone.num_windows.tolist()
    for row in range(len(shared)):
        torch.testing.assert_close(shared.latent(row, 1 if shared.num_windows[row] > 1 else 0),
                                   alone.latent(row, 1 if alone.num_windows[row] > 1 else 0))
    torch.testing.assert_close(torch.tensor(shared.index["fps"].to_numpy()), torch.tensor(alone.index["fps"].to_numpy()))
    # other encoders (a refitted VAE): encoded again; no store: nothing reused
    other = build_stage_caches(stage2, tmp_path / "other", CountingVAE(), HashText(), frame_interval=INTERVAL,
                               reuse_key={**identity, "vae": "retrained"})  # fmt: skip
    assert other["num_train_reused"] == 0 and len(encoded) == len(stage2)
    assert build_stage_caches(stage2, tmp_path / "off", PoolingVAE(), HashText(), frame_interval=INTERVAL,
                              reuse_key=identity, clip_store=False)["num_train_reused"] == 0


def test_image_views_add_single_frames_of_every_clip_to_the_image_buckets(clips, tmp_path):
    """Open-Sora's joint image + video training fed from the videos' own frames: each clip also appears
    K times in its resolution's 1-frame bucket, reading one of its cached latent frames (no encoding),
    with its caption and the micro-conditions images get; the videos stay as they were."""
    from opensora_mlops.data.dataset import IMAGE_FPS
    from opensora_mlops.training.latents import bucket_config_from_table

    stage, _ = clips
    manifest = build_stage_caches(stage, tmp_path / "cache", PoolingVAE(), HashText(), frame_interval=INTERVAL, seed=3)
    plain = LatentCache(manifest["train_dir"])
    cache = LatentCache(manifest["train_dir"], image_views=2, image_batch_size=3)
    videos = np.flatnonzero(plain.index["bucket_num_frames"].to_numpy() > 1)
    assert len(cache) == len(plain) + 2 * len(videos)
    pd.testing.assert_frame_equal(cache.index.iloc[: len(plain)].drop(columns=["image_view", "batch_size"]),
                                  plain.index.drop(columns=["batch_size"]))
    views = cache.index.iloc[len(plain):]
    assert views["image_view"].all() and not cache.index["image_view"].iloc[: len(plain)].any()
    assert (views["bucket_num_frames"] == 1).all() and (views["fps"] == IMAGE_FPS).all()
    assert set(views["bucket_id"]) == {f"144p/1/{k}" for k in plain.index["ar_key"].iloc[videos]}
    # every 1-frame row, the still included, batches image_batch_size at a time
    assert (cache.index.loc[cache.index["bucket_num_frames"] == 1, "batch_size"] == 3).all()
    assert bucket_config_from_table(cache.index).spec("144p", 1).batch_size == 3
    for view, source in zip(range(len(plain), len(cache)), np.tile(videos, 2)):
        # each latent frame of the clip is a window, with the clip's caption
        frames = plain.tensors[f"latent.{source}"].shape[1]
        assert cache.num_windows[view] == frames
        for window in (0, frames - 1):
            torch.testing.assert_close(cache.latent(view, window),
                                       plain.tensors[f"latent.{source}"][:, window : window + 1])
        batch, original = cache.get([view]), plain.get([int(source)])
        assert torch.equal(batch["y"], original["y"]) and torch.equal(batch["mask"], original["mask"])
        assert batch["num_frames"].item() == 1 and batch["x"].shape[2] == 1
    # the sampler plans both kinds of batch from the one table
    sampler = VariableVideoBatchSampler(cache.index, bucket_config_from_table(cache.index), seed=0,
                                        reassign_each_epoch=False)
    shapes = {tuple(batch["x"].shape[2:3]) for batch, _ in zip(iter(CachedBatches(cache, sampler)), range(40))}
    assert shapes == {(1,), (FRAMES,)}
    with pytest.raises(ConfigError, match="image_batch_size"):
        LatentCache(manifest["train_dir"], image_views=1)
