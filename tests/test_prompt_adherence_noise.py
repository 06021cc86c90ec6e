"""Prompt adherence cannot be passed by noise: pure noise, flat clips, flickering or off-palette
backgrounds, subjects that come and go and random blobs all fail where corpus clips (rendered by the
corpus code, some through an H.264 round trip) pass; plus chance levels, bootstrap intervals and the
seen / held-out split."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from opensora_mlops.curation.synthetic import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    ShotSpec,
    caption_for,
    render_shot,
)
from opensora_mlops.data.video_io import read_video, write_video
from opensora_mlops.evaluation.prompt_adherence import (
    CHANCE,
    HELD_OUT,
    SEEN,
    adherence_scores,
    analyse_clip,
    combination_of,
    score_clips,
    split_of,
    summarise,
    summarise_with_intervals,
    training_combinations,
)
from opensora_mlops.evaluation.statistics import cluster_bootstrap

H, W, T = 96, 128, 12
ATTRIBUTES = ("colour_ok", "shape_ok", "direction_ok", "background_ok")


def _render(spec: ShotSpec, frames: int = T) -> np.ndarray:
    start = {"left": (0.7 * W, 0.5 * H), "right": (0.3 * W, 0.5 * H), "up": (0.5 * W, 0.7 * H),
             "down": (0.5 * W, 0.3 * H)}.get(spec.direction, (0.45 * W, 0.55 * H))
    return render_shot(spec, H, W, frames, 0.3 * H, start)


def _specs(count: int, seed: int = 0) -> list[ShotSpec]:
    rng = np.random.default_rng(seed)
    specs = []
    for index in range(count):
        direction = [*DIRECTIONS, None][index % 5]
        specs.append(ShotSpec(
            colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
            shape=SHAPES[index % len(SHAPES)],
            background=list(BACKGROUNDS)[index % len(BACKGROUNDS)],
            direction=direction,
            speed="quickly" if direction else None,
        ))
    return specs


@pytest.fixture(scope="module")
def real_clips(tmp_path_factory):
    """Ten corpus clips; every other one through H.264 and back (compression included)."""
    root = tmp_path_factory.mktemp("adherence_clips")
    clips = []
    for index, spec in enumerate(_specs(10)):
        frames = _render(spec)
        if index % 2:
            frames, _ = read_video(write_video(root / f"clip_{index}.mp4", frames, fps=24))
        clips.append((caption_for(spec), frames))
    return clips


def _noise_clips(captions, seed: int = 0):
    rng = np.random.default_rng(seed)
    uniform = [(c, rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)) for c in captions]
    gaussian = [(c, np.clip(rng.normal(128, 50, (T, H, W, 3)), 0, 255).astype(np.uint8)) for c in captions]
    return uniform, gaussian


def test_real_clips_pass_every_check(real_clips):
    table = score_clips(real_clips, "real")
    assert table[list(ATTRIBUTES)].to_numpy().min() == 1.0, table
    assert (table["overall"] == 1.0).all() and (table["background_stable"] == 1.0).all()
    assert (table["subject_fraction"] == 1.0).all()
    assert (table["background_spread"] < 1.0).all()


def test_noise_and_flat_clips_fail_and_never_beat_real(real_clips):
    captions = [c for c, _ in real_clips]
    uniform, gaussian = _noise_clips(captions)
    flat = {
        "gray": [(c, np.full((T, H, W, 3), BACKGROUNDS["gray"], np.uint8)) for c in captions],
        "mid-gray": [(c, np.full((T, H, W, 3), 128, np.uint8)) for c in captions],
        "black": [(c, np.zeros((T, H, W, 3), np.uint8)) for c in captions],
    }
    table = pd.concat(
        [score_clips(real_clips, "real"), score_clips(uniform, "uniform"), score_clips(gaussian, "gaussian")]
        + [score_clips(clips, name) for name, clips in flat.items()],
        ignore_index=True,
    )
    summary = summarise(table)
    for group in ("uniform", "gaussian"):
        # noise has neither a background nor a subject
        assert all(summary[group][k] == 0.0 for k in summary[group] if k != "n"), summary[group]
    for group in ("gray", "mid-gray", "black"):
        rows = table[table.group == group]
        assert (rows[["colour_ok", "shape_ok", "direction_ok", "overall"]] == 0.0).all().all()
        assert (rows["found_colour"].isna()).all() and (rows["background_stable"] == 1.0).all()
        # a flat clip is "right" only about its background, on the prompts that name its colour
        assert rows["adherence"].max() <= 0.25
    matches_gray = table[(table.group == "gray")]["caption"].str.contains("gray background")
    assert (table[table.group == "gray"]["background_ok"] == matches_gray.astype(float)).all()
    for group in summary:
        for metric, value in summary[group].items():
            if metric != "n":
                assert value <= summary["real"][metric], (group, metric)


def test_a_flickering_background_is_not_stable():
    spec = ShotSpec("white", "circle", "gray", "left", "quickly")
    frames = _render(spec)
    other = _render(ShotSpec("white", "circle", "navy", "left", "quickly"))
    frames[1::2] = other[1::2]  # gray and navy frames alternate; the subject stays right
    score = adherence_scores(frames, caption_for(spec))
    assert score.background_stable == 0.0 and score.background_ok == 0.0
    assert (score.colour_ok, score.shape_ok, score.direction_ok) == (1.0, 1.0, 1.0)
    assert score.overall == 0.0 and score.adherence == 0.75


def test_a_drifting_background_colour_is_not_stable():
    """Every frame's nearest background is gray, but its colour wanders by ±20 levels: unstable."""
    spec = ShotSpec("red", "square", "gray")
    frames = _render(spec).astype(np.int16)
    frames += np.array([20 if i % 2 else -20 for i in range(T)], np.int16)[:, None, None, None]
    frames = frames.clip(0, 255).astype(np.uint8)
    found = analyse_clip(frames)
    assert set(found.frame_backgrounds) == {"gray"}
    assert found.background_spread > 8.0
    score = adherence_scores(frames, caption_for(spec))
    assert score.background_stable == 0.0 and score.background_ok == 0.0
    assert score.colour_ok == score.shape_ok == score.direction_ok == 1.0


