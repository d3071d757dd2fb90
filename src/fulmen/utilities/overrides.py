"""The one answer to "does this object implement hook X itself?" (hooks nobody overrides are skipped)."""

from __future__ import annotations

from typing import Any


def is_overridden(obj: Any, base: type, name: str) -> bool:
    """Whether ``obj`` implements ``name`` itself (in its class or on the instance), not just ``base``'s."""
    instance_attributes = getattr(obj, "__dict__", {})
    if name in instance_attributes:
        # ``model.validation_step = None`` turns the hook off, as in Lightning.
        return instance_attributes[name] is not None
    return getattr(type(obj), name, None) is not getattr(base, name, None)
