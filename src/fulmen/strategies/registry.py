"""Strategy names accepted by ``strategy=`` and what each one builds."""

from __future__ import annotations

from collections.abc import Callable

from fulmen.strategies.ddp import DDPStrategy
from fulmen.strategies.dp import DataParallelStrategy
from fulmen.strategies.strategy import Strategy

_FACTORIES: dict[str, Callable[[], Strategy]] = {
    "ddp": lambda: DDPStrategy(start_method="popen"),
    "ddp_spawn": lambda: DDPStrategy(start_method="spawn"),
    "ddp_fork": lambda: DDPStrategy(start_method="fork"),
    "ddp_notebook": lambda: DDPStrategy(start_method="fork"),
    "dp": DataParallelStrategy,
    "ddp_sharded": lambda: _sharded(),
    "fsdp": lambda: _fsdp(),
}


def _sharded() -> Strategy:
    from fulmen.strategies.sharded import DDPShardedStrategy

    return DDPShardedStrategy(start_method="popen")


def _fsdp() -> Strategy:
    from fulmen.strategies.fsdp import FSDPStrategy

    return FSDPStrategy()


def strategy_names() -> tuple[str, ...]:
    return ("auto", "single_device", *_FACTORIES)


def register_strategy(name: str, factory: Callable[[], Strategy]) -> None:
    """Add a named strategy (used for the sharded engines and integrations)."""
    _FACTORIES[name] = factory


def strategy_from_name(name: str) -> Strategy:
    return _FACTORIES[name]()
