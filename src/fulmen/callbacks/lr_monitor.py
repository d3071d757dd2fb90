"""Learning-rate monitor: send every optimizer's learning rate (and momentum, weight decay) to the loggers.

It exists because a schedule that does not do what was intended (a warm-up that never ends, a
decay stepping per batch instead of per epoch) is invisible in the loss until it is too late,
and obvious on a plot of the learning rate.

Names: ``lr-{OptimizerClass}`` for an optimizer, with ``/pg{i}`` (or the group's ``"name"``)
for each of several parameter groups, ``-1``, ``-2``, ... added to repeated optimizer classes,
and a scheduler's ``name`` instead when the scheduler config gives one. Momentum and weight
decay follow as ``{name}-momentum`` and ``{name}-weight_decay``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import torch
from torch.optim import Optimizer

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.rank_zero import rank_zero_warn


def _unwrap(optimizer: Any) -> Optimizer:
    # LightningOptimizer and engine wrappers keep the real optimizer under `.optimizer`.
    while not isinstance(optimizer, Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


class LearningRateMonitor(Callback):
    """Log learning rates to every logger of the Trainer.

    Args:
        logging_interval: ``"step"`` or ``"epoch"`` to log every optimizer at that interval;
            ``None`` logs each optimizer at its scheduler's interval (every step for
            optimizers without a scheduler).
        log_momentum: also log momentum (``betas[0]`` for Adam-like optimizers).
        log_weight_decay: also log weight decay.
    """

    def __init__(
        self, logging_interval: str | None = None, log_momentum: bool = False, log_weight_decay: bool = False
    ) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise invalid_argument("logging_interval", logging_interval, (None, "step", "epoch"))
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        #: Every learning rate logged, per name, in order.
        self.lrs: dict[str, list[float]] = {}
        self.last_momentum_values: dict[str, float | None] = {}
        self.last_weight_decay_values: dict[str, float | None] = {}
        self._last_step_logged: int | None = None

    # ------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.loggers:
            raise MisconfigurationException(
                "Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger: it needs one to send "
                "values to. Pass `Trainer(logger=CSVLogger(...))` (or another logger), or remove the callback."
            )
        if self.log_momentum:
            without = [
                type(_unwrap(opt)).__name__
                for opt in trainer.optimizers
                if not any("momentum" in g or "betas" in g for g in _unwrap(opt).param_groups)
            ]
            if without:
                rank_zero_warn(
                    f"You have set log_momentum=True, but some optimizers do not have momentum. "
                    f"`LearningRateMonitor(log_momentum=True)`: {', '.join(without)} has no momentum; 0 is logged "
                    "for it.",
                    RuntimeWarning,
                )
        names = [name for _, group_names, _ in self._entries(trainer) for name in group_names]
        self.lrs = {name: [] for name in names}
        self.last_momentum_values = {f"{name}-momentum": None for name in names}
        self.last_weight_decay_values = {f"{name}-weight_decay": None for name in names}
        self._last_step_logged = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.logging_interval == "epoch":
            return
        # The logging step counts batches that stepped (not optimizer steps: two optimizers step
        # twice per batch), as the Trainer's own logging does; within an accumulation window
        # several batches share it: log it once.
        step = _batches_that_stepped(trainer)
        if step == self._last_step_logged or not self._should_log(trainer, step):
            return
        self._last_step_logged = step
        self._log(trainer, "step" if self.logging_interval is None else "any")

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.logging_interval != "step":
            self._log(trainer, "epoch" if self.logging_interval is None else "any")

    @staticmethod
    def _should_log(trainer: Any, step: int) -> bool:
        every = getattr(trainer, "log_every_n_steps", 1) or 1
        return (step + 1) % every == 0 or bool(trainer.should_stop)

    # ------------------------------------------------------------------------------ values
    def _entries(self, trainer: Any) -> list[tuple[Optimizer, list[str], str]]:
        """(optimizer, a name per param group, interval) for every optimizer, schedulers' first."""
        entries: list[tuple[Optimizer, str, str, bool]] = []  # optimizer, base name, interval, named
        seen: set[int] = set()
        for config in trainer.lr_scheduler_configs:
            opt = _unwrap(config.scheduler.optimizer)
            seen.add(id(opt))
            name = getattr(config, "name", None)
            base = name if name is not None else f"lr-{type(opt).__name__}"
            entries.append((opt, base, getattr(config, "interval", "epoch"), name is not None))
        for opt in map(_unwrap, trainer.optimizers):
            if id(opt) not in seen:
                seen.add(id(opt))
                # No scheduler: logged at every check, epoch starts and steps alike (as Lightning does)
                entries.append((opt, f"lr-{type(opt).__name__}", "always", False))

        counts: Counter[type] = Counter(type(opt) for opt, _, _, named in entries if not named)
        occurrence: dict[type, int] = defaultdict(int)
        result = []
        for opt, base, interval, named in entries:
            if not named and counts[type(opt)] > 1:
                # The first Adam stays `lr-Adam`; the next ones are `lr-Adam-1`, `lr-Adam-2`.
                index = occurrence[type(opt)]
                occurrence[type(opt)] += 1
                if index:
                    base = f"{base}-{index}"
            result.append((opt, self._group_names(opt, base), interval))
        return result

    @staticmethod
    def _group_names(optimizer: Optimizer, base: str) -> list[str]:
        groups = optimizer.param_groups
        given = [g.get("name") for g in groups]
        duplicates = sorted({n for n in given if n is not None and given.count(n) > 1})
        if duplicates:
            raise MisconfigurationException(
                "A single `Optimizer` cannot have multiple parameter groups with identical `name` values: "
                f"{type(optimizer).__name__} has several named {duplicates}; `LearningRateMonitor` needs each "
                "group's `name` to be unique within an optimizer."
            )
        if len(groups) == 1:
            return [f"{base}/{given[0]}" if given[0] else base]
        return [f"{base}/{name or f'pg{i + 1}'}" for i, name in enumerate(given)]

    def _log(self, trainer: Any, interval: str) -> None:
        stats: dict[str, float] = {}
        for opt, names, opt_interval in self._entries(trainer):
            if interval not in (opt_interval, "any") and opt_interval != "always":
                continue
            use_betas = "betas" in opt.defaults
            for group, name in zip(opt.param_groups, names):
                lr = float(group["lr"])
                stats[name] = lr
                self.lrs.setdefault(name, []).append(lr)
                if self.log_momentum:
                    momentum = group["betas"][0] if use_betas else group.get("momentum", 0)
                    stats[f"{name}-momentum"] = float(momentum)
                    self.last_momentum_values[f"{name}-momentum"] = float(momentum)
                if self.log_weight_decay:
                    decay = float(group.get("weight_decay", 0))
                    stats[f"{name}-weight_decay"] = decay
                    self.last_weight_decay_values[f"{name}-weight_decay"] = decay
        if not stats:
            return
        # Monitors (a checkpoint on the lowest learning rate, say) can read them too.
        callback_metrics = trainer.callback_metrics
        if isinstance(callback_metrics, dict):
            device = trainer.strategy.root_device
            callback_metrics.update({k: torch.tensor(v, device=device) for k, v in stats.items()})
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=_batches_that_stepped(trainer))


def _batches_that_stepped(trainer: Any) -> int:
    return trainer.state.batches_that_stepped
