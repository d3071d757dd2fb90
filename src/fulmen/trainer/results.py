"""What ``self.log`` records, and the three views the Trainer derives from it.

One ``ResultStore`` per loop run (the training epoch, each validation/test run) holds one entry
per ``(hook, name, dataloader)``. An entry keeps the latest step value (``on_step``) and the
values needed for the epoch value (``on_epoch``): batch-size weighted mean, sum, max, min, a
callable over the stacked values, or a torchmetrics ``Metric`` (computed at epoch end, reset
with the store). Nothing is converted to a Python number on the hot path; ``.item()`` happens
only where a logger or the progress bar reads a value.

Views (as Lightning 2.x builds them): during a loop ``step_view`` names values ``name`` or,
when logged both per step and per epoch, ``name_step``; after the epoch ``epoch_view`` names
them ``name`` / ``name_epoch``. Values from the ``N``-th of several evaluation dataloaders get a
``/dataloader_idx_N`` suffix.
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from fulmen.utilities.data import extract_batch_size
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.rank_zero import rank_zero_warn

# Where ``self.log`` may be called: hook -> (allowed on_step, allowed on_epoch, default on_step, default on_epoch).
_STEP_TRAIN = ((False, True), (False, True), True, False)
_STEP_EVAL = ((False, True), (False, True), False, True)
_EPOCH = ((False,), (True,), False, True)
LOG_RULES: dict[str, tuple[tuple[bool, ...], tuple[bool, ...], bool, bool]] = {
    **dict.fromkeys(
        (
            "training_step",
            "on_train_batch_start",
            "on_train_batch_end",
            "on_before_backward",
            "backward",
            "on_after_backward",
            "on_before_optimizer_step",
            "optimizer_step",
            "configure_gradient_clipping",
            "clip_gradients",
            "on_before_zero_grad",
            "optimizer_zero_grad",
        ),
        _STEP_TRAIN,
    ),
    **dict.fromkeys(
        (
            "validation_step",
            "test_step",
            "on_validation_batch_start",
            "on_validation_batch_end",
            "on_test_batch_start",
            "on_test_batch_end",
        ),
        _STEP_EVAL,
    ),
    **dict.fromkeys(
        (
            "on_train_start",
            "on_train_epoch_start",
            "on_train_epoch_end",
            "on_validation_start",
            "on_validation_epoch_start",
            "on_validation_epoch_end",
            "on_test_start",
            "on_test_epoch_start",
            "on_test_epoch_end",
        ),
        _EPOCH,
    ),
}

_REDUCE_NAMES = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min"}
_REDUCE_CALLABLES = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min",
                     sum: "sum", max: "max", min: "min"}  # fmt: skip
#: Step values folded into a running total every this many steps (bounded memory, no per-step op).
_FOLD_EVERY = 64


def _is_metric(value: Any) -> bool:
    torchmetrics = sys.modules.get("torchmetrics")  # a Metric exists only if torchmetrics was imported
    return torchmetrics is not None and isinstance(value, torchmetrics.Metric)


class _Entry:
    __slots__ = (
        "name", "key_name", "dataloader_idx", "opts", "on_step", "on_epoch", "forked", "prog_bar", "logger",
        "reduce", "custom", "sync", "group", "enable_graph", "rank_zero_only", "step_value", "values",
        "sizes", "total", "count", "metric", "epoch_value", "dirty",
    )  # fmt: skip

    def __init__(self) -> None:
        self.step_value: Tensor | None = None
        self.values: list[Tensor] = []
        self.sizes: list[int] = []
        self.total: Tensor | None = None
        self.count = 0
        self.metric: Any = None
        self.epoch_value: Tensor | None = None
        self.dirty = False

    def forked_name(self, on_step: bool) -> str:
        """``name``, or ``name_step`` / ``name_epoch`` when logged both ways (+ the dataloader suffix)."""
        if not self.forked:
            return self.key_name
        name = f"{self.name}_step" if on_step else f"{self.name}_epoch"
        return name if self.dataloader_idx is None else f"{name}/dataloader_idx_{self.dataloader_idx}"

    def fold(self) -> None:
        """Reduce the pending step values into the running total."""
        values = torch.stack(self.values)
        if self.reduce == "mean":
            sizes = torch.tensor(
                self.sizes, dtype=values.dtype if values.is_floating_point() else None, device=values.device
            )
            part = (values * sizes).sum()
            self.count += sum(self.sizes)
        elif self.reduce == "sum":
            part = values.sum()
        elif self.reduce == "max":
            part = values.max()
        else:
            part = values.min()
        if self.total is None:
            self.total = part
        elif self.reduce == "max":
            self.total = torch.maximum(self.total, part)
        elif self.reduce == "min":
            self.total = torch.minimum(self.total, part)
        else:
            self.total = self.total + part
        self.values = []
        self.sizes = []


class _HookScope:
    __slots__ = ("name", "previous", "store")

    def __init__(self, store: ResultStore, name: str) -> None:
        self.store, self.name = store, name

    def __enter__(self) -> None:
        self.previous, self.store.fx = self.store.fx, self.name

    def __exit__(self, *exc: Any) -> None:
        self.store.fx = self.previous


class ResultStore:
    """The values logged during one loop run; see the module docstring."""

    def __init__(
        self,
        training: bool,
        reduce: Callable[..., Tensor] | None = None,
        gather: Callable[..., Any] | None = None,
        world_size: int = 1,
        device: torch.device | None = None,
        enabled: bool = True,
        has_loggers: bool = True,
    ) -> None:
        self.training = training
        #: Whether the Trainer has a logger (``self.log(..., logger=True)`` warns without one).
        self.has_loggers = has_loggers
        self._reduce = reduce
        self._gather = gather
        self._world_size = world_size
        self._device = device or torch.device("cpu")
        self.enabled = enabled
        #: The hook running now (what ``self.log`` is attributed to).
        self.fx: str | None = None
        #: The current batch and its inferred size (reset per batch by the loop).
        self.batch: Any = None
        self.batch_size: int | None = None
        #: Which evaluation dataloader is running, when there are several.
        self.dataloader_idx: int | None = None
        self.epoch_end_reached = False
        self.entries: dict[tuple[str | None, str, int | None], _Entry] = {}
        #: Whether any entry sends step values to the loggers (evaluation logs them every batch).
        self.has_step_logs = False
        self._warned_sync: set[str] = set()
        self._warned_logging_off = False

    def hook(self, name: str) -> _HookScope:
        """``with store.hook(name):`` attributes ``self.log`` calls to hook ``name``, then restores the outer one.

        Hooks nest (``on_before_backward`` inside ``training_step`` in manual optimization), so
        the outer name comes back when the inner hook returns.
        """
        return _HookScope(self, name)

    # ------------------------------------------------------------------------------------ log
    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool,
        logger: bool | None,
        on_step: bool | None,
        on_epoch: bool | None,
        reduce_fx: str | Callable,
        enable_graph: bool,
        sync_dist: bool,
        sync_dist_group: Any,
        add_dataloader_idx: bool,
        batch_size: int | None,
        rank_zero_only: bool,
    ) -> None:
        dataloader_idx = self.dataloader_idx if add_dataloader_idx else None
        key = (self.fx, name, dataloader_idx)
        opts = (prog_bar, logger, on_step, on_epoch, reduce_fx, enable_graph, sync_dist, sync_dist_group,
                rank_zero_only)  # fmt: skip
        entry = self.entries.get(key)
        if entry is None:
            if not self.enabled:
                if not self._warned_logging_off:  # dropped, as in Lightning, with one warning per store
                    self._warned_logging_off = True
                    rank_zero_warn(
                        f"`self.log({name!r}, ...)` is ignored: `Trainer(barebones=True)` turns logging off for raw "
                        "speed."
                    )
                return
            entry = self._register(key, opts, value)
        elif entry.opts != opts:
            raise MisconfigurationException(
                f"`self.log({name!r}, ...)` was called twice in `{self.fx}` with different arguments. "
                "Log each name with the same arguments every time."
            )

        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise invalid_argument(
                    f"self.log({name!r}, value)", value, "a number or a tensor with one element (try value.mean())"
                )
            if not enable_graph:
                value = value.detach()
            if value.dim():
                value = value.reshape(())
        elif entry.metric is not None:
            if value is not entry.metric:
                raise MisconfigurationException(
                    f"`self.log({name!r}, metric)` was called with a different Metric object than before in "
                    f"`{self.fx}`. Log each Metric under its own name."
                )
            if entry.on_step:
                entry.step_value = value._forward_cache
            entry.dirty = True
            return
        elif isinstance(value, numbers.Number):
            value = torch.tensor(value, dtype=torch.get_default_dtype(), device=self._device)
        else:
            raise invalid_argument(
                f"self.log({name!r}, value)",
                value,
                "a number, a one-element tensor or a torchmetrics Metric",
                said=f"`self.log({name}, {value})` was called, but `{type(value).__name__}` values cannot be logged",
            )

        if entry.on_step:
            entry.step_value = self._sync_step(entry, value) if entry.sync else value
        if entry.on_epoch:
            if entry.reduce == "mean":
                if batch_size is None:
                    batch_size = self.batch_size
                    if batch_size is None:
                        batch_size = self.batch_size = _infer_batch_size(self.batch)
                entry.sizes.append(batch_size)
            entry.values.append(value)
            entry.dirty = True
            if len(entry.values) >= _FOLD_EVERY and not entry.custom:
                entry.fold()

    def _register(self, key: tuple[str | None, str, int | None], opts: tuple, value: Any) -> _Entry:
        fx, name, dataloader_idx = key
        prog_bar, logger, on_step, on_epoch, reduce_fx, enable_graph, sync_dist, group, rank_zero_only = opts
        if logger is True and not self.has_loggers:
            rank_zero_warn(
                f"You called `self.log({name!r}, ..., logger=True)` but have no logger configured: the value reaches "
                "the callbacks and the progress bar only. Enable one with `Trainer(logger=...)`."
            )
        if not isinstance(name, str) or not name:
            raise invalid_argument("name", name, "a non-empty string")
        if "/dataloader_idx_" in name:
            raise invalid_argument(
                "name",
                name,
                "a name without '/dataloader_idx_' (fulmen adds it per dataloader)",
                said=f"You called `self.log` with the key `{name}` but it should not contain information about "
                "`dataloader_idx`",
            )
        rules = LOG_RULES.get(fx)  # type: ignore[arg-type]
        if rules is None:
            allowed = sorted(LOG_RULES)
            raise MisconfigurationException(
                f"You can't `self.log()` inside `{fx}`: `self.log({name!r}, ...)` cannot be called there. "
                f"Log from: {allowed}."
            )
        allowed_step, allowed_epoch, default_step, default_epoch = rules
        on_step = default_step if on_step is None else bool(on_step)
        on_epoch = default_epoch if on_epoch is None else bool(on_epoch)
        if not on_step and not on_epoch:
            raise MisconfigurationException(
                f"Logging `{name}` with `on_step=False` and `on_epoch=False` is not useful: the value would reach "
                "neither the loggers nor the callbacks. Set one of them to True."
            )
        if on_step not in allowed_step:
            raise invalid_argument(f"self.log({name!r}, on_step)", on_step, f"{allowed_step} in `{fx}`")
        if on_epoch not in allowed_epoch:
            raise invalid_argument(f"self.log({name!r}, on_epoch)", on_epoch, f"{allowed_epoch} in `{fx}`")
        if isinstance(reduce_fx, str):
            reduce = _REDUCE_NAMES.get(reduce_fx.lower())
            if reduce is None:
                raise invalid_argument("reduce_fx", reduce_fx, "'mean', 'sum', 'max', 'min' or a callable")
        elif callable(reduce_fx):
            try:
                reduce = _REDUCE_CALLABLES.get(reduce_fx, reduce_fx)  # type: ignore[arg-type]
            except TypeError:  # an unhashable callable
                reduce = reduce_fx
        else:
            raise invalid_argument("reduce_fx", reduce_fx, "'mean', 'sum', 'max', 'min' or a callable")

        entry = _Entry()
        entry.name = name
        entry.dataloader_idx = dataloader_idx
        entry.key_name = name if dataloader_idx is None else f"{name}/dataloader_idx_{dataloader_idx}"
        entry.opts = opts
        entry.on_step = on_step
        entry.on_epoch = on_epoch
        entry.forked = on_step and on_epoch
        entry.prog_bar = bool(prog_bar)
        entry.logger = True if logger is None else bool(logger)
        entry.reduce = reduce
        entry.custom = not isinstance(reduce, str)
        entry.sync = bool(sync_dist) and not rank_zero_only and self._world_size > 1
        entry.group = group
        entry.enable_graph = enable_graph
        entry.rank_zero_only = rank_zero_only
        if _is_metric(value):
            entry.metric = value
        self.entries[key] = entry
        if on_step and entry.logger:
            self.has_step_logs = True
        return entry

    def _sync_step(self, entry: _Entry, value: Tensor) -> Tensor:
        if entry.custom:
            return entry.reduce(self._gather_values(entry, value.reshape(1)))
        return self._reduce(value, group=entry.group, reduce_op=entry.reduce)

    def _gather_values(self, entry: _Entry, values: Tensor) -> Tensor:
        gathered = self._gather(values, group=entry.group)
        return torch.cat([g.reshape(-1) for g in gathered]) if isinstance(gathered, list) else gathered.reshape(-1)

    # -------------------------------------------------------------------------------- compute
    def compute_epoch(self) -> None:
        """Compute every epoch value that changed (on every rank: values synced across ranks need it)."""
        for entry in self.entries.values():
            if entry.dirty and entry.on_epoch:
                self._compute(entry)

    def _compute(self, entry: _Entry) -> None:
        entry.dirty = False
        if entry.metric is not None:
            entry.epoch_value = entry.metric.compute()
            return
        if entry.custom:
            if not entry.values:
                return
            values = torch.stack(entry.values)
            if entry.sync:
                values = self._gather_values(entry, values)
            entry.epoch_value = torch.as_tensor(entry.reduce(values))
            return
        if entry.values:
            entry.fold()
        total = entry.total
        if total is None:
            return
        if self._world_size > 1 and not entry.sync and not entry.rank_zero_only:
            self._warn_unsynced(entry.name)
        if entry.reduce == "mean":
            if entry.sync:
                both = self._reduce(
                    torch.stack(
                        [
                            total.to(torch.float64),
                            torch.tensor(float(entry.count), dtype=torch.float64, device=total.device),
                        ]
                    ),
                    group=entry.group,
                    reduce_op="sum",
                )
                dtype = total.dtype if total.is_floating_point() else torch.get_default_dtype()
                entry.epoch_value = (both[0] / both[1]).to(dtype)
            else:
                entry.epoch_value = total / entry.count
        else:
            entry.epoch_value = self._reduce(total, group=entry.group, reduce_op=entry.reduce) if entry.sync else total

    def _warn_unsynced(self, name: str) -> None:
        if name not in self._warned_sync:
            self._warned_sync.add(name)
            rank_zero_warn(
                f"`self.log({name!r}, ..., on_epoch=True)` in a run with several processes reduces over this "
                f"process's values only. Pass `sync_dist=True` to reduce across processes."
            )

    # ---------------------------------------------------------------------------------- views
    def views(self) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """``(callback, log, progress bar)`` metrics: step values during a loop, epoch values after it."""
        on_step = not self.epoch_end_reached
        callback: dict[str, Tensor] = {}
        log: dict[str, Tensor] = {}
        pbar: dict[str, Tensor] = {}
        for entry in self.entries.values():
            value = self._value(entry, on_step)
            if value is None:
                continue
            name, forked = entry.key_name, entry.forked_name(on_step)
            if entry.logger:
                log[forked] = value
            if self.training or not on_step:
                callback[name] = value
                callback[forked] = value
            if entry.prog_bar:
                pbar[forked] = value
        return callback, log, pbar

    def _value(self, entry: _Entry, on_step: bool) -> Tensor | None:
        if on_step:
            return entry.step_value if entry.on_step else None
        if not entry.on_epoch:
            return None
        if entry.dirty:
            self._compute(entry)
        return entry.epoch_value

    def step_log_view(self) -> dict[str, Tensor]:
        """The step values that go to the loggers (cheaper than ``views`` on the hot path): while
        one evaluation dataloader runs, another dataloader's values are not sent again."""
        current = self.dataloader_idx
        return {
            e.forked_name(True): e.step_value
            for e in self.entries.values()
            if e.on_step
            and e.logger
            and e.step_value is not None
            and (current is None or e.dataloader_idx is None or e.dataloader_idx == current)
        }

    def epoch_logs_per_dataloader(self, count: int) -> list[dict[str, Tensor]]:
        """The logged epoch values of each of ``count`` dataloaders (values logged outside any
        dataloader's loop, e.g. in ``on_validation_epoch_end``, belong to all of them)."""
        per_loader: list[dict[str, Tensor]] = [{} for _ in range(count)]
        for entry in self.entries.values():
            value = self._value(entry, on_step=False) if entry.logger else None
            if value is None:
                continue
            targets = (
                per_loader
                if entry.dataloader_idx is None
                else per_loader[entry.dataloader_idx : entry.dataloader_idx + 1]
            )
            for target in targets:
                target[entry.forked_name(False)] = value
        return per_loader

    # ---------------------------------------------------------------------------------- reset
    def reset(self) -> None:
        """Forget every value; torchmetrics objects are reset too."""
        for entry in self.entries.values():
            if entry.metric is not None:
                entry.metric.reset()
        self.entries = {}
        self.has_step_logs = False
        self.epoch_end_reached = False
        self.batch = None
        self.batch_size = None


def _infer_batch_size(batch: Any) -> int:
    """The batch size ``self.log`` weighs epoch means with (1 when there is no batch)."""
    return 1 if batch is None else extract_batch_size(batch)


def to_scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Tensors to Python numbers (one device sync per value)."""
    return {k: v.item() if isinstance(v, Tensor) else v for k, v in metrics.items()}
