"""The contract every experiment logger meets, and the small helpers the built-in loggers share.

The Trainer talks to loggers only through :class:`Logger`, so a user's own logger (a database, a
web service) plugs in by implementing ``name``, ``version``, ``log_metrics`` and
``log_hyperparams``. The helpers below keep the two built-in loggers agreeing on what a
hyperparameter file looks like, how versions are numbered and how metric values are read.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
from abc import ABC, abstractmethod
from argparse import Namespace
from collections.abc import Callable, Mapping
from typing import Any

import torch

from fulmen.utilities.annotations import resolve_init_annotations
from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.rank_zero import rank_zero_only

_VERSION_PREFIX = "version_"


class Logger(ABC):
    """Base class of experiment loggers, with Lightning 2.x's method names and defaults."""

    #: Joins the levels of nested metric and hyperparameter names (``{"a": {"b": 1}}`` -> ``a/b``).
    group_separator = "/"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        resolve_init_annotations(cls)  # real types in the signature, as Lightning's have

    @property
    @abstractmethod
    def name(self) -> str | None:
        """The experiment's name (a folder under ``save_dir`` for file-based loggers)."""

    @property
    @abstractmethod
    def version(self) -> int | str | None:
        """The run's version within the experiment."""

    @property
    def root_dir(self) -> str | None:
        """Where this experiment's versions live, or ``None`` for loggers that keep no files."""
        return None

    @property
    def log_dir(self) -> str | None:
        """Where this run's files go, or ``None`` for loggers that keep no files."""
        return None

    @property
    def save_dir(self) -> str | None:
        """The folder (or URL) the user passed, or ``None`` for loggers that keep no files."""
        return None

    @abstractmethod
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record ``metrics`` (name -> value) at ``step``."""

    @abstractmethod
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None, *args: Any, **kwargs: Any) -> None:
        """Record the run's hyperparameters."""

    def log_graph(self, model: torch.nn.Module, input_array: Any = None) -> None:
        """Record the model's computational graph; loggers that cannot draw one ignore it."""

    def save(self) -> None:
        """Push buffered data to storage."""

    def finalize(self, status: str) -> None:
        """Called once when training ends (``status`` is ``"success"``, ``"failed"``, ...)."""
        self.save()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Called after a checkpoint is written; loggers that upload checkpoints hook in here."""


class DummyLogger(Logger):
    """Accepts everything and writes nothing (what ``fast_dev_run`` logs to)."""

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def experiment(self) -> _DummyExperiment:
        return _DummyExperiment()

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


class _DummyExperiment:
    """Stands in for a logger's experiment object on non-zero ranks, so user code that calls
    ``logger.experiment.add_image(...)`` needs no rank check of its own."""

    def _nothing(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, _: str) -> Callable[..., None]:
        return self._nothing

    def __getitem__(self, _: Any) -> _DummyExperiment:
        return self

    def __setitem__(self, *_: Any) -> None:
        pass


class _VersionedFolder:
    """``save_dir/name/version_N``: the folder layout the file-writing loggers share."""

    def _set_folder(self, save_dir: Any, name: str | None, version: int | str | None, prefix: str) -> None:
        self._save_dir = _normalize_save_dir(save_dir)
        self._name = _check_name(name)
        self._version = _check_version(version)
        self._prefix = _check_prefix(prefix)

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int | str:
        if self._version is None:  # the next free version_N, decided on first use
            self._version = _next_version(self.root_dir)
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        return _join(self._save_dir, self._name)

    @property
    def _version_dir(self) -> str:
        return _join(self.root_dir, _version_folder(self.version))


def rank_zero_experiment(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Make an ``experiment`` getter return a do-nothing object on ranks other than zero."""

    @functools.wraps(fn)
    def experiment(self: Any) -> Any:
        if rank_zero_only.rank > 0:
            return _DummyExperiment()
        return fn(self)

    return experiment


# ---------------------------------------------------------------------------------------------
# Helpers shared by the built-in loggers (private: their names and behaviour may change).
# ---------------------------------------------------------------------------------------------


def _convert_params(params: dict[str, Any] | Namespace | None) -> dict[str, Any]:
    if params is None:
        return {}
    if isinstance(params, Namespace):
        return dict(vars(params))
    if isinstance(params, Mapping):
        return dict(params)
    raise invalid_argument("params", params, "a dict, an argparse.Namespace or None")


