"""The Trainer's flags, validated once into a ``TrainerConfig``.

Every bad value fails here, at ``Trainer(...)``, with the flag, the value and what is accepted.
Flags that other flags override (``barebones``, ``fast_dev_run``, ``overfit_batches``) are
resolved here too, so the loops read final values only.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import os
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch

from fulmen.trainer.flags import NAMES as FLAG_NAMES
from fulmen.utilities.annotations import resolve_annotations
from fulmen.utilities.exceptions import ConfigurationTypeError, PossibleUserWarning, invalid_argument
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn

DEFAULT_MAX_EPOCHS = 1000


@dataclasses.dataclass
class TrainerConfig:
    """The validated flags; the Trainer exposes each field as an attribute of the same name."""

    barebones: bool
    inference_mode: bool
    use_distributed_sampler: bool
    detect_anomaly: bool
    sync_batchnorm: bool
    fast_dev_run: int
    #: ``None`` (not set) until fit resolves it (``resolve_max_epochs``), as in Lightning.
    max_epochs: int | None
    max_steps: int
    min_epochs: int | None
    min_steps: int | None
    max_time_seconds: float | None
    overfit_batches: int | float
    limit_train_batches: int | float
    limit_val_batches: int | float
    limit_test_batches: int | float
    limit_predict_batches: int | float
    val_check_interval: int | float | str | timedelta | dict
    #: A time-based ``val_check_interval`` in seconds (None: counted in batches).
    val_check_seconds: float | None
    check_val_every_n_epoch: int | None
    num_sanity_val_steps: int
    log_every_n_steps: int
    accumulate_grad_batches: int
    gradient_clip_val: int | float | None
    gradient_clip_algorithm: str | None
    reload_dataloaders_every_n_epochs: int
    deterministic: bool | str | None
    benchmark: bool | None
    default_root_dir: str
    enable_autolog_hparams: bool
    # What the default loggers and callbacks are built from (after barebones/fast_dev_run).
    logger: Any
    enable_checkpointing: bool | None
    enable_progress_bar: bool | None
    enable_model_summary: bool | None


def configure(
    *,
    logger: Any,
    fast_dev_run: Any,
    max_epochs: Any,
    min_epochs: Any,
    max_steps: Any,
    min_steps: Any,
    max_time: Any,
    limit_train_batches: Any,
    limit_val_batches: Any,
    limit_test_batches: Any,
    limit_predict_batches: Any,
    overfit_batches: Any,
    val_check_interval: Any,
    check_val_every_n_epoch: Any,
    num_sanity_val_steps: Any,
    log_every_n_steps: Any,
    enable_checkpointing: Any,
    enable_progress_bar: Any,
    enable_model_summary: Any,
    accumulate_grad_batches: Any,
    gradient_clip_val: Any,
    gradient_clip_algorithm: Any,
    deterministic: Any,
    benchmark: Any,
    inference_mode: Any,
    use_distributed_sampler: Any,
    profiler: Any,
    detect_anomaly: Any,
    barebones: Any,
    sync_batchnorm: Any,
    reload_dataloaders_every_n_epochs: Any,
    default_root_dir: Any,
    enable_autolog_hparams: Any = True,
) -> TrainerConfig:
    """Check every flag and resolve the ones that override others."""
    for name, value in (
        ("inference_mode", inference_mode),
        ("use_distributed_sampler", use_distributed_sampler),
        ("detect_anomaly", detect_anomaly),
        ("barebones", barebones),
        ("sync_batchnorm", sync_batchnorm),
        ("enable_autolog_hparams", enable_autolog_hparams),
    ):
        if not isinstance(value, bool):
            raise invalid_argument(name, value, "True or False")
    for name, value in (
        ("enable_checkpointing", enable_checkpointing),
        ("enable_progress_bar", enable_progress_bar),
        ("enable_model_summary", enable_model_summary),
    ):
        if value is not None and not isinstance(value, bool):
            raise invalid_argument(name, value, "True, False or None")
    if barebones:
        _check_barebones(
            logger=logger,
            enable_checkpointing=enable_checkpointing,
            enable_progress_bar=enable_progress_bar,
            enable_model_summary=enable_model_summary,
            log_every_n_steps=log_every_n_steps,
            num_sanity_val_steps=num_sanity_val_steps,
            fast_dev_run=fast_dev_run,
            detect_anomaly=detect_anomaly,
            profiler=profiler,
        )
        logger, enable_checkpointing, enable_progress_bar, enable_model_summary = False, False, False, False
        log_every_n_steps, num_sanity_val_steps = 0, 0

    fast_dev_run = _check_fast_dev_run(fast_dev_run)
    max_epochs, max_steps = _check_max_limits(max_epochs, max_steps)
    overfit_batches = _batch_limit("overfit_batches", overfit_batches)
    limits = {
        name: _batch_limit(name, value)
        for name, value in (
            ("limit_train_batches", limit_train_batches),
            ("limit_val_batches", limit_val_batches),
            ("limit_test_batches", limit_test_batches),
            ("limit_predict_batches", limit_predict_batches),
        )
    }
    if overfit_batches:
        limits["limit_train_batches"] = limits["limit_val_batches"] = overfit_batches
    val_check_seconds = None
    if isinstance(val_check_interval, (str, timedelta, dict)):
        val_check_seconds = _parse_max_time(val_check_interval, "val_check_interval")
    else:
        val_check_interval = _batch_limit("val_check_interval", val_check_interval)
    if check_val_every_n_epoch is not None:
        check_val_every_n_epoch = _check_count(
            "check_val_every_n_epoch",
            check_val_every_n_epoch,
            minimum=1,
            said=f"`check_val_every_n_epoch` should be an integer, found {check_val_every_n_epoch!r}.",
        )
    elif not isinstance(val_check_interval, int) and val_check_seconds is None:
        raise invalid_argument(
            "val_check_interval",
            val_check_interval,
            "an int (a number of training batches) when `check_val_every_n_epoch=None`",
            said="`val_check_interval` should be an integer or a time-based duration (str 'DD:HH:MM:SS', "
            "datetime.timedelta, or dict kwargs for timedelta) when `check_val_every_n_epoch=None`.",
        )
    num_sanity_val_steps = (
        2 if num_sanity_val_steps is None else _check_count("num_sanity_val_steps", num_sanity_val_steps, -1)
    )
    log_every_n_steps = 50 if log_every_n_steps is None else _check_count("log_every_n_steps", log_every_n_steps, 0)
    if gradient_clip_val is not None and (
        isinstance(gradient_clip_val, bool) or not isinstance(gradient_clip_val, (int, float))
    ):
        raise ConfigurationTypeError(
            f"`gradient_clip_val` should be an int or a float. Got {gradient_clip_val!r}. Accepted: a number >= 0 "
            "or None."
        )
    if gradient_clip_val is not None and gradient_clip_val < 0:
        raise invalid_argument("gradient_clip_val", gradient_clip_val, "a number >= 0 or None")
    if gradient_clip_algorithm is not None and gradient_clip_algorithm not in ("norm", "value"):
        raise invalid_argument(
            "gradient_clip_algorithm",
            gradient_clip_algorithm,
            ("norm", "value", None),
            said=f"`gradient_clip_algorithm` {gradient_clip_algorithm} is invalid",
        )
    if deterministic not in (None, True, False, "warn"):
        raise invalid_argument("deterministic", deterministic, (True, False, "warn", None))
    if benchmark is not None and not isinstance(benchmark, bool):
        raise invalid_argument("benchmark", benchmark, (True, False, None))

    if fast_dev_run:
        n = fast_dev_run
        if not overfit_batches:
            limits["limit_train_batches"] = limits["limit_val_batches"] = n
        limits["limit_test_batches"] = limits["limit_predict_batches"] = n
        max_steps, max_epochs = n, 1
        num_sanity_val_steps = 0
        val_check_interval, val_check_seconds, check_val_every_n_epoch = 1.0, None, 1
        rank_zero_info(f"Running in `fast_dev_run` mode: {n} batch(es) per loop; logging and checkpointing are off.")

    return TrainerConfig(
        barebones=barebones,
        inference_mode=inference_mode,
        use_distributed_sampler=use_distributed_sampler,
        detect_anomaly=detect_anomaly,
        sync_batchnorm=sync_batchnorm,
        fast_dev_run=fast_dev_run,
        max_epochs=max_epochs,
        max_steps=max_steps,
        min_epochs=_check_optional_count("min_epochs", min_epochs),
        min_steps=_check_optional_count("min_steps", min_steps),
        max_time_seconds=_parse_max_time(max_time),
        overfit_batches=overfit_batches,
        **limits,
        val_check_interval=val_check_interval,
        val_check_seconds=val_check_seconds,
        check_val_every_n_epoch=check_val_every_n_epoch,
        num_sanity_val_steps=num_sanity_val_steps,
        log_every_n_steps=log_every_n_steps,
        accumulate_grad_batches=_check_count("accumulate_grad_batches", accumulate_grad_batches, 1),
        gradient_clip_val=gradient_clip_val,
        # None stays None (what configure_gradient_clipping receives, as in Lightning); clipping
        # itself defaults to "norm".
        gradient_clip_algorithm=gradient_clip_algorithm,
        reload_dataloaders_every_n_epochs=_check_count(
            "reload_dataloaders_every_n_epochs", reload_dataloaders_every_n_epochs, 0
        ),
        deterministic=deterministic,
        benchmark=benchmark,
        default_root_dir=_root_dir(default_root_dir),
        enable_autolog_hparams=enable_autolog_hparams,
        logger=logger,
        enable_checkpointing=enable_checkpointing,
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=enable_model_summary,
    )


def set_torch_flags(deterministic: bool | str | None, benchmark: bool | None) -> None:
    """``deterministic`` and ``benchmark`` as torch's global switches (set again in every process)."""
    if deterministic and benchmark:
        rank_zero_warn("`deterministic=True` with `benchmark=True`: cuDNN ignores determinism while benchmarking.")
    if deterministic and benchmark is None:
        benchmark = False
    if benchmark is not None:
        torch.backends.cudnn.benchmark = benchmark
    if deterministic == "warn":
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif isinstance(deterministic, bool):
        torch.use_deterministic_algorithms(deterministic)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic (CUDA >= 10.2).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _root_dir(default_root_dir: Any) -> str:
    if default_root_dir is None:
        return os.getcwd()
    if not isinstance(default_root_dir, (str, os.PathLike)):
        raise invalid_argument("default_root_dir", default_root_dir, "a path or a URL")
    path = os.fspath(default_root_dir)
    return path if "://" in path else os.path.expanduser(path)


