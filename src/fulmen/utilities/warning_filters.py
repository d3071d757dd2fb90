"""``disable_possible_user_warnings``: silence the "this is probably a mistake" warnings, as in Lightning.

``POSSIBLE_USER_WARNINGS=0`` (or ``off``) in the environment does it for the whole program when
fulmen is imported.
"""

from __future__ import annotations

import os
import warnings

from fulmen.utilities.exceptions import PossibleUserWarning


def disable_possible_user_warnings(module: str = "") -> None:
    """Ignore every ``PossibleUserWarning`` (raised from modules matching ``module``, a regex; all by default)."""
    warnings.filterwarnings("ignore", category=PossibleUserWarning, module=module)


def apply_environment() -> None:
    """Honour ``POSSIBLE_USER_WARNINGS=0``/``off`` (called once when fulmen is imported)."""
    if os.environ.get("POSSIBLE_USER_WARNINGS", "").lower() in ("0", "off"):
        disable_possible_user_warnings()
