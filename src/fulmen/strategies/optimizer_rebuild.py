"""Rebuild an optimizer over new parameter objects, for engines that replace a module's parameters.

Sharding engines (FSDP) swap every parameter for a sharded one. An optimizer the user built
beforehand would step the old tensors; we rebuild it with the same class, hyperparameters
and groups over the new parameters, matched by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.optim import Optimizer


def parameter_names(module: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in module.named_parameters(remove_duplicate=False)}


def rebuild_optimizer(
    optimizer: Optimizer, old_names: dict[int, str], module: nn.Module, factory: Callable[..., Optimizer] | None = None
) -> Optimizer:
    """A fresh optimizer of the same kind whose groups hold ``module``'s current parameters."""
    if any(optimizer.state.values()):
        raise ValueError(
            "This optimizer already holds state (it has stepped). Set up the model and its optimizers "
            "before the first step, so that the optimizer can follow the sharded parameters."
        )
    current = dict(module.named_parameters(remove_duplicate=False))
    groups = []
    for group in optimizer.param_groups:
        try:
            params = [current[old_names[id(p)]] for p in group["params"]]
        except KeyError as err:
            raise ValueError(
                "The optimizer holds a parameter that is not in the model being set up; pass the model "
                "whose parameters the optimizer was built from."
            ) from err
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": params})
    build = factory or type(optimizer)
    return build(groups, **_accepted(build, optimizer.defaults))


def _accepted(build: Callable[..., Optimizer], defaults: dict) -> dict:
    """The defaults that ``build`` takes: some optimizers keep more in ``defaults`` than their
    constructor accepts (AdamW records ``decoupled_weight_decay``); each group carries them anyway."""
    try:
        parameters = inspect.signature(build).parameters.values()
    except (TypeError, ValueError):
        return defaults
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return defaults
    names = {p.name for p in parameters}
    return {key: value for key, value in defaults.items() if key in names}


def rebind_scheduler(scheduler: Any, old: Optimizer, new: Optimizer) -> None:
    """Point an LR scheduler built on ``old`` at ``new``, its rebuild (same class, same groups).

    The Trainer calls ``configure_optimizers`` before the engine shards the module, so a scheduler
    built there holds the optimizer that was replaced; without this it would change the learning
    rates of an optimizer that no longer steps. The rebuilt groups carry ``lr`` and ``initial_lr``.
    """
    if getattr(scheduler, "optimizer", None) is not old:
        return
    scheduler.optimizer = new
    step = new.step
    if not hasattr(step, "_wrapped_by_lr_sched"):  # torch's schedulers check that the optimizer stepped first

        def counted_step(*args: Any, **kwargs: Any) -> Any:
            new._opt_called = True  # type: ignore[attr-defined]
            return step(*args, **kwargs)

        counted_step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
        new.step = counted_step  # type: ignore[method-assign]
    new._opt_called = getattr(old, "_opt_called", False)  # type: ignore[attr-defined]
