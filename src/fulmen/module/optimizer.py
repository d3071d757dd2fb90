"""What ``configure_optimizers`` may return, and the optimizer handle the module sees.

``configure_optimizers`` may return an optimizer; a list of them; two lists (optimizers,
schedulers); a dict ``{"optimizer": ..., "lr_scheduler": ..., "monitor": ...}``; or a list of
such dicts. A scheduler is either the scheduler itself or a dict carrying ``scheduler`` and
optionally ``interval`` ("epoch" or "step"), ``frequency``, ``monitor``, ``strict`` and ``name``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau

from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_warn


@dataclasses.dataclass
class LRSchedulerConfig:
    """A scheduler and when the Trainer steps it (automatic optimization only)."""

    scheduler: Any
    name: str | None = None
    interval: str = "epoch"
    frequency: int = 1
    reduce_on_plateau: bool = False
    monitor: str | None = None
    strict: bool = True


_SCHEDULER_KEYS = {f.name for f in dataclasses.fields(LRSchedulerConfig)}

_FORMS = (
    "one of: an Optimizer; a list of Optimizers; ([Optimizers], [schedulers]); "
    "{'optimizer': Optimizer, 'lr_scheduler': scheduler or dict, 'monitor': name}; a list of such dicts"
)


def parse_optimizers_config(config: Any) -> tuple[list[Optimizer], list[Any], str | None]:
    """Split ``configure_optimizers``' output into optimizers, raw scheduler entries and a monitor."""
    if isinstance(config, Optimizer):
        return [config], [], None
    if (
        isinstance(config, (list, tuple))
        and len(config) == 2
        and isinstance(config[0], (list, tuple))
        and all(isinstance(o, Optimizer) for o in config[0])
    ):
        optimizers, schedulers = config
        schedulers = list(schedulers) if isinstance(schedulers, (list, tuple)) else [schedulers]
        return list(optimizers), schedulers, None
    if isinstance(config, Mapping):
        _check_optimizer_dict(config)
        schedulers = [config["lr_scheduler"]] if config.get("lr_scheduler") is not None else []
        return [config["optimizer"]], schedulers, config.get("monitor")
    if isinstance(config, (list, tuple)) and config and all(isinstance(d, Mapping) for d in config):
        for entry in config:
            _check_optimizer_dict(entry)
        optimizers = [entry["optimizer"] for entry in config]
        schedulers = []
        for entry in config:
            scheduler = entry.get("lr_scheduler")
            if scheduler is None:
                continue
            scheduler = dict(scheduler) if isinstance(scheduler, Mapping) else {"scheduler": scheduler}
            if entry.get("monitor") is not None:
                scheduler.setdefault("monitor", entry["monitor"])
            schedulers.append(scheduler)
        return optimizers, schedulers, None
    if isinstance(config, (list, tuple)) and all(isinstance(o, Optimizer) for o in config):
        return list(config), [], None
    raise MisconfigurationException(
        f"`configure_optimizers` returned {config!r}, which fulmen cannot read. Return {_FORMS}."
    )


def _check_optimizer_dict(config: Mapping) -> None:
    extra = set(config) - {"optimizer", "lr_scheduler", "monitor"}
    if extra:
        raise MisconfigurationException(
            f"`configure_optimizers` returned a dict with unknown keys {sorted(extra)}. "
            "Accepted keys: 'optimizer', 'lr_scheduler', 'monitor'."
        )
    if not isinstance(config.get("optimizer"), Optimizer):
        raise MisconfigurationException(
            f"`configure_optimizers` returned a dict whose 'optimizer' is {config.get('optimizer')!r}; "
            "it must be a torch.optim.Optimizer."
        )


