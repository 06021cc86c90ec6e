"""Training frame masks: patterns per mask type, empirical ratios, invariants and config errors."""

from __future__ import annotations

import pytest
import torch

from opensora_mlops.config import ConfigError
from opensora_mlops.resources import load_reference
from opensora_mlops.training.mask_generator import MASK_NAMES, MaskGenerator


def only(name: str) -> MaskGenerator:
    return MaskGenerator({name: 1.0})


def conditioned_runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of False (conditioned) frames."""
    runs, start = [], None
    values = mask.tolist()
    for i, noised in enumerate([*values, True]):
        if not noised and start is None:
            start = i
        elif noised and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def draw(name: str, frames: int, count: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return only(name).get_masks(torch.zeros(count, 1, frames, 1, 1), generator=gen)


def test_defaults_are_open_sora_1_1_ratios():
    reference = load_reference()["stages"]["stage1"]["mask_ratios"]
    generator = MaskGenerator()
    assert {k: v for k, v in generator.mask_ratios.items() if v > 0} == reference
    assert generator.mask_ratios["mask_no"] == 0.75


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="mask_quater_head"):
        MaskGenerator({"mask_no": 0.9, "mask_quater_head": 0.1})
    with pytest.raises(ConfigError, match="sum to 1"):
        MaskGenerator({"mask_no": 0.5, "mask_image_head": 0.2})
    with pytest.raises(ConfigError, match=r"mask_no'\] must be a number in \[0, 1\], got 1.2"):
        MaskGenerator({"mask_no": 1.2, "mask_image_head": -0.2})
    with pytest.raises(ConfigError, match="mask_image_head"):
        MaskGenerator({"mask_no": 1.0, "mask_image_head": "0"})
    with pytest.raises(ConfigError, match="unknown mask type"):
        only("mask_no").frame_mask("mask_everything", 8)
    # Within tolerance of 1 is accepted; missing names have probability 0.
    generator = MaskGenerator({"mask_no": 0.7, "mask_image_tail": 0.3 + 1e-9})
    assert generator.mask_ratios["mask_quarter_head"] == 0.0


def test_mask_no_noises_every_frame():
    masks = draw("mask_no", 16, 50)
    assert masks.dtype == torch.bool and masks.shape == (50, 16) and bool(masks.all())


@pytest.mark.parametrize(("name", "sizes"), [("mask_quarter_head", {1, 2, 3, 4}), ("mask_image_head", {1})])
def test_head_masks_condition_a_prefix(name, sizes):
    seen = set()
    for mask in draw(name, 16, 200):
        (run,) = conditioned_runs(mask)
        assert run[0] == 0
        seen.add(run[1])
    assert seen == sizes  # quarter: every count 1..T/4 occurs, nothing more


@pytest.mark.parametrize(("name", "sizes"), [("mask_quarter_tail", {1, 2, 3, 4}), ("mask_image_tail", {1})])
def test_tail_masks_condition_a_suffix(name, sizes):
    seen = set()
    for mask in draw(name, 16, 200):
        (run,) = conditioned_runs(mask)
        assert run[0] + run[1] == 16
        seen.add(run[1])
    assert seen == sizes


@pytest.mark.parametrize(
    ("name", "sizes"), [("mask_quarter_head_tail", {1, 2, 3, 4}), ("mask_image_head_tail", {1})]
)
def test_head_tail_masks_condition_both_ends_equally(name, sizes):
    seen = set()
    for mask in draw(name, 16, 200):
        head, tail = conditioned_runs(mask)
        assert head[0] == 0 and tail[0] + tail[1] == 16 and head[1] == tail[1]
        seen.add(head[1])
    assert seen == sizes


@pytest.mark.parametrize(
    ("name", "sizes"), [("mask_quarter_random", {1, 2, 3, 4}), ("mask_image_random", {1})]
)
def test_random_masks_condition_one_run_anywhere(name, sizes):
    seen_sizes, seen_starts = set(), set()
    for mask in draw(name, 16, 400):
        (run,) = conditioned_runs(mask)
        seen_sizes.add(run[1])
        seen_starts.add(run[0])
    assert seen_sizes == sizes
    assert 0 in seen_starts and max(seen_starts) == 16 - min(sizes) and len(seen_starts) >= 12


def test_masks_are_deterministic_with_a_seeded_generator():
    generator = MaskGenerator()
    x = torch.zeros(64, 4, 12, 2, 2)
    a = generator.get_masks(x, torch.Generator().manual_seed(5))
    b = generator.get_masks(x, torch.Generator().manual_seed(5))
    c = generator.get_masks(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_empirical_mask_type_frequencies_match_the_ratios():
    generator = MaskGenerator()
    draws = 40000
    names = generator.draw_mask_types(draws, torch.Generator().manual_seed(0))
    for name, ratio in generator.mask_ratios.items():
        frequency = names.count(name) / draws
        sigma = (ratio * (1 - ratio) / draws) ** 0.5
        assert abs(frequency - ratio) <= 4 * sigma + 1e-12, (name, frequency, ratio)
    masks = generator.get_masks(torch.zeros(4000, 1, 8, 1, 1), torch.Generator().manual_seed(1))
    assert masks.all(dim=1).float().mean().item() == pytest.approx(0.75, abs=0.03)


@pytest.mark.parametrize("frames", range(1, 10))
def test_every_mask_leaves_at_least_one_noised_frame(frames):
    for name in MASK_NAMES:
        masks = draw(name, frames, 60, seed=frames)
        assert bool(masks.any(dim=1).all()), (name, frames)
        if frames == 1:
            assert bool(masks.all()), name  # a single frame is never conditioned


def test_short_clips_clamp_or_skip_patterns():
    # 1.1 crashed on quarter masks for T in {2, 3}: here the count is at least 1.
    assert draw("mask_quarter_head", 2, 5).tolist() == [[False, True]] * 5
    # Head+tail on 2 frames would condition both: no mask instead.
    assert draw("mask_image_head_tail", 2, 3).tolist() == [[True, True]] * 3
    assert draw("mask_quarter_head_tail", 3, 3).tolist() == [[False, True, False]] * 3


def test_get_masks_checks_its_input():
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        MaskGenerator().get_masks(torch.zeros(2, 4, 8))
