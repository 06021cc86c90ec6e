"""The scheduler interface: ε / v IDDPM and rectified flow, built from config, exact with an oracle denoiser."""

from __future__ import annotations

import json

import pytest
import torch

from opensora_mlops.config import ConfigError
from opensora_mlops.diffusion import (
    IDDPM,
    RectifiedFlow,
    build_scheduler,
    load_scheduler_config,
    save_scheduler,
)
from opensora_mlops.evaluation.learning import oracle_denoiser

CONFIGS = [
    {"type": "iddpm", "prediction": "epsilon"},
    {"type": "iddpm", "prediction": "v"},
    {"type": "iddpm", "prediction": "v", "beta_schedule": "cosine"},
    {"type": "rflow"},
]


def _config_id(config):
    return "-".join(str(v) for k, v in config.items() if k != "type" or v == "rflow") or config["type"]


def _x0(batch=2, frames=3, seed=0):
    return torch.randn(batch, 4, frames, 4, 6, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_oracle_sampler_reproduces_the_clip(config):
    """With the exact target at every step, each sampler lands on the training clip: the sampling maths
    is right, so whatever a trained model generates is the network's doing."""
    x0 = _x0()
    scheduler = build_scheduler(config, steps=20, cfg_scale=1.0)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(2, 3, 8)
    out = scheduler.sample(oracle_denoiser(scheduler, x0), noise, y, None, torch.zeros(2, 3, 8), progress=False,
                           generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, x0, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_exact_target_gives_zero_loss_and_exact_x0(config):
    scheduler = build_scheduler(config)
    x0 = _x0()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([10, 900])
    x_t = scheduler.q_sample(x0, t, noise=noise)
    out = oracle_denoiser(scheduler, x0)(x_t, scheduler.model_timesteps(t))
    torch.testing.assert_close(scheduler.predict_xstart(out, x_t, t), x0, atol=1e-4, rtol=1e-4)
    losses = scheduler.training_losses(oracle_denoiser(scheduler, x0), x0, t, {}, noise=noise)
    assert losses["mse"].max() < 1e-8 and losses["x0_mse"].max() < 1e-8


def test_epsilon_errors_blow_up_in_x0_at_high_noise_but_v_and_flow_errors_do_not():
    """The reason the embedded default does not use ε: the same output error costs ~156× in x̂_0 at
    t = 999 with ε, at most 1× with v or the flow velocity."""
    x0 = _x0()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([999, 999])
    error = 0.01 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    growth = {}
    for config in CONFIGS:
        scheduler = build_scheduler(config)
        x_t = scheduler.q_sample(x0, t, noise=noise)
        out = oracle_denoiser(scheduler, x0)(x_t, scheduler.model_timesteps(t))
        out[:, :4] += error
        x0_error = (scheduler.predict_xstart(out, x_t, t) - x0).abs().mean() / error.abs().mean()
        growth[config.get("prediction", config["type"])] = float(x0_error)
    assert growth["epsilon"] > 100
    assert growth["v"] <= 1.0 + 1e-3 and growth["rflow"] <= 1.0 + 1e-3


def test_conditioned_frames_enter_clean_and_leave_the_loss():
    flow = RectifiedFlow()
    x0 = _x0(frames=4)
    x_mask = torch.tensor([[False, True, True, True], [True, True, True, False]])
    seen = {}

    def model(x, t, x_mask=None, **kwargs):
        seen["x"], seen["x_mask"] = x, x_mask
        out = torch.zeros(x.shape[0], 8, *x.shape[2:])
        out[:, :, ~x_mask[0]] = 1e6  # a huge error on conditioned frames only must not reach the loss
        return out

    losses = flow.training_losses(model, x0, torch.tensor([500.0, 500.0]), {}, x_mask=x_mask)
    torch.testing.assert_close(seen["x"][0, :, 0], x0[0, :, 0])
    assert torch.equal(seen["x_mask"], x_mask)
    assert bool(torch.isfinite(losses["loss"]).all()) and float(losses["loss"][0]) < 10


def test_flow_sampling_keeps_conditioned_frames_and_regenerates_the_rest():
    flow = RectifiedFlow(num_sampling_steps=6, cfg_scale=1.0)
    x0 = _x0(batch=1, frames=4)
    x_cond = _x0(batch=1, frames=4, seed=9)
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.5]])
    out = flow.sample(oracle_denoiser(flow, x0), torch.randn(x0.shape), torch.zeros(1, 3, 8), None, torch.zeros(1, 3, 8),
                      x_cond=x_cond, x_mask=mask, progress=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, 0], x_cond[:, :, 0])
    torch.testing.assert_close(out[:, :, 1:], x0[:, :, 1:], atol=2e-4, rtol=1e-4)


