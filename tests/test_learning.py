"""Learning must not break: a tiny model on a handful of clips learns what its captions say.

The clips come from the synthetic corpus's renderer (flat backgrounds, a moving shape), the captions
from its vocabulary, the text encoder is the real MiniLM, the trainer is the real stage trainer with the
embedded default's objective (v-prediction IDDPM). Only the VAE is replaced by a fixed 8x8 average-pool
"autoencoder" (decode = nearest upsampling) so the test needs no fitted VAE and runs in about a minute:
what it guards is the diffusion objective, the model, the trainer and the sampler learning captions.

Asserted after training: sampled clips show the caption's background colour in (nearly) every frame
(>= 0.9 of clips x frames; chance is 0.25), and the caption moves the model's prediction: a clip's own
caption predicts it better than another clip's caption (well above 0.5, where an untrained model sits).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from opensora_mlops.curation.synthetic import BACKGROUNDS, ShotSpec, caption_for, render_shot
from opensora_mlops.data.sampler import SampleKey
from opensora_mlops.diffusion import build_scheduler
from opensora_mlops.evaluation.learning import caption_effect
from opensora_mlops.models.stdit2 import STDiT2
from opensora_mlops.models.text_encoder import build_text_encoder
from opensora_mlops.training.latents import LatentCache, write_latent_cache
from opensora_mlops.training.launch import launch

HEIGHT, WIDTH, FRAMES, FACTOR = 64, 64, 4, 8
SCHEDULER = {"type": "iddpm", "prediction": "v"}
SPECS = [ShotSpec(colour, shape, background, direction, "quickly")
         for background, colour, shape, direction in [
             ("black", "red", "square", "right"), ("gray", "yellow", "circle", "left"),
             ("navy", "white", "square", "down"), ("maroon", "cyan", "circle", "up"),
             ("black", "green", "circle", "left"), ("gray", "blue", "square", "right"),
             ("navy", "magenta", "circle", "up"), ("maroon", "yellow", "square", "down")]]


def encode(videos: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> 8x8-average latents [B, 4, T, H/8, W/8] (4th channel: luminance)."""
    b, c, t, h, w = videos.shape
    pooled = torch.nn.functional.avg_pool2d(videos.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), FACTOR)
    pooled = pooled.reshape(b, t, c, h // FACTOR, w // FACTOR).permute(0, 2, 1, 3, 4)
    return torch.cat([pooled, pooled.mean(dim=1, keepdim=True)], dim=1) * 2.0  # roughly unit scale


def decode(latents: torch.Tensor) -> np.ndarray:
    """Latents [4, T, h, w] -> frames (T, H, W, 3) uint8."""
    rgb = (latents[:3] / 2.0).clamp(-1, 1)
    rgb = rgb.repeat_interleave(FACTOR, dim=2).repeat_interleave(FACTOR, dim=3)
    return ((rgb + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def nearest_background(frame: np.ndarray) -> str:
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]]).astype(float)
    colour = np.median(border, axis=0)
    return min(BACKGROUNDS, key=lambda name: float(np.sum((colour - np.array(BACKGROUNDS[name])) ** 2)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)  # a model this small gains nothing from a second thread, and loses a lot when busy
    root = tmp_path_factory.mktemp("learning")
    clips = {caption_for(spec): render_shot(spec, HEIGHT, WIDTH, FRAMES, 20.0, (20.0, 24.0)) for spec in SPECS}
    table = pd.DataFrame({"path": [f"clip_{i}.mp4" for i in range(len(clips))], "text": list(clips),
                          "fps": 24.0, "num_frames": FRAMES, "height": HEIGHT, "width": WIDTH,
                          "bucket_id": f"144p/{FRAMES}/1.00", "bucket_resolution": "144p",
                          "bucket_num_frames": FRAMES, "bucket_height": HEIGHT, "bucket_width": WIDTH,
                          "batch_size": 8, "keep": True})
    videos = [torch.from_numpy(f).permute(3, 0, 1, 2).float() / 127.5 - 1.0 for f in clips.values()]
    encoder = build_text_encoder({"type": "minilm", "max_length": 32})

    def load(key: SampleKey) -> torch.Tensor:
        return videos[key.row]

    cache_dir = write_latent_cache(root / "cache", table, load, encode, encoder.encode, {"stage": "learning"})
    run = root / "run"
    launch({"stage": "stage1", "run_dir": str(run), "model": {"name": "STDiT2-tiny"},
            "data": {"source": "cache", "cache_dir": str(cache_dir)}, "max_steps": 300, "lr": 2e-3,
            "ema_decay": 0.99, "warmup_steps": 5, "ckpt_every": 0, "seed": 0, "scheduler": SCHEDULER},
           progress=False)
    return STDiT2.from_pretrained(run / "final" / "ema").eval(), LatentCache(cache_dir), encoder


def _samples(model, encoder, captions, seed=0):
    scheduler = build_scheduler(SCHEDULER, steps=20, cfg_scale=4.0)
    y, mask = encoder.encode(captions)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(captions), 4, FRAMES, HEIGHT // FACTOR, WIDTH // FACTOR), generator=generator)
    conditions = {k: torch.full((len(captions),), v) for k, v in
                  {"fps": 24.0, "height": float(HEIGHT), "width": float(WIDTH), "ar": 1.0,
                   "num_frames": float(FRAMES)}.items()}
    with torch.no_grad():
        return scheduler.sample(model, noise, y, mask, model.null_text(len(captions)), conditions,
                                progress=False, generator=generator)


def test_trained_model_draws_the_captioned_background_in_every_frame(trained):
    model, cache, encoder = trained
    captions = [caption_for(spec) for spec in SPECS]
    latents = _samples(model, encoder, captions)
    hits = [nearest_background(frame) == spec.background
            for spec, latent in zip(SPECS, latents) for frame in decode(latent)]
    assert np.mean(hits) >= 0.9, f"background right in {np.mean(hits):.2f} of frames (chance 0.25)"


def test_trained_model_uses_its_captions_and_an_untrained_one_does_not(trained):
    model, cache, _ = trained
    batch = cache.get(list(range(len(cache))))
    effect = caption_effect(model, build_scheduler(SCHEDULER), batch, timesteps=(500, 800, 950))
    torch.manual_seed(0)
    untrained = STDiT2(model.config).eval()
    baseline = caption_effect(untrained, build_scheduler(SCHEDULER), batch, timesteps=(500, 800, 950))
    assert effect["own_caption_wins"] >= 0.85, effect
    assert effect["null_shift"] > 10 * baseline["null_shift"], (effect, baseline)


def test_caption_effect_needs_two_clips(trained):
    model, cache, _ = trained
    with pytest.raises(ValueError, match="at least 2"):
        caption_effect(model, build_scheduler(SCHEDULER), cache.get([0]))


def test_decode_of_encode_keeps_the_background(trained):
    """The stand-in autoencoder itself is faithful on backgrounds (else the first test proves nothing)."""
    spec = SPECS[2]
    frames = render_shot(spec, HEIGHT, WIDTH, FRAMES, 20.0, (20.0, 24.0))
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).float()[None] / 127.5 - 1.0
    assert all(nearest_background(f) == spec.background for f in decode(encode(video)[0]))
