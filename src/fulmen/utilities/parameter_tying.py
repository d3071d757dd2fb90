"""Tied parameters (one tensor under several names): find them, and tie them again after a move.

Moving a module to some devices (or loading it lazily) can break a tie such as an embedding
shared with the output layer; ``set_shared_parameters`` restores it from the names
``find_shared_parameters`` reported before.
"""

from __future__ import annotations

from torch import nn


def find_shared_parameters(module: nn.Module) -> list[list[str]]:
    """Groups of parameter names that share one tensor, in the module's order; untied ones are left out."""
    names_by_tensor: dict[int, list[str]] = {}
    for prefix, submodule in module.named_modules(remove_duplicate=False):
        for name, parameter in submodule.named_parameters(recurse=False):
            if parameter is None:
                continue
            full = f"{prefix}.{name}" if prefix else name
            names = names_by_tensor.setdefault(id(parameter), [])
            if full not in names:
                names.append(full)
    return [names for names in names_by_tensor.values() if len(names) > 1]


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    return module, leaf


def set_shared_parameters(module: nn.Module, shared_params: list[list[str]]) -> nn.Module:
    """Make every name of each group point at its group's first parameter again; returns ``module``."""
    for group in shared_params:
        if not group:
            continue
        owner, leaf = _owner(module, group[0])
        first = getattr(owner, leaf)
        if not isinstance(first, nn.Parameter):
            raise ValueError(f"`{group[0]}` is not a parameter of the module; groups come from find_shared_parameters.")
        for name in group[1:]:
            owner, leaf = _owner(module, name)
            setattr(owner, leaf, first)
    return module
