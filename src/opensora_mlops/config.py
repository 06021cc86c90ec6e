"""Strict configuration checking.

Open-Sora 1.1's training configs said ``enable_flashattn=True`` while the model read
``enable_flash_attn``; the stray key was swallowed and 1.1 trained without flash attention. Here an
unknown key in a model, stage or pipeline config is an error that names the key (and the closest
known one).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration is malformed: an unknown key, a missing key or a bad value."""


def check_keys(given: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Raise :class:`ConfigError` if ``given`` holds a key not in ``allowed``.

    The message names every unknown key, where it was found, and the nearest allowed spelling.
    """
    allowed = list(allowed)
    unknown = [k for k in given if k not in allowed]
    if not unknown:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        parts.append(f"{key!r}{hint}")
    raise ConfigError(
        f"unknown key{'s' if len(unknown) > 1 else ''} in {where}: {', '.join(parts)}; "
        f"allowed keys are: {', '.join(sorted(map(str, allowed)))}"
    )


def strict_dataclass(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from ``values``, refusing unknown keys and naming missing ones."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(values, fields, where)
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise ConfigError(f"missing key{'s' if len(missing) > 1 else ''} in {where}: {', '.join(missing)}")
    return cls(**values)
