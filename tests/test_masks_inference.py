"""Inference mask strategies: parsing, reference placement, edit ratios, loops and per-loop prompts."""

from __future__ import annotations

import pytest
import torch

from opensora_mlops.diffusion import IDDPM
from opensora_mlops.inference.mask_strategy import (
    MaskInstruction,
    MaskStrategyError,
    build_condition,
    format_mask_strategy,
    loop_condition_instruction,
    loop_prompts,
    parse_loop_prompts,
    parse_mask_strategy,
    prompt_for_loop,
)


def latents(frames: int, fill_from: float = 0.0) -> torch.Tensor:
    """[C=4, T, H=2, W=3] latents whose frame f holds the value fill_from + f everywhere."""
    values = fill_from + torch.arange(frames, dtype=torch.float32)
    return values.view(1, frames, 1, 1).expand(4, frames, 2, 3).clone()


def frame_values(x_cond: torch.Tensor) -> list[float]:
    return x_cond[0, :, 0, 0].tolist()


# ---------------------------------------------------------------------------- parsing
def test_defaults_fill_missing_numbers():
    assert parse_mask_strategy("0") == [MaskInstruction(0, 0, 0, 0, 1, 0.0)]
    assert parse_mask_strategy("2,1") == [MaskInstruction(2, 1, 0, 0, 1, 0.0)]
    assert parse_mask_strategy(" 0, 0, 0, 0, 8 ") == [MaskInstruction(0, 0, 0, 0, 8, 0.0)]
    assert parse_mask_strategy("0;0,1,0,-1,1") == [MaskInstruction(), MaskInstruction(0, 1, 0, -1, 1, 0.0)]
    assert parse_mask_strategy("0,0,0,0,32,0.4") == [MaskInstruction(0, 0, 0, 0, 32, 0.4)]
    assert parse_mask_strategy(None) == [] and parse_mask_strategy("  ") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0,0,0,0,1,0,0", "has 7 numbers; expected 1 to 6"),
        ("a", "loop_id must be an integer, got 'a'"),
        ("0,1.5", "ref_id must be an integer, got '1.5'"),
        ("0,0,0,0,x", "length must be an integer"),
        ("0,0,0,0,1,abc", "edit_ratio must be a number, got 'abc'"),
        ("0,0,0,0,1,1.5", r"edit_ratio must lie in \[0, 1\], got 1.5"),
        ("0,0,0,0,1,-0.1", r"edit_ratio must lie in \[0, 1\]"),
        ("0,0,0,0,0", "length must be >= 1, got 0"),
        ("-1", "loop_id must be >= 0"),
        ("0,-2", "ref_id must be >= 0"),
        ("0;;1", "empty field"),
        ("0,,1", "empty field"),
    ],
)
def test_malformed_strategies_are_clear_errors(text, message):
    with pytest.raises(MaskStrategyError, match=message):
        parse_mask_strategy(text)


def test_format_round_trips():
    text = "0;0,1,0,-1,1;3,2,-4,0,4,0.25"
    parsed = parse_mask_strategy(text)
    assert format_mask_strategy(parsed) == "0,0,0,0,1,0;0,1,0,-1,1,0;3,2,-4,0,4,0.25"
    assert parse_mask_strategy(format_mask_strategy(parsed)) == parsed


# ---------------------------------------------------------------------------- building conditions
def test_image_to_video():
    image = latents(1, fill_from=7.0)
    x_cond, mask = build_condition(parse_mask_strategy("0"), 0, [image], num_frames=5)
    assert x_cond.shape == (4, 5, 2, 3) and mask.dtype == torch.float32
    assert frame_values(x_cond) == [7.0, 0, 0, 0, 0]
    assert mask.tolist() == [0.0, 1, 1, 1, 1]


def test_video_extension():
    video = latents(10, fill_from=100.0)
    x_cond, mask = build_condition(parse_mask_strategy("0,0,0,0,8"), 0, [video], num_frames=12)
    assert frame_values(x_cond)[:8] == [100.0 + f for f in range(8)]
    assert mask.tolist() == [0.0] * 8 + [1.0] * 4


def test_connect_two_images():
    first, last = latents(1, 1.0), latents(1, 2.0)
    x_cond, mask = build_condition(parse_mask_strategy("0;0,1,0,-1,1"), 0, [first, last], num_frames=6)
    assert frame_values(x_cond) == [1.0, 0, 0, 0, 0, 2.0]
    assert mask.tolist() == [0.0, 1, 1, 1, 1, 0.0]


def test_video_editing_sets_the_edit_ratio():
    video = latents(32, 10.0)
    x_cond, mask = build_condition(parse_mask_strategy("0,0,0,0,32,0.4"), 0, [video], num_frames=32)
    assert torch.equal(x_cond, video)
    assert torch.allclose(mask, torch.full((32,), 0.4))


def test_negative_starts_count_from_the_end():
    video = latents(10, 0.0)
    x_cond, mask = build_condition(parse_mask_strategy("0,0,-3,-4,3"), 0, [video], num_frames=8)
    assert frame_values(x_cond) == [0, 0, 0, 0, 7.0, 8.0, 9.0, 0]
    assert mask.tolist() == [1, 1, 1, 1, 0, 0, 0, 1]


def test_later_tuples_win_where_they_overlap():
    a, b = latents(4, 10.0), latents(4, 20.0)
    x_cond, mask = build_condition(parse_mask_strategy("0,0,0,0,4;0,1,0,2,2,0.5"), 0, [a, b], num_frames=4)
    assert frame_values(x_cond) == [10.0, 11.0, 20.0, 21.0]
    assert mask.tolist() == [0, 0, 0.5, 0.5]


