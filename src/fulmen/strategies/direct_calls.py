"""A sharded module's submodules stay callable on their own, outside the root's forward.

FSDP2 gathers a unit's parameters around the unit's own ``forward`` (and the methods registered
with ``register_fsdp_forward_method``). A submodule that is not a unit of its own (``pl_module.encoder``
in a callback that logs samples) holds only shards between steps, and calling it would mix whole
tensors with shards. Each such submodule gets a pre- and post-forward hook: if its unit's
parameters are sharded at that moment, the unit is gathered for the call and sharded again after
it; inside a forward that already gathered them the hooks do nothing.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def allow(root: nn.Module) -> None:
    """Hook every submodule of ``root`` that shares the parameters of an FSDP unit above it."""
    from torch.distributed.fsdp import FSDPModule

    def visit(module: nn.Module, unit: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, FSDPModule):
                visit(child, child)
                continue
            if any(True for _ in child.parameters()):
                _hook(child, unit)
            visit(child, unit)

    visit(root, root)


def _hook(module: nn.Module, unit: Any) -> None:
    # Looked up once: these hooks run on every forward of every submodule, training steps included.
    # torch offers no public query of a unit's state (torch is pinned; the FSDP tests cover this).
    groups = unit._get_fsdp_state()._fsdp_param_groups
    gathered_here: list[bool] = []

    def before(_module: nn.Module, _args: Any) -> None:
        sharded = not all(group.is_unsharded for group in groups)
        if sharded:
            unit.unshard()
        gathered_here.append(sharded)

    def after(_module: nn.Module, _args: Any, _output: Any) -> None:
        if gathered_here and gathered_here.pop():
            unit.reshard()

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)
