"""Inference mask strategies: which latent frames come from references, and per-loop prompts.

A ``mask_strategy`` string is a ``;``-separated list of tuples
``loop_id,ref_id,ref_start,target_start,length[,edit_ratio]``; a tuple may give 1 to 6 numbers and the
missing trailing ones default to ``0,0,0,0,1,0``. Each tuple says: in loop ``loop_id``, copy ``length``
latent frames of reference ``ref_id`` starting at ``ref_start`` into the generated clip starting at
``target_start``. Negative starts count from the end (``-1`` = the last frame). Examples:

* ``"0"``: image -> video, the first frame is the (single-frame) reference 0.
* ``"0,0,0,0,8"``: extension, the first 8 latent frames are the first 8 of reference 0.
* ``"0;0,1,0,-1,1"``: connect two images, first frame = reference 0, last frame = reference 1.
* ``"0,0,0,0,32,0.4"``: video editing, 32 frames of reference 0 regenerated with edit ratio 0.4.
* long video: loop ``i > 0`` conditions on the last ``c`` frames of loop ``i - 1``'s output
  (appended as a new reference), ``"i,<that ref>,-c,0,c"`` (see :func:`loop_condition_instruction`).

:func:`build_condition` turns the instructions of one loop into ``x_cond`` [C, T, H, W] and a float
``frame_mask`` [T] for :meth:`opensora_mlops.diffusion.IDDPM.sample` (stack per sample to [B, T] and
pass as ``x_mask``): **1 = generate freely, 0 = keep the reference frame exactly, r in (0, 1) = edit
ratio r** (the reference is re-noised at step floor(r * S) of S and regenerated from there, so larger
r means a larger edit). This is Open-Sora 1.1's convention: the mask holds the edit ratio itself, not
``1 - ratio``. When tuples overlap, the later tuple wins (frames and mask value).

Per-loop prompts: ``"|0|text A|2|text B"`` means loops 0-1 use "text A" and loops 2+ use "text B".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DEFAULT_FIELDS = (0, 0, 0, 0, 1, 0.0)
FIELD_NAMES = ("loop_id", "ref_id", "ref_start", "target_start", "length", "edit_ratio")


class MaskStrategyError(ValueError):
    """A mask strategy or loop prompt is malformed or does not fit the references/clip."""


@dataclass(frozen=True)
class MaskInstruction:
    """One parsed tuple of a mask strategy (starts may still be negative, i.e. from the end)."""

    loop_id: int = 0
    ref_id: int = 0
    ref_start: int = 0
    target_start: int = 0
    length: int = 1
    edit_ratio: float = 0.0

    def __post_init__(self):
        if self.loop_id < 0:
            raise MaskStrategyError(f"loop_id must be >= 0, got {self.loop_id}")
        if self.ref_id < 0:
            raise MaskStrategyError(f"ref_id must be >= 0, got {self.ref_id}")
        if self.length < 1:
            raise MaskStrategyError(f"length must be >= 1, got {self.length}")
        if not (math.isfinite(self.edit_ratio) and 0.0 <= self.edit_ratio <= 1.0):
            raise MaskStrategyError(f"edit_ratio must lie in [0, 1], got {self.edit_ratio}")

    def to_string(self) -> str:
        ratio = f"{self.edit_ratio:g}"
        return f"{self.loop_id},{self.ref_id},{self.ref_start},{self.target_start},{self.length},{ratio}"


def _parse_int(text: str, field: str, tuple_text: str) -> int:
    body = text[1:] if text[:1] in "+-" else text
    if not body.isdigit():
        raise MaskStrategyError(f"{field} must be an integer, got {text!r} in mask strategy tuple {tuple_text!r}")
    return int(text)


def parse_mask_strategy(strategy: str | None) -> list[MaskInstruction]:
    """Parse a mask strategy string; None or an empty string gives no instructions."""
    if strategy is None:
        return []
    if not isinstance(strategy, str):
        raise MaskStrategyError(f"mask strategy must be a string, got {type(strategy).__name__}")
    if strategy.strip() == "":
        return []
    instructions = []
    for tuple_text in strategy.split(";"):
        fields = [f.strip() for f in tuple_text.split(",")]
        if tuple_text.strip() == "" or any(f == "" for f in fields):
            raise MaskStrategyError(f"empty field in mask strategy {strategy!r} (tuple {tuple_text!r})")
        if not 1 <= len(fields) <= 6:
            raise MaskStrategyError(
                f"mask strategy tuple {tuple_text!r} has {len(fields)} numbers; expected 1 to 6 "
                f"({','.join(FIELD_NAMES)})"
            )
        values: list[int | float] = [
            _parse_int(text, name, tuple_text) for text, name in zip(fields[:5], FIELD_NAMES, strict=False)
        ]
        if len(fields) == 6:
            try:
                ratio = float(fields[5])
            except ValueError:
                raise MaskStrategyError(
                    f"edit_ratio must be a number, got {fields[5]!r} in mask strategy tuple {tuple_text!r}"
                ) from None
            values.append(ratio)
        values.extend(DEFAULT_FIELDS[len(values) :])
        try:
            instructions.append(MaskInstruction(*values))
        except MaskStrategyError as error:
            raise MaskStrategyError(f"{error} in mask strategy tuple {tuple_text!r}") from None
    return instructions


def format_mask_strategy(instructions: list[MaskInstruction]) -> str:
    """The canonical string for a list of instructions (``parse_mask_strategy`` inverts it)."""
    return ";".join(instruction.to_string() for instruction in instructions)


def loop_condition_instruction(loop_id: int, ref_id: int, condition_frames: int) -> MaskInstruction:
    """Condition loop ``loop_id``'s first ``condition_frames`` frames on the last ones of reference ``ref_id``."""
    if loop_id < 1:
        raise MaskStrategyError(f"loop conditioning applies to loops >= 1, got loop {loop_id}")
    return MaskInstruction(loop_id, ref_id, -condition_frames, 0, condition_frames, 0.0)


