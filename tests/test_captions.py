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


def _tiny_llava(path):
    """A randomly initialised, few-kB LLaVA (CLIP vision tower + Llama) with a word-level tokenizer,
    saved like any local transformers checkpoint: the VLM code path runs for real, offline."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = ["<unk>", "<s>", "</s>", "<image>", "<pad>", "a", "red", "circle", "moving", "left", "describe",
             "this", "video", "in", "one", "sentence", "."]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>")
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    template = ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
                "{% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=16, vision_feature_select_strategy="default", chat_template=template,
        image_token="<image>", num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=32, patch_size=16, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                bos_token_id=1, eos_token_id=2, pad_token_id=4),
        image_token_index=3, vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return set(words)


def test_vlm_captions_from_a_local_model_keep_every_column(tmp_path):
    from opensora_mlops.data.video_io import write_video

    vocabulary = _tiny_llava(tmp_path / "vlm")
    frames = np.zeros((12, 48, 64, 3), np.uint8)
    frames[:, 10:30, 20:40] = (230, 30, 30)
    write_video(tmp_path / "clip.mp4", frames, 12.0)
    clips = pd.DataFrame({"path": [str(tmp_path / "clip.mp4")], "num_frames": [12], "height": [48], "width": [64],
                          "text": ["ignored: the model captions"]})
    config = CaptionConfig(source="vlm", vlm_path=str(tmp_path / "vlm"), vlm_max_new_tokens=4, vlm_frames=1)
    out, dropped = caption_table(clips, config)
    assert len(out) == 1 and len(dropped) == 0 and out["text_method"].item() == "vlm"
    raw = out["text_raw"].item()
    assert raw and set(raw.split()) <= vocabulary  # decoded from the model's own vocabulary
    assert out["text"].item() == clean_caption(raw)
    assert {"height", "width", "num_frames"} <= set(out.columns)


def test_filename_and_empty_fallbacks_are_named_in_text_method():
    clips = pd.DataFrame({"path": ["/c/x-s000.mp4", "/c/y-s000.mp4", "/c/z-s000.mp4"],
                          "source_path": ["/d/dog_running-on_beach.mp4", "/d/IMG_2034.MOV", "/d/lake.mp4"],
                          "text": [None, None, "a calm lake"]})
    out, dropped = caption_table(clips, CaptionConfig(missing_text="filename"))
    assert out["text"].tolist() == ["Dog running on beach.", "A calm lake."]
    assert out["text_method"].tolist() == ["filename-fallback", "metadata"]
    assert dropped["source_path"].tolist() == ["/d/IMG_2034.MOV"]  # a camera name says nothing
    assert dropped["reason"].item() == "no caption (file name has no words)"
    empty, none = caption_table(clips, CaptionConfig(missing_text="empty"))
    assert len(none) == 0 and empty["text_method"].tolist() == ["empty-fallback", "empty-fallback", "metadata"]
    with pytest.raises(ConfigError, match="missing_text"):
        CaptionConfig(missing_text="guess")


def test_caption_strategy_refuses_only_when_nothing_can_be_captioned(tmp_path):
    from opensora_mlops.curation.captions import caption_strategy_problem

    assert "curation.captions.source: vlm" in caption_strategy_problem([None, "", float("nan")], {}, "none of 3")
    assert caption_strategy_problem([None, "a cat"], {}, "x") is None
    assert caption_strategy_problem([None], {"missing_text": "empty"}, "x") is None
    assert caption_strategy_problem([], {}, "x") is None


def test_vlm_captions_are_cached_on_the_model_content_and_prompt(tmp_path):
    """The VLM runs once per clip; a rerun reuses its captions, a changed prompt or a changed model
    file (same path) captions again."""
    from opensora_mlops.curation.curate import CurationConfig, run_captions, run_clips, run_scenes
    from opensora_mlops.curation.probe import probe_table
    from opensora_mlops.data.video_io import write_video

    _tiny_llava(tmp_path / "vlm")
    frames = np.zeros((24, 48, 64, 3), np.uint8)
    frames[:, 10:30, 20:40] = (230, 30, 30)
    write_video(tmp_path / "src.mp4", frames, 12.0)
    raw, _ = probe_table(pd.DataFrame({"path": [str(tmp_path / "src.mp4")], "source": "t", "text": [None]}),
                         progress=False)

    def config(prompt="Describe this video in one sentence."):
        return CurationConfig.from_dict({
            "clips": {"min_seconds": 0.5, "max_seconds": 4.0, "shorter_side": None},
            "captions": {"source": "vlm", "vlm_path": str(tmp_path / "vlm"), "vlm_max_new_tokens": 3, "vlm_prompt": prompt},
            "partitions": {"root": str(tmp_path / "parts"), "clips_dir": str(tmp_path / "clips"), "progress": False},
            "stages": {},
        })

    scenes, _, _ = run_scenes(raw, config())
    clips, _, _ = run_clips(raw, scenes, config())
    store = tmp_path / "parts" / "captions"
    first, _ = run_captions(clips, config())
    assert first["text_method"].tolist() == ["vlm"] and len(list(store.glob("*.dropped.parquet"))) == 1
    again, _ = run_captions(clips, config())
    pd.testing.assert_frame_equal(again, first)
    assert len(list(store.glob("*.dropped.parquet"))) == 1  # reused
    run_captions(clips, config(prompt="What happens?"))
    assert len(list(store.glob("*.dropped.parquet"))) == 2
    weights = next((tmp_path / "vlm").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # same bytes: still cached
    run_captions(clips, config())
    assert len(list(store.glob("*.dropped.parquet"))) == 2
    (tmp_path / "vlm" / "generation_config.json").write_text('{"max_length": 64}')  # the model changed
    run_captions(clips, config())
    assert len(list(store.glob("*.dropped.parquet"))) == 3
