"""``ParallelStrategy``: the common base of the strategies that spread one run over several devices.

DP, DDP, FSDP, DeepSpeed and model parallelism (and their Ray variants) subclass it, so code can
ask ``isinstance(trainer.strategy, ParallelStrategy)`` as Lightning users do. It adds no behaviour
of its own: the process group, launcher and ranks live in ``DDPStrategy``.
"""

from __future__ import annotations

from fulmen.strategies.strategy import Strategy


class ParallelStrategy(Strategy):
    """A strategy whose work is spread over several devices (processes, or DP's threads)."""