def test_an_off_palette_background_is_no_vocabulary_background():
    """The orange a diverging model paints is nearest to maroon, but too far from it to count."""
    spec = ShotSpec("cyan", "triangle", "maroon")
    frames = _render(spec)
    background = np.all(frames == frames[0, 1, 1], axis=-1)
    frames[background] = (210, 110, 40)
    found = analyse_clip(frames)
    assert found.background is None and set(found.frame_backgrounds) == {None}
    score = adherence_scores(frames, caption_for(spec))
    assert score.background_ok == score.background_stable == 0.0
    assert score.shape_ok == 1.0


@pytest.mark.parametrize(("visible", "expected"), [(4, 0.0), (7, 0.0), (8, 1.0), (12, 1.0)])
def test_the_subject_must_be_found_in_most_frames(visible, expected):
    spec = ShotSpec("green", "circle", "black", "right", "quickly")
    frames = _render(spec)
    empty = np.full_like(frames[0], BACKGROUNDS["black"])  # the bare background
    hidden = np.linspace(0, T - 1, T - visible).round().astype(int) if visible < T else []
    frames[hidden] = empty
    score = adherence_scores(frames, caption_for(spec))  # needs >= 60% of 12 frames, i.e. 8
    assert (score.colour_ok, score.shape_ok, score.direction_ok) == (expected,) * 3
    assert score.background_ok == 1.0  # the background is there in every frame either way


def test_speckle_is_not_a_subject():
    rng = np.random.default_rng(3)
    frames = np.zeros((T, H, W, 3), np.uint8)
    dots = rng.random((T, H, W)) < 0.05  # 5% of pixels lit, as isolated dots
    frames[dots] = COLOURS["red"]
    found = analyse_clip(frames)
    assert found.subject_frames == 0 and found.colour is None
    assert found.background == "black"


