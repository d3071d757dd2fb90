"""Reading a checkpoint without running code from it.

:func:`safe_load` unpickles with torch's weights-only unpickler and an allowlist of exactly the
types fulmen itself writes (:func:`get_safe_globals`; users add theirs with
:func:`add_safe_globals`). Anything else is refused with a message that names the type and the
opt-in (``weights_only=False``) for trusted files; a missing, truncated or garbled file is a
``CheckpointError`` naming the file and what is wrong with it.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import errno
import importlib
import os
import pathlib
import pickle
import re
import struct
import threading
import zipfile
from argparse import Namespace
from collections.abc import Callable
from typing import IO, Any, Union

import torch
from fsspec.core import url_to_fs

from fulmen.checkpointing.remote import _PATH, CheckpointNotFoundError, local_os_path, to_str
from fulmen.utilities.exceptions import CheckpointError
from fulmen.utilities.parsing import AttributeDict

_MAP_LOCATION = Union[str, torch.device, Callable, dict, None]
_SafeGlobal = Union[Callable, tuple[Callable, str]]


_user_safe_globals: list[_SafeGlobal] = []
# torch's safe_globals() context swaps a process-wide set; concurrent loads must not interleave.
_load_lock = threading.Lock()


def add_safe_globals(*types: _SafeGlobal) -> None:
    """Allow more classes or functions in checkpoints loaded by :func:`safe_load`.

    For types that other fulmen packages or users put into checkpoints. Each item is a class or
    function, or a ``(obj, "module.qualified.Name")`` pair when the name in the file differs.
    Only allow what cannot run code when called with data from the file.
    """
    for item in types:
        target = item[0] if isinstance(item, tuple) else item
        if not callable(target):
            raise TypeError(f"add_safe_globals() takes classes or functions, got {item!r}")
        if item not in _user_safe_globals:
            _user_safe_globals.append(item)


def get_safe_globals() -> list[_SafeGlobal]:
    """Everything :func:`safe_load` allows beyond torch's own defaults (fulmen's and the user's)."""
    return [*_default_safe_globals(), *_user_safe_globals]


_default_cache: list[_SafeGlobal] | None = None


def _default_safe_globals() -> list[_SafeGlobal]:
    # Built on first use: numpy is imported here, never when fulmen is imported.
    global _default_cache
    if _default_cache is None:
        allowed: list[_SafeGlobal] = [
            collections.OrderedDict,
            collections.defaultdict,
            Namespace,
            AttributeDict,
            datetime.timedelta,
            torch.Size,
            # The factories a defaultdict is saved with; calling them on file data runs no code.
            list,
            dict,
            tuple,
            int,
            float,
            str,
            bool,
        ]
        for cls in (pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath, pathlib.PureWindowsPath):
            # Files name them `pathlib.X` whatever module defines them in this Python version.
            allowed += [cls, (cls, f"pathlib.{cls.__name__}")]
        _default_cache = allowed + _numpy_safe_globals()
    return _default_cache


def _numpy_safe_globals() -> list[_SafeGlobal]:
    """What ``numpy.random.get_state()`` tuples and numpy scalars (logged metrics) need."""
    try:
        import numpy as np
    except ImportError:
        return []
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
    allowed: list[_SafeGlobal] = [np.ndarray, np.dtype]
    for fn_name in ("_reconstruct", "scalar"):
        fn = getattr(multiarray, fn_name)
        # A file names the module numpy had when it was written: accept both spellings.
        allowed += [(fn, f"numpy._core.multiarray.{fn_name}"), (fn, f"numpy.core.multiarray.{fn_name}")]
    # Unpickling a dtype sets its state on an instance of its class (numpy.dtypes.UInt32DType, ...).
    # Booleans and numbers only: object arrays are not something fulmen writes.
    for code in "?" + np.typecodes["AllInteger"] + np.typecodes["AllFloat"]:
        dtype_cls = type(np.dtype(code))
        if dtype_cls not in allowed:
            allowed.append(dtype_cls)
    return allowed


