"""Strategy names accepted by ``strategy=`` and what each one builds."""

from __future__ import annotations

import functools
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
    "fsdp_cpu_offload": lambda: _fsdp(cpu_offload=True),
    "deepspeed": lambda: _deepspeed(),
    "deepspeed_stage_1": lambda: _deepspeed(stage=1),
    "deepspeed_stage_2": lambda: _deepspeed(stage=2),
    "deepspeed_stage_2_offload": lambda: _deepspeed(stage=2, offload_optimizer=True),
    "deepspeed_stage_3": lambda: _deepspeed(stage=3),
    "deepspeed_stage_3_offload": lambda: _deepspeed(stage=3, offload_optimizer=True, offload_parameters=True),
    "fault_tolerant": lambda: _fault_tolerant(),
}
# Lightning's spellings of DDP with `find_unused_parameters` set, for each way of starting processes.
for _name, _start_method in (("ddp", "popen"), ("ddp_spawn", "spawn"), ("ddp_fork", "fork"), ("ddp_notebook", "fork")):
    for _find in (True, False):
        _FACTORIES[f"{_name}_find_unused_parameters_{str(_find).lower()}"] = functools.partial(
            DDPStrategy, start_method=_start_method, find_unused_parameters=_find
        )


def _sharded() -> Strategy:
    from fulmen.strategies.sharded import DDPShardedStrategy

    return DDPShardedStrategy(start_method="popen")


def _fsdp(cpu_offload: bool = False) -> Strategy:
    from fulmen.strategies.fsdp import FSDPStrategy

    return FSDPStrategy(cpu_offload=cpu_offload)


def _deepspeed(**options: object) -> Strategy:
    from fulmen.strategies.deepspeed import DeepSpeedStrategy  # the deepspeed package loads only when used

    return DeepSpeedStrategy(**options)


def _fault_tolerant() -> Strategy:
    from fulmen.strategies.fault_tolerant import FaultTolerantStrategy  # torchft loads when it connects

    return FaultTolerantStrategy()


def strategy_names() -> tuple[str, ...]:
    return ("auto", "single_device", *_FACTORIES)


def strategy_from_name(name: str) -> Strategy:
    return _FACTORIES[name]()