def scheduler_configs(
    schedulers: list[Any], monitor: str | None, automatic_optimization: bool
) -> list[LRSchedulerConfig]:
    """Normalise scheduler entries into ``LRSchedulerConfig`` objects, checking each one."""
    configs = []
    for entry in schedulers:
        if isinstance(entry, Mapping):
            entry = dict(entry)
            extra = set(entry) - _SCHEDULER_KEYS
            if extra:
                rank_zero_warn(
                    f"The lr scheduler dict has unknown keys {sorted(extra)}, which are ignored. "
                    f"Accepted: {sorted(_SCHEDULER_KEYS)}.",
                    category=RuntimeWarning,
                )
                entry = {k: v for k, v in entry.items() if k in _SCHEDULER_KEYS}
            if "scheduler" not in entry:
                raise MisconfigurationException(
                    "The lr scheduler dict needs the key 'scheduler' holding the scheduler itself."
                )
            ignored = [key for key in ("monitor", "reduce_on_plateau", "strict") if key in entry]
            if not automatic_optimization and ignored:
                rank_zero_warn(
                    f"The lr scheduler dict contains the key(s) {ignored}, but the keys will be ignored: in manual "
                    "optimization you call `lr_scheduler.step()` yourself.",
                    category=RuntimeWarning,
                )
            if entry.get("interval", "epoch") not in ("epoch", "step"):
                raise MisconfigurationException(
                    f"The lr scheduler dict has `interval={entry['interval']!r}`. Accepted: 'epoch', 'step'."
                )
            frequency = entry.get("frequency", 1)
            if not isinstance(frequency, int) or isinstance(frequency, bool) or frequency < 1:
                raise MisconfigurationException(
                    f"The lr scheduler dict has `frequency={frequency!r}`. Accepted: a positive int."
                )
            entry.setdefault("reduce_on_plateau", isinstance(entry["scheduler"], ReduceLROnPlateau))
            if entry["reduce_on_plateau"] and entry.get("monitor") is None:
                entry["monitor"] = monitor
            if automatic_optimization and entry["reduce_on_plateau"] and entry.get("monitor") is None:
                raise MisconfigurationException(
                    "A ReduceLROnPlateau scheduler needs a metric to monitor: return "
                    "{'optimizer': opt, 'lr_scheduler': {'scheduler': sched, 'monitor': 'val_loss'}}."
                )
            if isinstance(entry["scheduler"], OneCycleLR) and entry.get("interval", "epoch") == "epoch":
                rank_zero_warn(
                    "A OneCycleLR scheduler is stepped every epoch ('interval': 'epoch'). "
                    "Did you mean 'interval': 'step'?",
                    category=RuntimeWarning,
                )
            config = LRSchedulerConfig(**entry)
        elif isinstance(entry, ReduceLROnPlateau):
            if automatic_optimization and monitor is None:
                raise MisconfigurationException(
                    "A ReduceLROnPlateau scheduler needs a metric to monitor: return "
                    "{'optimizer': opt, 'lr_scheduler': sched, 'monitor': 'val_loss'}."
                )
            config = LRSchedulerConfig(entry, reduce_on_plateau=True, monitor=monitor)
        else:
            config = LRSchedulerConfig(entry)
        # In manual optimization the module steps its schedulers itself: any object will do.
        if automatic_optimization and (
            not hasattr(config.scheduler, "step") or not hasattr(config.scheduler, "optimizer")
        ):
            raise MisconfigurationException(
                f"The provided lr scheduler `{type(config.scheduler).__name__}` doesn't follow PyTorch's LRScheduler "
                "API: it needs `step()` and an `optimizer`. Subclass `torch.optim.lr_scheduler.LRScheduler`, or "
                "step it yourself in manual optimization."
            )
        configs.append(config)
    return configs


class MockOptimizer(Optimizer):
    """Stands in when ``configure_optimizers`` returns None: steps run the closure and nothing else."""

    def __init__(self) -> None:
        super().__init__([torch.zeros(1)], {})

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass


def _do_nothing() -> None:
    return None


_WRAPPER_TYPES: dict[type, type] = {}


