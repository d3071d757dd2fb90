"""One resolver from the user's flags to one ``Strategy``, shared by the Trainer and Lite.

Flags: ``accelerator``, ``devices``, ``strategy``, ``precision``, ``num_nodes``, ``plugins``.
``None`` means "not given": the value exported by ``fulmen run`` applies, else the default.
Every invalid value fails here, at construction, naming the flag, the value and what is accepted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from fulmen.checkpointing.checkpoint_io import CheckpointIO
from fulmen.strategies.accelerators import ACCELERATORS, Accelerator, CPUAccelerator
from fulmen.strategies.dp import DataParallelStrategy
from fulmen.strategies.environments import ClusterEnvironment, detect_environment
from fulmen.strategies.layer_sync import LayerSync
from fulmen.strategies.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from fulmen.strategies.registry import strategy_from_name, strategy_names
from fulmen.strategies.single_device import SingleDeviceStrategy
from fulmen.strategies.strategy import Strategy
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument

#: Environment variables through which ``fulmen run`` passes its flags to the script.
CLI_ENV = {
    "accelerator": "FULMEN_ACCELERATOR",
    "devices": "FULMEN_DEVICES",
    "strategy": "FULMEN_STRATEGY",
    "precision": "FULMEN_PRECISION",
    "num_nodes": "FULMEN_NUM_NODES",
}

ACCELERATOR_NAMES = ("cpu", "gpu", "cuda", "mps", "auto")
PRECISION_NAMES = ("64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
_PRECISION_ALIASES = {
    64: "64-true", "64": "64-true", 32: "32-true", "32": "32-true",
    16: "16-mixed", "16": "16-mixed", "bf16": "bf16-mixed",
}  # fmt: skip


def select_strategy(
    accelerator: str | Accelerator | None = None,
    devices: int | str | Sequence[int] | None = None,
    strategy: str | Strategy | None = None,
    precision: str | int | Precision | None = None,
    num_nodes: int | None = None,
    plugins: Any = None,
) -> Strategy:
    """Turn the flags into a ready-to-launch strategy (not yet set up)."""
    accelerator = _from_cli("accelerator", accelerator, "auto")
    strategy = _from_cli("strategy", strategy, "auto")
    devices = _from_cli("devices", devices, "auto")
    precision = _from_cli("precision", precision, "32-true")
    num_nodes = int(_from_cli("num_nodes", num_nodes, 1)) if not isinstance(num_nodes, int) else num_nodes

    found_plugins = _split_plugins(plugins)
    environment, precision_plugin = found_plugins.get(ClusterEnvironment), found_plugins.get(Precision)
    if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 1:
        raise invalid_argument("num_nodes", num_nodes, "a positive int")
    if isinstance(precision, Precision) and precision_plugin is not None:
        raise MisconfigurationException("Precision was given twice: as `precision=` and in `plugins=`. Pass one.")
    precision = precision_plugin or precision
    precision_name = precision.precision if isinstance(precision, Precision) else normalize_precision(precision)

    strategy_obj = strategy if isinstance(strategy, Strategy) else None
    if strategy_obj is None:
        if not isinstance(strategy, str) or strategy.lower() not in strategy_names():
            raise invalid_argument("strategy", strategy, (*strategy_names(), "a Strategy instance"))
        strategy = strategy.lower()

    accel = _select_accelerator(accelerator, strategy_obj, devices, strategy)
    if environment is None:
        environment = getattr(strategy_obj, "cluster_environment", None) or detect_environment()
    device_indices = _parse_devices(devices, accel, environment, num_nodes)

    if strategy_obj is None:
        strategy_obj = _strategy_for(strategy, accel, device_indices, num_nodes, environment)
    _complete_strategy(strategy_obj, accel, device_indices, num_nodes, environment)
    _attach_plugins(strategy_obj, found_plugins)
    if strategy_obj.precision is None or type(strategy_obj.precision) is Precision:
        strategy_obj.precision = (
            precision if isinstance(precision, Precision) else _build_precision(precision_name, accel, strategy_obj)
        )
    _validate_combination(strategy_obj, accel, precision_name)
    configure = getattr(strategy_obj, "configure_launcher", None)
    if configure is not None:
        configure()
    return strategy_obj


def normalize_precision(precision: Any) -> str:
    """Map the older spellings (64, 32, 16, "bf16") onto the current names."""
    if isinstance(precision, bool):
        raise invalid_argument("precision", precision, PRECISION_NAMES)
    if isinstance(precision, (str, int)):
        name = _PRECISION_ALIASES.get(precision, precision)
        if name in PRECISION_NAMES:
            return name
    raise invalid_argument("precision", precision, (*PRECISION_NAMES, 64, 32, 16, "bf16"))


def _from_cli(flag: str, value: Any, default: Any) -> Any:
    if value is None or (isinstance(value, str) and value == "auto"):
        env_value = os.environ.get(CLI_ENV[flag])
        if env_value is not None:
            return env_value
    return default if value is None else value


#: The plugin kinds ``plugins=`` takes, at most one of each: the name an error uses for it.
_PLUGIN_KINDS: tuple[tuple[type, str], ...] = (
    (ClusterEnvironment, "ClusterEnvironment"),
    (Precision, "Precision plugin"),
    (CheckpointIO, "CheckpointIO"),
    (LayerSync, "LayerSync"),
)


def _split_plugins(plugins: Any) -> dict[type, Any]:
    """The plugins by kind (``ClusterEnvironment``, ``Precision``, ``CheckpointIO``, ``LayerSync``)."""
    found: dict[type, Any] = {}
    items = [] if plugins is None else plugins if isinstance(plugins, (list, tuple)) else [plugins]
    for plugin in items:
        kind = next((kind for kind, _ in _PLUGIN_KINDS if isinstance(plugin, kind)), None)
        if kind is None:
            accepted = "a ClusterEnvironment, a Precision, a CheckpointIO, a LayerSync, or a list of them"
            raise invalid_argument("plugins", plugin, accepted)
        if kind in found:
            label = dict(_PLUGIN_KINDS)[kind]
            raise MisconfigurationException(f"`plugins` holds two {label}s ({found[kind]!r}, {plugin!r}); pass one.")
        found[kind] = plugin
    return found


def _attach_plugins(strategy: Strategy, found: dict[type, Any]) -> None:
    """Give the strategy the checkpoint I/O and layer-sync plugins (one given twice is an error)."""
    checkpoint_io = found.get(CheckpointIO)
    if checkpoint_io is not None:
        if strategy._checkpoint_io is not None and strategy._checkpoint_io is not checkpoint_io:
            raise MisconfigurationException(
                f"A CheckpointIO was given twice: `{type(strategy).__name__}(checkpoint_io=...)` and in `plugins`. "
                "Pass one."
            )
        strategy.checkpoint_io = checkpoint_io
    layer_sync = found.get(LayerSync)
    if layer_sync is not None:
        strategy.layer_sync = layer_sync


def _select_accelerator(
    accelerator: Any, strategy_obj: Strategy | None, devices: Any, strategy_name: Any
) -> Accelerator:
    if isinstance(accelerator, Accelerator):
        return accelerator
    if strategy_obj is not None and strategy_obj.accelerator is not None and accelerator == "auto":
        return strategy_obj.accelerator
    if not isinstance(accelerator, str) or accelerator.lower() not in ACCELERATOR_NAMES:
        raise invalid_argument("accelerator", accelerator, (*ACCELERATOR_NAMES, "an Accelerator instance"))
    name = accelerator.lower()
    if devices in (0, "0", None):
        if name in ("cpu", "auto"):
            return CPUAccelerator()
        raise MisconfigurationException(f"`devices={devices!r}` selects no device, which `accelerator={name!r}` needs.")
    if name == "auto":
        for candidate in ("cuda", "mps"):
            if ACCELERATORS[candidate].is_available():
                return ACCELERATORS[candidate]()
        return CPUAccelerator()
    accel_type = ACCELERATORS[name]
    if not accel_type.is_available():
        available = [n for n in ("cpu", "cuda", "mps") if ACCELERATORS[n].is_available()]
        raise MisconfigurationException(
            f"`accelerator={accelerator!r}` was requested, but no {accel_type.name.upper()} device is available "
            f"on this machine. Available here: {available + ['auto']}."
        )
    return accel_type()


def _parse_devices(devices: Any, accel: Accelerator, environment: ClusterEnvironment, num_nodes: int) -> list[int]:
    """Device indices on this node (for the CPU: one entry per process)."""
    if devices in (None, 0, "0"):
        return [0]
    if isinstance(devices, bool) or not isinstance(devices, (int, str, list, tuple)):
        raise invalid_argument("devices", devices, "an int, a list of ints, a string like '2' or '1, 4', -1, 'auto'")
    if isinstance(devices, str):
        devices = _parse_device_string(devices)
    if devices == "auto":
        if environment.creates_processes_externally:
            count = max(environment.world_size() // num_nodes, 1)
        else:
            count = accel.auto_device_count()
        return list(range(max(count, 1)))
    if devices == -1:
        return list(range(accel.available_device_count()))
    if isinstance(devices, int):
        if devices < -1:
            raise invalid_argument("devices", devices, "a positive int, -1 (all), a list of ints or 'auto'")
        _check_count(devices, accel)
        return list(range(devices))
    indices = list(devices)
    if not indices or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
        raise invalid_argument("devices", devices, "a non-empty list of non-negative device indices")
    if len(set(indices)) != len(indices):
        raise invalid_argument("devices", devices, "a list of distinct device indices")
    if isinstance(accel, CPUAccelerator):
        raise MisconfigurationException(
            f"`devices={devices!r}` selects device indices, which only GPUs have. "
            "For the CPU pass the number of processes, e.g. devices=2."
        )
    available = accel.available_device_count()
    missing = [i for i in indices if i >= available]
    if missing:
        raise MisconfigurationException(
            f"`devices={devices!r}` asks for {accel.name} device(s) {missing}, but this machine has "
            f"{available} (indices 0..{available - 1})."
        )
    return indices


def _parse_device_string(text: str) -> Any:
    text = text.strip()
    if text == "auto":
        return "auto"
    try:
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip()]
        return int(text)
    except ValueError:
        raise invalid_argument("devices", text, "'auto', '-1', a number like '2' or a list like '1, 4'") from None


def _check_count(count: int, accel: Accelerator) -> None:
    if isinstance(accel, CPUAccelerator):
        return  # processes on a CPU may outnumber its cores
    available = accel.available_device_count()
    if count > available:
        raise MisconfigurationException(
            f"`devices={count}` asks for {count} {accel.name} devices, but this machine has {available}."
        )


def _strategy_for(
    name: str, accel: Accelerator, indices: list[int], num_nodes: int, environment: ClusterEnvironment
) -> Strategy:
    if name == "auto":
        distributed = (
            len(indices) > 1
            or num_nodes > 1
            or (environment.creates_processes_externally and environment.world_size() > 1)
        )
        name = "ddp" if distributed else "single_device"
    if name == "single_device":
        return SingleDeviceStrategy(device=accel.device(indices[0]), accelerator=accel)
    return strategy_from_name(name)


def _complete_strategy(
    strategy: Strategy, accel: Accelerator, indices: list[int], num_nodes: int, environment: ClusterEnvironment
) -> None:
    """Fill in what a strategy built by name or by the user left open."""
    if strategy.accelerator is None:
        strategy.accelerator = accel
    devices = [accel.device(i) for i in indices]
    if strategy.cluster_environment is None:
        strategy.cluster_environment = environment  # one process still has a cluster (SLURM requeue)
    if isinstance(strategy, SingleDeviceStrategy):
        if len(indices) > 1 or num_nodes > 1:
            raise MisconfigurationException(
                f"`strategy='single_device'` runs one process, but devices={len(indices)} and "
                f"num_nodes={num_nodes} were given. Use strategy='ddp' or devices=1."
            )
        return
    if not strategy._parallel_devices:  # the strategy chose none itself: the flags' devices
        strategy.parallel_devices = devices
    strategy.num_nodes = num_nodes
    if strategy.cluster_environment is None:
        strategy.cluster_environment = environment
    if strategy.cluster_environment.creates_processes_externally:
        strategy.cluster_environment.validate_settings(len(indices), num_nodes)


def _build_precision(name: str, accel: Accelerator, strategy: Strategy) -> Precision:
    own = strategy.precision_for(name)
    if own is not None:  # engines with their own precision handling (DeepSpeed, FSDP)
        return own
    if name == "32-true":
        return Precision()
    if name == "64-true":
        return DoublePrecision()
    if name in ("16-true", "bf16-true"):
        return HalfPrecision(name)
    device_type = "cuda" if accel.name == "cuda" else accel.name
    return MixedPrecision(name, device=device_type)


def _validate_combination(strategy: Strategy, accel: Accelerator, precision_name: str) -> None:
    if isinstance(strategy, DataParallelStrategy) and accel.name != "cuda":
        raise MisconfigurationException(
            "`strategy='dp'` splits batches over GPUs and needs accelerator='cuda'. "
            "On the CPU use strategy='ddp' or 'ddp_spawn'."
        )
    if precision_name == "16-mixed" and accel.name == "cpu" and not hasattr(torch.amp, "GradScaler"):
        raise MisconfigurationException("`precision='16-mixed'` on the CPU needs torch>=2.3; use 'bf16-mixed'.")
