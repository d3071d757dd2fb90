"""``strategy="ddp_sharded"``: DDP whose optimizer state is sharded over the ranks (ZeRO stage 1).

torch's ``ZeroRedundancyOptimizer`` keeps each parameter's optimizer state on one rank and
broadcasts the updated parameters after the step, so optimizer memory shrinks with the
number of ranks while the model stays replicated.
"""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer

from fulmen.strategies.ddp import DDPStrategy
from fulmen.strategies.wrapped import unwrap_optimizer


class DDPShardedStrategy(DDPStrategy):
    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        from torch.distributed.optim import ZeroRedundancyOptimizer  # heavy: loads when used

        if isinstance(optimizer, ZeroRedundancyOptimizer):
            return optimizer
        if any(optimizer.state.values()):
            raise ValueError("Set up the optimizer with `ddp_sharded` before its first step (it holds state already).")
        first, *rest = optimizer.param_groups
        sharded = ZeroRedundancyOptimizer(
            first["params"], optimizer_class=type(optimizer), **{k: v for k, v in first.items() if k != "params"}
        )
        for group in rest:
            sharded.add_param_group(dict(group))
        return sharded

    def get_optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        inner = unwrap_optimizer(optimizer)
        if not hasattr(inner, "consolidate_state_dict"):
            return super().get_optimizer_state(optimizer)
        # Every rank sends its shard; rank zero, the one that writes checkpoints, gets the whole.
        inner.consolidate_state_dict(to=0)
        return inner.state_dict() if self.is_global_zero else {}

    def __repr__(self) -> str:
        return (
            f"DDPShardedStrategy(devices={self.num_processes}, num_nodes={self.num_nodes}, "
            f"precision={self.precision!r})"
        )
