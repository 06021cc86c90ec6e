"""VBench suite format, dimension bookkeeping, pretrained evaluators from local directories, and the
validation loss by timestep range."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from opensora_mlops.config import ConfigError
from opensora_mlops.curation.synthetic import ShotSpec, caption_for, parse_caption, render_shot
from opensora_mlops.evaluation.features import (
    ClipIqaScorer,
    EvaluationModels,
    LaionAestheticScorer,
    LinearStack,
    TransformersImageFeatures,
)
from opensora_mlops.evaluation.validation import loss_by_timestep, summarise_by_range, timestep_ranges
from opensora_mlops.evaluation.vbench import (
    ALL_DIMENSIONS,
    IMPLEMENTED_DIMENSIONS,
    Scorers,
    SuiteEntry,
    load_prompt_suite,
    score_suite,
)


def _frames(caption: str, frames: int = 10, height: int = 64, width: int = 96) -> np.ndarray:
    spec = parse_caption(caption)
    start = (0.5 * width, 0.5 * height)
    return render_shot(spec, height, width, frames, 0.3 * height, start)


def test_bundled_suite_is_vbench_format_in_the_synthetic_vocabulary():
    suite = load_prompt_suite()
    assert len(suite) >= 12
    assert all(parse_caption(entry.prompt) is not None for entry in suite)
    covered = {d for entry in suite for d in entry.dimensions}
    assert set(IMPLEMENTED_DIMENSIONS) <= covered
    assert covered <= set(ALL_DIMENSIONS)


def test_bundled_suite_is_worded_like_the_training_captions():
    """Training captions are the corpus caption through curation's caption cleaning (capital letter,
    full stop); a prompt worded otherwise would measure the text encoder's tolerance, not the model."""
    from opensora_mlops.curation.captions import CaptionConfig, clean_caption

    cleaning = CaptionConfig()
    suite = load_prompt_suite()
    for entry in suite:
        training_wording = clean_caption(caption_for(parse_caption(entry.prompt)), cleaning.prefixes,
                                         cleaning.first_letter)
        assert entry.prompt == training_wording
    # every value of the vocabulary is asked for, moving and still, by the prompts the default evaluates
    from pathlib import Path

    import yaml

    from opensora_mlops.curation.synthetic import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SPEEDS

    conf = Path(__file__).resolve().parents[1] / "conf" / "base" / "parameters_evaluation.yml"
    default_count = yaml.safe_load(conf.read_text())["evaluation"]["max_prompts"]
    for prompts in (suite, suite[:default_count]):
        specs = [parse_caption(e.prompt) for e in prompts]
        assert {s.colour for s in specs} == set(COLOURS)
        assert {s.shape for s in specs} == set(SHAPES)
        assert {s.background for s in specs} == set(BACKGROUNDS)
        assert {s.direction for s in specs} == {*DIRECTIONS, None}
        assert {s.speed for s in specs} == {*SPEEDS, None}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            [{"prompt_en": "a red circle on a gray background", "dimension": ["colour"]}],
            "unknown VBench dimension",
        ),
        ([{"prompt_en": "x", "dimension": ["color"], "dimensions": []}], "unknown key"),
        ([{"prompt_en": "", "dimension": ["color"]}], "prompt_en"),
        ([{"prompt_en": "x", "dimension": "color"}], "'dimension' must be a non-empty list"),
        ({"prompt_en": "x"}, "non-empty JSON list"),
    ],
)
def test_malformed_suites_are_rejected_with_the_problem_named(tmp_path, content, message):
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message):
        load_prompt_suite(path)


def test_missing_suite_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompt suite not found"):
        load_prompt_suite(tmp_path / "nope.json")


