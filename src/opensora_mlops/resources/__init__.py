"""Facts extracted from the Open-Sora v1.1.0 release, shipped with the package.

``opensora_v1_1.json`` holds the aspect-ratio tables (ratio H/W -> (H, W)), the three training
stages' bucket configs and mask ratios, optimizer settings, and the STDiT2-XL/2 config with every
state-dict key and shape. A user's clone needs these at run time, so they live inside the package.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def load_reference() -> dict[str, Any]:
    """The Open-Sora v1.1.0 reference facts as a dict (cached; do not mutate)."""
    text = resources.files(__package__).joinpath("opensora_v1_1.json").read_text(encoding="utf-8")
    return json.loads(text)