def test_loops_condition_on_the_previous_loop_output():
    """Long video: loop 1 takes the last 2 frames of loop 0's output (appended as reference 1)."""
    image = latents(1, 5.0)
    instructions = [*parse_mask_strategy("0"), loop_condition_instruction(1, 1, 2)]
    assert instructions[1] == parse_mask_strategy("1,1,-2,0,2")[0]
    x0, mask0 = build_condition(instructions, 0, [image], num_frames=6)
    assert frame_values(x0) == [5.0, 0, 0, 0, 0, 0] and mask0.tolist() == [0, 1, 1, 1, 1, 1]
    previous_output = latents(6, 50.0)
    x1, mask1 = build_condition(instructions, 1, [image, previous_output], num_frames=6)
    assert frame_values(x1) == [54.0, 55.0, 0, 0, 0, 0] and mask1.tolist() == [0, 0, 1, 1, 1, 1]
    # A loop with no instruction is free generation.
    x2, mask2 = build_condition(instructions, 2, [image, previous_output], num_frames=6)
    assert not bool(x2.any()) and bool((mask2 == 1).all())
    with pytest.raises(MaskStrategyError, match="loops >= 1"):
        loop_condition_instruction(0, 0, 2)


@pytest.mark.parametrize(
    ("text", "refs", "frames", "message"),
    [
        ("0,2", [4], 8, "ref_id 2 but only 1 reference"),
        ("0,0,0,0,5", [4], 8, r"reference frames \[0, 5\) are outside reference 0's 4"),
        ("0,0,-5,0,1", [4], 8, r"reference frames \[-1, 0\)"),
        ("0,0,0,-1,2", [4], 8, r"target frames \[7, 9\) are outside the clip's 8"),
        ("0,0,0,9,1", [4], 8, r"target frames \[9, 10\)"),
    ],
)
def test_out_of_range_indices_are_clear_errors(text, refs, frames, message):
    references = [latents(n) for n in refs]
    with pytest.raises(MaskStrategyError, match=message):
        build_condition(parse_mask_strategy(text), 0, references, num_frames=frames)


def test_reference_shape_checks():
    with pytest.raises(MaskStrategyError, match=r"reference 1 has \[C, H, W\]"):
        build_condition([], 0, [latents(2), torch.zeros(4, 2, 3, 3)], num_frames=4)
    with pytest.raises(MaskStrategyError, match=r"\[C, T, H, W\]"):
        build_condition([], 0, [torch.zeros(4, 2, 3)], num_frames=4)
    with pytest.raises(MaskStrategyError, match="latent_shape"):
        build_condition([], 0, [], num_frames=4)
    with pytest.raises(MaskStrategyError, match="but the clip is"):
        build_condition([], 0, [latents(2)], num_frames=4, latent_shape=(4, 8, 8))
    x_cond, mask = build_condition([], 0, [], num_frames=3, latent_shape=(4, 2, 2))
    assert x_cond.shape == (4, 3, 2, 2) and mask.tolist() == [1, 1, 1]


def test_built_condition_drives_the_sampler():
    """Connect two images: the sampler keeps both reference frames exactly and generates the rest."""
    first, last = latents(1, 1.0), latents(1, -1.0)
    x_cond, mask = build_condition(parse_mask_strategy("0;0,1,0,-1,1"), 0, [first, last], num_frames=4)
    target = torch.full((1, 4, 4, 2, 3), 0.25)
    ac = IDDPM().base.alphas_cumprod

    def knows_target(x, t, y=None, mask=None, x_mask=None):
        a = ac[t].float().view(-1, 1, 1, 1, 1)
        eps = (x - a.sqrt() * target) / (1 - a).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)

    y = torch.zeros(1, 3, 5)
    out = IDDPM(timestep_respacing="10").sample(
        knows_target,
        torch.randn(1, 4, 4, 2, 3),
        y,
        None,
        y,
        {},
        x_cond=x_cond[None],
        x_mask=mask[None],
        progress=False,
    )
    assert torch.equal(out[0, :, 0], first[:, 0]) and torch.equal(out[0, :, -1], last[:, 0])
    torch.testing.assert_close(out[0, :, 1:3], target[0, :, 1:3], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- per-loop prompts
def test_loop_prompts():
    prompts = parse_loop_prompts("|0|text A|2|text B")
    assert prompts == {0: "text A", 2: "text B"}
    assert [prompt_for_loop(prompts, i) for i in range(4)] == ["text A", "text A", "text B", "text B"]
    assert loop_prompts("|0|text A|2|text B", 3) == ["text A", "text A", "text B"]
    assert parse_loop_prompts("a red ball") == {0: "a red ball"}
    assert loop_prompts("a red ball", 2) == ["a red ball", "a red ball"]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("|1|text", "must start with loop 0"),
        ("|0|a|0|b", "must increase, got 0 after 0"),
        ("|0|a|x|b", "loop id 'x'"),
        ("|0|", "empty text"),
        ("|0|a|2", "odd number of parts"),
    ],
)
def test_bad_loop_prompts(prompt, message):
    with pytest.raises(MaskStrategyError, match=message):
        parse_loop_prompts(prompt)


def test_loop_prompt_beyond_the_last_loop_is_an_error():
    with pytest.raises(MaskStrategyError, match=r"names loop\(s\) \[3\] but only 2"):
        loop_prompts("|0|a|3|b", 2)
