"""``Run``: everything that lives only during one ``fit``/``validate``/``test``/``predict`` call.

The Trainer holds configuration and the entry points; each call creates a ``Run`` that owns the
module and its wrapped form, the optimizers and their wrappers, the schedulers, the hook
dispatcher, the result stores, the loaders, the resume position and the signal watch. The
loops (:mod:`fulmen.trainer.loops`) are functions of it. The module reaches it only through
:class:`fulmen.module.run_link.RunLink` (``results``, ``optimizers``, ``backward``, ...).
The progress counters live in ``trainer.state``, which outlives a call (``trainer.current_epoch``
after ``fit``), and the run holds it as ``run.state``.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen.module import LightningModule
from fulmen.module.optimizer import LightningOptimizer, LRSchedulerConfig, MockOptimizer
from fulmen.strategies import WrappedModule
from fulmen.trainer.dispatch import Hooks
from fulmen.trainer.results import ResultStore
from fulmen.trainer.signals import SignalWatch
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.stages import TrainerFn

if TYPE_CHECKING:
    from fulmen.datamodule import LightningDataModule
    from fulmen.trainer.configuration import TrainerConfig
    from fulmen.trainer.loops.resume import ResumePoint
    from fulmen.trainer.trainer import Trainer


class Run:
    def __init__(
        self,
        trainer: Trainer,
        fn: TrainerFn,
        module: LightningModule,
        datamodule: LightningDataModule | None,
        sources: dict[str, Any],
        *,
        ckpt_path: str | None = None,
        weights_only: bool | None = None,
        return_predictions: bool = True,
        config: TrainerConfig | None = None,
    ) -> None:
        self.trainer = trainer
        #: The Trainer's flags; a tuning trial runs with its own copy (``trainer.trial``).
        self.config = trainer.config if config is None else config
        self.strategy = trainer.strategy
        self.state = trainer.state
        self.metrics = trainer.metrics
        self.fn = fn
        self.module = module
        self.datamodule = datamodule
        #: The dataloaders passed to the entry point, by key ("train", "val", "test", "predict").
        self.sources = sources
        #: The checkpoint to resume from, as asked; the file it resolved to once ``execute`` has looked.
        self.ckpt_path = ckpt_path
        #: ``weights_only`` for loading ``ckpt_path`` (None: fulmen's safe default).
        self.weights_only = weights_only
        self.return_predictions = return_predictions

        # Written by ``trainer.setup`` only: the model as set up for this call, its optimizers, hooks.
        self.model: nn.Module = module
        #: What the strategy wrapped so that ``training_step`` runs through the wrapper (DDP).
        self.router: StepRouter | None = None
        self.optimizers: list[Optimizer] = []
        self.lightning_optimizers: list[LightningOptimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        #: No autocast or strategy context to enter around each step (the 32-bit default).
        self.plain_forward = False
        self.step_with_closure = False

        self.hooks: Hooks | None = None
        self._step_arity: dict[str, int] = {}
        #: The store ``self.log`` writes to now (``log_into``); the training epoch's store while fitting.
        self.results: ResultStore | None = None
        self.train_results: ResultStore | None = None

        # Written by ``trainer.loaders`` only: the loaders and how many batches each gives.
        self.train_dataloader: Any = None
        self.val_dataloaders: list[Any] | None = None
        self.test_dataloaders: list[Any] | None = None
        self.predict_dataloaders: list[Any] | None = None
        self.num_training_batches: int | float = math.inf
        self.num_val_batches: list[int | float] = []
        self.num_test_batches: list[int | float] = []
        self.num_predict_batches: list[int | float] = []
        self.num_sanity_val_batches: list[int | float] = []
        self.val_check_batch: int | float = math.inf
        self.last_reload = {"train": 0, "val": 0}

        #: The generators when this epoch drew its data order (saved in checkpoints); ``loops.fit`` writes it.
        self.epoch_start_rng: dict[str, Any] | None = None
        #: Where a restored checkpoint left off (set by ``trainer.checkpoint_state``, consumed by ``loops.resume``).
        self.resume_point: ResumePoint | None = None

        # Written by ``trainer.signals`` only: the watch, the signal acted on, and the stop it asked for.
        self.signals: SignalWatch | None = None
        self.received_signal: int | None = None
        #: A signal asked to stop: min_epochs/min_steps do not hold it back.
        self.stop_now = False

        #: Whether the training batch running now is the epoch's last (``trainer.is_last_batch``); ``loops.fit``.
        self.is_last_batch = False
        #: Batches done in the evaluation running now (``trainer.validate_loop.batch_progress``); ``loops.evaluation``.
        self.eval_batches = 0
        #: Evaluation batches run so far per dataloader (the step of evaluation-step logs); ``loops.evaluation``.
        self.eval_seen_batches: dict[int, int] = {}

    # ------------------------------------------------------------------------------ RunLink
    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """``on_before_backward``, backward through the strategy, ``on_after_backward``.

        A module that overrides ``backward`` has it called by the strategy in place of
        ``loss.backward()``, so precision scaling and engine work still happen around it.
        """
        hooks = self.hooks
        if hooks.active["on_before_backward"]:
            hooks.call("on_before_backward", loss)
        module_backward = hooks.module["backward"]
        if module_backward is None:
            self.strategy.backward(loss, self.model, *args, **kwargs)
        else:
            with self.results.hook("backward"):
                self.strategy.backward(loss, self.model, *args, backward_fn=module_backward, **kwargs)
        if hooks.active["on_after_backward"]:
            hooks.call("on_after_backward")

    def clip_gradients(self, optimizer: Any, value: float | None, algorithm: str | None) -> None:
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer.optimizer
        config = self.config
        if value is None:
            value = config.gradient_clip_val or 0.0
        elif config.gradient_clip_val is not None and config.gradient_clip_val != value:
            raise MisconfigurationException(
                f"You have set `Trainer(gradient_clip_val={config.gradient_clip_val})` and have passed "
                f"`clip_gradients(gradient_clip_val={value})`: they disagree; set one of them."
            )
        if algorithm is None:
            algorithm = config.gradient_clip_algorithm or "norm"
        elif config.gradient_clip_algorithm is not None and config.gradient_clip_algorithm != algorithm:
            raise MisconfigurationException(
                f"You have set `Trainer(gradient_clip_algorithm={config.gradient_clip_algorithm!r})` and have passed "
                f"`clip_gradients(gradient_clip_algorithm={algorithm!r})`: they disagree; set one of them."
            )
        if not value:
            return
        if algorithm == "norm":
            self.strategy.clip_gradients_norm(self.model, optimizer, value)
        elif algorithm == "value":
            self.strategy.clip_gradients_value(self.model, optimizer, value)
        else:
            raise invalid_argument("gradient_clip_algorithm", algorithm, ("norm", "value"))

    # -------------------------------------------------------------------------------- steps
    def step(self, name: str, *args: Any) -> Any:
        """``validation_step`` / ``test_step`` / ``predict_step`` under the strategy's forward context."""
        self.results.fx = name
        step = getattr(self.module, name)
        arity = self._step_arity.get(name)
        if arity is None:
            arity = self._step_arity[name] = positional_arity(step)
        if arity < len(args):  # ``validation_step(self, batch)``: pass what it takes, as Lightning does
            args = args[:arity]
        if self.router is not None and self.model is self.router:
            # The strategy sharded the router in place (FSDP): its parameters gather only inside
            # the router's forward, so evaluation steps go through it too.
            step = functools.partial(self.model, _fulmen_step=name)
        if self.plain_forward:
            return step(*args)
        with self.strategy.forward_context():
            return step(*args)

    def log_into(self, store: ResultStore | None) -> ResultStore | None:
        """Direct ``self.log`` to ``store``; returns the store it wrote to before (to direct it back)."""
        previous, self.results = self.results, store
        return previous

    def start_training_logs(self) -> None:
        """The training store of this fit: ``self.log`` in training hooks writes to it from now on."""
        self.results = self.train_results = self.new_store(training=True)

    def end_logs(self) -> None:
        self.results = self.train_results = None

    def new_store(self, training: bool) -> ResultStore:
        strategy = self.strategy
        return ResultStore(
            training=training,
            reduce=strategy.all_reduce,
            gather=strategy.all_gather,
            world_size=strategy.world_size,
            device=strategy.root_device,
            enabled=not self.config.barebones,
            has_loggers=bool(self.trainer.loggers),
        )

    def trial(self, callbacks: list[Any], max_steps: int) -> None:
        """For ``fulmen.tuner`` (its ``TrialRunner`` protocol): a few training steps inside this
        running fit, on a child run of its own (see ``trainer.trial``)."""
        from fulmen.trainer.trial import run_trial

        run_trial(self, callbacks, max_steps)

    def real_optimizers(self) -> list[Optimizer]:
        """The optimizers that hold state (not the stand-in used when none is configured)."""
        return [opt for opt in self.optimizers if not isinstance(opt, MockOptimizer)]


def positional_arity(fn: Any) -> int:
    """How many positional arguments ``fn`` takes (a large number for ``*args``)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1 << 30
    count = 0
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return 1 << 30
        if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


class StepRouter(WrappedModule):
    """What the strategy wraps (DDP, FSDP) so that ``training_step`` (or, for a wrapper applied in
    place, any step named by ``_fulmen_step``) runs through the wrapper's forward."""

    def __init__(self, module: LightningModule) -> None:
        super().__init__()
        self.module = module
        self.__dict__["inner"] = module

    def forward(self, *args: Any, _fulmen_step: str = "training_step", **kwargs: Any) -> Any:
        return getattr(self.module, _fulmen_step)(*args, **kwargs)
