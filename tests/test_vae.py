"""VideoAutoencoder: per-frame AutoencoderKL / AutoencoderTiny for videos, persistence, fitting the tiny one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from opensora_mlops.config import ConfigError
from opensora_mlops.models.vae import VideoAutoencoder, fit_autoencoder


def moving_shapes_clip(frames: int = 8, height: int = 32, width: int = 32) -> torch.Tensor:
    """[1, 3, T, H, W] in [-1, 1]: a red square sliding right and a green disc drifting up-left."""
    video = torch.empty(3, frames, height, width)
    video[0], video[1], video[2] = -0.6, -0.6, -0.2
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    for t in range(frames):
        x0, y0 = 2 + 2 * t, 4 + t
        video[:, t, y0 : y0 + 10, x0 : x0 + 10] = torch.tensor([0.9, -0.8, -0.5]).view(3, 1, 1)
        disc = (yy - 20 + t) ** 2 + (xx - 24 + t // 2) ** 2 < 36
        video[:, t][:, disc] = torch.tensor([-0.7, 0.8, 0.2]).view(3, 1)
    return video[None]


@pytest.fixture(scope="module", params=["taesd", "kl"])
def vae(request: pytest.FixtureRequest) -> VideoAutoencoder:
    return VideoAutoencoder.tiny(seed=0, arch=request.param)


def test_default_tiny_is_the_norm_free_taesd_layout() -> None:
    from diffusers import AutoencoderKL, AutoencoderTiny

    default = VideoAutoencoder.tiny(seed=0)
    assert isinstance(default.module, AutoencoderTiny) and default.deterministic
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in default.module.modules())
    kl = VideoAutoencoder.tiny(seed=0, arch="kl")
    assert isinstance(kl.module, AutoencoderKL) and not kl.deterministic
    with pytest.raises(ConfigError, match="arch"):
        VideoAutoencoder.tiny(arch="vqgan")


@pytest.mark.parametrize(("t", "h", "w"), [(1, 16, 16), (3, 16, 24), (2, 13, 21)])
def test_encode_decode_shapes(vae: VideoAutoencoder, t: int, h: int, w: int) -> None:
    video = torch.rand(2, 3, t, h, w) * 2 - 1
    latents = vae.encode(video)
    assert latents.shape == (2, 4, *vae.get_latent_size((t, h, w)))
    assert latents.dtype == torch.float32
    full = vae.decode(latents)
    assert full.shape == (2, 3, t, latents.shape[-2] * 8, latents.shape[-1] * 8)
    cropped = vae.decode(latents, size=(h, w))
    assert cropped.shape == video.shape
    assert cropped.min() >= -1 and cropped.max() <= 1
    torch.testing.assert_close(cropped, full[..., :h, :w])


def test_frames_are_independent_and_ordered(vae: VideoAutoencoder) -> None:
    video = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    latents = vae.encode(video)
    # the latent of (sample 1, frame 2) is that frame encoded on its own
    alone = vae.encode(video[1:2, :, 2:3])
    torch.testing.assert_close(latents[1:2, :, 2:3], alone, atol=1e-5, rtol=1e-5)


def test_micro_batching_matches_one_batch(vae: VideoAutoencoder) -> None:
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    whole = vae.encode(video)
    micro = VideoAutoencoder(vae.module, micro_batch_size=3)
    torch.testing.assert_close(micro.encode(video), whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(micro.decode(whole), vae.decode(whole), atol=1e-5, rtol=1e-5)


def test_scale_factor_applied_and_mean_vs_sample() -> None:
    vae = VideoAutoencoder.tiny(seed=0, arch="kl")
    video = torch.rand(1, 3, 2, 16, 16) * 2 - 1
    frames = video[0].permute(1, 0, 2, 3)
    with torch.no_grad():
        mean = vae.module.encode(frames).latent_dist.mean
    scaled = VideoAutoencoder(vae.module, scale_factor=0.18215)
    try:
        latents = scaled.encode(video)
        torch.testing.assert_close(latents[0].permute(1, 0, 2, 3), mean * 0.18215, atol=1e-5, rtol=1e-5)
        # decode undoes the scale: decoding the scaled latents equals decoding the raw mean
        with torch.no_grad():
            direct = vae.module.decode(mean).sample.clamp(-1, 1)
        torch.testing.assert_close(scaled.decode(latents)[0].permute(1, 0, 2, 3), direct,
                                   atol=1e-5, rtol=1e-5)
        # posterior samples are reproducible with a generator and differ from the mean
        s1 = scaled.encode(video, sample=True, generator=torch.Generator().manual_seed(1))
        s2 = scaled.encode(video, sample=True, generator=torch.Generator().manual_seed(1))
        assert torch.equal(s1, s2)
        assert (s1 - latents).abs().max() > 1e-4
    finally:
        scaled.scale_factor = 1.0


def test_shift_and_scale_applied_for_the_deterministic_autoencoder() -> None:
    vae = VideoAutoencoder.tiny(seed=0)
    video = torch.rand(1, 3, 2, 16, 16) * 2 - 1
    with torch.no_grad():
        raw = vae.module.encode(video[0].permute(1, 0, 2, 3)).latents
    vae.shift_factor, vae.scale_factor = 0.3, 2.0
    latents = vae.encode(video)
    torch.testing.assert_close(latents[0].permute(1, 0, 2, 3), (raw - 0.3) * 2.0, atol=1e-5, rtol=1e-5)
    # deterministic: "sampling" the posterior returns the mean
    torch.testing.assert_close(vae.encode(video, sample=True), latents)
    with torch.no_grad():
        direct = vae.module.decode(raw).sample.clamp(-1, 1)
    torch.testing.assert_close(vae.decode(latents)[0].permute(1, 0, 2, 3), direct, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="shift_factor"):
        vae.shift_factor = float("nan")


def test_bad_inputs_are_named(vae: VideoAutoencoder) -> None:
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        vae.encode(torch.zeros(3, 2, 16, 16))
    with pytest.raises(ValueError, match="4 channels"):
        vae.decode(torch.zeros(1, 3, 1, 2, 2))
    with pytest.raises(ValueError, match="does not match"):
        vae.decode(torch.zeros(1, 4, 1, 2, 2), size=(8, 16))
    with pytest.raises(ValueError, match="scale_factor"):
        VideoAutoencoder(vae.module, scale_factor=0.0)
    with pytest.raises(ConfigError, match="latent_chanels"):
        VideoAutoencoder.tiny(latent_chanels=8)


@pytest.mark.parametrize("arch", ["taesd", "kl"])
def test_save_and_load_round_trip(tmp_path: Path, arch: str) -> None:
    original = VideoAutoencoder.tiny(seed=3, arch=arch)
    original.scale_factor, original.shift_factor = 0.5, -0.25
    original.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = VideoAutoencoder.from_pretrained(tmp_path / "vae", micro_batch_size=2)
    assert type(loaded.module) is type(original.module)
    assert loaded.scale_factor == 0.5 and loaded.shift_factor == -0.25 and loaded.micro_batch_size == 2
    video = torch.rand(1, 3, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.encode(video), original.encode(video))
    torch.testing.assert_close(loaded.decode(original.encode(video)), original.decode(original.encode(video)))
    overridden = VideoAutoencoder.from_pretrained(tmp_path / "vae", scale_factor=0.18215)
    assert overridden.scale_factor == 0.18215


def test_from_pretrained_in_bfloat16(tmp_path: Path) -> None:
    original = VideoAutoencoder.tiny(seed=4)
    original.save_pretrained(tmp_path / "vae")
    half = VideoAutoencoder.from_pretrained(tmp_path / "vae", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    video = torch.rand(1, 3, 2, 16, 16) * 2 - 1
    latents = half.encode(video)
    assert latents.dtype == torch.float32
    torch.testing.assert_close(latents, original.encode(video), atol=0.05, rtol=0.05)
    assert half.decode(latents).dtype == torch.float32


def test_from_pretrained_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="sd-vae-missing"):
        VideoAutoencoder.from_pretrained(tmp_path / "sd-vae-missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        VideoAutoencoder.from_pretrained(tmp_path / "empty")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(ValueError, match="UNet2DConditionModel.*AutoencoderKL, AutoencoderTiny"):
        VideoAutoencoder.from_pretrained(tmp_path / "unet")


@pytest.mark.parametrize("arch", ["taesd", "kl"])
def test_fit_autoencoder_learns_moving_shapes(arch: str) -> None:
    clip = moving_shapes_clip()
    vae = VideoAutoencoder.tiny(seed=0, arch=arch)

    def reconstruction_error() -> float:
        return (vae.decode(vae.encode(clip), size=clip.shape[-2:]) - clip).abs().mean().item()

    before = reconstruction_error()
    history = fit_autoencoder(vae, clip, steps=40, lr=2e-3, batch_size=4, progress=False)
    after = reconstruction_error()
    assert len(history) == 40 and all(torch.isfinite(torch.tensor(history)))
    assert after < before / 3, (before, after)
    assert sum(history[-10:]) < sum(history[:10]) / 2
    # normalisation calibrated per channel: every channel zero-mean, unit-std on the training frames
    per_channel = vae.encode(clip)[0].flatten(1)
    torch.testing.assert_close(per_channel.std(1), torch.ones(4), atol=0.05, rtol=0.0)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(4), atol=0.05, rtol=0.0)
    assert not vae.module.training and not any(p.requires_grad for p in vae.module.parameters())


def test_fit_autoencoder_accepts_iterables_and_checks_input() -> None:
    vae = VideoAutoencoder.tiny(seed=1)
    clips = [moving_shapes_clip(frames=2, height=16, width=16)] * 2
    history = fit_autoencoder(vae, clips, steps=5, batch_size=2, progress=False, calibrate_scale=False)
    assert len(history) == 5
    assert vae.scale_factor == 1.0
    with pytest.raises(ValueError, match="ran out"):
        fit_autoencoder(vae, iter(clips), steps=5, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        fit_autoencoder(vae, torch.zeros(2, 4, 8, 8), steps=1, progress=False)
    with pytest.raises(ValueError, match="steps"):
        fit_autoencoder(vae, clips, steps=0, progress=False)


def test_random_crops_draw_a_fresh_window_per_frame() -> None:
    from opensora_mlops.models.vae import _random_crops

    frames = torch.arange(4 * 3 * 20 * 30, dtype=torch.float32).reshape(4, 3, 20, 30)
    crops = _random_crops(frames, 8, torch.Generator().manual_seed(0))
    assert crops.shape == (4, 3, 8, 8)
    corners = set()
    for frame, crop in zip(frames, crops):
        # each crop is a contiguous window of its own frame
        flat = frame[0].flatten().tolist()
        top, left = divmod(flat.index(crop[0, 0, 0].item()), 30)
        assert torch.equal(crop, frame[:, top : top + 8, left : left + 8])
        corners.add((top, left))
    assert len(corners) > 1  # windows differ between frames
    assert _random_crops(frames, 64, torch.Generator()).shape == (4, 3, 20, 30)  # larger: whole frame


def test_fit_autoencoder_on_random_crops_keeps_full_frame_calibration() -> None:
    clip = moving_shapes_clip()
    vae = VideoAutoencoder.tiny(seed=0)
    history = fit_autoencoder(vae, clip, steps=6, lr=2e-3, batch_size=4, crop=16, progress=False)
    assert len(history) == 6 and all(torch.isfinite(torch.tensor(history)))
    assert vae.encode(clip).std().item() == pytest.approx(1.0, rel=0.05)


def test_per_channel_latent_stats_round_trip_and_validation(tmp_path: Path) -> None:
    vae = VideoAutoencoder.tiny(seed=5)
    video = torch.rand(1, 3, 2, 16, 16) * 2 - 1
    with torch.no_grad():
        raw = vae.module.encode(video[0].permute(1, 0, 2, 3)).latents
    mean, std = torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([1.0, 2.0, 0.5, 4.0])
    vae.set_latent_stats(mean, std)
    latents = vae.encode(video)
    expected = (raw - mean.view(1, 4, 1, 1)) / std.view(1, 4, 1, 1)
    torch.testing.assert_close(latents[0].permute(1, 0, 2, 3), expected, atol=1e-5, rtol=1e-5)
    vae.save_pretrained(tmp_path / "vae")
    loaded = VideoAutoencoder.from_pretrained(tmp_path / "vae")
    torch.testing.assert_close(loaded.encode(video), latents)
    torch.testing.assert_close(loaded.decode(latents), vae.decode(latents))
    # an explicit scalar scale replaces the per-channel statistics
    scalar = VideoAutoencoder.from_pretrained(tmp_path / "vae", scale_factor=0.5)
    assert scalar.latent_mean is None
    with pytest.raises(ValueError, match="4 values"):
        vae.set_latent_stats([0.0] * 3, [1.0] * 3)
    with pytest.raises(ValueError, match="positive"):
        vae.set_latent_stats([0.0] * 4, [1.0, 1.0, 0.0, 1.0])
    (tmp_path / "vae" / "latent_stats.json").write_text('{"mean": [0, 0, 0, 0]}')
    with pytest.raises(ValueError, match="latent_stats.json"):
        VideoAutoencoder.from_pretrained(tmp_path / "vae")