def test_score_suite_scores_implemented_dimensions_and_lists_the_rest():
    still = "a red circle on a gray background"
    moving = "a blue square moving right quickly on a black background"
    entries = [
        SuiteEntry(still, ("temporal_flickering", "color", "object_class", "human_action")),
        SuiteEntry(moving, ("dynamic_degree", "motion_smoothness", "color", "overall_consistency")),
        SuiteEntry("a cat playing piano", ("color", "aesthetic_quality")),
    ]
    moving_spec = parse_caption(moving)
    moving_frames = render_shot(moving_spec, 64, 96, 10, 18.0, (30.0, 32.0))
    samples = [(entries[0], _frames(still)), (entries[1], moving_frames), (entries[2], _frames(still))]
    result = score_suite(samples, progress=False)
    assert result.scores["temporal_flickering"] > 0.99
    assert result.scores["dynamic_degree"] == 1.0
    # colour is scored on the two vocabulary prompts only; the cat prompt is listed as not applicable
    assert result.scores["color"] == 1.0
    assert result.not_applicable == {"color": ["a cat playing piano"]}
    assert result.scores["object_class"] == 1.0
    assert 0.0 <= result.scores["aesthetic_quality"] <= 1.0
    assert result.not_implemented == ["human_action", "overall_consistency"]
    assert set(result.methods) == set(result.scores)
    assert len(result.per_video) == 3 + 3 + 1


def test_wrong_subject_lowers_colour_and_object_class():
    entry = SuiteEntry("a red circle on a gray background", ("color", "object_class"))
    wrong = _frames(caption_for(ShotSpec("green", "triangle", "gray")))
    result = score_suite([(entry, wrong)], progress=False)
    assert result.scores == {"object_class": 0.0, "color": 0.0}


def test_colour_and_object_class_need_the_subject_in_most_frames():
    caption = "a red circle on a gray background"
    entry = SuiteEntry(caption, ("color", "object_class"))
    frames = _frames(caption)
    assert score_suite([(entry, frames)], progress=False).scores == {"object_class": 1.0, "color": 1.0}
    flashing = frames.copy()
    flashing[::2] = frames[0, 0, 0]  # the circle is gone from every other frame (half of them)
    assert score_suite([(entry, flashing)], progress=False).scores == {"object_class": 0.0, "color": 0.0}


# ------------------------------------------------------------------ pretrained evaluators (tiny, local)
@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A randomly initialised CLIP vision tower with projection, saved like a downloaded checkpoint."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    directory = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        directory
    )
    return directory


