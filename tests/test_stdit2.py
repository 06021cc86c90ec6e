"""ST-DiT-2: reference state dict, shapes, conditioning invariants, defect flags, persistence, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from opensora_mlops.config import ConfigError
from opensora_mlops.models.layers import T2IFinalLayer, apply_rope, rope_tables, sincos_position_embedding_2d
from opensora_mlops.models.stdit2 import MODEL_CONFIGS, STDiT2, build_model, load_opensora_checkpoint
from opensora_mlops.resources import load_reference

torch.set_num_threads(2)
CAPTION_LEN, CAPTION_DIM = 32, 384


def tiny(**overrides) -> STDiT2:
    """The tiny config with every weight perturbed, so zero-initialised projections don't hide bugs."""
    torch.manual_seed(0)
    model = build_model("STDiT2-tiny", **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def inputs(batch=2, frames=3, height=6, width=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, frames, height, width, generator=g)
    y = torch.randn(batch, CAPTION_LEN, CAPTION_DIM, generator=g)
    mask = torch.ones(batch, CAPTION_LEN, dtype=torch.long)
    mask[0, 20:] = 0
    timestep = torch.linspace(50, 900, batch)
    return x, timestep, y, mask


# --- reference facts and configuration ---------------------------------------------------------------


def test_xl2_matches_the_released_state_dict_exactly():
    ref = load_reference()["stdit2_xl2"]
    with torch.device("meta"):
        model = build_model("STDiT2-XL/2")
    state = model.state_dict()
    shapes = {k: list(v.shape) for k, v in state.items()}
    assert shapes == {k: list(v) for k, v in ref["state_dict_shapes"].items()}
    assert sum(v.numel() for v in state.values()) == ref["num_parameters_and_buffers"]
    cfg = ref["config"]
    assert model.config.out_channels == cfg["out_channels"]
    assert model.config.model_max_length == cfg["model_max_length"]
    assert model.config.input_sq_size == cfg["input_sq_size"]
    # the null caption is a fixed buffer, as in 1.1, not a trained parameter
    assert "y_embedder.y_embedding" not in dict(model.named_parameters())


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        build_model("STDiT2-XXL/9")
    for name in MODEL_CONFIGS:
        assert name in str(err.value)


def test_the_1_1_flash_attention_typo_is_refused():
    with pytest.raises(ConfigError, match="enable_flashattn"):
        build_model("STDiT2-tiny", enable_flashattn=True)


def test_inconsistent_config_is_refused():
    with pytest.raises(ConfigError, match="num_heads"):
        build_model("STDiT2-tiny", hidden_size=96, num_heads=5)


# --- shapes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("frames", "height", "width"), [(1, 8, 8), (3, 9, 11), (4, 5, 6)])
def test_output_shape_matches_input_for_any_size(frames, height, width):
    model = tiny()
    x, t, y, mask = inputs(frames=frames, height=height, width=width)
    x_mask = torch.ones(2, frames, dtype=torch.bool)
    x_mask[1, 0] = False
    out = model(x, t, y, mask=mask, x_mask=x_mask)
    assert out.shape == (2, 8, frames, height, width)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_4d_caption_input_is_accepted():
    model = tiny()
    x, t, y, mask = inputs()
    torch.testing.assert_close(model(x, t, y[:, None], mask=mask), model(x, t, y, mask=mask), rtol=0, atol=0)


def test_samples_are_independent_within_a_mixed_batch():
    model = tiny()
    x, t, y, mask = inputs(frames=3)
    x_mask = torch.tensor([[False, True, True], [True, True, True]])
    fps = torch.tensor([8.0, 24.0])
    batch = model(x, t, y, mask=mask, x_mask=x_mask, fps=fps)
    for i in range(2):
        alone = model(x[i : i + 1], t[i : i + 1], y[i : i + 1], mask=mask[i : i + 1], x_mask=x_mask[i : i + 1],
                      fps=fps[i : i + 1])
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=1e-4, atol=1e-5)


def test_bf16_forward_runs_and_returns_float32():
    model = tiny().to(torch.bfloat16)
    x, t, y, mask = inputs(batch=1, frames=2)
    out = model(x, t[:1], y[:1], mask=mask[:1])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# --- conditioning frames (x_mask) -------------------------------------------------------------------