def _flatten_dict(data: Mapping[Any, Any], delimiter: str = "/", parent: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{parent}{delimiter}{key}" if parent else str(key)
        if isinstance(value, Namespace):
            value = vars(value)
        if isinstance(value, Mapping):
            flat.update(_flatten_dict(value, delimiter, name))
        else:
            flat[name] = value
    return flat


def _add_prefix(metrics: Mapping[str, Any], prefix: str, separator: str) -> dict[str, Any]:
    if not prefix:
        return dict(metrics)
    return {f"{prefix}{separator}{key}": value for key, value in metrics.items()}


def _metric_value(name: str, value: Any) -> float | int | bool:
    """Read one metric as a Python number; anything else is a mistake worth reporting now,
    not as a corrupt row or a crash deep inside a writer."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise invalid_argument(
                f"metrics[{name!r}]", value, "a number or a tensor with one element (call .mean() first?)"
            )
        return value.item()
    if isinstance(value, (bool, int, float)):
        return value
    # numpy scalars (and similar) have ``item`` but numpy is not needed to recognise them.
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    raise invalid_argument(f"metrics[{name!r}]", value, "a number, a one-element tensor, or a dict of them")


def _yaml_safe(value: Any) -> Any:
    """Convert ``value`` to what ``yaml.safe_dump`` writes and ``yaml.safe_load`` reads back.

    Tensors become numbers or lists so they stay readable; other objects become their string,
    because an ``hparams.yaml`` that needs the user's classes to load is no longer a record.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.dim() == 0 else value.tolist()
    if isinstance(value, enum.Enum):
        return _yaml_safe(value.value) if isinstance(value.value, (bool, int, float, str)) else value.name
    if isinstance(value, Namespace):
        value = vars(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {_yaml_key(k): _yaml_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_yaml_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy arrays and scalars
        return _yaml_safe(value.tolist())
    if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}".lstrip(".")
    return str(value)


def _yaml_key(key: Any) -> Any:
    return key if key is None or isinstance(key, (bool, int, float, str)) else str(key)


def _write_hparams_yaml(fs: Any, path: str, hparams: Mapping[str, Any]) -> None:
    import yaml

    text = yaml.safe_dump(_yaml_safe(dict(hparams)), sort_keys=False, allow_unicode=True)
    with fs.open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _normalize_save_dir(save_dir: Any) -> str:
    if not isinstance(save_dir, (str, os.PathLike)):
        raise invalid_argument("save_dir", save_dir, "a path or a URL such as 's3://bucket/logs'")
    save_dir = os.fspath(save_dir)
    if not save_dir:
        raise invalid_argument("save_dir", save_dir, "a non-empty path or URL")
    return save_dir if "://" in save_dir else os.path.expanduser(save_dir)


def _join(base: str, *parts: str) -> str:
    parts = tuple(p for p in parts if p)
    if "://" in base:
        # URLs always use "/", whatever the local OS is.
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def _check_name(name: Any) -> str:
    if name is None:
        return ""
    if not isinstance(name, str):
        raise invalid_argument("name", name, "a string (a folder name) or None")
    return name


def _check_version(version: Any) -> int | str | None:
    if version is None:
        return None
    if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
        return version
    if isinstance(version, str) and version:
        return version
    raise invalid_argument(
        "version", version, "None (the next free version_N), an int >= 0, or a non-empty folder name"
    )


def _check_prefix(prefix: Any) -> str:
    if not isinstance(prefix, str):
        raise invalid_argument("prefix", prefix, "a string")
    return prefix


def _version_folder(version: int | str) -> str:
    return version if isinstance(version, str) else f"{_VERSION_PREFIX}{version}"


def _next_version(root_dir: str) -> int:
    """One more than the highest ``version_N`` folder in ``root_dir``, or 0 when there is none."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(root_dir)
    # Remote file systems cache listings; a run started a moment ago must be seen.
    fs.invalidate_cache(path)
    if not fs.isdir(path):
        return 0
    found = []
    for entry in fs.ls(path, detail=True):
        if entry.get("type") != "directory":
            continue
        base = entry["name"].replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        number = base[len(_VERSION_PREFIX) :]
        if base.startswith(_VERSION_PREFIX) and number.isdigit():
            found.append(int(number))
    return max(found) + 1 if found else 0