def _check_barebones(**flags: Any) -> None:
    conflicts = {
        "logger": lambda v: v not in (None, False),
        "enable_checkpointing": bool,
        "enable_progress_bar": bool,
        "enable_model_summary": bool,
        "log_every_n_steps": lambda v: v not in (None, 0),
        "num_sanity_val_steps": lambda v: v not in (None, 0),
        "fast_dev_run": bool,
        "detect_anomaly": bool,
        "profiler": lambda v: v is not None,
    }
    for name, conflicts_with in conflicts.items():
        if conflicts_with(flags[name]):
            raise invalid_argument(
                name,
                flags[name],
                f"its default with `barebones=True`, which turns {name} off for raw speed",
                said=f"`Trainer(barebones=True, {name}={flags[name]!r})` was passed",
            )


def _check_count(name: str, value: Any, minimum: int, said: str | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid_argument(name, value, f"an int >= {minimum}", said)
    return value


def _check_optional_count(name: str, value: Any) -> int | None:
    return None if value is None else _check_count(name, value, 0)


def _check_fast_dev_run(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value >= 0:
        return value
    raise invalid_argument("fast_dev_run", value, "True, False or a number of batches >= 0")


def _check_max_limits(max_epochs: Any, max_steps: Any) -> tuple[int | None, int]:
    said = "`{}` must be a non-negative integer or -1"
    max_steps = _check_count("max_steps", max_steps, -1, said.format("max_steps"))
    if max_epochs is None:
        return None, max_steps
    return _check_count("max_epochs", max_epochs, -1, said.format("max_epochs")), max_steps


def resolve_max_epochs(config: TrainerConfig, has_timer: bool) -> None:
    """At fit: an unset ``max_epochs`` becomes 1000 when nothing else ends training (with
    Lightning's warning), else -1 (no epoch limit); the Trainer reports the value from then on."""
    if config.max_epochs is not None:
        return
    if config.max_steps == -1 and config.max_time_seconds is None and not has_timer:
        rank_zero_warn(
            f"`max_epochs` was not set. Setting it to {DEFAULT_MAX_EPOCHS} epochs. To train without an epoch "
            "limit, set `max_epochs=-1`.",
            PossibleUserWarning,
        )
        config.max_epochs = DEFAULT_MAX_EPOCHS
    else:
        config.max_epochs = -1


def _batch_limit(name: str, value: Any) -> int | float:
    """``None`` -> 1.0; a float is a fraction in [0, 1]; an int a number of batches (1 means one batch)."""
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid_argument(name, value, "a fraction in [0.0, 1.0] or an int number of batches")
    if value == 1:
        _explain_one(name, value)
    if isinstance(value, float):
        if 0.0 <= value <= 1.0:
            return value
        if value > 1 and value.is_integer():
            return int(value)
        raise invalid_argument(name, value, "a fraction in [0.0, 1.0] or an int number of batches")
    if value < 0:
        raise invalid_argument(name, value, "a fraction in [0.0, 1.0] or an int number of batches >= 0")
    return value


def _explain_one(name: str, value: int | float) -> None:
    """``1`` and ``1.0`` mean different things (one batch, all batches): say which was meant, as Lightning does."""
    if isinstance(value, int):
        meaning = {
            "limit_train_batches": "1 batch per epoch will be used",
            "val_check_interval": "validation will run after every training batch",
        }.get(name, "1 batch will be used")
    else:
        meaning = {
            "limit_train_batches": "100% of the batches per epoch will be used",
            "val_check_interval": "validation will run at the end of each training epoch",
        }.get(name, "100% of the batches will be used")
    rank_zero_info(f"`Trainer({name}={value!r})` was configured so {meaning}.")


_MAX_TIME_PATTERN = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}):(\d{1,2})$")


