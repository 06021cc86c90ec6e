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


def square_on_background(size: int = 32, side: int = 10) -> torch.Tensor:
    """[1, 3, size, size]: a yellow square on a navy background (the corpus's colours, in [-1, 1])."""
    frame = torch.tensor([18, 24, 92], dtype=torch.float32).view(3, 1, 1).expand(3, size, size).clone()
    top = (size - side) // 2
    frame[:, top : top + side, top : top + side] = torch.tensor([240.0, 220.0, 30.0]).view(3, 1, 1)
    return (frame / 127.5 - 1.0)[None]


def test_subject_weight_map_is_larger_on_the_subject() -> None:
    from opensora_mlops.models.vae import subject_weight_map

    frame = square_on_background()
    weights = subject_weight_map(frame, 4.0, margin=0)
    assert weights.shape == (1, 1, 32, 32)
    assert torch.all(weights[0, 0, 11:21, 11:21] == 5.0)  # the square
    assert weights[0, 0, :11].eq(1.0).all() and weights[0, 0, 21:].eq(1.0).all()  # background rows
    assert weights.eq(5.0).sum() == 100
    # the margin grows the weighted region by that many pixels on every side (the outline's band)
    grown = subject_weight_map(frame, 4.0, margin=2)
    assert grown.eq(5.0).sum() == 14 * 14 and torch.all(grown[0, 0, 9:23, 9:23] == 5.0)
    # a flat frame has no subject; weight 0 gives the plain (unweighted) loss
    assert subject_weight_map(torch.full((2, 3, 8, 8), 0.3), 4.0).eq(1.0).all()
    assert subject_weight_map(frame, 0.0).eq(1.0).all()
    # a faint grid line (22 levels brighter than the background, as the corpus draws it) is not subject
    gridded = frame.clone()
    gridded[:, :, 3, :] += 22 / 127.5
    assert subject_weight_map(gridded, 4.0, margin=0)[0, 0, 3].eq(1.0).all()
    with pytest.raises(ValueError, match="subject_weight"):
        subject_weight_map(frame, -1.0)
    with pytest.raises(ValueError, match="subject_weight"):
        subject_weight_map(frame, float("nan"))


def test_reconstruction_loss_weights_subject_errors_and_edges() -> None:
    from opensora_mlops.models.vae import reconstruction_loss, subject_weight_map

    target = square_on_background()
    weights = subject_weight_map(target, 4.0, margin=0)
    # unweighted it is L1 + mse_weight * MSE
    recon = target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    error = recon - target
    torch.testing.assert_close(reconstruction_loss(recon, target, mse_weight=0.5),
                               error.abs().mean() + 0.5 * error.pow(2).mean())
    # the same error costs more on the subject than on the background once weighted
    on_subject, on_background = target.clone(), target.clone()
    on_subject[:, :, 12:16, 12:16] += 0.5
    on_background[:, :, 1:5, 1:5] += 0.5
    assert reconstruction_loss(on_subject, target) == pytest.approx(reconstruction_loss(on_background, target).item())
    assert reconstruction_loss(on_subject, target, weights) > 2 * reconstruction_loss(on_background, target, weights)
    # the gradient term: nothing for a colour offset of the whole frame, a lot for a blurred outline
    offset = target + 0.2
    assert reconstruction_loss(offset, target, edge_weight=1.0) == pytest.approx(
        reconstruction_loss(offset, target).item(), abs=1e-6)
    blurred = torch.nn.functional.avg_pool2d(target, 5, stride=1, padding=2, count_include_pad=False)
    plain = reconstruction_loss(blurred, target)
    assert reconstruction_loss(blurred, target, edge_weight=1.0) > 1.5 * plain
    assert reconstruction_loss(target, target, weights, edge_weight=1.0) == 0.0


