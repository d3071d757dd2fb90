"""Getting a run ready in this process: data preparation, setup hooks, the model and its optimizers.

Called by :func:`fulmen.trainer.execution.execute` in the documented hook order (see
:mod:`fulmen.trainer.dispatch`), before the loops start. This module is the one writer of what
setup produces on a run (``hooks``, ``model``, ``router``, ``optimizers``,
``lightning_optimizers``, ``lr_scheduler_configs``, ``plain_forward``, ``step_with_closure``);
the loops only read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor
from torch.optim import Optimizer

from fulmen.module import LightningModule
from fulmen.module.optimizer import (
    LightningOptimizer,
    LRSchedulerConfig,
    MockOptimizer,
    needs_closure,
    parse_optimizers_config,
    scheduler_configs,
    steps_around_closure,
)
from fulmen.strategies import Strategy, rebind_scheduler, unwrap_optimizer
from fulmen.strategies.precision import Precision
from fulmen.trainer.dispatch import Hooks
from fulmen.trainer.run import StepRouter
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.overrides import is_overridden
from fulmen.utilities.rank_zero import rank_zero_warn
from fulmen.utilities.stages import TrainerFn

if TYPE_CHECKING:
    from fulmen.callbacks.callback import Callback
    from fulmen.trainer.run import Run

_REQUIRED_STEP = {
    TrainerFn.FITTING: "training_step",
    TrainerFn.VALIDATING: "validation_step",
    TrainerFn.TESTING: "test_step",
}


def attach_hooks(run: Run, callbacks: Sequence[Callback]) -> Hooks:
    """The hook dispatcher of this run: the module's hooks, ``callbacks``' and the datamodule's."""
    run.hooks = Hooks(run.trainer, run.module, list(callbacks), run.datamodule, run=run)
    return run.hooks


def adopt_model(trial: Run, parent: Run) -> None:
    """A tuning trial trains the running fit's model and optimizers, without its LR schedulers."""
    trial.model, trial.router = parent.model, parent.router
    trial.optimizers, trial.lightning_optimizers = parent.optimizers, parent.lightning_optimizers
    trial.lr_scheduler_configs = []
    trial.plain_forward, trial.step_with_closure = parent.plain_forward, parent.step_with_closure


def replace_optimizers(run: Run, optimizers: Sequence[Optimizer]) -> None:
    """``trainer.optimizers = [...]`` during a call: the module's ``self.optimizers()`` hands out the new ones."""
    run.optimizers = list(optimizers)
    run.lightning_optimizers = lightning_optimizers(run)


def _follow_rebuilt_optimizers(run: Run, before: Sequence[Optimizer]) -> None:
    """A sharding engine (FSDP) rebuilt the optimizers over its shards: the LR schedulers from
    ``configure_optimizers`` follow them (a rebuild keeps the class; DeepSpeed's own optimizer wraps instead)."""
    for old, new in zip(before, run.optimizers):
        new = unwrap_optimizer(new)
        if new is not old and type(new) is type(old):
            for config in run.lr_scheduler_configs:
                rebind_scheduler(config.scheduler, old, new)


def check_loop_configuration(run: Run) -> None:
    module, fn, config = run.module, run.fn, run.config
    required = _REQUIRED_STEP.get(fn)
    if required is not None and not is_overridden(module, LightningModule, required):
        raise MisconfigurationException(
            f"`Trainer.{fn.value}` needs `{required}` in {type(module).__name__}; it is not implemented."
        )
    if fn != TrainerFn.FITTING:
        return
    if "val" in run.sources and not is_overridden(module, LightningModule, "validation_step"):
        rank_zero_warn("`val_dataloaders` were given, but the module has no `validation_step`: no validation.")
    if not is_overridden(module, LightningModule, "configure_optimizers"):
        raise MisconfigurationException(
            f"`Trainer.fit` needs `configure_optimizers` in {type(module).__name__}; it is not implemented."
        )
    if not module.automatic_optimization:
        if config.accumulate_grad_batches != 1:
            raise MisconfigurationException(
                f"`accumulate_grad_batches={config.accumulate_grad_batches}` works with automatic optimization "
                "only. With `automatic_optimization = False`, accumulate in `training_step` yourself."
            )
        if config.gradient_clip_val:
            raise MisconfigurationException(
                f"`gradient_clip_val={config.gradient_clip_val}` works with automatic optimization only. With "
                "`automatic_optimization = False`, call `self.clip_gradients(optimizer, ...)` before `step()`."
            )


def prepare_data(run: Run) -> None:
    """``prepare_data`` on local rank 0 of each node (or global rank 0 only); the other ranks wait."""
    strategy = run.strategy
    local_zero = strategy.local_rank == 0
    global_zero = local_zero and strategy.node_rank == 0
    dm = run.datamodule
    if dm is not None and (local_zero if dm.prepare_data_per_node else global_zero):
        run.hooks.call_datamodule("prepare_data")
    if local_zero if run.module.prepare_data_per_node else global_zero:
        run.hooks.call_module("prepare_data")
    strategy.barrier("prepare_data")


