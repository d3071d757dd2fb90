"""``fulmen run`` checks ``--accelerator`` and ``--devices`` against this machine before it starts
any process: a request the machine cannot meet fails once, in the launcher, instead of once per
started rank. The checks are the Trainer's and Lite's own (the shared resolver), so the verdict
is the one each rank would reach.
"""

from __future__ import annotations

from fulmen.strategies.environments.lightning import LightningEnvironment
from fulmen.strategies.resolver import _parse_devices, _select_accelerator
from fulmen.utilities.exceptions import MisconfigurationException


def check_machine(accelerator: str | None, devices: str | None) -> None:
    """Raise, naming the flags and what this machine has, if no process could start with them.

    CPU processes may outnumber the cores (as in Lightning); GPUs must exist.
    """
    accelerator = accelerator or "auto"
    requested = devices if devices is not None else "auto"
    try:
        accel = _select_accelerator(accelerator, None, requested, "auto")
        _parse_devices(requested, accel, LightningEnvironment(), 1)
    except MisconfigurationException as err:
        raise MisconfigurationException(
            f"`fulmen run --accelerator={accelerator} --devices={requested}` cannot run here: {err}"
        ) from None