def test_logit_normal_timesteps_and_shift():
    draws = RectifiedFlow().sample_timesteps(20000, generator=torch.Generator().manual_seed(0))
    assert draws.dtype == torch.float32 and bool(((draws > 0) & (draws < 1000)).all())
    assert abs(float(draws.median()) - 500) < 15
    # logit-normal: the middle of the path is drawn far more often than its ends
    middle = float(((draws > 400) & (draws < 600)).float().mean())
    ends = float(((draws < 100) | (draws > 900)).float().mean())
    assert middle > 2 * ends
    shifted = RectifiedFlow(timestep_shift=3.0).sample_timesteps(20000, generator=torch.Generator().manual_seed(0))
    assert float(shifted.median()) > 700
    grid = RectifiedFlow(num_sampling_steps=4, timestep_shift=3.0).sigma_grid()
    assert float(grid[0]) == 1.0 and float(grid[-1]) == 0.0 and bool((grid[1:] < grid[:-1]).all())


def test_config_round_trip_and_errors(tmp_path):
    for config in CONFIGS:
        scheduler = build_scheduler(config, steps=12, cfg_scale=3.0)
        assert scheduler.num_sampling_steps == 12 and scheduler.cfg_scale == 3.0
        folder = tmp_path / _config_id(config)
        save_scheduler(scheduler, folder)
        again = build_scheduler(load_scheduler_config(folder))
        assert again.to_config() == scheduler.to_config()
        assert json.loads((folder / "scheduler.json").read_text())["type"] == config["type"]
    assert isinstance(build_scheduler(None), IDDPM) and build_scheduler(None).prediction == "epsilon"
    assert build_scheduler({"type": "iddpm", "prediction": "v"}).with_sampling(steps=5).prediction == "v"
    assert load_scheduler_config(tmp_path / "nothing-here") is None
    with pytest.raises(ConfigError, match="scheduler type"):
        build_scheduler({"type": "ddim"})
    with pytest.raises(ConfigError, match="prediction"):
        build_scheduler({"type": "iddpm", "prediction": "x0"})
    with pytest.raises(ConfigError, match="enable_flashattn"):
        build_scheduler({"type": "rflow", "enable_flashattn": True})
    with pytest.raises(ConfigError, match="timestep_shift"):
        RectifiedFlow(timestep_shift=0.5)
    with pytest.raises(ConfigError, match="beta_schedule"):
        build_scheduler({"type": "iddpm", "beta_schedule": "quadratic"})
    # a scheduler.json written before beta_schedule existed still means 1.1's linear chain
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "scheduler.json").write_text(json.dumps({"type": "iddpm", "prediction": "v"}))
    assert build_scheduler(load_scheduler_config(tmp_path / "old")).beta_schedule == "linear"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "scheduler.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_scheduler_config(tmp_path / "bad")


# ---------------------------------------------------------------------------------------- foreground weighting
def _clip_with_subject(batch=2, frames=3, value=2.0):
    """Latents of a flat background (per-channel constant) with a 2x2 subject at a per-frame position."""
    x0 = torch.zeros(batch, 4, frames, 6, 8)
    x0 += torch.tensor([0.5, -0.3, 0.2, 0.1])[None, :, None, None, None]
    for f in range(frames):
        x0[:, :, f, 1:3, 1 + 2 * f:3 + 2 * f] += value
    return x0