def test_random_blobs_score_no_better_than_chance():
    """A model that paints a randomly coloured blob somewhere in each frame on a random vocabulary
    background (what an untrained or diverged model does at best) scores at or below chance."""
    rng = np.random.default_rng(7)
    rows = []
    for spec in _specs(30, seed=1):
        frames = np.empty((T, H, W, 3), np.uint8)
        for t in range(T):
            frames[t] = BACKGROUNDS[list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]]
            centre = (int(rng.integers(20, W - 20)), int(rng.integers(20, H - 20)))
            axes = (int(rng.integers(6, 18)), int(rng.integers(6, 18)))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            cv2.ellipse(frames[t], centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        rows.append(adherence_scores(frames, caption_for(spec)))
    fields = {"colour": "colour_ok", "shape": "shape_ok", "direction": "direction_ok",
              "background": "background_ok", "adherence": "adherence", "overall": "overall"}
    for attribute, field in fields.items():
        mean = float(np.mean([getattr(r, field) for r in rows]))
        assert mean <= CHANCE[attribute], (attribute, mean)


def test_chance_levels_are_one_over_the_vocabulary():
    assert CHANCE["colour"] == pytest.approx(1 / 7)
    assert CHANCE["shape"] == pytest.approx(1 / 3)
    assert CHANCE["background"] == pytest.approx(1 / 4)
    assert CHANCE["direction"] == pytest.approx(1 / 5)  # four motions or still
    assert CHANCE["adherence"] == pytest.approx((1 / 7 + 1 / 3 + 1 / 4 + 1 / 5) / 4)
    assert CHANCE["overall"] == pytest.approx(1 / (7 * 3 * 4 * 5))
    assert "background_stable" not in CHANCE  # not a choice among answers


def test_intervals_resample_prompts_not_samples():
    # 12 prompts x 3 seeds; a prompt's seeds agree (the model either can draw it or not)
    prompts = np.repeat([f"p{i}" for i in range(12)], 3)
    right = np.repeat(np.arange(12) % 2 == 0, 3).astype(float)
    clustered = cluster_bootstrap(right, prompts, seed=0)
    independent = cluster_bootstrap(right, None, seed=0)
    assert clustered.mean == independent.mean == 0.5
    assert clustered.low <= 0.5 <= clustered.high
    # 36 "independent" clips would overstate the evidence 12 prompts give
    assert (clustered.high - clustered.low) > 1.4 * (independent.high - independent.low)
    assert cluster_bootstrap(right, prompts, seed=0) == clustered  # deterministic in the seed
    # binomial check: 40 independent coin flips, half right: about ±1.96·sqrt(.25/40) = ±0.155
    flips = cluster_bootstrap(np.arange(40) % 2, seed=1)
    assert 0.10 < (flips.high - flips.low) / 2 < 0.20
    constant = cluster_bootstrap(np.ones(9), np.repeat(["a", "b", "c"], 3))
    assert (constant.mean, constant.low, constant.high) == (1.0, 1.0, 1.0)
    assert np.isnan(cluster_bootstrap(np.array([])).mean)
    with pytest.raises(ValueError, match="confidence"):
        cluster_bootstrap(right, prompts, confidence=1.5)
    with pytest.raises(ValueError, match="label every value"):
        cluster_bootstrap(right, prompts[:-1])


def test_summary_with_intervals_per_group(real_clips):
    uniform, _ = _noise_clips([c for c, _ in real_clips])
    table = pd.concat([score_clips(real_clips, "real"), score_clips(uniform, "noise")], ignore_index=True)
    summary = summarise_with_intervals(table, num_resamples=500)
    assert set(summary) == {"real", "noise"}
    for stats in summary.values():
        for metric in ("colour", "shape", "direction", "background", "background_stable", "adherence", "overall"):
            assert stats[f"{metric}_low"] <= stats[metric] <= stats[f"{metric}_high"]
        assert stats["n"] == len(real_clips)
        assert stats["prompts"] == len({c for c, _ in real_clips})
    assert summary["real"]["overall"] == 1.0 and summary["noise"]["overall_high"] == 0.0


def test_seen_and_held_out_by_attribute_combination():
    training = [
        "A red circle moving left quickly on a gray background.",  # curation's wording
        "a blue square on a black background",
        "a person walking a dog",  # outside the vocabulary: ignored
    ]
    seen = training_combinations(training)
    assert seen == {("red", "circle", "gray", "left"), ("blue", "square", "black", "still")}
    # the speed does not matter, the wording neither
    assert split_of("a red circle moving left slowly on a gray background", seen) == SEEN
    assert split_of("A blue square on a black background.", seen) == SEEN
    # any other attribute does
    assert split_of("a red circle moving right quickly on a gray background", seen) == HELD_OUT
    assert split_of("a red circle moving left quickly on a navy background", seen) == HELD_OUT
    assert split_of("a blue square moving up quickly on a black background", seen) == HELD_OUT
    assert combination_of("a cat") is None and split_of("a cat", seen) == HELD_OUT


def test_a_subject_jumping_back_and_forth_has_no_direction():
    """Net motion to the right, but every other step goes left: no coherent direction."""
    spec = ShotSpec("magenta", "square", "gray", "right", "quickly")
    background = np.full((H, W, 3), BACKGROUNDS["gray"], np.uint8)
    frames = []
    for t in range(T):
        x = 30 + 4 * t + (12 if t % 2 else 0)  # +16, -8, +16, -8 ... pixels
        frame = background.copy()
        cv2.rectangle(frame, (x, 35), (x + 24, 59), COLOURS["magenta"], -1)
        frames.append(frame)
    found = analyse_clip(np.stack(frames))
    assert found.direction == "right" and found.track_consistency == pytest.approx(0.55, abs=0.05)
    score = adherence_scores(np.stack(frames), caption_for(spec))
    assert score.direction_ok == 0.0 and score.colour_ok == score.shape_ok == 1.0
