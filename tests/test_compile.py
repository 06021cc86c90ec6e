"""torch.compile: the ST-DiT-2 forward, a training loss and a sampling step trace as one graph each
(``fullgraph=True``: no tensor value is read on the host) and compute what eager mode computes.

``backend="eager"`` runs the traced graph with the ordinary kernels: the test checks tracing, not
Inductor's code generation, and stays fast on a small CPU.
"""

from __future__ import annotations

import pytest
import torch

from opensora_mlops.diffusion.schedulers import build_scheduler
from opensora_mlops.models.stdit2 import STDiT2, build_model

torch.set_num_threads(2)
CAPTION_LEN, CAPTION_DIM = 32, 384


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny(**overrides) -> STDiT2:
    torch.manual_seed(0)
    model = build_model("STDiT2-tiny", **overrides)
    with torch.no_grad():
        for p in model.parameters():  # a fresh model has zero output projections: make every branch count
            p.add_(torch.randn_like(p) * 0.05)
    return model


def batch(seed: int, frames: int = 3, lat_h: int = 6, lat_w: int = 10) -> dict[str, torch.Tensor]:
    """Three samples: a padded caption, a full one and an all-padding one; per-sample micro-conditions
    (two resolutions, three fps, three frame counts); a conditioning frame in two samples."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(3, CAPTION_LEN, dtype=torch.long)
    mask[0, 20:] = 0
    mask[2] = 0
    x_mask = torch.ones(3, frames, dtype=torch.bool)
    x_mask[0, 0] = x_mask[2, :2] = False
    return dict(
        x=torch.randn(3, 4, frames, lat_h, lat_w, generator=g),
        timestep=torch.tensor([10.0, 500.0, 999.0]) + seed,
        y=torch.randn(3, CAPTION_LEN, CAPTION_DIM, generator=g),
        mask=mask,
        x_mask=x_mask,
        height=torch.tensor([48.0, 64.0, 100.0]) * (1 + seed),
        width=torch.tensor([80.0, 80.0, 130.0]) * (1 + seed),
        fps=torch.tensor([24.0, 12.0, 30.0]) + seed,
        num_frames=torch.tensor([3.0, 6.0, 9.0]) + seed,
    )


def forward_and_grads(model: torch.nn.Module, module: STDiT2, inputs: dict, seed: int):
    torch.manual_seed(seed)  # the class-dropout draw
    module.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize(
    "flags",
    [{}, {"qk_norm_legacy": True, "final_layer_legacy": True}, {"grad_checkpointing": True}],
    ids=["fixed", "legacy", "checkpointed"],
)
def test_training_forward_is_one_graph_and_matches_eager(flags):
    model = tiny(class_dropout_prob=0.5, **flags).train()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    # new micro-condition values and captions at the same shapes, then another latent size
    for seed, size in ((0, (3, 6, 10)), (1, (3, 6, 10)), (2, (2, 5, 8))):
        inputs = batch(seed, *size)
        expect, expect_grads = forward_and_grads(model, model, inputs, seed)
        got, got_grads = forward_and_grads(compiled, model, inputs, seed)
        torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)
        for g, e in zip(got_grads, expect_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=0, atol=1e-6)
        assert torch.isfinite(got).all()


def test_eval_forward_without_masks_is_one_graph():
    model = tiny().eval()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    inputs = batch(0)
    inputs = {k: inputs[k] for k in ("x", "timestep", "y")}
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs), model(**inputs), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["iddpm", "rflow"])
def test_training_loss_is_one_graph_and_matches_eager(kind):
    model = tiny(class_dropout_prob=0.0).train()
    scheduler = build_scheduler({"type": kind})
    inputs = batch(0)
    t = torch.tensor([0, 400, 999]) if kind == "iddpm" else torch.tensor([0.5, 400.0, 999.0])
    noise = torch.randn(inputs["x"].shape, generator=torch.Generator().manual_seed(5))
    conditions = {k: v for k, v in inputs.items() if k not in ("x", "timestep", "x_mask")}

    def step(x, t, x_mask, noise, conditions):
        losses = scheduler.training_losses(model, x, t, conditions, x_mask=x_mask, noise=noise)
        return losses["loss"].mean()

    results = []
    for fn in (step, torch.compile(step, fullgraph=True, backend="eager")):
        model.zero_grad(set_to_none=True)
        loss = fn(inputs["x"], t, inputs["x_mask"], noise, conditions)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (expect, expect_grads), (got, got_grads) = results
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)
    for g, e in zip(got_grads, expect_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)


def test_guided_sampling_step_is_one_graph_and_matches_eager():
    model = tiny().eval()
    scheduler = build_scheduler({"type": "iddpm"}, steps=10, cfg_scale=4.0)
    inputs = batch(0)
    conditions = {k: inputs[k] for k in ("height", "width", "fps", "num_frames")}
    y_null = model.null_text(3)

    @torch.no_grad()
    def step(x, t, y, mask):
        out = scheduler.guided_output(model, x, scheduler.model_timesteps(t), y, mask, y_null, conditions)
        return scheduler.diffusion.p_mean_variance(out, x, t)["mean"]

    t = torch.full((3,), 7, dtype=torch.long)
    args = (inputs["x"], t, inputs["y"], inputs["mask"])
    expect = step(*args)
    got = torch.compile(step, fullgraph=True, backend="eager")(*args)
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)