def _parse_max_time(max_time: Any, flag: str = "max_time") -> float | None:
    """``"DD:HH:MM:SS"``, a ``timedelta`` or a dict of timedelta arguments -> seconds."""
    if max_time is None:
        return None
    if isinstance(max_time, timedelta):
        return max_time.total_seconds()
    if isinstance(max_time, dict):
        try:
            return timedelta(**max_time).total_seconds()
        except TypeError:
            raise invalid_argument(flag, max_time, "a dict of timedelta arguments (days, hours, ...)") from None
    if isinstance(max_time, str):
        match = _MAX_TIME_PATTERN.match(max_time.strip())
        if match:
            days, hours, minutes, seconds = (int(g) for g in match.groups())
            return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()
    raise invalid_argument(flag, max_time, "'DD:HH:MM:SS', a datetime.timedelta or a dict like {'hours': 1}")


#: Environment variables that set a Trainer flag's default (``PL_TRAINER_MAX_EPOCHS=3``), as in Lightning.
ENV_PREFIXES = ("PL_TRAINER_", "FULMEN_TRAINER_")


def defaults_from_env(init: Callable[..., None]) -> Callable[..., None]:
    """Flags the caller leaves out take their value from ``PL_TRAINER_<FLAG>`` (or ``FULMEN_TRAINER_<FLAG>``).

    Values are read as Python literals (``3``, ``True``, ``"0.5"``), else as strings.
    """
    resolve_annotations(init)  # real types in the Trainer's signature, as Lightning's has
    parameters = FLAG_NAMES

    @functools.wraps(init)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        for name in parameters:
            if name in kwargs:
                continue
            for prefix in ENV_PREFIXES:
                raw = os.environ.get(prefix + name.upper())
                if raw is not None:
                    kwargs[name] = _literal(raw)
                    break
        init(self, *args, **kwargs)

    return wrapped


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
