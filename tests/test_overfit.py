"""End to end: a tiny ST-DiT-2 trained with the IDDPM hybrid loss memorises one short latent clip.

This couples the real model (``build_model``) with the real diffusion loss, frame masks included, and
checks the whole stack learns: the loss must fall at least tenfold under Adam in 200 CPU steps.
"""

from __future__ import annotations

import pytest
import torch

from opensora_mlops.diffusion import IDDPM
from opensora_mlops.models.stdit2 import build_model
from opensora_mlops.training.mask_generator import MaskGenerator


@pytest.fixture(autouse=True)
def _single_thread():
    # A model this small is faster on one thread than on two contended ones.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_tiny_stdit2_overfits_one_clip_with_the_iddpm_loss():
    torch.manual_seed(0)
    model = build_model(
        "STDiT2-tiny",
        depth=1,
        hidden_size=48,
        num_heads=4,
        caption_channels=16,
        model_max_length=4,
        class_dropout_prob=0.0,
    )
    model.train()
    gen = torch.Generator().manual_seed(0)
    batch = 4
    clip = torch.randn(1, 4, 4, 8, 8, generator=gen).expand(batch, -1, -1, -1, -1)  # one clip, 4 views
    noise = torch.randn(clip.shape, generator=gen)
    t = torch.tensor([50, 300, 600, 900])  # t > 0: the VB term is a KL that can reach 0
    caption = torch.randn(1, 4, 16, generator=gen).expand(batch, -1, -1)
    caption_mask = torch.ones(batch, 4, dtype=torch.long)
    # Training masks of the kinds 1.1 draws: none, image head (frame 0 conditioned), quarter tail.
    generator = MaskGenerator({"mask_no": 0.5, "mask_image_head": 0.25, "mask_quarter_tail": 0.25})
    x_mask = torch.stack(
        [
            generator.frame_mask("mask_no", 4),
            generator.frame_mask("mask_image_head", 4),
            generator.frame_mask("mask_quarter_tail", 4, gen),
            generator.frame_mask("mask_no", 4),
        ]
    )
    assert x_mask.tolist()[1] == [False, True, True, True] and not bool(x_mask[2].all())

    diffusion = IDDPM()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(200):
        losses = diffusion.training_losses(
            model, clip, t, {"y": caption, "mask": caption_mask}, x_mask=x_mask, noise=noise
        )
        loss = losses["loss"].mean()
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())

    start, end = history[0], sum(history[-5:]) / 5
    # An untrained denoiser cannot predict the noise: the ε-MSE starts near E[ε²] = 1.
    assert start > 0.5
    assert end <= start / 10, f"loss fell only from {start:.4f} to {end:.4f}"
