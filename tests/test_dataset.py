"""Training dataset: partial decoding, resize-crop to the bucket, per-worker seeds, bad-file fallback."""

from __future__ import annotations

import logging
from fractions import Fraction

import av
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from opensora_mlops.data.buckets import BucketConfig, assign_buckets
from opensora_mlops.data.dataset import (
    IMAGE_FPS,
    VideoBucketDataset,
    collate_bucket_batch,
    cover_size,
    decode_video_frames,
    temporal_crop_indices,
    tiled_window_indices,
    worker_init_fn,
)
from opensora_mlops.data.sampler import SampleKey, VariableVideoBatchSampler
from opensora_mlops.data.video_io import read_video

BITS = 8
H, W, FPS, N = 128, 256, 24, 90


def numbered_frame(index: int, height: int = H, width: int = W) -> np.ndarray:
    """A frame whose upper half shows ``index`` in binary as white/black vertical stripes."""
    frame = np.full((height, width, 3), 60, np.uint8)
    stripe = width // BITS
    for bit in range(BITS):
        if index >> bit & 1:
            frame[: height // 2, bit * stripe : (bit + 1) * stripe] = 255
        else:
            frame[: height // 2, bit * stripe : (bit + 1) * stripe] = 0
    return frame


def read_number(frame: np.ndarray) -> int:
    """Inverse of :func:`numbered_frame` on a decoded (possibly rescaled) HWC uint8 frame."""
    height, width = frame.shape[:2]
    stripe = width / BITS
    value = 0
    for bit in range(BITS):
        lo, hi = int(bit * stripe + stripe / 4), int((bit + 1) * stripe - stripe / 4)
        if frame[2 : height // 2 - 2, lo:hi].mean() > 128:
            value |= 1 << bit
    return value


def write_numbered(path, frames: int = N, gop: int = 10) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "12", "preset": "ultrafast", "x264-params": f"keyint={gop}:min-keyint={gop}"}
        for t in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(numbered_frame(t), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    write_numbered(root / "a.mp4")
    write_numbered(root / "b.mp4")
    Image.fromarray(numbered_frame(5, 90, 160)).save(root / "still.png")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return root


def clip_table(root) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": ["a.mp4", "b.mp4", "still.png", "broken.mp4"],
            "text": ["clip a", "clip b", "a still", "broken"],
            "num_frames": [N, N, 1, N],
            "height": [H, H, 90, H],
            "width": [W, W, 160, W],
            "fps": [FPS, FPS, 0, FPS],
            "bucket_id": ["144p/8/0.50", "144p/8/0.50", "144p/1/0.56", "144p/8/0.50"],
        }
    )


def test_partial_decode_matches_full_decode(clips):
    full, fps = read_video(clips / "a.mp4")
    with av.open(str(clips / "a.mp4")) as container:
        keyframes = sum(p.is_keyframe for p in container.demux(video=0) if p.size)
    assert keyframes >= 5, "the fixture must have several keyframes so seeking is exercised"
    for indices in ([0, 1, 2], [23, 41, 59], [55, 61, 89], [89], [30, 30, 31]):
        frames, got_fps = decode_video_frames(clips / "a.mp4", indices)
        assert got_fps == fps == FPS
        np.testing.assert_array_equal(frames, full[indices])
        assert [read_number(f) for f in frames] == indices
    with pytest.raises(Exception, match="could not decode frame"):
        decode_video_frames(clips / "a.mp4", [88, 95])


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 400), frames=st.integers(1, 64), interval=st.integers(1, 4), seed=st.integers(0, 99))
def test_temporal_crop_indices(total, frames, interval, seed):
    if total <= frames * interval and total < frames:
        return
    indices = temporal_crop_indices(total, frames, interval, np.random.default_rng(seed))
    assert len(indices) == frames and indices[0] >= 0 and indices[-1] < total
    assert np.all(np.diff(indices) >= 1)  # distinct, increasing
    assert indices[-1] - indices[0] < frames * interval


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 400), frames=st.integers(1, 16), interval=st.integers(1, 4), seed=st.integers(0, 99),
       max_windows=st.one_of(st.none(), st.integers(1, 6)))
