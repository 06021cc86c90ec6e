"""fp32 EMA: the update rule, dtype, wrappers, state round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from opensora_mlops.training.ema import EMA, unwrap_module


def _linear(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(4, 3).to(dtype)


def test_update_follows_the_exponential_rule():
    model = _linear()
    ema = EMA(model, decay=0.75)
    start = {k: v.clone() for k, v in ema.shadow.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for name, value in ema.shadow.state_dict().items():
        expected = 0.75 * start[name] + 0.25 * dict(model.state_dict())[name]
        torch.testing.assert_close(value, expected)


def test_decay_zero_copies_and_decay_one_freezes():
    model = _linear()
    ema = EMA(model, decay=1.0)
    before = ema.state_dict()
    with torch.no_grad():
        model.weight.mul_(3.0)
    ema.update(model)
    torch.testing.assert_close(ema.state_dict()["weight"], before["weight"])
    ema.update(model, decay=0.0)
    torch.testing.assert_close(ema.state_dict()["weight"], model.weight.detach())


def test_shadow_is_fp32_for_a_bf16_model_and_keeps_small_updates():
    model = _linear(dtype=torch.bfloat16)
    ema = EMA(model, decay=0.999)
    assert all(p.dtype == torch.float32 for p in ema.shadow.parameters())
    first = ema.state_dict()["weight"].clone()
    with torch.no_grad():
        model.weight.add_(0.5)
    ema.update(model)
    # a 0.0005 change would vanish in bf16 arithmetic near 0.5; in fp32 it is kept
    diff = ema.state_dict()["weight"] - first
    torch.testing.assert_close(diff, torch.full_like(diff, 0.001 * 0.5), rtol=0.05, atol=1e-5)
    assert not any(p.requires_grad for p in ema.shadow.parameters())


def test_unwraps_ddp_like_wrappers_and_round_trips_state():
    model = _linear()

    class Wrapper(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def unwrap(self):
            return self.module

    wrapped = Wrapper(model)
    assert unwrap_module(wrapped) is model
    ema = EMA(wrapped, decay=0.5)
    assert set(ema.state_dict()) == {"weight", "bias"}
    other = EMA(_linear(seed=1), decay=0.5)
    other.load_state_dict(ema.state_dict())
    torch.testing.assert_close(other.state_dict()["weight"], ema.state_dict()["weight"])


def test_bad_decay_is_refused():
    with pytest.raises(ValueError, match="decay"):
        EMA(_linear(), decay=1.5)
