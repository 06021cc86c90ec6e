"""Clip scorers: classical aesthetic, Farneback flow, text area, camera motion, single decode."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from opensora_mlops.config import ConfigError
from opensora_mlops.curation.errors import CurationInputError
from opensora_mlops.curation.scorers import (
    ClipScorer,
    SampledClip,
    ScoringConfig,
    classical_aesthetic,
    colourfulness,
    sample_clip,
    sample_indices,
    text_area_fraction,
)
from opensora_mlops.curation.synthetic import ShotSpec, render_shot
from opensora_mlops.data.video_io import write_video

H, W = 96, 160
_RNG = np.random.default_rng(0)
_TEXTURE = cv2.normalize(cv2.GaussianBlur((_RNG.random((500, 700, 3)) * 255).astype(np.uint8), (0, 0), 3),
                         None, 0, 255, cv2.NORM_MINMAX)


def _camera(dx=0, dy=0, zoom=1.0, n=9):
    """A camera moving over a texture: crop window shifts by (dx, dy) px/frame or scales by ``zoom``."""
    frames = []
    for i in range(n):
        scale = zoom**i
        ch, cw = int(2 * H / scale), int(2 * W / scale)
        cy, cx = 250 + dy * i, 350 + dx * i
        crop = _TEXTURE[cy - ch // 2: cy + ch // 2, cx - cw // 2: cx + cw // 2]
        frames.append(cv2.resize(crop, (W, H), interpolation=cv2.INTER_AREA))
    return np.stack(frames)


def _clip(frames, gap=1):
    return SampledClip("mem", frames, [gap * i for i in range(len(frames))], 24.0, gap * (len(frames) - 1) + 1)


def _shapes(n=5, text=False, speed="quickly"):
    frames = render_shot(ShotSpec("yellow", "circle", "navy", "right", speed), H, W, n, 24.0, (40.0, 48.0))
    if text:
        for f in frames:
            cv2.putText(f, "SALE 50% OFF", (8, 85), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(f, "SALE 50% OFF", (8, 85), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return frames


@pytest.mark.parametrize(
    ("kwargs", "label"),
    [
        ({}, "static"),
        ({"dx": -3}, "pan_left"),  # the window moves left: content moves right, the camera pans left
        ({"dx": 3}, "pan_right"),
        ({"dy": -3}, "tilt_up"),
        ({"dy": 3}, "tilt_down"),
        ({"zoom": 1.03}, "zoom_in"),
        ({"zoom": 1 / 1.03}, "zoom_out"),
    ],
)
def test_camera_motion_labels(kwargs, label):
    assert ClipScorer().camera(_clip(_camera(**kwargs))) == label


def test_objects_moving_over_still_background_are_a_static_camera():
    assert ClipScorer().camera(_clip(_shapes(n=6))) == "static"


def test_flow_grows_with_motion_and_is_scale_and_stride_normalised():
    scorer = ClipScorer()
    still, slow, fast = (scorer.flow(_clip(_camera(dx=d))) for d in (0, 1, 3))
    assert still < 0.05 < slow < fast
    assert fast / slow == pytest.approx(3.0, rel=0.25)
    # sampling every 2nd frame of the same motion gives the same per-frame rate
    every_other = scorer.flow(_clip(_camera(dx=1, n=9)[::2], gap=2))
    one_px = scorer.flow(_clip(_camera(dx=1)))
    assert every_other == pytest.approx(one_px, rel=0.25)
    # the same motion relative to the frame at double resolution: same score (320x576 units)
    big = np.stack([cv2.resize(f, (2 * W, 2 * H)) for f in _camera(dx=1)])
    assert ClipScorer(ScoringConfig(flow_short_side=192)).flow(_clip(big)) == pytest.approx(one_px, rel=0.25)


def test_text_area_separates_rendered_text_from_shapes():
    clean = [text_area_fraction(f) for f in _shapes(n=3)]
    texty = [text_area_fraction(f) for f in _shapes(n=3, text=True)]
    assert max(clean) < 0.005
    assert min(texty) > 0.02
    assert text_area_fraction(np.zeros((H, W, 3), np.uint8)) == 0.0


def test_classical_aesthetic_penalises_blur_darkness_and_grey():
    sharp = _shapes(n=3)
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 4) for f in sharp])
    dark = (sharp * 0.07).astype(np.uint8)
    grey = np.full_like(sharp, 128)
    scores = {name: classical_aesthetic(x) for name, x in
              {"sharp": sharp, "blurred": blurred, "dark": dark, "grey": grey}.items()}
    assert all(0.0 <= s <= 10.0 for s in scores.values())
    assert scores["sharp"] > scores["blurred"] + 1.0
    assert scores["sharp"] > scores["dark"] + 3.0
    assert scores["grey"] < 1.0


def test_colourfulness_matches_hasler_susstrunk():
    half = np.zeros((4, 4, 3), np.uint8)
    half[:, :2] = (255, 0, 0)
    half[:, 2:] = (0, 255, 0)
    # rg = ±255 (sd 255, mean 0); yb = 127.5 everywhere (sd 0, mean 127.5)
    assert colourfulness(half) == pytest.approx(255.0 + 0.3 * 127.5)
    assert colourfulness(np.full((4, 4, 3), 77, np.uint8)) == 0.0


def test_score_decodes_once_and_matches_the_individual_measures(tmp_path):
    frames = _shapes(n=25)
    write_video(tmp_path / "c.mp4", frames, 24.0, crf=10)
    scorer = ClipScorer(ScoringConfig(stride=4, max_frames=16))
    clip = sample_clip(tmp_path / "c.mp4", 4, 16)
    assert clip.indices == [0, 4, 8, 12, 16, 20, 24] and clip.frames.shape == (7, H, W, 3)
    row = scorer.score(clip, "a yellow circle")
    assert row["aes"] == scorer.aesthetic(clip) and row["flow"] == scorer.flow(clip)
    assert row["ocr"] == scorer.ocr(clip) and row["camera_motion"] == scorer.camera(clip)
    assert math.isnan(row["match"]) and row["match_method"] == "unavailable"
    assert row["aes_method"].startswith("classical") and row["ocr_method"] == "ppocrv4-det-area"
    assert row == scorer.score_path(tmp_path / "c.mp4", "a yellow circle") or math.isnan(row["match"])


def test_sample_indices_thin_evenly():
    assert sample_indices(10, 3, 16) == [0, 3, 6, 9]
    many = sample_indices(1000, 1, 8)
    assert len(many) == 8 and many[0] == 0 and many[-1] == 999
    assert sample_indices(1, 4, 8) == [0]


def test_unreadable_clip_and_misconfigured_models(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01")
    with pytest.raises(CurationInputError, match="bad.mp4"):
        sample_clip(bad)
    with pytest.raises(ConfigError, match="not found"):
        ClipScorer(ScoringConfig(match_clip_path=str(tmp_path / "missing.bin")))
    weights = tmp_path / "clip.bin"
    weights.write_bytes(b"0")
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="open-clip"):
            ClipScorer(ScoringConfig(match_clip_path=str(weights)))
    with pytest.raises(ConfigError, match="both"):
        ScoringConfig(aesthetic_clip_path=str(weights))
    with pytest.raises(ConfigError, match="ocr_detector_path"):
        ClipScorer(ScoringConfig(ocr_detector_path=str(tmp_path / "db.onnx")))
    with pytest.raises(ConfigError, match="strid"):
        ScoringConfig.from_dict({"strid": 2})


def test_sharpness_measures_blur_not_contrast_or_resolution():
    from opensora_mlops.curation.scorers import sharpness, sharpness_score

    edge = np.zeros((64, 64), np.float64)
    edge[:, 32:] = 1.0
    for contrast in (40.0, 200.0):
        crisp = (edge * contrast).astype(np.uint8)
        soft = cv2.GaussianBlur(crisp, (0, 0), 3)
        assert sharpness_score(crisp) > 0.7  # an ideal step edge: R = 1/16
        assert sharpness_score(soft) < 0.2
    low, high = (sharpness(cv2.GaussianBlur((edge * c).astype(np.uint8), (0, 0), 1.5)) for c in (60.0, 240.0))
    assert low == pytest.approx(high, rel=0.1)
    assert sharpness(np.full((32, 32), 128, np.uint8)) == 0.0
