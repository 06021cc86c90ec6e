"""Synthetic corpus: vocabulary, captions, rendering, cuts at the ground-truth frames, bad files."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from opensora_mlops.config import ConfigError
from opensora_mlops.curation.synthetic import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    GROUND_TRUTH_FILE,
    SHAPES,
    SPEEDS,
    ShotSpec,
    SyntheticConfig,
    caption_for,
    generate_corpus,
    ground_truth_table,
    load_ground_truth,
    parse_caption,
    parse_video_caption,
    render_shot,
    video_caption,
)
from opensora_mlops.data.video_io import read_video

TINY = {
    "seed": 3,
    "num_videos": 3,
    "sizes": [[64, 96], [96, 64]],
    "fps_choices": [24, 25, 30],
    "duration_seconds": [2.0, 3.0],
    "shots_per_video": [2, 3],
    "min_shot_seconds": 0.8,
    "num_large": 1,
    "large_sizes": [[128, 224]],
    "large_duration_seconds": [2.0, 2.0],
    "defect_duration_seconds": [1.0, 1.0],
    "num_images": 2,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    videos = generate_corpus(root, TINY, progress=False)
    return root, videos


moving_specs = st.builds(
    ShotSpec,
    colour=st.sampled_from(sorted(COLOURS)),
    shape=st.sampled_from(SHAPES),
    background=st.sampled_from(sorted(BACKGROUNDS)),
    direction=st.sampled_from(sorted(DIRECTIONS)),
    speed=st.sampled_from(sorted(SPEEDS)),
)
still_specs = st.builds(
    ShotSpec,
    colour=st.sampled_from(sorted(COLOURS)),
    shape=st.sampled_from(SHAPES),
    background=st.sampled_from(sorted(BACKGROUNDS)),
)


@given(st.one_of(moving_specs, still_specs))
def test_caption_round_trip(spec):
    caption = caption_for(spec)
    assert parse_caption(caption) == spec
    assert parse_caption(caption.upper() + ".") == spec


@given(st.lists(moving_specs, min_size=1, max_size=5))
def test_video_caption_round_trip(specs):
    assert parse_video_caption(video_caption(specs)) == specs


def test_caption_examples_and_rejects():
    spec = parse_caption("a red circle moving left quickly on a gray background")
    assert spec == ShotSpec("red", "circle", "gray", "left", "quickly")
    assert parse_caption("a red circle on a navy background") == ShotSpec("red", "circle", "navy")
    assert parse_caption("a purple circle moving left quickly on a gray background") is None
    assert parse_caption("a red hexagon on a gray background") is None
    assert parse_caption("a red circle moving left on a gray background") is None  # speed missing
    assert parse_caption("") is None
    assert parse_caption(None) is None  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="direction and speed"):
        ShotSpec("red", "circle", "gray", "left", None)
    with pytest.raises(ValueError, match="unknown colour"):
        ShotSpec("purple", "circle", "gray")


def test_vocabulary_colours_are_distinct_from_backgrounds():
    for name, rgb in COLOURS.items():
        assert max(rgb) >= 200, name  # bright shapes
        for bg in BACKGROUNDS.values():
            assert np.abs(np.subtract(rgb, bg)).sum() > 120, (name, bg)
    for bg in BACKGROUNDS.values():
        assert max(bg) <= 110  # dark/neutral backgrounds
    assert SPEEDS["quickly"] > SPEEDS["slowly"] > 0


def test_render_shot_moves_shape_in_caption_direction():
    h, w = 64, 96
    for direction, (dx, dy) in DIRECTIONS.items():
        spec = ShotSpec("red", "square", "black", direction, "quickly")
        frames = render_shot(spec, h, w, 8, shape_size=16.0, start_xy=(48.0, 32.0))
        red = (frames[..., 0] > 150) & (frames[..., 1] < 100)
        ys, xs = np.nonzero(red[0])
        ye, xe = np.nonzero(red[-1])
        step = SPEEDS["quickly"] * (w if dx else h) * 7
        assert xe.mean() - xs.mean() == pytest.approx(dx * step, abs=1.0)
        assert ye.mean() - ys.mean() == pytest.approx(dy * step, abs=1.0)
    still = render_shot(ShotSpec("blue", "circle", "gray"), h, w, 4, 16.0, (48.0, 32.0))
    assert np.array_equal(still[0], still[-1])


def test_corpus_files_and_ground_truth(corpus):
    root, videos = corpus
    kinds = [v.kind for v in videos]
    assert kinds.count("good") == 3
    for kind in ("static", "text", "dark", "blurred", "zero_bytes", "truncated", "not_video"):
        assert kinds.count(kind) == 1, kind
    assert kinds.count("image") == 2
    assert sorted(p.name for p in root.iterdir() if p.name != GROUND_TRUTH_FILE) == sorted(v.path for v in videos)
    assert load_ground_truth(root) == videos
    raw = json.loads((root / GROUND_TRUTH_FILE).read_text())
    assert set(raw["vocabulary"]["shapes"]) == set(SHAPES)

    for v in videos:
        path = root / v.path
        if v.kind == "good":
            frames, fps = read_video(path)
            assert fps == v.fps and fps in (24, 25, 30)
            assert frames.shape == (v.num_frames, v.height, v.width, 3)
            assert 2.0 <= v.duration <= 3.0 + 1 / fps
            assert 2 <= len(v.shots) <= 3
            assert v.shots[0].frame_start == 0 and v.shots[-1].frame_end == v.num_frames
            for a, b in zip(v.shots, v.shots[1:]):
                assert a.frame_end == b.frame_start
                assert a.spec.background != b.spec.background and a.spec.colour != b.spec.colour
                assert b.frame_start - a.frame_start >= int(np.ceil(0.8 * fps))
            # the biggest frame-to-frame change happens exactly at the cuts
            diffs = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
            cut_steps = set(np.array(v.cut_frames) - 1)
            within = [d for i, d in enumerate(diffs) if i not in cut_steps]
            assert min(diffs[list(cut_steps)]) > 5 * max(within)
            for shot in v.shots:
                assert parse_caption(shot.caption) == shot.spec and shot.spec.moving
        elif v.kind == "zero_bytes":
            assert path.stat().st_size == 0
        elif v.kind in ("truncated", "not_video"):
            with pytest.raises(av.FFmpegError):
                read_video(path)
        elif v.kind == "image":
            frames, fps = read_video(path)
            assert frames.shape == (1, v.height, v.width, 3) and fps == 0.0
            assert not v.shots[0].spec.moving


def test_defect_clips_have_their_defect(corpus):
    root, videos = corpus
    by_kind = {v.kind: v for v in videos}
    good, _ = read_video(root / by_kind["good"].path)
    static, _ = read_video(root / by_kind["static"].path)
    dark, _ = read_video(root / by_kind["dark"].path)
    blurred, _ = read_video(root / by_kind["blurred"].path)
    text, _ = read_video(root / by_kind["text"].path)
    assert np.abs(np.diff(static.astype(np.int16), axis=0)).max() <= 6  # only codec noise
    assert dark.mean() < 10 and dark.max() < 30
    assert good.max() > 200

    def sharpness(frames):
        import cv2

        return float(np.mean([cv2.Laplacian(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for f in frames]))

    assert sharpness(blurred) < 0.1 * sharpness(good)
    # burned-in text: white pixels that no caption colour explains on a non-white-shape clip
    white = (text.min(axis=-1) > 230).mean()
    assert white > 0.005 or by_kind["text"].shots[0].spec.colour == "white"


def test_ground_truth_table(corpus):
    root, videos = corpus
    table = ground_truth_table(videos, root)
    n_rows = sum(max(1, len(v.shots)) for v in videos)
    assert len(table) == n_rows
    assert table["path"].map(lambda p: p.startswith(str(root.resolve()))).all()
    broken = table[table["kind"].isin(["zero_bytes", "not_video", "truncated"])]
    assert (broken["shot_index"] == -1).all() and broken["caption"].isna().all()
    good = table[table["kind"] == "good"]
    assert good.groupby("path")["shot_index"].min().eq(0).all()


def test_deterministic_and_cleans_stale_files(tmp_path):
    cfg = dict(TINY, num_videos=1, num_large=0, num_images=0, defects={})
    first = generate_corpus(tmp_path / "a", cfg, progress=False)
    second = generate_corpus(tmp_path / "b", cfg, progress=False)
    assert first == second
    a, _ = read_video(tmp_path / "a" / first[0].path)
    b, _ = read_video(tmp_path / "b" / second[0].path)
    # identical frames in; x264's threading may move a few pixel values by a level or two
    assert np.abs(a.astype(np.int16) - b).mean() < 0.2
    # same recipe again: the existing files are kept byte for byte (stable for DVC)
    before = (tmp_path / "a" / first[0].path).stat().st_mtime_ns
    assert generate_corpus(tmp_path / "a", cfg, progress=False) == first
    assert (tmp_path / "a" / first[0].path).stat().st_mtime_ns == before
    # a missing file forces regeneration
    (tmp_path / "a" / first[0].path).unlink()
    assert generate_corpus(tmp_path / "a", cfg, progress=False) == first
    assert (tmp_path / "a" / first[0].path).is_file()
    # regenerate "a" with fewer files: the old ones are gone
    generate_corpus(tmp_path / "a", dict(cfg, num_videos=0), progress=False)
    assert [p.name for p in (tmp_path / "a").iterdir()] == [GROUND_TRUTH_FILE]


def test_config_is_strict():
    with pytest.raises(ConfigError, match="num_vidoes"):
        SyntheticConfig.from_dict({"num_vidoes": 3})
    with pytest.raises(ConfigError, match="unknown defect"):
        SyntheticConfig.from_dict({"defects": {"smudged": 1}})
    with pytest.raises(ConfigError, match="fps_choices"):
        SyntheticConfig.from_dict({"fps_choices": [0]})