class LightningOptimizer:
    """The optimizer as the module sees it (``self.optimizers()``, ``optimizer_step``'s argument).

    It passes ``isinstance`` checks for the wrapped optimizer's class, shares its state, and routes
    ``step`` through the strategy (precision scaling, engines), which also counts the step.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        strategy: Any = None,
        module: Any = None,
        on_after_step: Callable[[], None] | None = None,
        after_closure: Callable[[LightningOptimizer], None] | None = None,
    ) -> None:
        """``strategy`` steps the optimizer (plain ``optimizer.step`` without one); ``module`` is
        what ``toggle_model`` toggles; ``on_after_step`` counts the step; ``after_closure`` runs
        after the closure, before the update (on_before_optimizer_step and clipping hooks in
        manual optimization; it gets this optimizer)."""
        # Share the optimizer's attributes (param_groups, state, defaults) rather than copy them.
        self.__dict__ = {k: v for k, v in optimizer.__dict__.items() if k not in ("step", "__del__")}
        self._optimizer = optimizer
        self._strategy = strategy
        self._module = module
        self._on_after_step = on_after_step or _do_nothing
        self._after_closure = after_closure
        self.__class__ = _wrapper_type(type(optimizer))

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """Step the wrapped optimizer through the strategy; ``closure`` re-evaluates the loss when given."""
        if closure is not None and not callable(closure):
            raise MisconfigurationException(f"`optimizer.step(closure={closure!r})`: the closure must be callable.")
        after_closure = self._after_closure
        if after_closure is not None:
            user_closure = closure

            def closure() -> Any:
                output = user_closure() if user_closure is not None else None
                after_closure(self)
                return output

        if self._strategy is None:
            output = self._optimizer.step(closure=closure, **kwargs) if closure else self._optimizer.step(**kwargs)
        else:
            output = self._strategy.optimizer_step(self._optimizer, closure or _do_nothing, **kwargs)
        self._on_after_step()
        return output

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self._optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state_dict)

    @contextmanager
    def toggle_model(self, sync_grad: bool = True) -> Any:
        """Make only this optimizer's parameters trainable inside the block (for several optimizers)."""
        module = self._module
        if module is None:
            yield
            return
        module.toggle_optimizer(self)
        try:
            yield
        finally:
            module.untoggle_optimizer(self)

    def __repr__(self) -> str:
        return f"Lightning{self._optimizer!r}"


def _wrapper_type(optimizer_type: type) -> type:
    wrapper = _WRAPPER_TYPES.get(optimizer_type)
    if wrapper is None:
        wrapper = type(f"Lightning{optimizer_type.__name__}", (LightningOptimizer, optimizer_type), {})
        _WRAPPER_TYPES[optimizer_type] = wrapper
    return wrapper


def needs_closure(optimizer: Optimizer) -> bool:
    """Whether ``optimizer.step`` must be given a closure (LBFGS and the like re-evaluate the loss)."""
    import inspect

    step = type(optimizer).step
    try:
        parameter = inspect.signature(step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is inspect.Parameter.empty


#: Packages whose optimizers run a given closure first thing in ``step`` and do nothing observable before it.
_PLAIN_STEP_PACKAGES = ("torch.", "fulmen.", "deepspeed.")


def steps_around_closure(optimizer: Optimizer) -> bool:
    """Whether ``optimizer.step`` may do something a user sees before it runs the closure.

    Lightning always trains inside ``optimizer.step(closure)``: a ``step`` override of the user's
    (or a registered step pre-hook) runs before ``training_step``. torch's own optimizers run the
    closure first, so for them calling the closure and then ``step()`` is the same, one frame shorter.
    """
    module = getattr(type(optimizer).step, "__module__", None) or ""
    return not module.startswith(_PLAIN_STEP_PACKAGES) or bool(getattr(optimizer, "_optimizer_step_pre_hooks", None))


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, Sequence) and not isinstance(value, (str, Mapping)) else [value]