def test_all_noisy_mask_equals_no_mask():
    model = tiny()
    x, t, y, mask = inputs()
    torch.testing.assert_close(model(x, t, y, mask=mask, x_mask=torch.ones(2, 3, dtype=torch.bool)),
                               model(x, t, y, mask=mask), rtol=0, atol=0)


def test_all_conditioning_frames_behave_as_timestep_zero():
    model = tiny()
    x, t, y, mask = inputs()
    conditioned = model(x, t, y, mask=mask, x_mask=torch.zeros(2, 3, dtype=torch.bool))
    at_zero = model(x, torch.zeros_like(t), y, mask=mask)
    torch.testing.assert_close(conditioned, at_zero, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(at_zero, model(x, t, y, mask=mask), atol=1e-3)


def test_final_layer_legacy_changes_only_conditioning_frames():
    model = tiny()
    legacy = tiny(final_layer_legacy=True)
    legacy.load_state_dict(model.state_dict())
    x, t, y, mask = inputs(frames=3)
    x_mask = torch.tensor([[True, False, True], [False, True, True]])
    new, old = model(x, t, y, mask=mask, x_mask=x_mask), legacy(x, t, y, mask=mask, x_mask=x_mask)
    noisy = x_mask[:, None, :, None, None].expand_as(new)
    torch.testing.assert_close(new[noisy], old[noisy], rtol=0, atol=0)
    assert (new[~noisy] - old[~noisy]).abs().max() > 1e-3


def test_final_layer_arithmetic_fixed_and_legacy():
    torch.manual_seed(0)
    layer = T2IFinalLayer(12, 4, 2)
    torch.nn.init.normal_(layer.linear.weight)
    x, t, t0 = torch.randn(1, 2, 3, 12), torch.randn(1, 12), torch.randn(1, 12)
    x_mask = torch.tensor([[True, False]])
    shift, scale = layer.scale_shift_table

    def ln(z):
        return F.layer_norm(z, (12,), eps=1e-6)

    noisy = ln(x) * (1 + scale + t) + (shift + t)
    # fixed: a conditioning frame is normalised once and modulated by its own (t = 0) embedding
    fixed = layer(x, t, t0, x_mask)
    torch.testing.assert_close(fixed[:, 0], layer.linear(noisy)[:, 0])
    torch.testing.assert_close(fixed[:, 1], layer.linear(ln(x) * (1 + scale + t0) + (shift + t0))[:, 1])
    # 1.1: the conditioning frame re-normalises the t-modulated tokens and modulates them again
    legacy = layer(x, t, t0, x_mask, legacy=True)
    torch.testing.assert_close(legacy[:, 0], fixed[:, 0])
    torch.testing.assert_close(legacy[:, 1], layer.linear(ln(noisy) * (1 + scale + t0) + (shift + t0))[:, 1])


# --- attention behaviour -----------------------------------------------------------------------------


def test_padding_tokens_do_not_change_the_output():
    model = tiny()
    x, t, y, mask = inputs()
    y2 = y.clone()
    y2[0, 20:] = torch.randn(CAPTION_LEN - 20, CAPTION_DIM) * 10
    torch.testing.assert_close(model(x, t, y, mask=mask), model(x, t, y2, mask=mask), rtol=0, atol=1e-6)
    y3 = y.clone()
    y3[0, 5] += 1.0  # a real token does matter
    assert (model(x, t, y, mask=mask) - model(x, t, y3, mask=mask))[0].abs().max() > 1e-4


def test_all_padding_caption_gives_finite_output():
    model = tiny()
    x, t, y, mask = inputs()
    mask[1] = 0
    assert torch.isfinite(model(x, t, y, mask=mask)).all()


def test_temporal_attention_sees_every_frame():
    model = tiny()
    x, t, y, mask = inputs(frames=4)
    x2 = x.clone()
    x2[:, :, -1] += 1.0  # change only the last frame: earlier frames must react (full, not causal)
    diff = (model(x, t, y, mask=mask) - model(x2, t, y, mask=mask))[:, :, 0].abs().max()
    assert diff > 1e-4


def test_rope_rotation_is_relative_and_norm_preserving():
    torch.manual_seed(0)
    freqs = 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)
    rotation = rope_tables(freqs, 6)
    q, k = torch.randn(8), torch.randn(8)
    rq, rk = apply_rope(q.expand(6, 8), rotation), apply_rope(k.expand(6, 8), rotation)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(6))
    # score depends on the distance only: <q@1, k@3> == <q@2, k@4>
    torch.testing.assert_close(rq[1] @ rk[3], rq[2] @ rk[4], rtol=1e-5, atol=1e-5)
    # channel pair (0, 1) at position 1 is rotated by freqs[0] = 1 radian, interleaved layout;
    # pair (2, 3) at position 3 by 3 * freqs[1] = 0.3 radian
    c, s = math.cos(1.0), math.sin(1.0)
    torch.testing.assert_close(rq[1, :2], torch.stack([q[0] * c - q[1] * s, q[1] * c + q[0] * s]))
    c, s = math.cos(0.3), math.sin(0.3)
    torch.testing.assert_close(rq[3, 2:4], torch.stack([q[2] * c - q[3] * s, q[3] * c + q[2] * s]))
    # bf16 input stays bf16
    assert apply_rope(q.expand(6, 8).bfloat16(), rotation).dtype == torch.bfloat16


