"""Enums users compare flags against (``str`` enums: ``GradClipAlgorithmType.NORM == "norm"`` holds)."""

from __future__ import annotations

from enum import Enum


class GradClipAlgorithmType(str, Enum):
    """The values of ``Trainer(gradient_clip_algorithm=...)``."""

    NORM = "norm"
    VALUE = "value"

    @classmethod
    def supported_type(cls, value: str) -> bool:
        return value in {member.value for member in cls}

    @classmethod
    def supported_types(cls) -> list[str]:
        return [member.value for member in cls]