def test_foreground_weights_mark_the_subject_and_leave_flat_clips_plain():
    from opensora_mlops.diffusion.gaussian_diffusion import foreground_weights

    x0 = _clip_with_subject()
    w = foreground_weights(x0, 4.0)
    assert w.shape == (2, 1, 3, 6, 8)
    for f in range(3):
        subject = w[:, 0, f, 1:3, 1 + 2 * f:3 + 2 * f]
        torch.testing.assert_close(subject, torch.full_like(subject, 5.0))
        background = w[:, 0, f].clone()
        background[:, 1:3, 1 + 2 * f:3 + 2 * f] = 1.0
        torch.testing.assert_close(background, torch.ones_like(background))
    # strength 0 and a flat clip both give the plain mean's weights
    torch.testing.assert_close(foreground_weights(x0, 0.0), torch.ones(2, 1, 3, 6, 8))
    flat = torch.full((1, 4, 2, 6, 8), 0.7) + 1e-4 * torch.randn(1, 4, 2, 6, 8)
    assert foreground_weights(flat, 4.0).max() < 1.05  # 1e-4 noise against the 0.1 floor: ~2% at most
    with pytest.raises(ValueError, match="strength"):
        foreground_weights(x0, -1.0)
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        foreground_weights(x0[:, :, 0], 1.0)


def test_weighted_masked_mean_keeps_scale_and_skips_conditioned_frames():
    from opensora_mlops.diffusion import masked_mean

    values = torch.rand(2, 4, 3, 6, 8)
    ones = torch.ones(2, 1, 3, 6, 8)
    torch.testing.assert_close(masked_mean(values, None, ones), masked_mean(values))
    constant = torch.full_like(values, 0.25)
    weights = 1.0 + 9.0 * torch.rand(2, 1, 3, 6, 8)
    torch.testing.assert_close(masked_mean(constant, None, weights), torch.full((2,), 0.25))
    keep = torch.tensor([[True, False, True], [False, False, True]])
    poisoned = values.clone()
    poisoned[~keep[:, None, :, None, None].expand_as(values)] = float("nan")
    manual = torch.stack([
        (values[b] * weights[b])[:, keep[b]].sum() / (weights[b].expand(4, -1, -1, -1)[:, keep[b]].sum())
        for b in range(2)
    ])
    torch.testing.assert_close(masked_mean(poisoned, keep, weights), manual)


@pytest.mark.parametrize("config", [{"type": "iddpm", "prediction": "v"}, {"type": "rflow"}],
                         ids=lambda c: c["type"])
def test_foreground_weight_moves_the_loss_towards_the_subject(config, tmp_path):
    """The same wrong prediction costs more when its error sits on the subject than on the background, by
    the weight, and only the mean term changes: x̂_0 error and the config round trip are unaffected."""
    x0 = _clip_with_subject()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([300, 700])
    plain = build_scheduler(config)
    weighted = build_scheduler({**config, "foreground_weight": 4.0})
    subject = (x0 - x0[:, :, :, :1, :1]).abs().sum(1, keepdim=True) > 0  # [B, 1, T, H, W]
    assert subject.any() and not subject.all()

    def model_off_by(where):
        def model(x_t, t_model, **kwargs):
            exact = oracle_denoiser(plain, x0)(x_t, t_model)
            return exact + 0.3 * where.expand_as(exact).float()
        return model

    on_subject = plain.training_losses(model_off_by(subject), x0, t, {}, noise=noise)
    on_subject_w = weighted.training_losses(model_off_by(subject), x0, t, {}, noise=noise)
    on_background_w = weighted.training_losses(model_off_by(~subject), x0, t, {}, noise=noise)
    on_background = plain.training_losses(model_off_by(~subject), x0, t, {}, noise=noise)
    # plain: cost proportional to the area; weighted: the subject's 5x weight raises its share
    assert (on_subject_w["mse"] / on_background_w["mse"] > 4.5 * on_subject["mse"] / on_background["mse"]).all()
    torch.testing.assert_close(on_subject_w["x0_mse"], on_subject["x0_mse"])
    save_scheduler(weighted, tmp_path / "w")
    again = build_scheduler(load_scheduler_config(tmp_path / "w"))
    assert again.foreground_weight == 4.0 and again.to_config() == weighted.to_config()
    assert build_scheduler(config).foreground_weight == 0.0
    with pytest.raises(ConfigError, match="foreground_weight"):
        build_scheduler({**config, "foreground_weight": -1})
