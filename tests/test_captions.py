"""Caption clean-up, per-shot captions, and that captioning keeps every column (defect #7)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from opensora_mlops.config import ConfigError
from opensora_mlops.curation.captions import (
    CaptionConfig,
    VLMCaptioner,
    caption_table,
    clean_caption,
    shot_caption,
)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("The video shows a red circle moving left.", "A red circle moving left."),
        ("  the VIDEO shows   a red\n circle  ", "A red circle."),
        ("In this video, a dog runs on the beach", "A dog runs on the beach."),
        ("This video depicts: the video shows a cat", "A cat."),  # repeated boilerplate
        ('"a quoted caption."', "A quoted caption."),
        ("Fish &amp; chips on a table...", "Fish & chips on a table."),
        ("The videographer walks", "The videographer walks."),  # a prefix must end at a word boundary
        ("", ""),
        (None, ""),
        (float("nan"), ""),
        ("The video shows", ""),
    ],
)
def test_clean_caption(raw, clean):
    assert clean_caption(raw) == clean


def test_first_letter_modes():
    assert clean_caption("The video shows A red circle", first_letter="lower") == "a red circle."
    assert clean_caption("the video shows a Red circle", first_letter="keep") == "a Red circle."


def test_shot_caption_takes_the_scene_part_only_when_counts_agree():
    text = "a red circle; then a blue square; then a green triangle"
    assert shot_caption(text, 1, 3, "; then ") == "a blue square"
    assert shot_caption(text, 1, 2, "; then ") == text  # detected scenes disagree: keep the whole caption
    assert shot_caption(None, 0, 1, "; then ") is None


def test_caption_table_keeps_every_column_and_drops_missing():
    clips = pd.DataFrame({
        "path": ["a.mp4", "b.mp4", "c.mp4"],
        "text": ["The video shows a red circle; then a blue square", "a cat", None],
        "height": [144, 160, 90], "width": [256, 160, 160], "fps": [24.0, 25.0, 30.0],
        "aspect_ratio": [144 / 256, 1.0, 90 / 160], "scene_index": [1, 0, 0], "num_scenes": [2, 1, 1],
        "custom_column": ["x", "y", "z"],
    })
    config = CaptionConfig(shot_separator="; then ")
    out, dropped = caption_table(clips, config)
    assert set(clips.columns) <= set(out.columns)
    assert {"text_raw", "text_method"} <= set(out.columns)
    assert out["text"].tolist() == ["A blue square.", "A cat."]
    assert out["height"].tolist() == [144, 160] and out["width"].tolist() == [256, 160]
    assert out["custom_column"].tolist() == ["x", "y"]
    assert dropped["path"].tolist() == ["c.mp4"] and dropped["reason"].tolist() == ["no caption"]
    kept_all, none_dropped = caption_table(clips, CaptionConfig(missing_text="empty"))
    assert len(kept_all) == 3 and len(none_dropped) == 0 and kept_all["text"].iloc[2] == ""
    np.testing.assert_array_equal(kept_all["fps"], clips["fps"])


def test_caption_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="vlm_path"):
        CaptionConfig(source="vlm")
    with pytest.raises(ConfigError, match="not a directory"):
        VLMCaptioner(str(tmp_path / "no-model"), "Describe.")
    with pytest.raises(ConfigError, match="text_col"):
        CaptionConfig.from_dict({"text_col": "caption"})
