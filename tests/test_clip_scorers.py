"""The CLIP scorers (open-clip): aesthetic (CLIP image embedding -> LAION aesthetic MLP, method
``clip-mlp``) and text-video match (cosine of CLIP image and caption embeddings, method ``clip``), run end
to end on a tiny open-clip model built and saved here (no download, no pretrained weights): the scorer
loads exactly the saved weights, and a loading mistake is a ConfigError naming the setting."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from opensora_mlops.config import ConfigError
from opensora_mlops.curation.curate import CurationConfig, run_captions, run_clips, run_scenes, run_scores
from opensora_mlops.curation.scorers import ClipScorer, ScoringConfig, sample_clip
from opensora_mlops.curation.synthetic import ShotSpec, render_shot
from opensora_mlops.data.video_io import write_video

open_clip = pytest.importorskip("open_clip", reason="open-clip-torch is not installed")
torch = pytest.importorskip("torch")

MODEL = "opensora-test-tiny-clip"  # architectures registered with open-clip by this test only
OTHER_MODEL = "opensora-test-tiny-clip-wide"
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
HEAD_SIZES = (1024, 128, 64, 16, 1)  # the LAION improved-aesthetic-predictor MLP after the embedding
H, W = 48, 64


def _aesthetic_head(dim: int, seed: int) -> torch.nn.Module:
    """A randomly initialised head with the LAION predictor's layout: ``layers.{0,2,4,6,7}`` Linear
    layers, Dropout in between (indices 1, 3, 5)."""
    torch.manual_seed(seed)
    sizes = (dim, *HEAD_SIZES)
    layers: list[torch.nn.Module] = []
    for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(torch.nn.Linear(n_in, n_out))
        if index < 3:
            layers.append(torch.nn.Dropout(0.1))
    head = torch.nn.Module()
    head.layers = torch.nn.Sequential(*layers)
    return head.eval()


def _save_head(head: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(CLIP model, its preprocess, tokenizer, aesthetic head, {file name: path}) with the weights saved."""
    root = tmp_path_factory.mktemp("tiny_clip")
    (root / f"{MODEL}.json").write_text(json.dumps(TINY))
    wider = {**TINY, "text_cfg": {**TINY["text_cfg"], "width": 48}}
    (root / f"{OTHER_MODEL}.json").write_text(json.dumps(wider))
    open_clip.add_model_config(root)  # every architecture file in the folder
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL)  # random weights
    model.eval()
    paths = {"clip": root / "clip.pt", "other_clip": root / "other_clip.pt", "head": root / "aesthetic.safetensors",
             "head_pt": root / "aesthetic.pth"}
    torch.save(model.state_dict(), paths["clip"])
    torch.manual_seed(1)
    torch.save(open_clip.create_model(MODEL).state_dict(), paths["other_clip"])
    head = _aesthetic_head(TINY["embed_dim"], seed=2)
    _save_head(head, paths["head"])
    torch.save(head.state_dict(), paths["head_pt"])
    return model, preprocess, open_clip.get_tokenizer(MODEL), head, paths


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two short generated clips (a red circle moving right, a cyan square moving up) and an image."""
    from PIL import Image

    root = tmp_path_factory.mktemp("clips")
    shots = {"red": ShotSpec("red", "circle", "navy", "right", "quickly"),
             "cyan": ShotSpec("cyan", "square", "maroon", "up", "slowly")}
    paths = {}
    for name, spec in shots.items():
        paths[name] = root / f"{name}.mp4"
        write_video(paths[name], render_shot(spec, H, W, 12, 16.0, (30.0, 30.0)), 12.0, crf=10)
    paths["image"] = root / "still.png"
    Image.fromarray(render_shot(shots["red"], H, W, 1, 16.0, (30.0, 30.0))[0]).save(paths["image"])
    return paths


def _scorer(paths, **overrides) -> ClipScorer:
    settings = {"stride": 2, "max_frames": 6, "clip_model_name": MODEL, "aesthetic_clip_path": str(paths["clip"]),
                "aesthetic_mlp_path": str(paths["head"]), "match_clip_path": str(paths["clip"]),
                "ocr_detector": "classical", **overrides}
    return ClipScorer(ScoringConfig(**settings))


def _embed(model, preprocess, frames: np.ndarray) -> torch.Tensor:
    from PIL import Image

    with torch.no_grad():
        emb = model.encode_image(torch.stack([preprocess(Image.fromarray(f)) for f in frames])).float()
    return emb / emb.norm(dim=-1, keepdim=True)


def test_aesthetic_is_the_heads_mean_over_first_middle_and_last_frame(tiny_clip, clips):
    model, preprocess, _, head, paths = tiny_clip
    scorer = _scorer(paths)
    assert scorer.methods["aes_method"] == "clip-mlp" and scorer.methods["match_method"] == "clip"
    assert scorer._clip_match is scorer._clip_aes  # one CLIP model when both paths are the same file
    clip = sample_clip(clips["red"], 2, 6)
    assert clip.frames.shape == (6, H, W, 3)
    picks = clip.frames[[0, 3, 5]]
    with torch.no_grad():
        expected = float(head.layers(_embed(model, preprocess, picks)).mean())
    aes = scorer.aesthetic(clip)
    assert math.isfinite(aes) and aes == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert scorer.aesthetic(clip) == aes  # deterministic: dropout is off
    still = sample_clip(clips["image"])  # a still image: its one frame
    with torch.no_grad():
        expected = float(head.layers(_embed(model, preprocess, still.frames)).mean())
    assert scorer.aesthetic(still) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # the same head stored as a torch checkpoint scores the same; another head scores otherwise
    assert _scorer(paths, aesthetic_mlp_path=str(paths["head_pt"])).aesthetic(clip) == pytest.approx(aes)
    other_head = paths["head"].with_name("other.safetensors")
    _save_head(_aesthetic_head(TINY["embed_dim"], seed=3), other_head)
    assert _scorer(paths, aesthetic_mlp_path=str(other_head)).aesthetic(clip) != pytest.approx(aes)


def test_match_is_the_cosine_of_middle_frame_and_caption(tiny_clip, clips):
    model, preprocess, tokenizer, _, paths = tiny_clip
    scorer = _scorer(paths)
    clip = sample_clip(clips["red"], 2, 6)
    texts = ("A red circle moves quickly to the right on a navy background.",
             "A cyan square moves slowly upwards on a maroon background.")
    with torch.no_grad():
        words = model.encode_text(tokenizer(list(texts))).float()
    words = words / words.norm(dim=-1, keepdim=True)
    image = _embed(model, preprocess, clip.frames[len(clip.frames) // 2][None])
    scores = [scorer.match(clip, text) for text in texts]
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert scores == pytest.approx((image @ words.T)[0].tolist(), abs=1e-5)
    assert scores[0] != pytest.approx(scores[1])  # the caption is part of the score
    assert scorer.match(clip, texts[0]) == scores[0]  # deterministic
    assert math.isnan(scorer.match(clip, None)) and math.isnan(scorer.match(clip, ""))
    # a match model of its own (another file) is loaded separately and scores otherwise
    separate = _scorer(paths, match_clip_path=str(paths["other_clip"]))
    assert separate._clip_match is not separate._clip_aes
    assert separate.match(clip, texts[0]) != pytest.approx(scores[0])


def _raw_video(path: Path, spec: ShotSpec, frames: int = 24, fps: float = 12.0) -> dict:
    write_video(path, render_shot(spec, H, W, frames, 16.0, (30.0, 30.0)), fps, crf=10)
    return {"path": str(path), "text": f"A {spec.colour} {spec.shape}.", "num_frames": frames, "height": H,
            "width": W, "aspect_ratio": H / W, "fps": fps, "resolution": H * W, "duration": frames / fps,
            "source": "test"}


def test_clip_scores_reach_the_clip_table(tiny_clip, tmp_path):
    """Curation's scenes -> clips -> captions -> scores with the CLIP models configured: every clip gets
    finite CLIP scores and their methods, equal to the scorer's own; a replaced weights file is not
    answered from the cached partitions."""
    *_, paths = tiny_clip
    raw = pd.DataFrame([_raw_video(tmp_path / "src" / f"{spec.colour}.mp4", spec) for spec in (
        ShotSpec("red", "circle", "navy", "right", "quickly"), ShotSpec("cyan", "square", "maroon", "up", "slowly"))])
    scoring = {"stride": 2, "max_frames": 6, "clip_model_name": MODEL, "ocr_detector": "classical",
               "aesthetic_clip_path": str(paths["clip"]), "aesthetic_mlp_path": str(paths["head"]),
               "match_clip_path": str(paths["clip"])}
    settings = {"scenes": {"min_scene_len": 6}, "clips": {"min_seconds": 0.5, "max_seconds": 2.0, "shorter_side": 48},
                "scoring": scoring, "partitions": {"root": str(tmp_path / "parts"),
                                                   "clips_dir": str(tmp_path / "clips"), "progress": False}}
    config = CurationConfig.from_dict(settings)
    scenes, _, _ = run_scenes(raw, config)
    clips, _, _ = run_clips(raw, scenes, config)
    captioned, _ = run_captions(clips, config)
    scored, dropped, step = run_scores(captioned, config)
    assert dropped.empty and len(scored) == len(captioned) >= 2 and step.computed == 2
    assert set(scored["aes_method"]) == {"clip-mlp"} and set(scored["match_method"]) == {"clip"}
    assert np.isfinite(scored["aes"]).all() and scored["match"].between(-1.0, 1.0).all()
    direct = _scorer(paths, stride=2, max_frames=6)
    for row in scored.to_dict(orient="records"):
        alone = direct.score_path(row["path"], row["text"], int(row["num_frames"]))
        assert (row["aes"], row["match"]) == pytest.approx((alone["aes"], alone["match"]), abs=1e-6)
    again, _, step = run_scores(captioned, config)
    assert (step.computed, step.reused) == (0, 2)
    pd.testing.assert_frame_equal(again, scored)
    other_head = tmp_path / "head.safetensors"  # other weights, another path
    _save_head(_aesthetic_head(TINY["embed_dim"], seed=4), other_head)
    settings["scoring"] = {**scoring, "aesthetic_mlp_path": str(other_head)}
    rescored, _, step = run_scores(captioned, CurationConfig.from_dict(settings))
    assert step.computed == 2 and not np.allclose(rescored["aes"], scored["aes"])


def test_loading_mistakes_name_the_setting(tiny_clip, tmp_path):
    *_, paths = tiny_clip
    not_weights = tmp_path / "clip.pt"
    not_weights.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot load open-clip"):
        _scorer(paths, aesthetic_clip_path=str(not_weights), match_clip_path=None)
    with pytest.raises(ConfigError, match="clip_model_name"):  # weights of another architecture
        _scorer(paths, clip_model_name=OTHER_MODEL, match_clip_path=None)
    with pytest.raises(ConfigError, match="cannot load open-clip"):  # an architecture open-clip does not know
        _scorer(paths, clip_model_name="no-such-architecture")
    head = tmp_path / "head.pth"
    torch.save({"layers.0.weight": torch.zeros(3, 3)}, head)
    with pytest.raises(RuntimeError, match="layers"):  # the head's own loader is strict
        _scorer(paths, aesthetic_mlp_path=str(head))
