"""Shared preset handling of the experiment configs (``--preset quick|full`` plus overrides)."""

from __future__ import annotations

from typing import Any, Mapping


def from_preset(cls, presets: Mapping[str, Mapping[str, Any]], name: str, overrides: Mapping[str, Any]):
    """``cls(**{**presets[name], **overrides})``; overrides equal to None keep the preset's value.

    Raises:
      ValueError: unknown preset name.
    """
    if name not in presets:
        raise ValueError(f"preset must be one of {tuple(presets)}, got {name!r}.")
    fields = dict(presets[name])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**fields)
