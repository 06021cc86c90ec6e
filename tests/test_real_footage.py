"""The default scorers on camera-like footage of real photographs (tests/footage.py): ordinary good
shots pass every stage's aesthetic and OCR thresholds; defocused, underexposed and heavily compressed
shots fail the aesthetic one, a street sign and subtitles the OCR one; grass, a fence and foliage are
not text. The thresholds are the shipped ones (conf/base/parameters_curation.yml), at the embedded
clip size (160 px shorter side) and at 432 px."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from footage import camera_clip, fence, grass, photo, shallow_focus, street_sign, subtitles, write_clip
from opensora_mlops.curation.cutting import target_size
from opensora_mlops.curation.scorers import ClipScorer, ScoringConfig, aesthetic_parts, sample_clip

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "conf/base/parameters_curation.yml").read_text())["curation"]["stages"]
AES_MIN = max(s["aes_min"] for s in STAGES.values())  # the strictest stage
OCR_MAX = min(s["ocr_max"] for s in STAGES.values())
N = 6


def _shots(size):
    h, w = size
    china, flower, hopper = photo("china"), photo("flower"), photo("hopper")
    tall = (w, h)
    good = {
        "pagoda pan": camera_clip(china, N, size, "pan"),
        "pagoda zoom": camera_clip(china, N, size, "zoom"),
        "dahlia, shallow focus, hand-held": camera_clip(flower, N, size, "shake"),
        "portrait pan": camera_clip(hopper, N, tall if h < 300 else (384, 216), "pan"),
        "grass": camera_clip(grass(size), N, size, "pan"),
        "picket fence": camera_clip(fence(china, size), N, size, "pan"),
        "pagoda, background thrown out of focus": camera_clip(shallow_focus(china, (0.45, 0.4, 0.2)), N, size, "shake"),
    }
    bad_aes = {
        "defocused": camera_clip(cv2.GaussianBlur(china, (0, 0), 3), N, size, "pan"),
        "underexposed": (camera_clip(china, N, size, "pan") * 0.12).astype(np.uint8),
    }
    texty = {
        "street sign": camera_clip(street_sign(china), N, size, "pan", amount=0.04),
        "subtitles": np.stack([subtitles(f) for f in camera_clip(china, N, size, "pan")]),
    }
    return good, bad_aes, texty


def _as_clip(tmp_path, name, frames, shorter_side, crf=20):
    """What cutting makes of a source: resized (area) to the clip size, H.264 at the clip crf."""
    h, w = target_size(frames.shape[1], frames.shape[2], shorter_side)
    small = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
    path = write_clip(tmp_path / f"{name.replace(' ', '_').replace(',', '')}.mp4", small, 25.0, crf=crf)
    return sample_clip(path, 1, N, N)


@pytest.fixture(scope="module")
def scorer():
    return ClipScorer(ScoringConfig(max_frames=N))


@pytest.mark.parametrize("shorter_side", [160, 432])
def test_shipped_thresholds_keep_good_footage_and_drop_the_bad(tmp_path, scorer, shorter_side):
    size = (216, 384) if shorter_side == 160 else (432, 768)
    good, bad_aes, texty = _shots(size)
    scores = {name: scorer.score(_as_clip(tmp_path, name, frames, shorter_side))
              for name, frames in {**good, **bad_aes, **texty}.items()}
    for name in good:
        assert scores[name]["aes"] >= AES_MIN + 1.5, (name, scores[name]["aes"])  # a margin, not a hair
        assert scores[name]["ocr"] <= OCR_MAX / 2, (name, scores[name]["ocr"])
    for name in bad_aes:
        assert scores[name]["aes"] < AES_MIN - 1.0, (name, scores[name]["aes"])
    for name in texty:
        assert scores[name]["ocr"] > OCR_MAX, (name, scores[name]["ocr"])
        assert scores[name]["aes"] >= AES_MIN  # text is not a quality problem for the aesthetic score
    assert {s["aes_method"] for s in scores.values()} == {"classical-sharpest-region-exposure-colour"}
    assert {s["ocr_method"] for s in scores.values()} == {"ppocrv4-det-area"}


def test_heavy_compression_visible_at_clip_size_fails_the_aesthetic_threshold(tmp_path, scorer):
    """An upload-site re-encode at crf 51 (blocks, smeared texture) at the clip's own size."""
    frames = camera_clip(photo("flower"), N, (160, 284), "shake")
    clean = scorer.aesthetic(_as_clip(tmp_path, "clean", frames, 160))
    source = write_clip(tmp_path / "crushed_source.mp4", frames, 25.0, crf=51)
    crushed = scorer.aesthetic(_as_clip(tmp_path, "crushed", sample_clip(source, 1, N, N).frames, 160))
    assert clean >= AES_MIN + 1.5 > AES_MIN > crushed
    # the score does not depend on the clip's resolution: the same shot at 2x agrees within 10 %
    big = camera_clip(photo("flower"), N, (320, 568), "shake")
    assert scorer.aesthetic(_as_clip(tmp_path, "big", big, None)) == pytest.approx(clean, rel=0.1)


def test_sharpest_region_decides_and_sensor_noise_does_not_fake_detail():
    china = photo("china")
    subject = shallow_focus(china, (0.45, 0.4, 0.2), sigma=9.0)
    everything_blurred = cv2.GaussianBlur(china, (0, 0), 3)
    noisy_blur = np.clip(everything_blurred + np.random.default_rng(0).normal(0, 4, china.shape), 0, 255)
    parts = {name: aesthetic_parts(img.astype(np.uint8)) for name, img in
             {"subject": subject, "blurred": everything_blurred, "noisy blurred": noisy_blur}.items()}
    assert parts["subject"]["sharpness"] == pytest.approx(1.0)
    assert parts["blurred"]["sharpness"] == 0.0 and parts["noisy blurred"]["sharpness"] < 0.2