def test_transformers_features_and_laion_head_from_local_paths(tiny_clip_dir, tmp_path):
    frames = _frames("a red circle on a gray background", frames=4)
    features = TransformersImageFeatures(tiny_clip_dir)
    embeddings = features(frames)
    assert embeddings.shape == (4, 16)
    assert "CLIPVisionModelWithProjection" in features.name
    # identical frames give identical embeddings: consistency 1 through the pretrained path
    scorers = Scorers(subject_features=features)
    assert scorers.score("subject_consistency", np.stack([frames[0]] * 3), "x") == pytest.approx(1.0)
    assert "CLIPVisionModelWithProjection" in scorers.methods()["subject_consistency"]

    # LAION-style head: Linear stack 16 -> 8 -> 1, with the released file's key layout
    torch.manual_seed(1)
    head = {
        "layers.0.weight": torch.randn(8, 16),
        "layers.0.bias": torch.randn(8),
        "layers.2.weight": torch.randn(1, 8),
        "layers.2.bias": torch.tensor([50.0]),
    }
    save_file(head, tmp_path / "head.safetensors")
    scorer = LaionAestheticScorer(tiny_clip_dir, tmp_path / "head.safetensors")
    values = scorer(frames)
    assert values.shape == (4,)
    assert np.all((values >= 0) & (values <= 1))
    # the head's arithmetic: (W2 (W1 e + b1) + b2) / 10 on the L2-normalised embedding, clipped
    e = torch.from_numpy(embeddings)
    e = e / e.norm(dim=-1, keepdim=True)
    expected = (
        (e @ head["layers.0.weight"].T + head["layers.0.bias"]) @ head["layers.2.weight"].T + 50.0
    ) / 10
    np.testing.assert_allclose(values, expected.squeeze(-1).clamp(0, 1).numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_full_clip_dir(tmp_path_factory):
    """A random two-tower CLIP with a character-level BPE vocabulary (no merges), saved with its tokenizer."""
    import string

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    directory = tmp_path_factory.mktemp("tiny_full_clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + ".,!?'":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt")).save_pretrained(directory)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        directory
    )
    return directory


def test_clip_iqa_is_the_good_photo_probability(tiny_full_clip_dir):
    frames = _frames("a red circle on a gray background", frames=3)
    scorer = ClipIqaScorer(tiny_full_clip_dir)
    values = scorer(frames)
    assert values.shape == (3,) and np.all((values > 0) & (values < 1))
    # recompute by hand: softmax(scale * cos(image, [good, bad]))[0]
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(tiny_full_clip_dir).eval()
    tokens = AutoTokenizer.from_pretrained(tiny_full_clip_dir)(
        ["Good photo.", "Bad photo."], padding=True, return_tensors="pt"
    )
    pixels = AutoImageProcessor.from_pretrained(tiny_full_clip_dir)(images=list(frames), return_tensors="pt")
    with torch.no_grad():
        out = model(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            pixel_values=pixels["pixel_values"],
        )
    np.testing.assert_allclose(values, out.logits_per_image.softmax(dim=-1)[:, 0].numpy(), atol=1e-5)
    scorers = Scorers(imaging=scorer)
    assert scorers.score("imaging_quality", frames, "x") == pytest.approx(float(values.mean()), abs=1e-6)
    assert scorers.methods()["imaging_quality"].startswith("CLIP-IQA")


def test_linear_stack_rejects_heads_that_do_not_chain():
    with pytest.raises(ValueError, match="do not chain"):
        LinearStack({"layers.0.weight": torch.zeros(8, 16), "layers.1.weight": torch.zeros(1, 4)})
    with pytest.raises(ValueError, match="output 1 value"):
        LinearStack({"layers.0.weight": torch.zeros(2, 16)})


def test_evaluation_models_config_is_strict(tmp_path):
    assert EvaluationModels.from_dict(None).subject_features is None
    with pytest.raises(ConfigError, match="unknown key"):
        EvaluationModels.from_dict({"subject_feature": "x"})
    with pytest.raises(ConfigError, match="path does not exist"):
        EvaluationModels.from_dict({"subject_features": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="must be given together"):
        EvaluationModels.from_dict({"aesthetic_clip": str(tmp_path)})


# ------------------------------------------------------------------ validation loss by timestep
class _Denoiser(torch.nn.Module):
    """A small real network with the ST-DiT-2 call signature (ε and variance channels)."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv = torch.nn.Conv3d(channels, 2 * channels, 1)

    def forward(self, x, timestep, y=None, mask=None, x_mask=None, **_):
        return self.conv(x)


def test_loss_by_timestep_is_reproducible_and_covers_every_range():
    from opensora_mlops.diffusion import IDDPM

    torch.manual_seed(0)
    model = _Denoiser().train()
    diffusion = IDDPM(num_timesteps=1000)
    x_start = torch.randn(2, 4, 3, 8, 8)
    kwargs = {"y": torch.randn(2, 5, 16), "mask": torch.ones(2, 5, dtype=torch.long)}
    table = loss_by_timestep(model, diffusion, x_start, kwargs, timesteps_per_range=2, seed=3)
    assert list(table["range_start"].unique()) == [0, 250, 500, 750]
    assert list(table["timestep"]) == [62, 187, 312, 437, 562, 687, 812, 937]
    assert model.training  # restored
    again = loss_by_timestep(model, diffusion, x_start, kwargs, timesteps_per_range=2, seed=3)
    np.testing.assert_array_equal(table["loss"].to_numpy(), again["loss"].to_numpy())
    other_noise = loss_by_timestep(model, diffusion, x_start, kwargs, timesteps_per_range=2, seed=4)
    assert not np.array_equal(table["loss"].to_numpy(), other_noise["loss"].to_numpy())
    summary = summarise_by_range(table)
    ranges = ("t000_250", "t250_500", "t500_750", "t750_1000")
    assert set(summary) == {f"val_{kind}_{r}" for kind in ("loss", "x0_mse") for r in ranges} | {
        "val_loss",
        "val_x0_mse",
    }
    assert np.isfinite(list(summary.values())).all()
    np.testing.assert_allclose((table["mse"] + table["vb"]).to_numpy(), table["loss"].to_numpy(), rtol=1e-5)


def test_timestep_ranges_are_checked():
    assert timestep_ranges(1000, 4) == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    from opensora_mlops.diffusion import IDDPM

    with pytest.raises(ConfigError, match="not inside"):
        loss_by_timestep(_Denoiser(), IDDPM(), torch.zeros(1, 4, 1, 4, 4), {}, ranges=[[900, 1200]])
    with pytest.raises(ConfigError, match="num_ranges"):
        timestep_ranges(1000, 0)
