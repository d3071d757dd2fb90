"""What a restarted replica group receives from a live peer so that it continues as that peer would.

Weights and optimizer state come from the module and optimizers the strategy set up; the data
position from the exactly-once loader; random states from the process; anything else a front
end or the user registers under a name (the Trainer's loop counters and LR schedulers, a Lite
loop's own progress). After loading, the group is indistinguishable from its peer at the
start of the same step, so from then on their weights stay ``torch.equal``.

With several processes per group (FSDP inside it), each process heals from the process of the
same rank in a live group, and sharded values travel as their local shards (a ``DTensor``
carries its process group, which means nothing in another process); the receiver lays them out
again on its own mesh.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer


class ReplicaState:
    """The registry of healed state: ``state_dict`` on the sender, ``load_state_dict`` on the receiver."""

    def __init__(self, boundary_timeout: float = 60.0) -> None:
        self.modules: list[nn.Module] = []
        self.optimizers: list[Optimizer] = []
        self._extras: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {}
        #: How many times this process was healed.
        self.healed = 0
        #: The peer's random states, kept until the step's first batch (``apply_pending_rng``): what runs
        #: between healing and that batch (a sanity check) must not draw from them.
        self.pending_rng: dict[str, Any] | None = None
        # Set while the loop is between steps with its bookkeeping done (the optimizer has stepped, the
        # counters and schedulers have moved): the next quorum runs in the background while they do, and
        # what it sends or loads waits for this. ``boundary_timeout`` bounds the wait (a loop that ended
        # without teardown): by then the training thread is past every step's writes.
        self._boundary = threading.Event()
        self._boundary.set()
        self.boundary_timeout = boundary_timeout

    def register(self, key: str, state_dict: Callable[[], Any], load_state_dict: Callable[[Any], None]) -> None:
        """Heal ``key`` too: ``state_dict()`` on a live group, ``load_state_dict(value)`` on the restarted one."""
        if not callable(state_dict) or not callable(load_state_dict):
            raise TypeError(f"register_replica_state({key!r}, ...): state_dict and load_state_dict must be callables")
        self._extras[key] = (state_dict, load_state_dict)

    def at_step_boundary(self) -> None:
        self._boundary.set()

    def leave_step_boundary(self) -> None:
        self._boundary.clear()

    def state_dict(self) -> dict[str, Any]:
        self._boundary.wait(self.boundary_timeout)
        return {
            "modules": [_shards_of(module.state_dict()) for module in self.modules],
            "optimizers": [_shards_of(optimizer.state_dict()) for optimizer in self.optimizers],
            "rng": _capture_rng(),
            "extras": {key: get() for key, (get, _) in self._extras.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._boundary.wait(self.boundary_timeout)
        if len(state["modules"]) != len(self.modules) or len(state["optimizers"]) != len(self.optimizers):
            raise RuntimeError(
                f"The live replica group sent {len(state['modules'])} module(s) and {len(state['optimizers'])} "
                f"optimizer(s), but this group set up {len(self.modules)} and {len(self.optimizers)}: every group "
                "must run the same script with the same setup."
            )
        for module, module_state in zip(self.modules, state["modules"]):
            current = module.state_dict()
            module.load_state_dict({key: _laid_out(value, current.get(key)) for key, value in module_state.items()})
        for optimizer, optimizer_state in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(_optimizer_laid_out(optimizer, optimizer_state))
        for key, value in state["extras"].items():
            if key in self._extras:
                self._extras[key][1](value)
        self.pending_rng = state["rng"]
        self.healed += 1

    def apply_pending_rng(self) -> None:
        if self.pending_rng is not None:
            _restore_rng(self.pending_rng)
            self.pending_rng = None


@dataclass
class LocalShard:
    """A ``DTensor``'s local part, as sent to the process of the same rank in another group."""

    local: Tensor


def _shards_of(value: Any) -> Any:
    """``value`` (a state dict) with every ``DTensor`` replaced by its ``LocalShard``."""
    if isinstance(value, DTensor):
        return LocalShard(value.to_local())
    if isinstance(value, dict):
        return {key: _shards_of(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_shards_of(item) for item in value)
    return value


def _laid_out(value: Any, like: Any) -> Any:
    """A received ``LocalShard`` as a ``DTensor`` laid out as ``like`` (this process's own value)."""
    if not isinstance(value, LocalShard):
        return value
    if not isinstance(like, DTensor):
        raise RuntimeError(
            "The live replica group sent a sharded value where this group holds an unsharded one: every group "
            "must run the same script with the same strategy."
        )
    return DTensor.from_local(value.local, like.device_mesh, like.placements, shape=like.shape, stride=like.stride())


def _optimizer_laid_out(optimizer: Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's received state with each shard laid out as its parameter (states are keyed by
    the parameter's position over the param groups, as ``Optimizer.state_dict`` numbers them)."""
    params = [param for group in optimizer.param_groups for param in group["params"]]
    per_param = {
        index: {key: _laid_out(value, params[index]) for key, value in values.items()}
        for index, values in state["state"].items()
    }
    return {**state, "state": per_param}


def _capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
