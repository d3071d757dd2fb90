"""The one answer to "does this object implement hook X itself?" (hooks nobody overrides are skipped)."""

from __future__ import annotations

from typing import Any


def is_overridden(obj: Any, base: type, name: str, see_through_wrappers: bool = False) -> bool:
    """Whether ``obj`` implements ``name`` itself (in its class or on the instance), not just ``base``'s.

    With ``see_through_wrappers``, an instance attribute that only wraps (``functools.wraps``/
    ``update_wrapper``) the method it replaced counts as what it wraps, as Lightning's check does:
    where a hook is *chosen* from one of two owners (the batch-transfer hooks of a datamodule or a
    module), a recording wrapper must not change the choice.
    """
    instance_attributes = getattr(obj, "__dict__", {})
    if name in instance_attributes:
        # ``model.validation_step = None`` turns the hook off, as in Lightning.
        value = instance_attributes[name]
        if value is None:
            return False
        if not see_through_wrappers:
            return True
        while hasattr(value, "__wrapped__"):
            value = value.__wrapped__
        value = getattr(value, "__func__", value)
        return value is not getattr(base, name, None)
    return getattr(type(obj), name, None) is not getattr(base, name, None)