def test_tiled_windows_are_every_non_overlapping_window(total, frames, interval, seed, max_windows):
    if total < frames:
        return
    windows = tiled_window_indices(total, frames, interval, np.random.default_rng(seed), max_windows)
    span = frames * interval
    expected = max(1, total // span) if max_windows is None else min(max_windows, max(1, total // span))
    assert windows.shape == (expected, frames)
    flat = windows.reshape(-1)
    assert flat[0] >= 0 and flat[-1] < total and np.all(np.diff(flat) >= 1)  # increasing: no overlap
    for window in windows:
        # each window is what a temporal crop of that start gives
        assert window[-1] - window[0] < span
        assert np.array_equal(window, np.linspace(window[0], min(window[0] + span, total) - 1, frames).astype(np.int64))
    if total >= span:
        assert np.all(np.diff(windows[:, 0]) == span)  # back to back, one common offset
    with pytest.raises(ValueError, match="max_windows"):
        tiled_window_indices(total, frames, interval, np.random.default_rng(seed), 0)


@settings(max_examples=200, deadline=None)
@given(h=st.integers(8, 4000), w=st.integers(8, 4000), th=st.integers(8, 1000), tw=st.integers(8, 1000))
def test_cover_size_covers_and_keeps_aspect(h, w, th, tw):
    sh, sw = cover_size(h, w, th, tw)
    assert sh >= th and sw >= tw
    assert sh == th or sw == tw  # tight on one side
    assert abs(sh / sw - h / w) <= (h / w) * (1.0 / min(sh, sw)) + 1e-9


def test_item_is_the_bucket_shape_and_frames_are_evenly_spaced(clips):
    ds = VideoBucketDataset(clip_table(clips), frame_interval=3, root=clips, seed=1)
    item = ds[SampleKey(0, 8, H, W, "144p/8/0.50")]
    assert item["video"].shape == (3, 8, H, W) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1.0 and item["video"].max() <= 1.0 and item["video"].min() < -0.9
    indices = item["frame_indices"].tolist()
    assert indices[-1] - indices[0] < 8 * 3 and np.all(np.diff(indices) >= 2)
    frames = ((item["video"].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    assert [read_number(f) for f in frames] == indices
    assert item["fps"] == FPS and item["ar"] == H / W and item["text"] == "clip a"
    assert (item["num_frames"], item["height"], item["width"]) == (8, H, W)
    # resize so the bucket is covered, then centre crop: a square bucket keeps the middle
    square = ds[SampleKey(1, 4, 48, 48, "x")]
    assert square["video"].shape == (3, 4, 48, 48) and square["ar"] == 1.0
    # an integer index uses the table's stored bucket (bucket tables only)
    with pytest.raises(KeyError, match="bucket table"):
        ds[0]


def test_image_item(clips):
    ds = VideoBucketDataset(clip_table(clips), root=clips)
    item = ds[SampleKey(2, 1, 144, 256, "144p/1/0.56")]
    assert item["video"].shape == (3, 1, 144, 256) and item["fps"] == IMAGE_FPS
    frame = ((item["video"][:, 0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    assert read_number(frame) == 5


def test_broken_file_is_logged_and_replaced_from_the_same_bucket(clips, caplog):
    ds = VideoBucketDataset(clip_table(clips), frame_interval=2, root=clips, seed=3)
    with caplog.at_level(logging.WARNING, logger="opensora_mlops.data.dataset"):
        item = ds[SampleKey(3, 8, H, W, "144p/8/0.50")]
    assert item["path"].endswith(("a.mp4", "b.mp4")) and item["video"].shape == (3, 8, H, W)
    assert "broken.mp4" in caplog.text
    only_broken = clip_table(clips).iloc[[3]]
    with pytest.raises(RuntimeError, match="no loadable sample for bucket 144p/8/0.50.*broken.mp4"):
        VideoBucketDataset(only_broken, root=clips)[SampleKey(0, 8, H, W, "144p/8/0.50")]


def test_windows_of_a_clip_are_decoded_in_one_pass(clips, caplog):
    ds = VideoBucketDataset(clip_table(clips), frame_interval=2, root=clips, seed=4)
    windows = ds.windows(SampleKey(0, 8, H, W, "144p/8/0.50"))
    assert len(windows) == N // 16 == 5  # 90 frames, windows of 8 frames at interval 2
    starts = [int(w["frame_indices"][0]) for w in windows]
    assert np.all(np.diff(starts) == 16) and 0 <= starts[0] <= N - 5 * 16
    for window in windows:
        assert window["video"].shape == (3, 8, H, W) and window["fps"] == FPS and window["text"] == "clip a"
        frames = ((window["video"].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        assert [read_number(f) for f in frames] == window["frame_indices"].tolist()
    assert len(ds.windows(SampleKey(0, 8, H, W, "144p/8/0.50"), max_windows=2)) == 2
    # an image is one window; a broken clip is replaced by a clip of its bucket, as ds[key] does
    (still,) = ds.windows(SampleKey(2, 1, 144, 256, "144p/1/0.56"))
    assert still["fps"] == IMAGE_FPS and still["video"].shape == (3, 1, 144, 256)
    with caplog.at_level(logging.WARNING, logger="opensora_mlops.data.dataset"):
        replaced = ds.windows(SampleKey(3, 8, H, W, "144p/8/0.50"))
    assert "broken.mp4" in caplog.text and len(replaced) == 5
    assert {w["row"] for w in replaced} <= {0, 1} and replaced[0]["text"] in ("clip a", "clip b")


def test_strided_clip_is_every_interval_th_frame(clips):
    from opensora_mlops.data.dataset import DecodeError

    ds = VideoBucketDataset(clip_table(clips), frame_interval=2, root=clips, seed=4)
    sample = ds.strided(SampleKey(1, 8, H, W, "144p/8/0.50"))
    assert sample["frame_indices"].tolist() == list(range(0, N, 2)) and sample["num_frames"] == 8
    frames = ((sample["video"].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    assert sample["video"].shape == (3, N // 2, H, W) and [read_number(f) for f in frames] == list(range(0, N, 2))
    assert sample["text"] == "clip b" and sample["fps"] == FPS
    assert ds.strided(SampleKey(1, 8, H, W, "144p/8/0.50"), max_frames=10)["frame_indices"].tolist() == list(
        range(0, 20, 2))
    assert ds.strided(SampleKey(2, 1, 144, 256, "144p/1/0.56"))["video"].shape == (3, 1, 144, 256)  # an image
    with pytest.raises(DecodeError, match="fewer than the bucket's 50"):
        ds.load_strided(SampleKey(1, 50, H, W, "x"))


def _starts(ds, key, batches, epoch=0):
    ds.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=[[key]] * batches, num_workers=2, worker_init_fn=worker_init_fn,
        collate_fn=collate_bucket_batch, multiprocessing_context="spawn",
    )  # fmt: skip
    # spawn, not fork: by this point the test process holds onnxruntime's and torch's threads, and a forked
    # worker can inherit a lock one of them held (a CI run hung here, the worker blocked on a futex)
    return [int(batch["frame_indices"][0, 0]) for batch in loader]


def test_workers_draw_different_crops_and_are_reproducible(clips):
    ds = VideoBucketDataset(clip_table(clips), frame_interval=1, root=clips, seed=9)
    key = SampleKey(0, 2, H, W, "144p/8/0.50")
    starts = _starts(ds, key, 12)
    # batches alternate between the two workers
    assert starts[0::2] != starts[1::2]
    assert starts == _starts(ds, key, 12)
    assert starts != _starts(ds, key, 12, epoch=1)
    seeds = {ds.seed_worker(w) for w in range(4)}
    assert len(seeds) == 4


def test_collate_and_sampler_integration(clips):
    table = clip_table(clips).iloc[:2].copy()
    table = pd.concat([table] * 3, ignore_index=True)
    config = BucketConfig({"144p": {8: [1.0, 2]}})
    sampler = VariableVideoBatchSampler(table, config, frame_interval=2, seed=0)
    ds = VideoBucketDataset(table, frame_interval=2, root=clips)
    batches = [collate_bucket_batch([ds[k] for k in batch]) for batch in sampler]
    assert len(batches) == 3
    for batch in batches:
        assert batch["video"].shape == (2, 3, 8, 135, 270)  # the 144p entry for H/W 0.50
        assert batch["fps"].tolist() == [FPS, FPS] and batch["ar"].tolist() == [0.5, 0.5]
        assert batch["height"].dtype == torch.float32 and len(batch["text"]) == 2
    # a bucket table (bucketing pipeline output) can be indexed by row: its stored bucket is used
    stored = assign_buckets(table, config, frame_interval=2, seed=0)
    item = VideoBucketDataset(stored, frame_interval=2, root=clips)[4]
    assert item["video"].shape == (3, 8, 135, 270) and item["row"] == 4
    with pytest.raises(ValueError, match="one bucket"):
        collate_bucket_batch([ds[SampleKey(0, 8, 64, 64, "")], ds[SampleKey(0, 4, 64, 64, "")]])
