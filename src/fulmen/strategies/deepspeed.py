"""``strategy="deepspeed"``: DeepSpeed's ZeRO engine (stages 1-3, CPU/NVMe offload), for the Trainer and Lite.

ZeRO shards what data parallelism replicates: stage 1 the optimizer state, stage 2 also the
gradients, stage 3 also the parameters (gathered layer by layer during forward and backward).
Offload moves the optimizer state (and at stage 3 the parameters) to CPU memory or NVMe.

Everything DeepSpeed does differently lives in this class's ``Strategy`` methods: one
``deepspeed.initialize`` for model and optimizer together, ``engine.backward``, ``engine.step``,
accumulation (the engine's gradient-accumulation boundary), clipping (inside the engine's
step), sharded checkpoints (a directory, see :mod:`fulmen.checkpointing.sharded_dir`) and
partitioned construction under ZeRO-3 (``init_module``). The front ends run their usual loop.

The ``deepspeed`` package is imported on first use, never by ``import fulmen``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen.checkpointing import sharded_dir
from fulmen.checkpointing.zero_format import consolidated_state_dict
from fulmen.strategies import deepspeed_config as cfg
from fulmen.strategies.accelerators import Accelerator
from fulmen.strategies.ddp import DDPStrategy
from fulmen.strategies.deepspeed_checkpointing import DeepSpeedCheckpointing, _is_partitioned, make_checkpoint_engine
from fulmen.strategies.environments import ClusterEnvironment
from fulmen.strategies.precision import Precision
from fulmen.strategies.precision.precision import _cast_inputs, _cast_to_default, _default_dtype
from fulmen.strategies.wrapped import unwrap_optimizer, wrapper_inner
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.rank_zero import rank_zero_warn

PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed")
_HALF = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16}


class DeepSpeedPrecision(Precision):
    """bf16 / fp16 the DeepSpeed way: the engine holds the model in half precision and keeps fp32
    master weights in its optimizer; inputs are cast to the model's dtype on the way in."""

    def __init__(self, precision: str) -> None:
        if precision not in _HALF:
            raise invalid_argument("precision", precision, tuple(_HALF))
        self.precision = precision
        self.param_dtype = _HALF[precision]

    def tensor_init_context(self) -> contextlib.AbstractContextManager:
        # "-true": build the model in half precision at once; "-mixed": in fp32, cast by the engine.
        return _default_dtype(self.param_dtype) if self.precision.endswith("-true") else contextlib.nullcontext()

    def forward_context(self) -> contextlib.AbstractContextManager:
        return _default_dtype(self.param_dtype)

    def convert_input(self, data: Any) -> Any:
        return _cast_inputs(data, self.param_dtype)

    def convert_output(self, data: Any) -> Any:
        return _cast_to_default(data)


