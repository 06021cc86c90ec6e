"""Prompt adherence: real synthetic clips (rendered by the corpus code, through an H.264 round trip)
score high against their captions; noise and wrong captions score low."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from opensora_mlops.curation.synthetic import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    ShotSpec,
    caption_for,
    render_shot,
)
from opensora_mlops.data.video_io import read_video, write_video
from opensora_mlops.evaluation.prompt_adherence import (
    STILL,
    adherence_scores,
    analyse_clip,
    score_clips,
    summarise,
)


def _clip(spec: ShotSpec, height=144, width=192, frames=16, size_fraction=0.26):
    size = size_fraction * min(height, width)
    start = {"left": (0.7 * width, 0.5 * height), "right": (0.3 * width, 0.5 * height),
             "up": (0.5 * width, 0.7 * height), "down": (0.5 * width, 0.3 * height)}.get(
        spec.direction, (0.45 * width, 0.55 * height))
    return render_shot(spec, height, width, frames, size, start)


def _real_clips(tmp_path, count=12, seed=0):
    """Corpus clips with random vocabulary, written as MP4 and decoded again (compression included)."""
    rng = np.random.default_rng(seed)
    backgrounds = ["black", "gray", "navy", "maroon"]
    speeds = ["slowly", "quickly"]
    clips = []
    for index in range(count):
        direction = [*DIRECTIONS, None][index % 5]
        spec = ShotSpec(
            colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
            shape=SHAPES[index % len(SHAPES)],
            background=backgrounds[int(rng.integers(4))],
            direction=direction,
            speed=speeds[int(rng.integers(2))] if direction else None,
        )
        path = write_video(tmp_path / f"clip_{index}.mp4", _clip(spec), fps=24)
        frames, _ = read_video(path)
        clips.append((caption_for(spec), frames))
    return clips


def test_real_synthetic_clips_score_high_and_noise_scores_low(tmp_path):
    real = _real_clips(tmp_path)
    rng = np.random.default_rng(1)
    noise = [(caption, rng.integers(0, 256, frames.shape, dtype=np.uint8)) for caption, frames in real]
    table = score_clips(real, "real")
    table = pd.concat([table, score_clips(noise, "noise")], ignore_index=True)
    summary = summarise(table)
    assert summary["real"]["adherence"] >= 0.95, table[table.group == "real"]
    assert summary["real"]["colour"] == 1.0
    assert summary["real"]["direction"] == 1.0
    assert summary["real"]["background"] == summary["real"]["background_stable"] == 1.0
    assert summary["noise"]["adherence"] == summary["noise"]["overall"] == 0.0
    assert summary["noise"]["background_stable"] == 0.0
    assert summary["real"]["n"] == summary["noise"]["n"] == len(real)


@pytest.mark.parametrize(("colour", "shape", "direction"), list(itertools.product(["red", "white"], SHAPES, [*DIRECTIONS, None])))
def test_analysis_recovers_each_attribute(colour, shape, direction):
    spec = ShotSpec(colour, shape, "gray", direction, "quickly" if direction else None)
    found = analyse_clip(_clip(spec))
    assert (found.colour, found.shape, found.direction) == (colour, shape, direction or STILL)


def test_slow_motion_and_small_frames_are_still_resolved():
    spec = ShotSpec("cyan", "square", "navy", "up", "slowly")
    found = analyse_clip(_clip(spec, height=64, width=64, frames=16, size_fraction=0.3))
    assert found.direction == "up"
    assert found.colour == "cyan"
    assert found.displacement[1] < 0


def test_wrong_caption_scores_per_attribute():
    frames = _clip(ShotSpec("green", "triangle", "black", "left", "quickly"))
    right = adherence_scores(frames, "a green triangle moving left quickly on a black background")
    assert right.adherence == 1.0
    wrong_colour = adherence_scores(frames, "a blue triangle moving left quickly on a black background")
    assert (wrong_colour.colour_ok, wrong_colour.shape_ok, wrong_colour.direction_ok) == (0.0, 1.0, 1.0)
    wrong_background = adherence_scores(frames, "a green triangle moving left quickly on a navy background")
    assert (wrong_background.background_ok, wrong_background.background_stable) == (0.0, 1.0)
    assert wrong_background.adherence == 0.75 and wrong_background.overall == 0.0
    wrong_all = adherence_scores(frames, "a red circle moving right slowly on a gray background")
    assert wrong_all.adherence == 0.0
    still_caption = adherence_scores(frames, "a green triangle on a black background")
    assert still_caption.direction_ok == 0.0 and still_caption.found_direction == "left"


def test_wrap_around_does_not_flip_the_direction():
    # long enough at "quickly" that the shape leaves on the right and re-enters on the left
    spec = ShotSpec("yellow", "circle", "maroon", "right", "quickly")
    frames = _clip(spec, frames=80)
    assert analyse_clip(frames).direction == "right"


def test_empty_frames_have_no_subject():
    found = analyse_clip(np.full((8, 64, 64, 3), 90, np.uint8))
    assert found.subject_frames == 0 and found.colour is None and found.direction is None


def test_caption_outside_the_vocabulary_is_an_error():
    with pytest.raises(ValueError, match="not in the synthetic vocabulary"):
        adherence_scores(np.zeros((4, 32, 32, 3), np.uint8), "a person walking a dog")
