"""Aspect-ratio tables: loaded from the package reference, nearest ratio on H/W."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opensora_mlops.config import ConfigError
from opensora_mlops.data.aspect import aspect_tables, closest_size, get_aspect_table, resolution_names


def test_ten_resolutions_ordered_by_pixels():
    names = resolution_names()
    assert len(names) == 10
    assert names[0] == "144p" and names[-1] == "4k"
    pixels = [aspect_tables()[n].pixels for n in names]
    assert pixels == sorted(pixels)
    assert aspect_tables()["240p"].pixels == 102240


def test_ratio_keys_are_height_over_width():
    # every entry's H/W is close to its key (the table is keyed by H/W, never W/H)
    for table in aspect_tables().values():
        for key, (h, w) in table.ratios.items():
            assert abs(h / w - float(key)) < 0.05 * float(key), (table.name, key, h, w)


def test_landscape_and_portrait_land_on_opposite_ratios():
    assert closest_size("240p", 720, 1280) == ("0.56", (240, 426))
    assert closest_size("240p", 1280, 720) == ("1.78", (426, 240))
    assert closest_size("144p", 50, 50) == ("1.00", (192, 192))


def test_unknown_resolution_names_valid_ones():
    with pytest.raises(ConfigError, match=r"'360x'.*144p.*240p.*4k"):
        get_aspect_table("360x")


def test_bad_sizes_rejected():
    with pytest.raises(ValueError, match="positive"):
        get_aspect_table("144p").closest_ratio(0, 10)


@settings(max_examples=50, deadline=None)
@given(
    name=st.sampled_from(sorted(aspect_tables())),
    sizes=st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 5000)), min_size=1, max_size=30),
)
def test_vectorised_closest_ratio_matches_scalar(name, sizes):
    table = get_aspect_table(name)
    h = np.array([s[0] for s in sizes])
    w = np.array([s[1] for s in sizes])
    many = table.closest_ratio_many(h, w)
    assert [table.ratio_keys[i] for i in many] == [table.closest_ratio(a, b) for a, b in sizes]
    # it is really the nearest key
    for (a, b), i in zip(sizes, many, strict=True):
        assert abs(table.ratio_values[i] - a / b) == pytest.approx(np.abs(table.ratio_values - a / b).min())