def test_random_crops_cut_aligned_maps_at_the_same_windows() -> None:
    from opensora_mlops.models.vae import _random_crops

    frames = torch.rand(6, 3, 20, 30, generator=torch.Generator().manual_seed(1))
    position = torch.arange(20 * 30, dtype=torch.float32).reshape(1, 1, 20, 30).expand(6, 1, 20, 30)
    crops, maps = _random_crops(frames, 8, torch.Generator().manual_seed(0), 0.5, position)
    assert crops.shape == (6, 3, 8, 8) and maps.shape == (6, 1, 8, 8)
    for frame, crop, where in zip(frames, crops, maps):
        top, left = divmod(int(where[0, 0, 0]), 30)
        assert torch.equal(crop, frame[:, top : top + 8, left : left + 8])
    # the same generator state draws the same windows with or without an aligned map
    alone = _random_crops(frames, 8, torch.Generator().manual_seed(0), 0.5)
    assert torch.equal(alone, crops)


def test_lr_schedule_warms_up_then_anneals() -> None:
    from opensora_mlops.models.vae import _lr_factor

    factor = _lr_factor(100, 10, cosine_decay=True)
    ramp = [factor(s) for s in range(10)]
    assert ramp == sorted(ramp) and ramp[0] == pytest.approx(0.1) and ramp[-1] == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    decay = [factor(s) for s in range(10, 100)]
    assert decay == sorted(decay, reverse=True) and decay[-1] < 0.01
    constant = _lr_factor(50, 0, cosine_decay=False)
    assert {constant(s) for s in range(50)} == {1.0}


def test_fit_autoencoder_with_subject_and_edge_terms() -> None:
    clip = moving_shapes_clip()
    vae = VideoAutoencoder.tiny(seed=0)

    def subject_error() -> float:
        recon = vae.decode(vae.encode(clip), size=clip.shape[-2:])
        return (recon - clip)[:, :, :, 4:20, 2:26].abs().mean().item()

    before = subject_error()
    history = fit_autoencoder(vae, clip, steps=40, lr=2e-3, batch_size=4, progress=False, subject_weight=4.0,
                              edge_weight=1.0, warmup_steps=5, crop=24, crop_content_bias=0.7)
    assert len(history) == 40 and all(torch.isfinite(torch.tensor(history)))
    assert subject_error() < before / 2
    assert vae.module.encoder.layers[0].weight.is_contiguous()  # left in the default memory format
    for bad, match in (({"subject_weight": -0.5}, "subject_weight"), ({"edge_weight": float("inf")}, "edge_weight"),
                       ({"warmup_steps": 3}, "warmup_steps"), ({"warmup_steps": -1}, "warmup_steps")):
        with pytest.raises(ValueError, match=match):
            fit_autoencoder(vae, clip, steps=3, progress=False, **bad)


def test_fit_autoencoder_in_bfloat16_keeps_float32_weights() -> None:
    clip = moving_shapes_clip()
    vae = VideoAutoencoder.tiny(seed=0)

    def reconstruction_error() -> float:
        return (vae.decode(vae.encode(clip), size=clip.shape[-2:]) - clip).abs().mean().item()

    before = reconstruction_error()
    history = fit_autoencoder(vae, clip, steps=30, lr=2e-3, batch_size=4, progress=False, bf16=True)
    assert all(torch.isfinite(torch.tensor(history)))
    assert reconstruction_error() < before / 2
    assert all(p.dtype == torch.float32 for p in vae.module.parameters())
    assert vae.encode(clip).dtype == torch.float32


