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
    SHAPE_SIZE_RANGE,
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
    single_shot_specs,
    video_caption,
)
from opensora_mlops.data.video_io import read_video

TINY = {
    "seed": 3,
    "num_single_shot": 5,
    "single_shot_sizes": [[64, 96], [64, 96], [96, 64]],
    "single_shot_duration_seconds": [1.0, 1.5],
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
    assert kinds.count("good") == 3 + 5
    for kind in ("static", "text", "dark", "blurred", "zero_bytes", "truncated", "not_video"):
        assert kinds.count(kind) == 1, kind
    assert kinds.count("image") == 2
    assert sorted(p.name for p in root.iterdir() if p.name != GROUND_TRUTH_FILE) == sorted(v.path for v in videos)
    assert load_ground_truth(root) == videos
    raw = json.loads((root / GROUND_TRUTH_FILE).read_text())
    assert set(raw["vocabulary"]["shapes"]) == set(SHAPES)

    for v in videos:
        path = root / v.path
        if v.kind == "good" and v.path.startswith("clip_"):
            continue  # single-shot clips: test_single_shot_clips
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


def test_single_shot_clips(corpus):
    root, videos = corpus
    clips = [v for v in videos if v.path.startswith("clip_")]
    assert [v.path for v in clips] == [f"clip_{i:03d}.mp4" for i in range(5)]
    # sizes cycle through the list (listed twice = twice as often), fps through fps_choices
    sizes = [(v.height, v.width) for v in clips]
    assert sorted(sizes[:3]) == [(64, 96), (64, 96), (96, 64)]
    assert sizes.count((64, 96)) in (3, 4) and {v.fps for v in clips[:3]} == {24.0, 25.0, 30.0}
    for v in clips:
        frames, fps = read_video(root / v.path)
        assert v.kind == "good" and fps == v.fps
        assert frames.shape == (v.num_frames, v.height, v.width, 3)
        assert 1.0 <= v.duration <= 1.5 + 1 / fps
        (shot,) = v.shots
        assert (shot.frame_start, shot.frame_end) == (0, v.num_frames) and v.cut_frames == []
        assert parse_caption(v.caption) == shot.spec and shot.spec.moving
        # big enough to survive an 8x downsampling VAE
        assert SHAPE_SIZE_RANGE[0] * min(v.height, v.width) <= shot.shape_size <= SHAPE_SIZE_RANGE[1] * min(
            v.height, v.width)
        # the frames show the caption's background
        corner = frames[:, :3, :3].reshape(-1, 3).astype(int)
        assert np.abs(np.median(corner, axis=0) - BACKGROUNDS[shot.spec.background]).max() <= 25


def test_single_shot_attributes_are_stratified():
    rng = np.random.default_rng(0)
    specs = single_shot_specs(rng, 2 * 84 + 10)
    looks = [(s.colour, s.shape, s.background) for s in specs]
    motions = [(s.direction, s.speed) for s in specs]
    # every appearance combination twice or three times, every motion 22 or 23 times
    assert set(looks) == {(c, sh, bg) for c in COLOURS for sh in SHAPES for bg in BACKGROUNDS}
    assert {looks.count(x) for x in set(looks)} <= {2, 3}
    assert {motions.count(x) for x in set(motions)} <= {22, 23} and len(set(motions)) == 8
    # each value equally often in the whole cycles; only the last, partial cycle (10 draws) adds spread
    for attribute, values, cycle in (("colour", COLOURS, 84), ("shape", SHAPES, 84), ("background", BACKGROUNDS, 84),
                                     ("direction", DIRECTIONS, 8), ("speed", SPEEDS, 8)):
        counts = [sum(getattr(s, attribute) == v for s in specs) for v in values]
        assert min(counts) >= len(specs) // cycle * cycle // len(values), attribute
        assert max(counts) - min(counts) <= len(specs) % cycle, attribute
    # independent random draws would leave combinations out; these never do at n >= 84
    assert len({(s.colour, s.shape, s.background) for s in single_shot_specs(np.random.default_rng(1), 84)}) == 84


@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
def test_slow_motion_is_visible_over_one_training_sample(direction):
    """An 8-frame sample at frame interval 2 (conf/base/parameters_bucketing.yml) has its first and last
    frames 15 source frames apart; over them even a "slowly" moving shape must cross >= 15 % of the frame."""
    h, w = 144, 256
    dx, dy = DIRECTIONS[direction]
    start = (w * (0.7 if dx < 0 else 0.3 if dx > 0 else 0.5), h * (0.7 if dy < 0 else 0.3 if dy > 0 else 0.5))
    frames = render_shot(ShotSpec("red", "square", "black", direction, "slowly"), h, w, 16, 0.3 * h, start)
    red = (frames[..., 0] > 150) & (frames[..., 1] < 100)
    ys, xs = np.nonzero(red[0])
    ye, xe = np.nonzero(red[15])
    shift = (xe.mean() - xs.mean()) / w if dx else (ye.mean() - ys.mean()) / h
    assert np.sign(shift) == (dx or dy) and abs(shift) >= 0.15
    # "quickly" moves well under a shape size per sampled frame (no aliasing of the direction)
    assert SPEEDS["quickly"] * 15 / 7 * max(h, w) < 0.3 * h
    assert SPEEDS["quickly"] >= 2 * SPEEDS["slowly"]


def test_single_shot_clips_leave_the_rest_of_the_corpus_unchanged(tmp_path):
    cfg = dict(TINY, num_videos=1, num_large=0, num_images=1, defects={"zero_bytes": 1})
    without = generate_corpus(tmp_path / "a", dict(cfg, num_single_shot=0), progress=False)
    with_clips = generate_corpus(tmp_path / "b", dict(cfg, num_single_shot=2), progress=False)
    assert [v for v in with_clips if not v.path.startswith("clip_")] == without
    assert len(with_clips) == len(without) + 2


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
    cfg = dict(TINY, num_videos=1, num_single_shot=1, num_large=0, num_images=0, defects={})
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
    generate_corpus(tmp_path / "a", dict(cfg, num_videos=0, num_single_shot=0), progress=False)
    assert [p.name for p in (tmp_path / "a").iterdir()] == [GROUND_TRUTH_FILE]


def test_config_is_strict():
    with pytest.raises(ConfigError, match="num_vidoes"):
        SyntheticConfig.from_dict({"num_vidoes": 3})
    with pytest.raises(ConfigError, match="unknown defect"):
        SyntheticConfig.from_dict({"defects": {"smudged": 1}})
    with pytest.raises(ConfigError, match="fps_choices"):
        SyntheticConfig.from_dict({"fps_choices": [0]})
    with pytest.raises(ConfigError, match="single_shot_sizes must not be empty"):
        SyntheticConfig.from_dict({"num_single_shot": 3, "single_shot_sizes": []})
    with pytest.raises(ConfigError, match=r"\[H, W\] pairs"):
        SyntheticConfig.from_dict({"single_shot_sizes": [[144, 256, 3]]})
    with pytest.raises(ConfigError, match=">= 0"):
        SyntheticConfig.from_dict({"num_single_shot": -1})
    with pytest.raises(ConfigError, match="single_shot_duration_seconds"):
        SyntheticConfig.from_dict({"single_shot_duration_seconds": [3.0, 2.0]})


def test_a_corpus_from_an_older_renderer_is_regenerated(tmp_path):
    cfg = dict(TINY, num_single_shot=1, num_videos=0, num_large=0, num_images=0, defects={})
    (clip,) = generate_corpus(tmp_path, cfg, progress=False)
    truth_path = tmp_path / GROUND_TRUTH_FILE
    truth = json.loads(truth_path.read_text())
    assert truth["config"]["render"]["speeds"] == SPEEDS
    truth["config"]["render"]["version"] = 1  # as if written before the speeds changed
    truth_path.write_text(json.dumps(truth))
    before = (tmp_path / clip.path).stat().st_mtime_ns
    assert generate_corpus(tmp_path, cfg, progress=False) == [clip]
    assert (tmp_path / clip.path).stat().st_mtime_ns != before
    assert json.loads(truth_path.read_text())["config"]["render"]["version"] != 1