def safe_load(
    path: _PATH,
    map_location: _MAP_LOCATION = None,
    weights_only: bool = True,
    storage_options: dict[str, Any] | None = None,
    *,
    opt_in: bool = True,
    mmap: bool = False,
) -> Any:
    """Load a checkpoint without running code from it.

    ``weights_only=True`` (the default) unpickles tensors, containers, numbers and strings plus
    the allowlist of :func:`get_safe_globals`; a file that needs anything else is refused.
    ``weights_only=False`` is the explicit opt-in for a trusted file: full pickle, which can run
    arbitrary code. Every failure is a :class:`CheckpointError` that names the path.
    ``opt_in=False``: the file is one an engine reads itself (a shard), so a refusal does not
    suggest ``weights_only=False``. ``mmap``: tensors stay on disk (a local zip file), so only
    the pickle is read, which is how a whole sharded checkpoint is checked before it is loaded.
    """
    display = to_str(path)
    try:
        local = local_os_path(path)
        if local is not None:
            if os.path.isdir(local):
                raise CheckpointError(_directory_message(display))
            if not os.path.isfile(local):
                raise CheckpointNotFoundError(_not_found_message(display))
            with open(local, "rb") as f:
                _check_header(f.read(2), display)
            return _torch_load(local, map_location, weights_only, mmap)
        fs, rpath = url_to_fs(display, **(storage_options or {}))
        return _load_remote(fs, rpath, display, map_location, weights_only)
    except CheckpointError:
        raise
    except FileNotFoundError as err:
        raise CheckpointNotFoundError(_not_found_message(display)) from err
    except pickle.UnpicklingError as err:
        refusal = refusal_reason(str(err))
        if refusal is not None:
            reason, allowlistable = refusal
            message = (
                f"Refused to load checkpoint {display!r}: {reason} (loading a checkpoint never runs code from it)."
            )
            if opt_in:
                remedy = "pass `weights_only=False` to load it with full pickle"
                if allowlistable:
                    remedy += ", or allow just this type with `fulmen.checkpointing.add_safe_globals(...)`"
                message += f" If you trust this file, {remedy}."
            raise CheckpointError(message) from err
        raise CheckpointError(_corrupted_message(display, err)) from err
    except (EOFError, zipfile.BadZipFile, struct.error, IndexError, KeyError, UnicodeDecodeError) as err:
        raise CheckpointError(_corrupted_message(display, err)) from err
    except (AttributeError, ImportError) as err:
        # Full pickle (weights_only=False) of a class that was renamed or is not importable here.
        raise CheckpointError(f"Could not load checkpoint {display!r}: {err}") from err
    except ValueError as err:
        # A file-like object (fsspec) refuses the seek before the start of a file cut short;
        # a damaged pickle names an impossible protocol.
        if "seek" in str(err) or "pickle" in str(err):
            raise CheckpointError(_corrupted_message(display, err)) from err
        raise
    except PermissionError:
        raise
    except OSError as err:
        # torch's zip reader seeks before the start of a file cut short: EINVAL.
        if err.errno == errno.EINVAL:
            raise CheckpointError(_corrupted_message(display, err)) from err
        raise CheckpointError(f"Could not read checkpoint {display!r}: {err}") from err
    except RuntimeError as err:
        if _looks_corrupted(str(err)):
            raise CheckpointError(_corrupted_message(display, err)) from err
        raise CheckpointError(f"Could not load checkpoint {display!r}: {err}") from err


#: Reads of an object that a writer replaced meanwhile, before giving up (each starts afresh).
_REMOTE_ATTEMPTS = 5


def _load_remote(fs: Any, rpath: str, display: str, map_location: _MAP_LOCATION, weights_only: bool) -> Any:
    """Load an object from an object store, reading it again if it is replaced while being read.

    A store publishes each object whole, but a large one is read in several ranged requests; when
    a writer publishes a newer version in between, the filesystem notices (s3fs: the ETag changed,
    ``EBUSY``) rather than mixing two versions. The load then starts over on the new version, so a
    reader that races a save gets the old checkpoint or the new one, never an error or a mix.
    """
    for _ in range(_REMOTE_ATTEMPTS - 1):
        try:
            return _load_object(fs, rpath, display, map_location, weights_only)
        except Exception as err:
            if not _replaced_while_read(err):
                raise
            fs.invalidate_cache(rpath)
    return _load_object(fs, rpath, display, map_location, weights_only)


def _load_object(fs: Any, rpath: str, display: str, map_location: _MAP_LOCATION, weights_only: bool) -> Any:
    if not fs.isfile(rpath):
        raise CheckpointNotFoundError(_not_found_message(display))
    with fs.open(rpath, "rb") as f:
        _check_header(f.read(2), display)
        f.seek(0)
        return _torch_load(f, map_location, weights_only)