def test_qk_norm_legacy_keeps_keys_and_changes_only_multi_frame_output():
    model = tiny()
    legacy = tiny(qk_norm_legacy=True)
    assert list(legacy.state_dict()) == list(model.state_dict())
    legacy.load_state_dict(model.state_dict())
    x, t, y, mask = inputs(frames=3)
    assert (model(x, t, y, mask=mask) - legacy(x, t, y, mask=mask)).abs().max() > 1e-4
    # one frame: the rotation at position 0 is the identity, so the order does not matter
    x1 = x[:, :, :1]
    torch.testing.assert_close(model(x1, t, y, mask=mask), legacy(x1, t, y, mask=mask), rtol=0, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    x, t, y, mask = inputs(frames=2)
    grads = []
    for flag in (False, True):
        model = tiny(grad_checkpointing=flag).train()
        model.config.class_dropout_prob = 0.0
        model(x, t, y, mask=mask, x_mask=torch.tensor([[False, True], [True, True]])).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7, msg=name)


def test_class_dropout_replaces_captions_by_the_null_caption():
    model = tiny(class_dropout_prob=1.0)
    x, t, y, mask = inputs()
    dropped = model.train()(x, t, y, mask=mask)
    null = model.null_text(2)
    assert null.shape == (2, CAPTION_LEN, CAPTION_DIM)
    torch.testing.assert_close(null[0], model.y_embedder.y_embedding)
    torch.testing.assert_close(dropped, model.eval()(x, t, null, mask=mask), rtol=0, atol=1e-6)
    # captions of the wrong length cannot be swapped for the null caption
    with pytest.raises(ValueError, match="model_max_length"):
        model.train()(x, t, y[:, :10], mask=mask[:, :10])


# --- position embedding ------------------------------------------------------------------------------


def test_sincos_table_matches_a_hand_computation():
    dim, rows, cols, scale, base = 8, 2, 3, 0.5, 2
    table = sincos_position_embedding_2d(dim, rows, cols, scale=scale, base_size=base)
    freqs = [1.0, 1.0 / 100.0]  # 10000 ** (-2i / (dim/2)) for i = 0, 1
    for r in range(rows):
        for c in range(cols):
            xc, yc = c / scale * base / cols, r / scale * base / rows
            expect = ([math.sin(xc * f) for f in freqs] + [math.cos(xc * f) for f in freqs]
                      + [math.sin(yc * f) for f in freqs] + [math.cos(yc * f) for f in freqs])
            torch.testing.assert_close(table[r * cols + c], torch.tensor(expect), rtol=1e-5, atol=1e-6)


