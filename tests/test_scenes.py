"""Scene detection: frame-precise scenes, still images, bad files, and cut precision/recall."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from opensora_mlops.config import ConfigError
from opensora_mlops.curation.errors import CurationInputError
from opensora_mlops.curation.scenes import (
    SceneDetectionConfig,
    cut_detection_scores,
    cut_frames,
    detect_scenes,
)
from opensora_mlops.curation.synthetic import ShotSpec, SyntheticConfig, generate_corpus, render_shot
from opensora_mlops.data.video_io import write_video

SHOTS = [
    (ShotSpec("red", "circle", "navy", "right", "quickly"), 37),
    (ShotSpec("yellow", "square", "gray", "down", "slowly"), 26),
    (ShotSpec("cyan", "triangle", "maroon", "left", "quickly"), 30),
]


def _multi_shot(path, fps=25.0, size=(72, 96)):
    parts = [render_shot(spec, *size, n, 18.0, (40.0, 36.0)) for spec, n in SHOTS]
    write_video(path, np.concatenate(parts), fps)
    bounds = np.cumsum([0] + [n for _, n in SHOTS])
    return [int(b) for b in bounds[1:-1]], int(bounds[-1])


def test_scenes_are_frame_precise(tmp_path):
    cuts, total = _multi_shot(tmp_path / "v.mp4", fps=25.0)
    scenes = detect_scenes(tmp_path / "v.mp4", SceneDetectionConfig(min_scene_len=8))
    assert cut_frames(scenes) == cuts == [37, 63]
    assert [s.frame_start for s in scenes] == [0, 37, 63]
    assert scenes[-1].frame_end == total
    # seconds are frame / fps, not rounded to whole seconds (1.1's defect #6): 37 / 25 = 1.48 s
    assert scenes[1].start_s == pytest.approx(1.48, abs=1e-12)
    assert scenes[0].end_s == scenes[1].start_s
    assert scenes[1].as_row()["scene_start"] == pytest.approx(37 / 25)
    assert all(s.fps == 25.0 for s in scenes)


def test_content_detector_also_finds_cuts(tmp_path):
    cuts, _ = _multi_shot(tmp_path / "v.mp4", fps=24.0)
    scenes = detect_scenes(tmp_path / "v.mp4", SceneDetectionConfig(detector="content", min_scene_len=8))
    assert cut_detection_scores(cut_frames(scenes), cuts)["recall"] == 1.0


def test_still_image_is_one_scene(tmp_path):
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "still.png")
    scenes = detect_scenes(tmp_path / "still.png")
    assert len(scenes) == 1 and scenes[0].num_frames == 1 and scenes[0].fps == 0.0


def test_unreadable_file_names_itself(tmp_path):
    bad = tmp_path / "not_a_video.mp4"
    bad.write_text("hello")
    with pytest.raises(CurationInputError, match="not_a_video.mp4"):
        detect_scenes(bad)


def test_config_refuses_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="adaptive_treshold"):
        SceneDetectionConfig.from_dict({"adaptive_treshold": 3.0})
    with pytest.raises(ConfigError, match="detector"):
        SceneDetectionConfig(detector="histogram")


def test_cut_detection_scores_matching():
    perfect = cut_detection_scores([10, 50], [10, 50])
    assert perfect["precision"] == perfect["recall"] == perfect["f1"] == 1.0
    # within tolerance counts, outside does not
    assert cut_detection_scores([11], [10], tolerance=1)["recall"] == 1.0
    assert cut_detection_scores([12], [10], tolerance=1)["recall"] == 0.0
    # one-to-one: two detections around one cut give one true and one false positive
    doubled = cut_detection_scores([9, 11], [10], tolerance=1)
    assert doubled["true_positives"] == 1 and doubled["false_positives"] == 1
    assert doubled["precision"] == 0.5 and doubled["recall"] == 1.0
    # the closest pair wins, leaving the other detection for the neighbouring cut
    assert cut_detection_scores([10, 12], [11, 13], tolerance=1)["true_positives"] == 2
    assert cut_detection_scores([], [])["f1"] == 1.0
    assert cut_detection_scores([], [5])["recall"] == 0.0
    with pytest.raises(ValueError):
        cut_detection_scores([1], [1], tolerance=-1)


def test_cut_detection_quality_on_synthetic_corpus(tmp_path):
    """Issue 3 item 4: cuts within ±1 frame with precision and recall >= 0.95."""
    config = SyntheticConfig(seed=3, num_videos=5, num_large=0, defects={}, num_images=0,
                             sizes=((96, 128), (128, 96)), duration_seconds=(3.0, 5.0), shots_per_video=(3, 5))
    videos = generate_corpus(tmp_path, config, progress=False)
    detected, truth, offset = [], [], 0
    for video in videos:
        scenes = detect_scenes(tmp_path / video.path, SceneDetectionConfig(min_scene_len=8))
        detected += [offset + c for c in cut_frames(scenes)]
        truth += [offset + c for c in video.cut_frames]
        offset += video.num_frames + 100
    assert len(truth) >= 8
    scores = cut_detection_scores(detected, truth, tolerance=1)
    assert scores["precision"] >= 0.95 and scores["recall"] >= 0.95, scores
