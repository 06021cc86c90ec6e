"""Cutting scenes into clips: planning (min/max seconds), frame accuracy, resize, bad input."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from opensora_mlops.config import ConfigError
from opensora_mlops.curation.cutting import ClipConfig, check_source, cut_clips, plan_clips, target_size
from opensora_mlops.curation.errors import CurationInputError
from opensora_mlops.curation.scenes import Scene
from opensora_mlops.data.video_io import read_video, write_video


def _indexed_video(path, n=60, fps=20.0, size=(48, 64)):
    """Frame i is a flat grey of level 4*i: the decoded level says which source frame it was."""
    frames = np.stack([np.full((*size, 3), 4 * i, np.uint8) for i in range(n)])
    write_video(path, frames, fps, crf=0)
    return frames


def _frame_index(frame):
    return int(round(float(frame.mean()) / 4))


def test_plan_drops_short_scenes_with_reason_and_splits_long_ones():
    config = ClipConfig(min_seconds=1.0, max_seconds=2.0, shorter_side=None)
    scenes = [Scene(0, 0, 15, 20.0), Scene(1, 15, 45, 20.0), Scene(2, 45, 135, 20.0)]
    plans, dropped = plan_clips(scenes, config)
    assert len(dropped) == 1 and dropped[0]["scene_index"] == 0
    assert "shorter than min_seconds" in dropped[0]["reason"] and "15 frames" in dropped[0]["reason"]
    assert [(p.frame_start, p.frame_end) for p in plans if p.scene_index == 1] == [(15, 45)]
    long_parts = [p for p in plans if p.scene_index == 2]
    assert len(long_parts) == 3  # 90 frames at max 40 -> 3 near-equal parts of 30
    assert long_parts[0].frame_start == 45 and long_parts[-1].frame_end == 135
    assert all(20 <= p.num_frames <= 40 for p in long_parts)
    assert all(a.frame_end == b.frame_start for a, b in zip(long_parts, long_parts[1:], strict=False))
    truncated, _ = plan_clips([scenes[2]], ClipConfig(min_seconds=1.0, max_seconds=2.0, long_scenes="truncate"))
    assert [(p.frame_start, p.frame_end) for p in truncated] == [(45, 85)]


def test_cut_clips_is_frame_accurate_and_resizes(tmp_path):
    _indexed_video(tmp_path / "src.mp4", n=60, size=(48, 64))
    config = ClipConfig(min_seconds=0.5, max_seconds=2.0, shorter_side=32, crf=0)
    plans, _ = plan_clips([Scene(0, 0, 17, 20.0), Scene(1, 17, 60, 20.0)], config)
    rows, failed = cut_clips(tmp_path / "src.mp4", plans, tmp_path / "clips", config)
    assert not failed and len(rows) == len(plans) == 3
    for row, plan in zip(rows, plans, strict=True):
        frames, fps = read_video(row["path"])
        assert fps == pytest.approx(20.0)
        assert len(frames) == row["num_frames"] == plan.num_frames
        assert _frame_index(frames[0]) == plan.frame_start and _frame_index(frames[-1]) == plan.frame_end - 1
        assert frames.shape[1:3] == (32, 42) == (row["height"], row["width"])
        assert row["aspect_ratio"] == pytest.approx(32 / 42) and row["resolution"] == 32 * 42
        assert row["scene_start"] == plan.frame_start / 20.0 and row["scene_end"] == plan.frame_end / 20.0
        assert row["duration"] == pytest.approx(plan.num_frames / 20.0)
        with av.open(row["path"]) as container:
            assert container.streams.video[0].codec_context.name == "h264"


def test_stream_ending_early_keeps_finished_clips_and_reports_the_rest(tmp_path):
    _indexed_video(tmp_path / "src.mp4", n=30)
    config = ClipConfig(min_seconds=0.5, max_seconds=2.0, shorter_side=None)
    # plans beyond the decodable end (as when a container claims more frames than it holds)
    plans, _ = plan_clips([Scene(0, 0, 20, 20.0), Scene(1, 20, 40, 20.0)], config)
    rows, failed = cut_clips(tmp_path / "src.mp4", plans, tmp_path / "clips", config)
    assert [r["frame_start"] for r in rows] == [0]
    assert len(failed) == 1 and failed[0]["frame_start"] == 20
    assert "stream ended at frame 30" in failed[0]["reason"] and "src.mp4" in failed[0]["reason"]


def test_unreadable_video_reports_every_plan(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    config = ClipConfig(min_seconds=0.5, max_seconds=2.0)
    plans, _ = plan_clips([Scene(0, 0, 20, 20.0), Scene(1, 20, 40, 20.0)], config)
    rows, failed = cut_clips(bad, plans, tmp_path / "clips", config)
    assert rows == [] and len(failed) == 2 and all("decode failed" in f["reason"] for f in failed)


def test_still_image_becomes_one_frame_clip(tmp_path):
    Image.fromarray(np.full((90, 120, 3), 200, np.uint8)).save(tmp_path / "img.jpg")
    config = ClipConfig(shorter_side=60)
    plans, dropped = plan_clips([Scene(0, 0, 1, 0.0)], config)
    assert not dropped
    rows, failed = cut_clips(tmp_path / "img.jpg", plans, tmp_path / "clips", config)
    assert not failed and rows[0]["num_frames"] == 1 and (rows[0]["height"], rows[0]["width"]) == (60, 80)
    assert np.isnan(rows[0]["fps"]) and rows[0]["path"].endswith(".png")
    assert plan_clips([Scene(0, 0, 1, 0.0)], ClipConfig(keep_images=False))[0] == []


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"path": "a.mp4", "height": 100000, "width": 64, "fps": 25}, "height 100000"),
        ({"path": "a.mp4", "height": 64, "width": 8, "fps": 25}, "width 8"),
        ({"path": "a.mp4", "height": 64, "width": 64, "fps": 5000}, "fps 5000"),
        ({"path": "a.mp4", "height": 64, "width": 64, "fps": float("nan")}, "fps nan"),
        ({"path": "a.mp4", "height": 32, "width": 4096, "fps": 25}, "aspect ratio"),
    ],
)
def test_absurd_sources_are_rejected(row, problem):
    with pytest.raises(CurationInputError, match=problem):
        check_source(row, ClipConfig())


def test_target_size_and_config_checks():
    assert target_size(720, 1280, 240) == (240, 426)
    assert target_size(100, 60, 240) == (100, 60)  # never upscale
    assert target_size(101, 61, None) == (100, 60)  # even for yuv420p
    with pytest.raises(ConfigError, match="min_seconds"):
        ClipConfig(min_seconds=5, max_seconds=2)
    with pytest.raises(ConfigError, match="max_secs"):
        ClipConfig.from_dict({"max_secs": 3})
