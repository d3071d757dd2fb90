"""The shared strategy layer: accelerator, precision, cluster environment and launcher behind one object.

Both front ends (``Trainer`` and ``Lite``) call ``select_strategy`` with the user's flags and
then talk only to the returned ``Strategy``.
"""

from fulmen.strategies.ddp import DDPStrategy
from fulmen.strategies.dp import DataParallelStrategy
from fulmen.strategies.fsdp import FSDPStrategy
from fulmen.strategies.resolver import select_strategy
from fulmen.strategies.sharded import DDPShardedStrategy
from fulmen.strategies.single_device import SingleDeviceStrategy
from fulmen.strategies.strategy import Strategy

__all__ = [
    "DDPShardedStrategy",
    "DDPStrategy",
    "DataParallelStrategy",
    "FSDPStrategy",
    "SingleDeviceStrategy",
    "Strategy",
    "select_strategy",
]