def test_position_embedding_scales_with_resolution():
    model = tiny()
    sq = model.config.input_sq_size
    table = model.position_embedding(3, 5, torch.tensor([96.0]), torch.tensor([160.0]), torch.float32)
    expect = sincos_position_embedding_2d(96, 3, 5, scale=math.sqrt(96 * 160) / sq, base_size=round(math.sqrt(15)))
    assert torch.equal(table[0, 0], expect)  # built from the size tensors on the device, the same bits
    bigger = model.position_embedding(3, 5, torch.tensor([192.0]), torch.tensor([320.0]), torch.float32)
    assert not torch.allclose(table, bigger)
    # per-sample resolutions give per-sample tables
    mixed = model.position_embedding(3, 5, torch.tensor([96.0, 192.0]), torch.tensor([160.0, 320.0]), torch.float32)
    assert torch.equal(mixed[1], bigger[0])


# --- persistence -----------------------------------------------------------------------------------------


def test_save_and_load_round_trip_is_bit_exact(tmp_path):
    model = tiny(qk_norm_legacy=True)
    model.save_pretrained(tmp_path / "m")
    loaded = STDiT2.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x, t, y, mask = inputs()
    assert torch.equal(model(x, t, y, mask=mask), loaded(x, t, y, mask=mask))


def test_from_pretrained_missing_directory_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        STDiT2.from_pretrained(tmp_path / "nowhere")


def test_released_checkpoint_loading_unwraps_and_extends_the_null_caption(tmp_path):
    source = tiny()
    state = source.state_dict()
    short = dict(state)
    short["y_embedder.y_embedding"] = state["y_embedder.y_embedding"][:20].clone()  # like 120 -> 200
    path = tmp_path / "ema.pt"
    torch.save({"model": {f"module.{k}": v for k, v in short.items()}}, path)
    target = build_model("STDiT2-tiny")
    with pytest.warns(UserWarning, match="qk_norm_legacy"):
        load_opensora_checkpoint(target, path)
    null = target.y_embedder.y_embedding
    torch.testing.assert_close(null[:20], state["y_embedder.y_embedding"][:20], rtol=0, atol=0)
    torch.testing.assert_close(null[20:], state["y_embedder.y_embedding"][19].expand(12, -1), rtol=0, atol=0)
    for key in state:
        if key != "y_embedder.y_embedding":
            assert torch.equal(target.state_dict()[key], state[key]), key
    # a plain safetensors file loads too
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    with torch.device("meta"):  # no weights allocated before loading
        other = build_model("STDiT2-tiny", qk_norm_legacy=True)
    load_opensora_checkpoint(other, tmp_path)
    assert torch.equal(other.y_embedder.y_embedding, state["y_embedder.y_embedding"])
    assert torch.equal(other.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])


def test_released_checkpoint_mismatch_names_every_problem(tmp_path):
    state = dict(tiny().state_dict())
    del state["final_layer.linear.bias"]
    state["blocks.9.attn.qkv.weight"] = torch.zeros(3)
    state["t_block.1.weight"] = torch.zeros(5, 5)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    model = build_model("STDiT2-tiny", qk_norm_legacy=True)
    with pytest.raises(ValueError) as err:
        load_opensora_checkpoint(model, path)
    message = str(err.value)
    assert "missing keys: final_layer.linear.bias" in message
    assert "unexpected keys: blocks.9.attn.qkv.weight" in message
    assert "t_block.1.weight: checkpoint [5, 5] vs model [576, 96]" in message
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_opensora_checkpoint(model, tmp_path / "absent.pt")


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "x": a["x"][0]}, r"\[B, C, T, H, W\]"),
        (lambda a: {**a, "x": a["x"][:, :3]}, "3 channels"),
        (lambda a: {**a, "y": a["y"][:1]}, "caption batch 1 does not match video batch 2"),
        (lambda a: {**a, "y": a["y"][..., :100]}, "caption width 100"),
        (lambda a: {**a, "mask": a["mask"][:, :5]}, "mask must have shape"),
        (lambda a: {**a, "x_mask": torch.ones(2, 5, dtype=torch.bool)}, "x_mask must have shape"),
        (lambda a: {**a, "timestep": a["timestep"][:1]}, "timestep must have shape"),
        (lambda a: {**a, "fps": torch.ones(3)}, "'fps'"),
    ],
)
def test_bad_input_is_a_clear_error(change, message):
    model = tiny()
    x, t, y, mask = inputs()
    args = change({"x": x, "timestep": t, "y": y, "mask": mask})
    with pytest.raises(ValueError, match=message):
        model(**args)