class DeepSpeedStrategy(DeepSpeedCheckpointing, DDPStrategy):
    """DeepSpeed ZeRO as a fulmen strategy. One process per device; ranks start as with ``strategy="ddp"``.

    ``stage`` (0-3, default 2), ``offload_optimizer``, ``offload_parameters`` (stage 3) and the
    other arguments build the DeepSpeed config; ``config`` (a dict or the path of a JSON file;
    also ``$FULMEN_DEEPSPEED_CONFIG_PATH``) replaces them, and an argument given explicitly that
    disagrees with it is an error. The Trainer's ``accumulate_grad_batches``,
    ``gradient_clip_val`` and ``precision`` are written into the config (a clash with a value the
    config sets is an error naming both). Gradient clipping is off unless one of them sets it.

    ``logging_batch_size_per_gpu`` only feeds DeepSpeed's throughput logs (1 unless given or set in
    the config). ``load_full_weights`` is accepted as in Lightning; fulmen loads a single-file
    checkpoint (full weights) into any stage, ZeRO-3 included, whatever its value.

    Checkpoints are directories, one shard per rank written in parallel, published at once
    (:mod:`fulmen.checkpointing.sharded_dir`). ``sync_files=False`` skips the fsync of the shards:
    a crashed process still never leaves a torn checkpoint, but a power cut right after a save
    might.
    """

    supports_no_backward_sync = True

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        zero_optimization: bool = True,
        stage: int | None = None,
        remote_device: str | None = None,
        offload_optimizer: bool | None = None,
        offload_parameters: bool | None = None,
        offload_params_device: str = "cpu",
        nvme_path: str = "/local_nvme",
        params_buffer_count: int = 5,
        params_buffer_size: int = 100_000_000,
        max_in_cpu: int = 1_000_000_000,
        offload_optimizer_device: str = "cpu",
        optimizer_buffer_count: int = 4,
        block_size: int = 1048576,
        queue_depth: int = 8,
        single_submit: bool = False,
        overlap_events: bool = True,
        thread_count: int = 1,
        pin_memory: bool = False,
        sub_group_size: int = 1_000_000_000_000,
        contiguous_gradients: bool = True,
        overlap_comm: bool = True,
        allgather_partitions: bool = True,
        reduce_scatter: bool = True,
        allgather_bucket_size: int = 200_000_000,
        reduce_bucket_size: int = 200_000_000,
        zero_allow_untested_optimizer: bool = True,
        logging_batch_size_per_gpu: str | int = "auto",
        config: dict[str, Any] | str | os.PathLike | None = None,
        logging_level: int = logging.WARN,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        loss_scale: float = 0,
        initial_scale_power: int = 16,
        loss_scale_window: int = 1000,
        hysteresis: int = 2,
        min_loss_scale: int = 1,
        partition_activations: bool = False,
        cpu_checkpointing: bool = False,
        contiguous_memory_optimization: bool = False,
        synchronize_checkpoint_boundary: bool = False,
        load_full_weights: bool = False,
        precision: Precision | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta | float | None = None,
        exclude_frozen_parameters: bool = False,
        sync_files: bool = True,
        num_nodes: int = 1,
    ) -> None:
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            precision=precision,
            process_group_backend=process_group_backend,
            timeout=timeout,
            start_method="popen",
            num_nodes=num_nodes,
        )
        if stage is not None and stage not in (0, 1, 2, 3):
            raise invalid_argument("stage", stage, (0, 1, 2, 3))
        for name, device in (("offload_optimizer_device", offload_optimizer_device),
                             ("offload_params_device", offload_params_device)):  # fmt: skip
            if device not in cfg.OFFLOAD_DEVICES:
                raise invalid_argument(name, device, cfg.OFFLOAD_DEVICES)
        if logging_batch_size_per_gpu != "auto" and not (
            isinstance(logging_batch_size_per_gpu, int) and logging_batch_size_per_gpu > 0
        ):
            raise invalid_argument("logging_batch_size_per_gpu", logging_batch_size_per_gpu, "'auto' or a positive int")
        user_config = cfg.read_config(config)
        if user_config is None:
            chosen_stage = (2 if stage is None else stage) if zero_optimization else 0
            self.config = cfg.default_config(
                stage=chosen_stage,
                offload_optimizer=bool(offload_optimizer),
                offload_parameters=bool(offload_parameters),
                offload_optimizer_device=offload_optimizer_device,
                offload_params_device=offload_params_device,
                nvme_path=nvme_path,
                pin_memory=pin_memory,
                zero_options={
                    "contiguous_gradients": contiguous_gradients,
                    "overlap_comm": overlap_comm,
                    "allgather_partitions": allgather_partitions,
                    "reduce_scatter": reduce_scatter,
                    "allgather_bucket_size": allgather_bucket_size,
                    "reduce_bucket_size": reduce_bucket_size,
                    "sub_group_size": sub_group_size,
                },
                offload_options={
                    "optimizer_buffer_count": optimizer_buffer_count,
                    "params_buffer_count": params_buffer_count,
                    "params_buffer_size": params_buffer_size,
                    "max_in_cpu": max_in_cpu,
                },
                activation_checkpointing={
                    "partition_activations": partition_activations,
                    "cpu_checkpointing": cpu_checkpointing,
                    "contiguous_memory_optimization": contiguous_memory_optimization,
                    "synchronize_checkpoint_boundary": synchronize_checkpoint_boundary,
                },
                aio={
                    "block_size": block_size,
                    "queue_depth": queue_depth,
                    "single_submit": single_submit,
                    "overlap_events": overlap_events,
                    "thread_count": thread_count,
                },
                zero_allow_untested_optimizer=zero_allow_untested_optimizer,
            )
        else:
            self.config = user_config
            _check_against_config(user_config, stage, offload_optimizer, offload_parameters)
        if logging_batch_size_per_gpu != "auto":
            self.config.setdefault("train_micro_batch_size_per_gpu", logging_batch_size_per_gpu)
        if cfg.offloads_parameters(self.config) and self.zero_stage != 3:
            raise MisconfigurationException(
                f"`offload_parameters=True` needs ZeRO stage 3 (parameters are sharded only there); the stage is "
                f"{self.zero_stage}. Use stage=3, or offload_optimizer=True alone."
            )
        if cfg.offloads_optimizer(self.config) and self.zero_stage == 0:
            raise MisconfigurationException("`offload_optimizer=True` needs a ZeRO stage of 1, 2 or 3; the stage is 0.")
        self.remote_device = remote_device
        self.logging_level = logging_level
        self.load_full_weights = load_full_weights
        self.exclude_frozen_parameters = exclude_frozen_parameters
        self.sync_files = sync_files
        self.loss_scaling = {
            "loss_scale": loss_scale,
            "initial_scale_power": initial_scale_power,
            "loss_scale_window": loss_scale_window,
            "hysteresis": hysteresis,
            "min_loss_scale": min_loss_scale,
        }
        #: Set by the Trainer (``configure_training``); None: Lite, where the config decides.
        self._accumulate_grad_batches: int | None = None
        self._gradient_clip_val: float | None = None
        self._gradient_clip_algorithm: str | None = None
        self._engine: Any = None
        self._inference_engines: list[Any] = []
        self._engine_config: dict[str, Any] | None = None
        self._owns_boundary = True
        self._warned_backward_fn = False

    # ------------------------------------------------------------------------------ config
    @property
    def zero_stage(self) -> int:
        return cfg.zero_stage(self.config)

    @property
    def zero_stage_3(self) -> bool:
        return self.zero_stage == 3

    def precision_for(self, name: str) -> Precision:
        """The precision plugin for ``precision=name``, agreeing with the config's bf16/fp16 section."""
        if name not in PRECISIONS:
            raise MisconfigurationException(
                f"`precision={name!r}` is not supported with DeepSpeedStrategy. Accepted: {PRECISIONS} "
                "('16-mixed' on CUDA only)."
            )
        own = cfg.config_precision(self.config)
        if own is not None and name == "32-true":
            name = "bf16-mixed" if own == "bf16" else "16-mixed"  # 32-true is the default: the config decides
        elif own is not None and (own == "bf16") != name.startswith("bf16"):
            raise MisconfigurationException(
                f"`precision={name!r}` and the DeepSpeed config's `{own}` section disagree. Set one of them."
            )
        device = self.accelerator.name if self.accelerator is not None else "cpu"
        if name == "16-mixed" and device != "cuda":
            raise MisconfigurationException(
                f"`precision='16-mixed'` with DeepSpeed needs CUDA: DeepSpeed's fp16 loss scaling does not run on "
                f"accelerator={device!r}. Use precision='bf16-mixed' (or '32-true') there."
            )
        return Precision() if name == "32-true" else DeepSpeedPrecision(name)

    def configure_training(
        self,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Any = None,
    ) -> None:
        """Take the Trainer's accumulation and clipping into the config; a clash with it fails here."""
        self._accumulate_grad_batches = accumulate_grad_batches if isinstance(accumulate_grad_batches, int) else None
        self._gradient_clip_val = gradient_clip_val
        self._gradient_clip_algorithm = getattr(gradient_clip_algorithm, "value", gradient_clip_algorithm)
        cfg.with_training_flags(
            self.config, self._accumulate_grad_batches, self._gradient_clip_val, self._gradient_clip_algorithm
        )

    def _full_config(self) -> dict[str, Any]:
        """The config handed to ``deepspeed.initialize``: the user's/arguments' plus precision and flags."""
        precision = self.precision
        if type(precision) is not Precision and not isinstance(precision, DeepSpeedPrecision):
            raise MisconfigurationException(
                f"DeepSpeedStrategy handles precision in its engine; {type(precision).__name__} cannot be used with "
                f"it. Pass `precision=` one of {PRECISIONS} instead of a precision plugin."
            )
        config = cfg.with_precision(self.config, precision.precision, self.loss_scaling)
        config = cfg.with_training_flags(
            config, self._accumulate_grad_batches, self._gradient_clip_val, self._gradient_clip_algorithm
        )
        if cfg.offloads_optimizer(config):
            # A torch optimizer works with offload; DeepSpeed's CPU Adam would need a C++ build first.
            config.setdefault("zero_force_ds_cpu_optimizer", False)
        return config

    # ------------------------------------------------------------------------------- setup
    def _deepspeed(self) -> Any:
        """The deepspeed package, imported for this process's device (``DS_ACCELERATOR``)."""
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if self.root_device.type == "cuda" else "cpu")
        try:
            import deepspeed
        except ImportError as err:
            raise ModuleNotFoundError(
                "DeepSpeedStrategy needs the `deepspeed` package: `pip install fulmen[deepspeed]` "
                "(or `pip install deepspeed`)."
            ) from err
        from deepspeed.utils import logger

        logger.setLevel(self.logging_level)
        return deepspeed

    def _join_job(self) -> None:
        """Start the other ranks and join the process group now (partitioned construction needs it)."""
        if dist.is_initialized():
            return
        if self.launcher is not None:
            self.launcher.launch_in_background()
        self.setup_environment()

    def module_init_context(self, empty_init: bool | None = None) -> contextlib.AbstractContextManager:
        """Under ZeRO-3 each layer's parameters are partitioned as soon as it is built: no rank ever
        holds the whole model. Other stages build it as every strategy does."""
        if not self.zero_stage_3:
            return super().module_init_context(empty_init)
        self._join_job()
        deepspeed = self._deepspeed()
        stack = contextlib.ExitStack()
        stack.enter_context(self.precision.module_init_context())
        stack.enter_context(
            deepspeed.zero.Init(
                remote_device=self.remote_device,
                pin_memory=bool(self.config.get("zero_optimization", {}).get("offload_param", {}).get("pin_memory")),
                config_dict_or_path=self._full_config(),
            )
        )
        return stack

    def module_to_device(self, module: nn.Module) -> None:
        if not _is_partitioned(module):  # partitioned parameters are placed by DeepSpeed
            super().module_to_device(module)

    def parameter_numel(self, parameter: Tensor) -> int:
        # Under ZeRO-3 each process holds a slice of the parameter; DeepSpeed records the whole size.
        return getattr(parameter, "ds_numel", None) or parameter.numel()

    def setup_module_and_optimizers(
        self, module: nn.Module, optimizers: list[Optimizer]
    ) -> tuple[nn.Module, list[Optimizer]]:
        """One engine for the model and its optimizer. The optimizer handed back is DeepSpeed's (as in
        Lightning): its ``zero_grad`` keeps the engine's gradient buffers; LR schedulers built on the
        user's optimizer keep working, as it holds the same parameter groups."""
        if not optimizers:
            return self.setup_module(module), []
        if len(optimizers) > 1:
            raise MisconfigurationException(
                f"DeepSpeed trains one optimizer per model; {len(optimizers)} were given. Combine the parameter "
                "groups into one optimizer."
            )
        optimizer = unwrap_optimizer(optimizers[0])
        own = {id(p) for p in module.parameters()}
        if not any(id(p) in own for group in optimizer.param_groups for p in group["params"]):
            raise MisconfigurationException(
                "DeepSpeed needs an optimizer over the model's parameters, and none was given (`configure_optimizers` "
                "returned None, or the optimizer holds other tensors)."
            )
        self._check_single_engine()
        deepspeed = self._deepspeed()
        config = self._full_config()
        engine, _, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, config=config, dist_init_required=False
        )
        engine.checkpoint_engine = make_checkpoint_engine(engine._config)
        # The front end decides where an accumulation window ends (``no_backward_sync``), unless a
        # Lite user left it to DeepSpeed's own counting in the config.
        self._owns_boundary = self._accumulate_grad_batches is not None or config["gradient_accumulation_steps"] == 1
        if self._owns_boundary:
            engine.set_gradient_accumulation_boundary(True)
        self._engine, self._engine_config = engine, config
        return engine, [engine.optimizer]

    def setup_module(self, module: nn.Module) -> nn.Module:
        """A model without an optimizer (evaluation, ``Lite.setup_module``): ZeRO-3 partitioned
        parameters need an engine to gather them; anything else runs as it is."""
        if not _is_partitioned(module):
            return module
        deepspeed = self._deepspeed()
        config = self._full_config()
        config["zero_optimization"] = {**config.get("zero_optimization", {}), "stage": 3}
        engine, _, _, _ = deepspeed.initialize(model=module, config=config, dist_init_required=False)
        self._inference_engines.append(engine)  # its hooks come off at teardown
        return engine

    def setup_module_for_evaluation(self, module: nn.Module) -> nn.Module:
        return self.setup_module(module)

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        raise MisconfigurationException(
            "DeepSpeed sets up a model and its optimizer together: call `Lite.setup(model, optimizer)` instead of "
            "`setup_module` and `setup_optimizers` separately."
        )

    def _check_single_engine(self) -> None:
        if self._engine is not None:
            raise MisconfigurationException(
                "This DeepSpeedStrategy already runs a model with its optimizer; DeepSpeed trains one model per "
                "strategy. Put the models into one nn.Module, or use one Lite/Trainer per model."
            )

    def _training_engine(self, module: nn.Module | None = None) -> Any:
        engine = self._engine
        if engine is None or module is None:
            return engine
        return engine if _finds(module, engine) else None

    # ------------------------------------------------------------------------------- train
    def backward(
        self,
        tensor: Tensor,
        module: nn.Module | None = None,
        *args: Any,
        backward_fn: Callable[..., None] | None = None,
        **kwargs: Any,
    ) -> None:
        engine = self._engine
        if engine is None:
            raise MisconfigurationException(
                "DeepSpeed runs backward through its engine: set up the model with an optimizer first "
                "(`Lite.setup(model, optimizer)`)."
            )
        if backward_fn is not None and not self._warned_backward_fn:
            self._warned_backward_fn = True
            rank_zero_warn("The module overrides `backward`, which DeepSpeed does not call: its engine runs backward.")
        engine.backward(tensor, retain_graph=kwargs.get("retain_graph", False), scale_wrt_gas=not self._owns_boundary)

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        engine = self._engine
        if engine is None:
            raise MisconfigurationException("DeepSpeed steps its engine's optimizer: set up model and optimizer first.")
        result = closure() if closure is not None else None
        engine.step()
        return result

    @contextlib.contextmanager
    def no_backward_sync(self, module: nn.Module, enabled: bool = True) -> Any:
        """Inside, backward accumulates without ending the window (ZeRO reduces at its boundary)."""
        engine = self._training_engine(module)
        if not enabled or engine is None or not self._owns_boundary:
            yield
            return
        engine.set_gradient_accumulation_boundary(False)
        try:
            yield
        finally:
            engine.set_gradient_accumulation_boundary(True)

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = False,
    ) -> Tensor | None:
        """DeepSpeed clips inside ``optimizer.step()`` at the config's ``gradient_clipping``; asking for
        that same value is fine (nothing more to do), any other is an error that says where to set it."""
        configured = (self._engine_config or self._full_config()).get("gradient_clipping", 0.0)
        if norm_type != 2.0 or not math.isclose(max_norm, configured):
            raise MisconfigurationException(
                f"DeepSpeed clips gradients inside its optimizer step, at the config's `gradient_clipping` "
                f"(now {configured}, by the 2-norm); `max_norm={max_norm}`, `norm_type={norm_type}` cannot be "
                "applied here. Set `Trainer(gradient_clip_val=...)` or `DeepSpeedStrategy(config={'gradient_clipping': "
                "...})` and drop the clip_gradients call."
            )
        return None

    def clip_gradients_value(self, module: nn.Module, optimizer: Optimizer, clip_val: float) -> None:
        raise MisconfigurationException(
            f"DeepSpeed clips gradients by their total norm only; clipping by value (clip_val={clip_val}) is not "
            "supported. Use gradient_clip_algorithm='norm' / `max_norm=`."
        )

    # ----------------------------------------------------------------------------- teardown
    def teardown(self) -> None:
        engines = [self._engine, *self._inference_engines]
        self._engine, self._engine_config, self._inference_engines = None, None, []
        for engine in engines:
            if engine is not None and hasattr(engine, "destroy"):
                engine.destroy()  # removes its hooks from the module, which may be set up again
        sharded_dir.wait_for_removals()  # the run ends with no replaced checkpoint left behind
        super().teardown()

    def __repr__(self) -> str:
        return (
            f"DeepSpeedStrategy(stage={self.zero_stage}, offload_optimizer={cfg.offloads_optimizer(self.config)}, "
            f"offload_parameters={cfg.offloads_parameters(self.config)}, devices={self.num_processes}, "
            f"num_nodes={self.num_nodes}, precision={self.precision!r})"
        )


def _check_against_config(
    config: dict[str, Any], stage: int | None, offload_optimizer: bool | None, offload_parameters: bool | None
) -> None:
    """An argument given next to ``config`` must say what the config says."""
    given = {
        "stage": (stage, cfg.zero_stage(config), "zero_optimization.stage"),
        "offload_optimizer": (offload_optimizer, cfg.offloads_optimizer(config), "zero_optimization.offload_optimizer"),
        "offload_parameters": (offload_parameters, cfg.offloads_parameters(config), "zero_optimization.offload_param"),
    }
    for name, (value, in_config, key) in given.items():
        if value is not None and value != in_config:
            raise MisconfigurationException(
                f"`{name}={value!r}` and the DeepSpeed config ({key}: {in_config!r}) disagree. Set it in one place."
            )


def _finds(module: nn.Module, engine: Any) -> bool:
    """Whether ``module`` is ``engine`` or a fulmen wrapper around it (LiteModule)."""
    while module is not None:
        if module is engine:
            return True
        module = wrapper_inner(module)
    return False


__all__ = ["DeepSpeedPrecision", "DeepSpeedStrategy", "consolidated_state_dict"]