def _replaced_while_read(err: BaseException | None) -> bool:
    while err is not None:  # torch may wrap the filesystem's error
        if isinstance(err, OSError) and err.errno == errno.EBUSY:
            return True
        err = err.__cause__ or err.__context__
    return False


# A torch checkpoint is a zip file ("PK") or, in the legacy format, a pickle ("\x80" PROTO).
_HEADERS = (b"PK", b"\x80")


def _check_header(head: bytes, display: str) -> None:
    """Refuse what is not a torch file before unpickling it: garbage fails in unpredictable ways."""
    if not head.startswith(_HEADERS):
        reason = ValueError(f"it starts with {head!r}, not a zip or pickle header")
        raise CheckpointError(_corrupted_message(display, reason)) from reason


def _torch_load(f: str | IO[bytes], map_location: _MAP_LOCATION, weights_only: bool, mmap: bool = False) -> Any:
    if not weights_only:
        return torch.load(f, map_location=map_location, weights_only=False, mmap=mmap)
    context = getattr(torch.serialization, "safe_globals", None)
    with _load_lock, context(get_safe_globals()) if context else contextlib.nullcontext():
        return torch.load(f, map_location=map_location, weights_only=True, mmap=mmap)


_NEEDS_GLOBAL = "it needs `{}`, which is not among the types fulmen loads safely"
_FILLS_ITEMWISE = "it fills a `{}` item by item, which safe loading allows for plain dicts and lists only"
_REFUSAL_PATTERNS = (
    (re.compile(r"GLOBAL ([\w.]+) was not an allowed global"), _NEEDS_GLOBAL),
    (re.compile(r"unsupported GLOBAL ([\w.]+) whose module"), _NEEDS_GLOBAL),
    (re.compile(r"Can only build .*? but got <class '([^']+)'>"), _NEEDS_GLOBAL),
    (re.compile(r"Can only create new object .*? but got <class '([^']+)'>"), _NEEDS_GLOBAL),
    (re.compile(r"reduce for unrecognized function <?([^>\s]+(?: [^>\s]+)?)>?"), _NEEDS_GLOBAL),
    # A dict or list subclass pickled by plain torch.save (fulmen's own saves avoid this).
    (re.compile(r"Can only (?:SETITEMS?|append to|extend)\b.*? but got <class '([^']+)'>"), _FILLS_ITEMWISE),
)


def refusal_reason(message: str) -> tuple[str, bool] | None:
    """Why torch's weights-only unpickler refused, and whether allowlisting the type would help."""
    for pattern, template in _REFUSAL_PATTERNS:
        match = pattern.search(message)
        if match:
            return template.format(match.group(1)), template is _NEEDS_GLOBAL
    return None


def _looks_corrupted(message: str) -> bool:
    lowered = message.lower()
    return any(s in lowered for s in ("pytorchstreamreader", "zip archive", "corrupt", "central directory"))


def _corrupted_message(display: str, err: BaseException) -> str:
    return (
        f"Checkpoint {display!r} appears truncated or corrupted ({short_reason(err)}). A copy or download"
        " that stopped midway, or a writer that bypassed fulmen's atomic save, leaves such a file;"
        " use another checkpoint."
    )


def _directory_message(display: str) -> str:
    return (
        f"Checkpoint {display!r} is a directory, not a checkpoint file. A sharded checkpoint directory "
        "(DeepSpeed, FSDP) loads through a Trainer's `ckpt_path=` or `Lite.load`; to load it anywhere else "
        "(`load_from_checkpoint`, `torch.load`), merge it into one file first with "
        f"`fulmen checkpoint consolidate {display} OUT` (or `fulmen.strategies.consolidate_checkpoint`) "
        "and load OUT."
    )


def _not_found_message(display: str) -> str:
    return f"Checkpoint {display!r} does not exist. Check the path (and `storage_options` for remote URLs)."


def short_reason(err: BaseException) -> str:
    message = str(err)
    if "WeightsUnpickler error:" in message:
        message = message.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reason = lines[0] if lines else type(err).__name__
    reason = reason.split(". ", 1)[0].rstrip(".")
    return reason[:200]
