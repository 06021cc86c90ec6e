"""Per-stage filters: thresholds, reasons, unavailable scores, images, all columns kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from opensora_mlops.config import ConfigError
from opensora_mlops.curation.filters import StageFilter, apply_stage_filter, filter_reasons


def _clips():
    return pd.DataFrame({
        "path": ["good.mp4", "blurry.mp4", "static.mp4", "text.mp4", "image.png", "short.mp4"],
        "aes": [6.0, 2.0, 6.0, 6.0, 6.0, 6.0],
        "aes_method": ["classical"] * 6,
        "flow": [5.0, 5.0, 0.01, 5.0, 0.0, 5.0],
        "flow_method": ["farneback"] * 6,
        "ocr": [0.0, 0.0, 0.0, 0.2, 0.0, 0.0],
        "ocr_method": ["text-area"] * 6,
        "match": [np.nan] * 6,
        "match_method": ["unavailable"] * 6,
        "camera_motion": ["static", "static", "static", "pan_left", "static", "static"],
        "num_frames": [48, 48, 48, 48, 1, 10],
        "duration": [2.0, 2.0, 2.0, 2.0, 0.0, 0.4],
        "resolution": [144 * 256] * 6,
        "extra": list("abcdef"),
    })


def test_stage_filter_keeps_passing_clips_with_every_column():
    stage = StageFilter(aes_min=4.0, flow_min=0.3, ocr_max=0.02, match_min=0.2, duration_min=1.0)
    kept, dropped = apply_stage_filter(_clips(), stage, "stage1")
    assert kept["path"].tolist() == ["good.mp4", "image.png"]  # images skip the video-only bounds
    assert list(kept.columns) == list(_clips().columns)
    reasons = dict(zip(dropped["path"], dropped["reason"], strict=True))
    assert reasons["blurry.mp4"] == "aes 2 < aes_min 4"
    assert reasons["static.mp4"].startswith("flow 0.01 < flow_min 0.3")
    assert reasons["text.mp4"] == "ocr 0.2 > ocr_max 0.02"
    assert reasons["short.mp4"] == "duration 0.4 < duration_min 1"
    assert set(dropped["stage"]) == {"stage1"}


def test_unavailable_scores_do_not_filter_but_missing_measured_ones_do():
    clips = _clips()
    assert (filter_reasons(clips, StageFilter(match_min=0.9))[clips["path"] == "good.mp4"] == "").all()
    clips.loc[0, "aes"] = np.nan
    assert filter_reasons(clips, StageFilter(aes_min=1.0)).iloc[0] == "aes is NaN"


def test_several_reasons_images_camera_and_resolution():
    stage = StageFilter(aes_min=7.0, flow_max=1.0, resolution_min=100_000, camera_motion_exclude=("pan_left",),
                        keep_images=False)
    reasons = filter_reasons(_clips(), stage)
    assert reasons.iloc[3].split("; ") == [
        "aes 6 < aes_min 7", "flow 5 > flow_max 1", "resolution 36864 < resolution_min 100000",
        "camera_motion pan_left excluded",
    ]
    assert reasons.iloc[4].startswith("still image and keep_images is false")


def test_filter_config_errors():
    with pytest.raises(ConfigError, match="aes_minimum"):
        StageFilter.from_dict({"aes_minimum": 4}, "curation.stages.stage1")
    with pytest.raises(ConfigError, match="flow_min"):
        StageFilter(flow_min=3, flow_max=1)
    with pytest.raises(ConfigError, match="ocr"):
        filter_reasons(_clips().drop(columns=["ocr"]), StageFilter(ocr_max=0.1))
