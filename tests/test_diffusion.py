"""IDDPM: schedule, forward process, posterior, masked hybrid loss, respacing, CFG and sampling."""

from __future__ import annotations

import math

import pytest
import torch

from opensora_mlops.config import ConfigError
from opensora_mlops.diffusion import (
    IDDPM,
    GaussianDiffusion,
    cosine_beta_schedule,
    linear_beta_schedule,
    space_timesteps,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These tests run many tiny tensor ops, where intra-op threads cost more than they give
    (torch.exp on 8k elements takes ~20 ms with 2 threads on a loaded 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


FULL = IDDPM()  # 1000 steps, no respacing
BASE_ALPHAS_CUMPROD = FULL.base.alphas_cumprod


def hand_alpha_cumprod(t: int, n: int = 1000) -> float:
    """ᾱ_t from the definition: prod_{i<=t} (1 - β_i), β linear from 1e-4 to 0.02 over n steps."""
    product = 1.0
    for i in range(t + 1):
        beta = 1e-4 + (0.02 - 1e-4) * i / (n - 1)
        product *= 1.0 - beta
    return product


class GaussianDataDenoiser(torch.nn.Module):
    """The exact ε-predictor for data x_0 ~ N(mean, std² I), queried at original-chain timesteps.

    E[ε | x_t] = sqrt(1-ᾱ) (x_t - sqrt(ᾱ) mean) / (ᾱ std² + 1 - ᾱ). With std = 0 it knows a single x_0.
    The variance channel outputs the constant ``v`` (-1 = posterior variance, 1 = β).
    """

    def __init__(self, mean, std: float, v: float | torch.Tensor = 0.0, record: bool = True):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.std = std
        self.v = v
        self.record = record
        self.calls: list[dict] = []

    def forward(self, x, t, y=None, mask=None, x_mask=None, **micro):
        if self.record:
            x_mask = None if x_mask is None else x_mask.clone()
            self.calls.append({"x": x.clone(), "t": t.clone(), "x_mask": x_mask})
        a = BASE_ALPHAS_CUMPROD[t].float().view(-1, 1, 1, 1, 1)
        mean, v = _match_batch(self.mean, x), _match_batch(self.v, x)
        eps = (1 - a).sqrt() * (x - a.sqrt() * mean) / (a * self.std**2 + 1 - a)
        return torch.cat([eps, torch.zeros_like(eps) + v], dim=1)


def _match_batch(value, x):
    """Per-sample values repeated for the doubled classifier-free-guidance batch."""
    if isinstance(value, torch.Tensor) and value.dim() == 5 and value.shape[0] != x.shape[0]:
        return value.repeat(x.shape[0] // value.shape[0], 1, 1, 1, 1)
    return value


class TextConditionedNet(torch.nn.Module):
    """A small real network whose output depends on x, t, the caption and micro-conditions."""

    def __init__(self, channels: int = 4, text_dim: int = 6):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.conv = torch.nn.Conv3d(channels, 2 * channels, 1)
        self.text = torch.nn.Linear(text_dim, 2 * channels)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.seen: list[dict] = []

    def forward(self, x, t, y, mask=None, x_mask=None, fps=None):
        self.seen.append({"batch": x.shape[0], "fps": fps, "mask": mask, "x_mask": x_mask, "y": y})
        text = self.text(y.mean(dim=1))[:, :, None, None, None]
        scale = 1.0 + t.float().view(-1, 1, 1, 1, 1) / 1000.0
        if fps is not None:
            scale = scale * fps.view(-1, 1, 1, 1, 1)
        return torch.tanh(self.conv(x) * scale + text)


# ---------------------------------------------------------------------------- schedule
def test_linear_schedule_endpoints_and_scaling():
    betas = linear_beta_schedule(1000)
    assert betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    short = linear_beta_schedule(500)  # improved diffusion stretches the end points by 1000 / N
    assert short[0].item() == pytest.approx(2e-4) and short[-1].item() == pytest.approx(0.04)


def test_cosine_schedule_follows_its_closed_form_and_keeps_signal_longer_than_linear():
    betas = cosine_beta_schedule(1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert bool((betas > 0).all()) and betas.max().item() <= 0.999
    alpha_bar = torch.cumprod(1.0 - betas, dim=0)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 250, 500, 900):  # index t is the level after t + 1 forward steps
        assert alpha_bar[t].item() == pytest.approx(f((t + 1) / 1000) / f(0.0), rel=1e-9)
    snr = lambda ab: (ab / (1 - ab)).item()  # noqa: E731
    linear_bar = torch.cumprod(1.0 - linear_beta_schedule(1000), dim=0)
    # the point of the option: the linear chain is nearly pure noise by t = 600 (SNR ~0.03), the cosine
    # one still has SNR ~0.4 there, and both end in noise
    assert snr(linear_bar[600]) < 0.04 < 0.3 < snr(alpha_bar[600])
    assert snr(alpha_bar[999]) < 1e-4 and snr(linear_bar[999]) < 1e-4
    cos_iddpm = IDDPM(beta_schedule="cosine", prediction="v")
    assert cos_iddpm.alphas_cumprod[600].item() == pytest.approx(alpha_bar[600].item(), rel=1e-12)


@pytest.mark.parametrize("t", [0, 1, 250, 999])
def test_alphas_cumprod_matches_hand_computation(t):
    assert FULL.alphas_cumprod[t].item() == pytest.approx(hand_alpha_cumprod(t), rel=1e-10)


def test_posterior_matches_gaussian_conditioning_closed_form():
    d = FULL.diffusion
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 2, 3, 3, generator=gen)
    xt = torch.randn(3, 2, 2, 3, 3, generator=gen)
    t = torch.tensor([1, 400, 999])
    mean, var, log_var = d.q_posterior_mean_variance(x0, xt, t)
    for i, step in enumerate(t.tolist()):
        beta = d.betas[step].item()
        prev_ac = hand_alpha_cumprod(step - 1)
        # q(x_{t-1}|x_t,x_0) ∝ N(x_t; sqrt(1-β) x_{t-1}, β) N(x_{t-1}; sqrt(ᾱ_{t-1}) x_0, 1-ᾱ_{t-1})
        precision = (1 - beta) / beta + 1 / (1 - prev_ac)
        expected_mean = (
            math.sqrt(1 - beta) * xt[i] / beta + math.sqrt(prev_ac) * x0[i] / (1 - prev_ac)
        ) / precision
        torch.testing.assert_close(mean[i], expected_mean, rtol=1e-4, atol=1e-5)
        assert var[i].flatten()[0].item() == pytest.approx(1 / precision, rel=1e-6)
        assert log_var[i].flatten()[0].item() == pytest.approx(math.log(1 / precision), rel=1e-5)
    # At t = 0 the posterior is a point mass at x_0; its log-variance is clipped to the t = 1 value.
    mean0, var0, log_var0 = d.q_posterior_mean_variance(x0, xt, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(mean0, x0)
    assert var0.abs().max().item() == 0.0
    assert log_var0[0].flatten()[0].item() == pytest.approx(math.log(d.posterior_variance[1].item()))


def test_q_sample_statistics():
    gen = torch.Generator().manual_seed(1)
    x0 = torch.full((64, 4, 4, 16, 16), 2.0)
    t = torch.full((64,), 300, dtype=torch.long)
    xt = FULL.q_sample(x0, t, generator=gen)
    ac = hand_alpha_cumprod(300)
    assert xt.mean().item() == pytest.approx(2.0 * math.sqrt(ac), abs=0.01)
    assert xt.var().item() == pytest.approx(1.0 - ac, rel=0.02)
    noise = torch.randn(x0.shape, generator=gen)
    torch.testing.assert_close(
        FULL.q_sample(x0, t, noise=noise), math.sqrt(ac) * x0 + math.sqrt(1 - ac) * noise
    )


def test_bad_timesteps_and_config_are_clear_errors():
    x = torch.zeros(2, 4, 2, 2, 2)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        FULL.q_sample(x, torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match="integer"):
        FULL.q_sample(x, torch.tensor([0.5, 1.0]))
    with pytest.raises(ConfigError, match="cfg_scale"):
        IDDPM(cfg_scale="7")
    with pytest.raises(ConfigError, match="cfg_channel"):
        IDDPM(cfg_channel=0)
    with pytest.raises(ConfigError, match="cfg_scal"):
        IDDPM.from_config({"num_timesteps": 1000, "cfg_scal": 4.0})
    with pytest.raises(ConfigError, match="iddpm"):
        IDDPM.from_config({"type": "rflow"})
    built = IDDPM.from_config({"type": "iddpm", "timestep_respacing": "", "cfg_scale": 4.0})
    assert built.num_sampling_steps == 1000 and built.cfg_scale == 4.0


# ---------------------------------------------------------------------------- respacing
def test_respacing_keeps_endpoints_and_alphas_cumprod():
    spaced = IDDPM(timestep_respacing="100")
    kept = spaced.timestep_map
    assert kept.numel() == 100 and kept[0].item() == 0 and kept[-1].item() == 999
    assert kept[:8].tolist() == [0, 10, 20, 30, 40, 50, 61, 71]
    torch.testing.assert_close(spaced.alphas_cumprod, BASE_ALPHAS_CUMPROD[kept], rtol=1e-12, atol=0)
    # The respaced betas are the ones that chain the kept cumulative products.
    ac = BASE_ALPHAS_CUMPROD[kept]
    expected = 1 - ac / torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    torch.testing.assert_close(spaced.diffusion.betas, expected)
    assert IDDPM(timestep_respacing=100).timestep_map.tolist() == kept.tolist()
    assert IDDPM(timestep_respacing=None).num_sampling_steps == 1000


def test_space_timesteps_sections_ddim_and_errors():
    sections = space_timesteps(300, "10,15,20")
    assert len(sections) == 45
    assert sum(s < 100 for s in sections) == 10 and sum(100 <= s < 200 for s in sections) == 15
    assert {0, 99, 100, 199, 200, 299} <= set(sections)
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    for bad in ("abc", "2000", "0", "ddimx", 1.5):
        with pytest.raises(ConfigError):
            space_timesteps(1000, bad)
    with pytest.raises(ConfigError, match="at least 2"):
        IDDPM(timestep_respacing="1")


# ---------------------------------------------------------------------------- training loss
def _loss_inputs(batch=2, frames=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, 4, frames, 3, 3, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.tensor([500, 17])[:batch]
    x_mask = torch.ones(batch, frames, dtype=torch.bool)
    x_mask[0, :2] = False
    x_mask[1, -1] = False
    return x0, noise, t, x_mask


def test_loss_ignores_conditioned_frames_and_feeds_them_at_level_zero():
    x0, noise, t, x_mask = _loss_inputs()
    gen = torch.Generator().manual_seed(5)
    output = torch.randn(2, 8, *x0.shape[2:], generator=gen).requires_grad_(True)
    seen = {}

    def model(x, timestep, **kwargs):
        seen["x"], seen["t"], seen["x_mask"] = x, timestep, kwargs["x_mask"]
        return output

    losses = FULL.training_losses(model, x0, t, {}, x_mask=x_mask, noise=noise)
    assert set(losses) == {"loss", "mse", "vb", "x0_mse"} and losses["loss"].shape == (2,)
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])
    assert torch.equal(seen["x_mask"], x_mask) and torch.equal(seen["t"], t)
    expected_noisy = FULL.q_sample(x0, t, noise=noise)
    expected_clean = FULL.q_sample(x0, torch.zeros_like(t), noise=noise)
    frames = x_mask[:, None, :, None, None]
    torch.testing.assert_close(seen["x"], torch.where(frames, expected_noisy, expected_clean))

    grad = torch.autograd.grad(losses["loss"].sum(), output)[0]
    conditioned = grad.permute(0, 2, 1, 3, 4)[~x_mask]
    noised = grad.permute(0, 2, 1, 3, 4)[x_mask]
    assert conditioned.abs().max().item() == 0.0
    assert noised.abs().min().item() > 0.0

    # Arbitrary predictions (even NaN) on conditioned frames leave the loss unchanged.
    changed = output.detach().clone().permute(0, 2, 1, 3, 4)
    changed[~x_mask] = float("nan")
    changed = changed.permute(0, 2, 1, 3, 4)
    again = FULL.training_losses(lambda x, ts, **kw: changed, x0, t, {}, x_mask=x_mask, noise=noise)
    torch.testing.assert_close(again["loss"], losses["loss"].detach())


def test_loss_averages_over_noised_frames_only():
    x0, noise, t, x_mask = _loss_inputs()
    output = torch.zeros(2, 8, *x0.shape[2:])
    losses = FULL.training_losses(lambda x, ts, **kw: output, x0, t, {}, x_mask=x_mask, noise=noise)
    for i in range(2):
        # ε-prediction 0 -> the MSE is the mean squared noise over the noised frames.
        assert losses["mse"][i].item() == pytest.approx(noise[i][:, x_mask[i]].pow(2).mean().item(), rel=1e-5)


def test_perfect_model_has_zero_mse_and_zero_kl():
    x0, noise, _, x_mask = _loss_inputs()
    t = torch.tensor([700, 3])
    # The true ε with v = -1 (the posterior variance) is the exact reverse step: MSE = KL = 0.
    output = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    losses = FULL.training_losses(lambda x, ts, **kw: output, x0, t, {}, x_mask=x_mask, noise=noise)
    assert losses["mse"].abs().max().item() < 1e-10
    assert losses["vb"].abs().max().item() < 1e-4
    # The wrong end of the learned range (β instead of the posterior variance) costs bits where the
    # two differ, i.e. at small t.
    wrong_var = torch.cat([noise, torch.ones_like(noise)], dim=1)
    small_t = torch.tensor([20, 3])
    worse = FULL.training_losses(lambda x, ts, **kw: wrong_var, x0, small_t, {}, x_mask=x_mask, noise=noise)
    assert (worse["vb"] > 1e-3).all()


def test_vb_term_does_not_train_the_mean_and_mse_does_not_train_the_variance():
    x0, noise, t, x_mask = _loss_inputs()
    gen = torch.Generator().manual_seed(2)
    output = torch.randn(2, 8, *x0.shape[2:], generator=gen).requires_grad_(True)
    losses = FULL.training_losses(lambda x, ts, **kw: output, x0, t, {}, x_mask=x_mask, noise=noise)
    grad_vb = torch.autograd.grad(losses["vb"].sum(), output, retain_graph=True)[0]
    grad_mse = torch.autograd.grad(losses["mse"].sum(), output)[0]
    assert grad_vb[:, :4].abs().max().item() == 0.0 and grad_vb[:, 4:].abs().max().item() > 0
    assert grad_mse[:, 4:].abs().max().item() == 0.0 and grad_mse[:, :4].abs().max().item() > 0


def test_loss_input_errors():
    x0, noise, t, x_mask = _loss_inputs()
    output = torch.zeros(2, 8, *x0.shape[2:])

    def model(x, ts, **kw):
        return output

    all_conditioned = x_mask.clone()
    all_conditioned[1] = False
    with pytest.raises(ValueError, match=r"samples \[1\] have no noised frame"):
        FULL.training_losses(model, x0, t, {}, x_mask=all_conditioned, noise=noise)
    with pytest.raises(ValueError, match="bool"):
        FULL.training_losses(model, x0, t, {}, x_mask=x_mask.float(), noise=noise)
    with pytest.raises(ValueError, match="model_kwargs"):
        FULL.training_losses(model, x0, t, {"x_mask": x_mask}, noise=noise)
    with pytest.raises(ValueError, match="ε and the variance"):
        FULL.training_losses(lambda x, ts, **kw: output[:, :4], x0, t, {}, noise=noise)


def test_respaced_training_calls_the_model_with_original_timesteps():
    spaced = IDDPM(timestep_respacing="100")
    x0, noise, _, _ = _loss_inputs()
    seen = {}

    def model(x, ts, **kw):
        seen["t"] = ts
        return torch.zeros(2, 8, *x0.shape[2:])

    t = torch.tensor([99, 6])
    spaced.training_losses(model, x0, t, {}, noise=noise)
    assert seen["t"].tolist() == [999, 61]
    drawn = spaced.sample_timesteps(4000, torch.Generator().manual_seed(0))
    assert drawn.dtype == torch.long and drawn.min().item() == 0 and drawn.max().item() == 99


# ---------------------------------------------------------------------------- guidance
def _text_inputs(batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(batch, 5, 6, generator=gen)
    y_null = torch.randn(1, 5, 6, generator=gen).expand(batch, -1, -1)
    y_mask = torch.ones(batch, 5, dtype=torch.long)
    y_mask[-1, 3:] = 0
    return y, y_mask, y_null


def test_cfg_scale_one_equals_the_conditional_model():
    net = TextConditionedNet()
    y, y_mask, y_null = _text_inputs()
    x = torch.randn(2, 4, 3, 2, 2, generator=torch.Generator().manual_seed(9))
    t = torch.tensor([100, 900])
    fps = torch.tensor([8.0, 24.0])
    guided = IDDPM(cfg_scale=1.0).guided_output(net, x, t, y, y_mask, y_null, {"fps": fps})
    conditional = net(x, t, y=y, mask=y_mask, fps=fps)
    torch.testing.assert_close(guided, conditional, rtol=1e-6, atol=1e-6)
    # The double batch: cond then null, caption mask and micro-conditions repeated.
    call = net.seen[0]
    assert call["batch"] == 4
    assert torch.equal(call["y"][2:], y_null) and torch.equal(call["y"][:2], y)
    assert torch.equal(call["mask"], torch.cat([y_mask, y_mask])) and call["fps"].tolist() == [8, 24, 8, 24]


@pytest.mark.parametrize("cfg_channel", [3, None])
def test_cfg_channel_guides_only_the_first_eps_channels(cfg_channel):
    net = TextConditionedNet()
    y, y_mask, y_null = _text_inputs()
    x = torch.randn(2, 4, 3, 2, 2, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([10, 500])
    guided = IDDPM(cfg_scale=7.0, cfg_channel=cfg_channel).guided_output(net, x, t, y, y_mask, y_null)
    cond = net(x, t, y=y, mask=y_mask)
    uncond = net(x, t, y=y_null, mask=y_mask)
    k = 4 if cfg_channel is None else cfg_channel
    torch.testing.assert_close(guided[:, :k], uncond[:, :k] + 7.0 * (cond[:, :k] - uncond[:, :k]))
    torch.testing.assert_close(guided[:, k:], cond[:, k:])
    assert not torch.allclose(guided[:, :k], cond[:, :k])
    with pytest.raises(ConfigError, match="exceeds"):
        IDDPM(cfg_channel=5).guided_output(net, x, t, y, y_mask, y_null)


def test_sampling_with_cfg_one_equals_sampling_with_identical_null_caption():
    net = TextConditionedNet()
    y, y_mask, y_null = _text_inputs()
    noise = torch.randn(2, 4, 3, 2, 2, generator=torch.Generator().manual_seed(7))
    a = IDDPM(timestep_respacing="10", cfg_scale=1.0).sample(
        net, noise, y, y_mask, y_null, {}, progress=False, generator=torch.Generator().manual_seed(1)
    )
    # With the caption as its own "null" any scale gives the conditional model.
    b = IDDPM(timestep_respacing="10", cfg_scale=7.0).sample(
        net, noise, y, y_mask, y, {}, progress=False, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- sampling
def test_sampler_recovers_the_x0_the_model_knows():
    gen = torch.Generator().manual_seed(11)
    x0 = torch.randn(2, 4, 3, 4, 4, generator=gen)
    y, y_mask, y_null = _text_inputs()
    for respacing in ("100", "7"):
        model = GaussianDataDenoiser(x0, std=0.0, v=0.0)
        noise = torch.randn(x0.shape, generator=gen)
        out = IDDPM(timestep_respacing=respacing).sample(model, noise, y, y_mask, y_null, {}, progress=False)
        torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)
        spaced = IDDPM(timestep_respacing=respacing)
        # The model is queried at the original timesteps, noisiest first, on the doubled batch.
        assert [c["t"][0].item() for c in model.calls] == spaced.timestep_map.flip(0).tolist()
        assert model.calls[0]["x"].shape[0] == 4


@pytest.mark.parametrize(
    ("respacing", "v_per_sample", "tolerance"), [(None, (-1.0, 1.0), 0.01), ("100", (0.0,), 0.015)]
)
def test_sampler_reproduces_a_gaussian_data_distribution(respacing, v_per_sample, tolerance):
    """With the exact score of N(0.5, 0.3²) data, ancestral samples have that mean and spread.

    Over all 1000 steps both ends of the learned variance range (v = -1 and v = 1, one per sample)
    must give the data distribution; over 100 respaced steps the mid-range v = 0.
    """
    gen = torch.Generator().manual_seed(0)
    batch = len(v_per_sample)
    model = GaussianDataDenoiser(
        0.5, std=0.3, v=torch.tensor(v_per_sample).view(-1, 1, 1, 1, 1), record=False
    )
    noise = torch.randn(batch, 4, 4, 16, 16, generator=gen)
    y, y_mask, y_null = _text_inputs(batch=batch)
    out = IDDPM(timestep_respacing=respacing).sample(
        model, noise, y, y_mask, y_null, {}, progress=False, generator=gen
    )
    for sample in out:
        assert sample.mean().item() == pytest.approx(0.5, abs=0.01)
        assert sample.std().item() == pytest.approx(0.3, abs=tolerance)


def test_conditioned_frames_are_kept_exactly_and_flagged_to_the_model():
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, 4, 5, 3, 3, generator=gen)
    x_cond = torch.randn(1, 4, 5, 3, 3, generator=gen)
    model = GaussianDataDenoiser(x0, std=0.0)
    y, y_mask, y_null = _text_inputs(batch=1)
    frame_mask = torch.tensor([[False, True, True, True, False]])
    out = IDDPM(timestep_respacing="20").sample(
        model,
        torch.randn(x0.shape, generator=gen),
        y,
        y_mask,
        y_null,
        {},
        x_cond=x_cond,
        x_mask=frame_mask,
        progress=False,
    )
    assert torch.equal(out[:, :, [0, 4]], x_cond[:, :, [0, 4]])
    torch.testing.assert_close(out[:, :, 1:4], x0[:, :, 1:4], rtol=1e-4, atol=1e-4)
    for call in model.calls:
        assert call["x_mask"].tolist() == [[False, True, True, True, False]] * 2
        assert torch.equal(call["x"][:1, :, [0, 4]], x_cond[:, :, [0, 4]])
    with pytest.raises(ValueError, match="x_cond"):
        IDDPM(timestep_respacing="20").sample(
            model, torch.randn(x0.shape), y, y_mask, y_null, {}, x_mask=frame_mask, progress=False
        )


def test_edit_ratio_renoises_the_reference_at_the_matching_step():
    """Frame mask r in (0, 1): keep x_cond above step floor(r*S), re-noise it there, then denoise.

    For N(0, 1) data the expected result of editing a constant reference c from respaced level k is
    exactly ᾱ_k · c (each exact reverse step is linear in expectation), so the edit grows with r.
    """
    spaced = IDDPM(timestep_respacing="100")
    gen = torch.Generator().manual_seed(0)
    ratios = [0.0, 0.05, 0.29, 0.4, 1.0]
    x_cond = torch.full((1, 4, len(ratios), 24, 24), 3.0)
    model = GaussianDataDenoiser(0.0, std=1.0)
    y, y_mask, y_null = _text_inputs(batch=1)
    frame_mask = torch.tensor([ratios])
    out = spaced.sample(
        model,
        torch.randn(x_cond.shape, generator=gen),
        y,
        y_mask,
        y_null,
        {},
        x_cond=x_cond,
        x_mask=frame_mask,
        progress=False,
        generator=gen,
    )
    starts = spaced.frame_start_steps(frame_mask)[0].tolist()
    assert starts == [-1, 5, 29, 40, 100]
    for call in model.calls:
        step = spaced.timestep_map.tolist().index(call["t"][0].item())
        assert call["x_mask"][0].tolist() == [s >= step for s in starts]
        for frame, start in enumerate(starts):
            if start < step:
                assert torch.equal(call["x"][0, :, frame], x_cond[0, :, frame])
    assert torch.equal(out[:, :, 0], x_cond[:, :, 0])  # ratio 0: untouched
    for frame, start in enumerate(starts[1:4], start=1):
        expected = 3.0 * spaced.alphas_cumprod[start].item()
        assert out[:, :, frame].mean().item() == pytest.approx(expected, abs=0.06)
    assert out[:, :, 4].mean().item() == pytest.approx(0.0, abs=0.06)  # ratio 1: free generation
    edits = [(out[:, :, f] - x_cond[:, :, f]).abs().mean().item() for f in range(len(ratios))]
    assert edits == sorted(edits)


def test_sampling_is_reproducible_with_a_generator_and_shows_progress(capsys):
    net = TextConditionedNet()
    y, y_mask, y_null = _text_inputs()
    noise = torch.randn(2, 4, 3, 2, 2, generator=torch.Generator().manual_seed(7))
    diffusion = IDDPM(timestep_respacing="5")
    a = diffusion.sample(net, noise, y, y_mask, y_null, {}, generator=torch.Generator().manual_seed(1))
    b = diffusion.sample(
        net, noise, y, y_mask, y_null, {}, progress=False, generator=torch.Generator().manual_seed(1)
    )
    c = diffusion.sample(
        net, noise, y, y_mask, y_null, {}, progress=False, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert "sampling" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        diffusion.sample(net, noise, y, y_mask, y_null, {}, x_cond=noise, x_mask=torch.full((2, 3), 1.5))
    with pytest.raises(ValueError, match="without x_mask"):
        diffusion.sample(net, noise, y, y_mask, y_null, {}, x_cond=noise, progress=False)
    with pytest.raises(ValueError, match="explicit argument"):
        diffusion.sample(net, noise, y, y_mask, y_null, {"y": y}, progress=False)


def test_gaussian_diffusion_rejects_bad_betas():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        GaussianDiffusion(torch.tensor([0.0, 0.1]))
