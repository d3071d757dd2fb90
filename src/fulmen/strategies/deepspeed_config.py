"""The DeepSpeed config: built from ``DeepSpeedStrategy``'s arguments or read from the user's, then
completed with what the front end decides (accumulation, clipping, precision).

Pure dict work, no DeepSpeed import. Where a front-end flag and the user's config both set a
value and disagree, the error names both; where only one sets it, that one wins.
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument

#: A JSON file used as the config when neither ``config=`` nor the arguments give one.
CONFIG_ENV = "FULMEN_DEEPSPEED_CONFIG_PATH"
OFFLOAD_DEVICES = ("cpu", "nvme")


def read_config(config: dict[str, Any] | str | os.PathLike | None) -> dict[str, Any] | None:
    """The user's config as a fresh dict: ``config``, the JSON file it names, or ``$FULMEN_DEEPSPEED_CONFIG_PATH``."""
    if config is None:
        config = os.environ.get(CONFIG_ENV)
        if config is None:
            return None
    if isinstance(config, dict):
        return copy.deepcopy(config)
    if not isinstance(config, (str, os.PathLike)):
        raise invalid_argument("config", config, "a dict, the path of a JSON file, or None")
    path = os.fspath(config)
    if not os.path.isfile(path):
        raise MisconfigurationException(
            f"`config={path!r}` is not valid: no such file. Accepted: a dict, the path of a JSON file, or None."
        )
    with open(path) as f:
        try:
            loaded = json.load(f)
        except json.JSONDecodeError as err:
            raise MisconfigurationException(f"`config={path!r}` is not valid JSON: {err}.") from None
    if not isinstance(loaded, dict):
        raise MisconfigurationException(f"`config={path!r}` holds a {type(loaded).__name__}; a JSON object is needed.")
    return loaded


def default_config(
    stage: int,
    offload_optimizer: bool,
    offload_parameters: bool,
    offload_optimizer_device: str,
    offload_params_device: str,
    nvme_path: str,
    pin_memory: bool,
    zero_options: dict[str, Any],
    offload_options: dict[str, Any],
    activation_checkpointing: dict[str, Any],
    aio: dict[str, Any],
    zero_allow_untested_optimizer: bool,
) -> dict[str, Any]:
    """The config ``DeepSpeedStrategy``'s arguments describe (``zero_optimization=False``: stage 0)."""
    zero: dict[str, Any] = {"stage": stage, **zero_options}
    if offload_optimizer:
        zero["offload_optimizer"] = {
            "device": offload_optimizer_device,
            "nvme_path": nvme_path,
            "buffer_count": offload_options["optimizer_buffer_count"],
            "pin_memory": pin_memory,
        }
    if offload_parameters:
        zero["offload_param"] = {
            "device": offload_params_device,
            "nvme_path": nvme_path,
            "buffer_count": offload_options["params_buffer_count"],
            "buffer_size": offload_options["params_buffer_size"],
            "max_in_cpu": offload_options["max_in_cpu"],
            "pin_memory": pin_memory,
        }
    return {
        "zero_allow_untested_optimizer": zero_allow_untested_optimizer,
        "zero_optimization": zero,
        "activation_checkpointing": activation_checkpointing,
        "aio": aio,
    }


def zero_stage(config: dict[str, Any]) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(config: dict[str, Any]) -> bool:
    device = config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return device in OFFLOAD_DEVICES


def offloads_parameters(config: dict[str, Any]) -> bool:
    device = config.get("zero_optimization", {}).get("offload_param", {}).get("device", "none")
    return device in OFFLOAD_DEVICES


def config_precision(config: dict[str, Any]) -> str | None:
    """``"bf16"`` or ``"fp16"`` when the config turns that mode on, else None."""
    for key in ("bf16", "fp16"):
        if config.get(key, {}).get("enabled", False):
            return key
    return None


def with_training_flags(
    config: dict[str, Any], accumulate_grad_batches: int | None, gradient_clip_val: float | None, algorithm: str | None
) -> dict[str, Any]:
    """``config`` completed with the Trainer's accumulation and clipping flags; a disagreement is an error.

    ``accumulate_grad_batches=None``: no front end decided (Lite): the config's value, else 1.
    Without a clipping value in either place, clipping is off (DeepSpeed's own default would
    clip at 1.0 silently).
    """
    config = dict(config)
    if accumulate_grad_batches is not None:
        own = config.get("gradient_accumulation_steps")
        if own is not None and own != accumulate_grad_batches:
            raise MisconfigurationException(
                f"`accumulate_grad_batches={accumulate_grad_batches}` and the DeepSpeed config's "
                f"`gradient_accumulation_steps={own}` disagree. Set one of them (the Trainer flag), or make "
                "them equal."
            )
        config["gradient_accumulation_steps"] = accumulate_grad_batches
    config.setdefault("gradient_accumulation_steps", 1)
    if gradient_clip_val:
        if algorithm not in (None, "norm"):
            raise MisconfigurationException(
                f"`gradient_clip_algorithm={algorithm!r}` is not supported with DeepSpeed, which clips gradients "
                "by their total norm inside its optimizer step. Use gradient_clip_algorithm='norm'."
            )
        own = config.get("gradient_clipping")
        if own is not None and not math.isclose(own, gradient_clip_val):
            raise MisconfigurationException(
                f"`gradient_clip_val={gradient_clip_val}` and the DeepSpeed config's `gradient_clipping={own}` "
                "disagree. Set one of them, or make them equal."
            )
        config["gradient_clipping"] = float(gradient_clip_val)
    config.setdefault("gradient_clipping", 0.0)
    if "train_batch_size" not in config:
        config.setdefault("train_micro_batch_size_per_gpu", 1)
    return config


def with_precision(config: dict[str, Any], precision: str, loss_scaling: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the section that turns on ``precision`` (bf16 or fp16); 32-bit adds none."""
    config = dict(config)
    if precision.startswith("bf16"):
        config["bf16"] = {**config.get("bf16", {}), "enabled": True}
    elif precision == "16-mixed":
        config["fp16"] = {**loss_scaling, **config.get("fp16", {}), "enabled": True}
    return config
