"""fulmen's exception classes and its one shape of argument error."""

from __future__ import annotations

import pytest

from fulmen.utilities.exceptions import (
    ConfigurationTypeError,
    MisconfigurationException,
    ModelNotAttachedError,
    invalid_argument,
)


def test_invalid_argument_names_argument_value_and_what_is_accepted():
    error = invalid_argument("mode", "up", ("min", "max"))
    assert isinstance(error, MisconfigurationException) and isinstance(error, ValueError)
    assert str(error) == "`mode='up'` is not valid. Accepted: 'min', 'max'."


def test_invalid_argument_leads_with_lightnings_sentence():
    error = invalid_argument("mode", "up", ("min", "max"), said="`mode` can be min, max, got up")
    assert str(error) == "`mode` can be min, max, got up: `mode='up'` is not valid. Accepted: 'min', 'max'."
    error = invalid_argument("x", 1, "an int >= 2", said="`x` should be larger.")
    assert str(error) == "`x` should be larger. `x=1` is not valid. Accepted: an int >= 2."


@pytest.mark.parametrize(
    ("cls", "builtins"),
    [(ConfigurationTypeError, (TypeError, ValueError)), (ModelNotAttachedError, (RuntimeError, AttributeError))],
)
def test_exception_classes_are_caught_as_the_builtins_lightning_raises(cls, builtins):
    for builtin in builtins:
        with pytest.raises(builtin):
            raise cls("message")
