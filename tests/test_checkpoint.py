"""Checkpoints: full round trip, atomic writes, pruning, refusal of other architectures."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from opensora_mlops.models.stdit2 import build_model
from opensora_mlops.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_weights_into,
    save_checkpoint,
    step_dirname,
)
from opensora_mlops.training.ema import EMA

TINY = {"depth": 1, "hidden_size": 48, "num_heads": 2}


def _model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model("STDiT2-tiny", **{**TINY, **overrides})


def _optimizer_after_one_step(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return opt


def test_round_trip_restores_model_ema_optimizer_sampler_and_rng(tmp_path):
    model = _model()
    ema = EMA(model, decay=0.9)
    opt = _optimizer_after_one_step(model)
    ema.update(model)
    sampler_state = {"seed": 3, "epoch": 2, "consumed_batches": 5}
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(9)
    path = save_checkpoint(tmp_path, 7, model, ema, opt, sampler_state, {"samples_seen": 14})
    expected_draws = (torch.rand(3), np.random.rand(2), random.random())

    other = _model(seed=1)
    other_ema = EMA(other, decay=0.9)
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-3)
    torch.manual_seed(999)
    state = load_checkpoint(path, other, other_ema, other_opt)
    assert state["step"] == 7 and state["sampler"] == sampler_state and state["extra"]["samples_seen"] == 14
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    for a, b in zip(ema.state_dict().values(), other_ema.state_dict().values()):
        torch.testing.assert_close(a, b)
    saved, loaded = opt.state_dict(), other_opt.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for k in saved["state"]:
        torch.testing.assert_close(saved["state"][k]["exp_avg"], loaded["state"][k]["exp_avg"])
    # RNG streams continue exactly where the saved process was
    torch.testing.assert_close(torch.rand(3), expected_draws[0])
    np.testing.assert_array_equal(np.random.rand(2), expected_draws[1])
    assert random.random() == expected_draws[2]
    # weights are safetensors in the model's save_pretrained layout; the rest loads with weights_only
    assert (path / "model" / "model.safetensors").exists() and (path / "ema" / "model.safetensors").exists()
    assert json.loads((path / "model" / "config.json").read_text())["hidden_size"] == 48
    torch.load(path / "optimizer.pt", weights_only=True)
    torch.load(path / "rng.pt", weights_only=True)


def test_latest_pointer_pruning_and_leftovers_of_a_killed_save(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, model, None, opt, {}, keep_last=2)
    assert latest_checkpoint(tmp_path).name == step_dirname(6)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == [step_dirname(4), step_dirname(6)]
    # a save killed half-way leaves a tmp dir (never renamed) and maybe a step dir without state.json
    (tmp_path / f".tmp-{step_dirname(8)}" / "model").mkdir(parents=True)
    (tmp_path / step_dirname(10)).mkdir()
    (tmp_path / "latest").write_text("step_99999999\n")  # pointer to a checkpoint that never completed
    assert latest_checkpoint(tmp_path).name == step_dirname(6)
    # the next save of the same step replaces the leftovers
    save_checkpoint(tmp_path, 8, model, None, opt, {}, keep_last=3)
    assert latest_checkpoint(tmp_path).name == step_dirname(8)
    assert not (tmp_path / f".tmp-{step_dirname(8)}").exists()
    # saving a step again (after a resume) swaps it atomically
    save_checkpoint(tmp_path, 8, model, None, opt, {"x": 1}, keep_last=3)
    assert json.loads((tmp_path / step_dirname(8) / "state.json").read_text())["sampler"] == {"x": 1}


def test_checkpoint_of_another_architecture_names_the_differing_fields(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path, 1, model, None, opt, {})
    wider = _model(hidden_size=96, num_heads=4)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, wider, None, None)
    message = str(info.value)
    assert "hidden_size" in message and "48" in message and "96" in message and "num_heads" in message
    # flags that do not change the weights may differ
    load_weights_into(_model(grad_checkpointing=True), path / "model")


def test_weights_without_config_are_checked_by_keys_and_shapes(tmp_path):
    from safetensors.torch import save_file

    state = {k: v for k, v in _model().state_dict().items() if not k.startswith("blocks.")}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing"):
        load_weights_into(_model(), tmp_path)
    with pytest.raises(CheckpointError, match="no .safetensors"):
        load_weights_into(_model(), tmp_path / "nothing")
