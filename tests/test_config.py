from dataclasses import dataclass

import pytest

from opensora_mlops.config import ConfigError, check_keys, strict_dataclass
from opensora_mlops.resources import load_reference


@dataclass
class _Cfg:
    depth: int
    enable_flash_attn: bool = False


def test_unknown_key_is_named_with_suggestion():
    with pytest.raises(ConfigError, match=r"'enable_flashattn' \(did you mean 'enable_flash_attn'\?\)"):
        strict_dataclass(_Cfg, {"depth": 2, "enable_flashattn": True}, "model config")


def test_missing_key_is_named():
    with pytest.raises(ConfigError, match="missing key in stage: depth"):
        strict_dataclass(_Cfg, {}, "stage")


def test_known_keys_pass():
    assert strict_dataclass(_Cfg, {"depth": 3}, "x") == _Cfg(depth=3)
    check_keys({"a": 1}, ["a", "b"], "x")


def test_reference_ships_with_package():
    ref = load_reference()
    assert ref["stdit2_xl2"]["config"]["depth"] == 28
    assert len(ref["stdit2_xl2"]["state_dict_shapes"]) == 707
    assert set(ref["stages"]) == {"stage1", "stage2", "stage3"}