def build_condition(
    instructions: list[MaskInstruction],
    loop_id: int,
    references: list[torch.Tensor],
    num_frames: int,
    latent_shape: tuple[int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference latents and the float frame mask for one loop of one sample.

    Args:
        instructions: parsed mask strategy; only those with ``loop_id`` apply.
        loop_id: the loop being sampled.
        references: reference latents, each [C, T_ref, H, W], indexed by ``ref_id``.
        num_frames: latent frames T of the clip being generated.
        latent_shape: (C, H, W) of the clip; needed only when ``references`` is empty, otherwise
            checked against the references.

    Returns:
        ``x_cond`` [C, T, H, W] (zeros where no reference applies) and ``frame_mask`` [T] float32:
        1 = generate, 0 = keep the reference, r in (0, 1) = edit ratio.
    """
    if num_frames < 1:
        raise MaskStrategyError(f"num_frames must be >= 1, got {num_frames}")
    for index, ref in enumerate(references):
        if not isinstance(ref, torch.Tensor) or ref.dim() != 4:
            shape = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
            raise MaskStrategyError(f"reference {index} must be a latent tensor [C, T, H, W], got {shape}")
    if references:
        channels, _, height, width = references[0].shape
        for index, ref in enumerate(references):
            if (ref.shape[0], ref.shape[2], ref.shape[3]) != (channels, height, width):
                raise MaskStrategyError(
                    f"reference {index} has [C, H, W] = {(ref.shape[0], ref.shape[2], ref.shape[3])}, "
                    f"reference 0 has {(channels, height, width)}"
                )
        if latent_shape is not None and tuple(latent_shape) != (channels, height, width):
            raise MaskStrategyError(
                f"references have [C, H, W] = {(channels, height, width)} but the clip is {tuple(latent_shape)}"
            )
        like = references[0]
    elif latent_shape is not None:
        channels, height, width = latent_shape
        like = torch.zeros(())
    else:
        raise MaskStrategyError("no references and no latent_shape: cannot size x_cond")

    x_cond = torch.zeros(channels, num_frames, height, width, dtype=like.dtype, device=like.device)
    frame_mask = torch.ones(num_frames, dtype=torch.float32, device=like.device)
    for instruction in instructions:
        if instruction.loop_id != loop_id:
            continue
        if instruction.ref_id >= len(references):
            raise MaskStrategyError(
                f"{instruction.to_string()!r}: ref_id {instruction.ref_id} but only {len(references)} "
                f"reference(s) given"
            )
        ref = references[instruction.ref_id]
        ref_frames = ref.shape[1]
        ref_start = instruction.ref_start + ref_frames if instruction.ref_start < 0 else instruction.ref_start
        target_start = (
            instruction.target_start + num_frames if instruction.target_start < 0 else instruction.target_start
        )
        length = instruction.length
        if ref_start < 0 or ref_start + length > ref_frames:
            raise MaskStrategyError(
                f"{instruction.to_string()!r}: reference frames [{ref_start}, {ref_start + length}) are outside "
                f"reference {instruction.ref_id}'s {ref_frames} latent frame(s)"
            )
        if target_start < 0 or target_start + length > num_frames:
            raise MaskStrategyError(
                f"{instruction.to_string()!r}: target frames [{target_start}, {target_start + length}) are "
                f"outside the clip's {num_frames} latent frame(s)"
            )
        x_cond[:, target_start : target_start + length] = ref[:, ref_start : ref_start + length]
        frame_mask[target_start : target_start + length] = instruction.edit_ratio
    return x_cond, frame_mask


def parse_loop_prompts(prompt: str) -> dict[int, str]:
    """``"|0|text A|2|text B"`` -> ``{0: "text A", 2: "text B"}``; a plain prompt -> ``{0: prompt}``."""
    if not isinstance(prompt, str):
        raise MaskStrategyError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.startswith("|"):
        return {0: prompt}
    parts = prompt.split("|")[1:]
    if len(parts) % 2 != 0:
        raise MaskStrategyError(f"loop prompt {prompt!r} must alternate |loop|text|, got an odd number of parts")
    prompts: dict[int, str] = {}
    previous = -1
    for index in range(0, len(parts), 2):
        loop_text, text = parts[index].strip(), parts[index + 1].strip()
        if not loop_text.isdigit():
            raise MaskStrategyError(f"loop id {loop_text!r} in loop prompt {prompt!r} is not a non-negative integer")
        loop = int(loop_text)
        if loop <= previous:
            raise MaskStrategyError(f"loop ids in {prompt!r} must increase, got {loop} after {previous}")
        if text == "":
            raise MaskStrategyError(f"loop {loop} has an empty text in loop prompt {prompt!r}")
        prompts[loop] = text
        previous = loop
    if 0 not in prompts:
        raise MaskStrategyError(f"loop prompt {prompt!r} must start with loop 0 ('|0|...')")
    return prompts


def prompt_for_loop(prompts: dict[int, str], loop_id: int) -> str:
    """The prompt in force at ``loop_id``: the text of the largest loop key <= loop_id."""
    keys = [k for k in prompts if k <= loop_id]
    if not keys:
        raise MaskStrategyError(f"no prompt for loop {loop_id}: prompts start at loop {min(prompts)}")
    return prompts[max(keys)]


def loop_prompts(prompt: str, num_loops: int) -> list[str]:
    """One prompt per loop; a loop id beyond ``num_loops - 1`` is an error (it would never be used)."""
    if num_loops < 1:
        raise MaskStrategyError(f"num_loops must be >= 1, got {num_loops}")
    prompts = parse_loop_prompts(prompt)
    beyond = [k for k in prompts if k >= num_loops]
    if beyond:
        raise MaskStrategyError(f"loop prompt {prompt!r} names loop(s) {beyond} but only {num_loops} loop(s) run")
    return [prompt_for_loop(prompts, loop) for loop in range(num_loops)]