def test_vocabulary_frames_show_every_colour_on_every_background() -> None:
    from opensora_mlops.curation.synthetic import BACKGROUNDS, COLOURS, SHAPES
    from opensora_mlops.models.vae import vocabulary_frames

    frames = vocabulary_frames(len(COLOURS) * len(SHAPES) * len(BACKGROUNDS), 72, 128, seed=3)
    assert frames.shape == (84, 3, 72, 128) and frames.min() >= -1 and frames.max() <= 1
    pixels = ((frames + 1) * 127.5).round().to(torch.int64).permute(0, 2, 3, 1)  # [N, H, W, 3]
    pairs = []
    for frame in pixels:
        flat = frame.reshape(-1, 3)
        background = flat.median(dim=0).values
        names = [n for n, rgb in BACKGROUNDS.items() if torch.equal(background, torch.tensor(rgb))]
        # the subject: the most common exact shape colour among the frame's pixels (edges are antialiased)
        counts = {n: int((flat == torch.tensor(rgb)).all(1).sum()) for n, rgb in COLOURS.items()}
        colour = max(counts, key=counts.get)
        assert len(names) == 1 and counts[colour] > 0
        pairs.append((colour, names[0]))
    # each colour on each background once per shape
    assert sorted(set(pairs)) == sorted((c, b) for c in COLOURS for b in BACKGROUNDS)
    assert all(pairs.count(p) == len(SHAPES) for p in set(pairs))
    assert torch.equal(vocabulary_frames(5, 72, 128, seed=3), frames[:5])
    assert not torch.equal(vocabulary_frames(5, 72, 128, seed=4), frames[:5])
    assert vocabulary_frames(0, 72, 128).shape == (0, 3, 72, 128)
    with pytest.raises(ValueError, match="size_range"):
        vocabulary_frames(4, 72, 128, size_range=(0.4, 0.2))
    with pytest.raises(ValueError, match="count"):
        vocabulary_frames(-1, 72, 128)


def test_autoencoder_node_options_round_trip_and_fit_on_renders(tmp_path: Path) -> None:
    import pandas as pd

    from opensora_mlops.models.vae import subject_weight_map
    from opensora_mlops.pipelines.autoencoder.nodes import fit_options, fit_vae, training_frames

    params = {"steps": 10, "lr": 5e-4, "batch_size": 2, "crop": 32, "crop_content_bias": 0.5, "cosine_decay": True,
              "warmup_steps": 1, "subject_weight": 3.0, "edge_weight": 0.0, "bf16": False, "seed": 2,
              "vocabulary_frames": 6, "height": 48, "width": 64, "out_dir": str(tmp_path / "vae")}
    options = fit_options(params)
    assert options == {"steps": 10, "lr": 5e-4, "batch_size": 2, "kl_weight": 1e-6, "seed": 2, "crop": 32,
                       "crop_content_bias": 0.5, "cosine_decay": True, "warmup_steps": 1, "subject_weight": 3.0,
                       "edge_weight": 0.0, "bf16": False}
    assert training_frames(None, params).shape == (6, 3, 48, 64)
    # a warm-up longer than a tenth of the fit is capped there (short smoke runs stay valid)
    assert fit_options({**params, "steps": 40, "warmup_steps": 50})["warmup_steps"] == 4
    # the renders' subject sizes follow vocabulary_size_range: larger subjects cover more of the frame
    def subject_share(size_range: list[float]) -> float:
        frames = training_frames(None, {**params, "vocabulary_frames": 20, "vocabulary_size_range": size_range})
        return float(subject_weight_map(frames, 1.0, margin=0).sub(1.0).mean())

    assert subject_share([0.5, 0.6]) > 2 * subject_share([0.15, 0.2])
    with pytest.raises(ConfigError, match="vocabulary_size_range"):
        training_frames(None, {**params, "vocabulary_size_range": 0.3})
    with pytest.raises(ConfigError, match="subject_wieght"):
        fit_options({**params, "subject_wieght": 1.0})
    with pytest.raises(ConfigError, match="bf16"):
        fit_options({**params, "bf16": "yes"})
    assert fit_options({**params, "bf16": "auto"})["bf16"] in (True, False)
    with pytest.raises(ConfigError, match="vocabulary_frames"):
        training_frames(None, {**params, "vocabulary_frames": 0})
    with pytest.raises(ConfigError, match="vocabulary_frames"):
        training_frames(None, {**params, "vocabulary_frames": -2})
    # the node fits on the renders alone when no curated clip is there and saves a loadable VAE
    manifest, metrics = fit_vae(pd.DataFrame({"path": [], "text": []}), params)
    assert manifest == {"type": "pretrained", "from_pretrained": str(tmp_path / "vae")}
    assert metrics["num_frames"] == 6.0 and metrics["fitted"] == 1.0
    loaded = VideoAutoencoder.from_pretrained(tmp_path / "vae")
    assert loaded.latent_mean is not None