def setup_hooks(run: Run) -> None:
    """``setup(stage)`` for datamodule, callbacks and module, then ``configure_model`` on the device."""
    hooks, strategy, stage = run.hooks, run.strategy, run.fn.value
    root = strategy.root_device
    for submodule in run.module.modules():
        if isinstance(submodule, LightningModule):
            submodule.__dict__["_device"] = root
    for logger in run.trainer.loggers:  # create folders and writers before any hook may need them
        _ = getattr(logger, "experiment", None)
    strategy.barrier("pre_setup")
    hooks.call_datamodule("setup", stage=stage)  # by keyword, as Lightning calls it
    hooks.call_callbacks("setup", stage=stage)
    hooks.call_module("setup", stage=stage)
    strategy.barrier("post_setup")
    # The legacy configure_sharded_model runs only where a class overrides it (a wrapper that only
    # records calls does not count), as in Lightning.
    legacy = is_overridden(run.module, LightningModule, "configure_sharded_model", see_through_wrappers=True)
    if hooks.module["configure_model"] is not None or legacy:
        with strategy.module_init_context():
            hooks.call_module("configure_model")
            if legacy:
                hooks.call_module("configure_sharded_model")


def setup_model(run: Run) -> None:
    """Convert and place the module; for fit, set up the optimizers and wrap the module with them."""
    strategy, module = run.strategy, run.module
    strategy.convert_module(module)
    if run.fn == TrainerFn.FITTING and (run.config.sync_batchnorm or strategy.layer_sync is not None):
        strategy.convert_sync_batchnorm(module)
    strategy.module_to_device(module)
    if run.fn != TrainerFn.FITTING:
        run.model = strategy.setup_module_for_evaluation(module)
        if isinstance(run.model, StepRouter) and run.model.module is module:
            run.router = run.model  # sharded in place by an earlier fit (FSDP): steps run through it
        return
    optimizers, run.lr_scheduler_configs = _configure_optimizers(run)
    config = run.config
    strategy.configure_training(
        config.accumulate_grad_batches, config.gradient_clip_val, config.gradient_clip_algorithm
    )
    router = StepRouter(module)
    wrapped, run.optimizers = strategy.setup_module_and_optimizers(router, optimizers)
    _follow_rebuilt_optimizers(run, optimizers)
    # A strategy may wrap in place (FSDP's fully_shard swaps the class): its hooks run on forward too.
    if wrapped is not router or type(wrapped) is not StepRouter:
        # A module sharded by an earlier fit comes back as the router that fit sharded.
        run.model, run.router = wrapped, wrapped if isinstance(wrapped, StepRouter) else router
    run.lightning_optimizers = lightning_optimizers(run)
    # The 32-bit default opens no autocast: skip entering an empty context on every step.
    run.plain_forward = type(strategy).forward_context is Strategy.forward_context and (
        type(strategy.precision).forward_context is Precision.forward_context
    )
    optimizer = run.optimizers[0]
    run.step_with_closure = run.hooks.module["optimizer_step"] is not None or (
        module.automatic_optimization and (needs_closure(optimizer) or steps_around_closure(optimizer))
    )


def _configure_optimizers(run: Run) -> tuple[list[Optimizer], list[LRSchedulerConfig]]:
    module = run.module
    output = run.hooks.call_module("configure_optimizers", always=True)
    if output is None:
        rank_zero_warn("`configure_optimizers` returned None: training runs without an optimizer.")
        return [MockOptimizer()], []
    optimizers, schedulers, monitor = parse_optimizers_config(output)
    if module.automatic_optimization and len(optimizers) > 1:
        raise MisconfigurationException(
            f"`configure_optimizers` returned {len(optimizers)} optimizers. Several optimizers need manual "
            "optimization: set `self.automatic_optimization = False` and step them in `training_step` "
            "(`opt_a, opt_b = self.optimizers()`)."
        )
    return optimizers, scheduler_configs(schedulers, monitor, module.automatic_optimization)


def lightning_optimizers(run: Run) -> list[LightningOptimizer]:
    """The optimizers as ``self.optimizers()`` hands them out: stepping through the strategy, counted."""
    state, module, config = run.state, run.module, run.config
    manual = not module.automatic_optimization
    strategy = run.strategy

    def count_step() -> None:
        if strategy.last_step_committed:  # fault_tolerant: a step the replica groups did not commit
            state.global_step += 1

    def after_closure(optimizer: LightningOptimizer) -> None:
        hooks = run.hooks
        if hooks.any("on_before_optimizer_step"):
            hooks.call("on_before_optimizer_step", optimizer)
        if hooks.module["configure_gradient_clipping"] is not None:
            hooks.call_module(
                "configure_gradient_clipping", optimizer, config.gradient_clip_val, config.gradient_clip_algorithm
            )

    return [
        LightningOptimizer(
            optimizer,
            strategy=run.strategy,
            module=module,
            on_after_step=count_step,
            after_closure=after_closure if manual else None,
        )
        for optimizer in run.optimizers
    ]


def log_hyperparams(run: Run) -> None:
    loggers = run.trainer.loggers
    if not loggers:
        return
    module, dm = run.module, run.datamodule
    module_hp = module._log_hyperparams_enabled
    dm_hp = dm is not None and dm._log_hyperparams_enabled
    hparams: Any = None
    if module_hp and dm_hp:
        module_params, dm_params = module.hparams_initial, dm.hparams_initial
        clashes = [
            key for key in module_params.keys() & dm_params.keys()
            if type(module_params[key]) is not type(dm_params[key]) or _differs(module_params[key], dm_params[key])
        ]  # fmt: skip
        if clashes:
            raise MisconfigurationException(
                f"The LightningModule and the LightningDataModule both save the hyperparameters {sorted(clashes)} "
                "with different values. Rename one of them, or leave it out with `ignore=`."
            )
        hparams = {**module_params, **dm_params}
    elif module_hp:
        hparams = module.hparams_initial
    elif dm_hp:
        hparams = dm.hparams_initial
    for logger in loggers:
        if hparams is not None:
            logger.log_hyperparams(hparams)
        logger.log_graph(module)
        logger.save()


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor):
        return a is not b
    try:
        return bool(a != b)
    except Exception:
        return a is not b
