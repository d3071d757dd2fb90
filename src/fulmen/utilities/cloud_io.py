"""The one place where fulmen reads and writes checkpoint files, local or behind any fsspec URL.

Two promises live here:

- A checkpoint on disk is either the old file or the new one, never a torn file:
  :func:`atomic_save` writes a temporary file next to the target and renames it into place.
- Loading never runs code from the file: :func:`safe_load` unpickles with torch's weights-only
  unpickler and an allowlist of exactly the types fulmen itself writes. Anything else is refused
  with a message that names the type and the argument (``weights_only=False``) for trusted files.
"""

from __future__ import annotations

import collections
import contextlib
import copyreg
import datetime
import errno
import importlib
import os
import pathlib
import pickle
import posixpath
import re
import secrets
import shutil
import struct
import threading
import zipfile
from argparse import Namespace
from collections.abc import Callable
from types import ModuleType
from typing import IO, Any, Union

import fsspec
import torch
from fsspec.core import strip_protocol, url_to_fs
from fsspec.utils import get_protocol

from fulmen.utilities.exceptions import CheckpointError
from fulmen.utilities.parsing import AttributeDict

_PATH = Union[str, os.PathLike]
_MAP_LOCATION = Union[str, torch.device, Callable, dict, None]
_SafeGlobal = Union[Callable, tuple[Callable, str]]

_LOCAL_PROTOCOLS = ("file", "local")


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist; catchable as ``FileNotFoundError`` too."""


# --------------------------------------------------------------------------------------------
# Filesystems and paths


def get_filesystem(path: _PATH, **storage_options: Any) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem that serves ``path`` (local paths and ``file://`` give the local one)."""
    fs, _ = url_to_fs(_to_str(path), **storage_options)
    return fs


def is_local(path: _PATH) -> bool:
    """Whether ``path`` is on the local filesystem; decided from the URL alone, nothing is imported."""
    return get_protocol(_to_str(path)) in _LOCAL_PROTOCOLS


def file_exists(path: _PATH, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``path`` exists (a dangling local symlink does not count)."""
    local = _local_path(path)
    if local is not None:
        return os.path.exists(local)
    fs, rpath = url_to_fs(_to_str(path), **(storage_options or {}))
    return fs.exists(rpath)


def makedirs(path: _PATH, exist_ok: bool = True, storage_options: dict[str, Any] | None = None) -> None:
    """Create the directory ``path`` and its parents (object stores without directories accept it)."""
    local = _local_path(path)
    if local is not None:
        os.makedirs(local, exist_ok=exist_ok)
        return
    fs, rpath = url_to_fs(_to_str(path), **(storage_options or {}))
    fs.makedirs(rpath, exist_ok=exist_ok)


def remove_file(path: _PATH, storage_options: dict[str, Any] | None = None) -> None:
    """Delete the file (or the link itself, for a symlink) at ``path``; a missing file is fine.

    A local checkpoint directory (sharded strategies) is deleted whole, renamed away first.
    """
    local = _local_path(path)
    if local is not None:
        if os.path.isdir(local) and not os.path.islink(local):
            from fulmen.utilities import checkpoint_dir

            checkpoint_dir.remove(local)
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(local)
        return
    fs, rpath = url_to_fs(_to_str(path), **(storage_options or {}))
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(rpath)


# --------------------------------------------------------------------------------------------
# Saving


def atomic_save(obj: Any, path: _PATH, storage_options: dict[str, Any] | None = None) -> None:
    """``torch.save(obj)`` to ``path`` so that a crash at any moment leaves the old file or the new one.

    Locally the bytes go to a uniquely named temporary file in the target's directory, are flushed
    and fsynced, and ``os.replace`` swaps it in (atomic on POSIX and Windows); the directory is
    fsynced so the rename itself survives a power cut. A failure removes the temporary file.
    An existing symlink at ``path`` is replaced by the file, never written through.

    On other fsspec filesystems the object is written under a temporary key in the same
    "directory" and moved onto ``path``. Object stores (S3, GCS, ...) publish an object only when
    it is complete, so a reader sees the old object or the new one. A filesystem without ``mv``
    gets the finished bytes in one ``pipe_file`` call, the closest equivalent it offers.
    Parent directories are created.
    """
    local = _local_path(path)
    if local is not None:
        _atomic_write_local(local, lambda f: _torch_save(obj, f))
        return
    fs, rpath = url_to_fs(_to_str(path), **(storage_options or {}))
    parent = posixpath.dirname(rpath)
    if parent:
        with contextlib.suppress(FileExistsError):
            fs.makedirs(parent, exist_ok=True)
    tmp = _temp_name(rpath, sep="/")
    try:
        with fs.open(tmp, "wb") as f:
            _torch_save(obj, f)
    except BaseException:
        # fsspec files commit what they hold when closed, even on error: drop the partial key.
        _quiet_remote_rm(fs, tmp)
        raise
    _remote_commit(fs, tmp, rpath)


def save_link(target: _PATH, link_path: _PATH, storage_options: dict[str, Any] | None = None) -> None:
    """Make ``link_path`` refer to the existing file ``target`` (``save_last="link"``).

    Locally this is a relative symlink, so a checkpoint directory can be moved or copied as a
    whole; it is created under a temporary name and renamed over ``link_path``, so readers see
    the old link or the new one. Where symlinks are not available (Windows without the
    privilege, some network filesystems) and on remote filesystems, ``target`` is copied instead,
    just as atomically. Both paths are read relative to the working directory, as elsewhere.
    """
    local_link = _local_path(link_path)
    local_target = _local_path(target)
    if (local_link is None) != (local_target is None):
        raise CheckpointError(
            f"Cannot link {_to_str(link_path)!r} to {_to_str(target)!r}: both must be on the same filesystem."
        )
    if local_link is not None and local_target is not None:
        _save_link_local(local_target, local_link)
        return
    fs, rlink = url_to_fs(_to_str(link_path), **(storage_options or {}))
    _, rtarget = url_to_fs(_to_str(target), **(storage_options or {}))
    if rlink == rtarget:
        return
    if not fs.isfile(rtarget):
        raise CheckpointNotFoundError(f"Cannot link to checkpoint {_to_str(target)!r}: it does not exist.")
    parent = posixpath.dirname(rlink)
    if parent:
        with contextlib.suppress(FileExistsError):
            fs.makedirs(parent, exist_ok=True)
    tmp = _temp_name(rlink, sep="/")
    try:
        fs.cp_file(rtarget, tmp)
    except NotImplementedError:
        fs.pipe_file(rlink, fs.cat_file(rtarget))
        return
    except BaseException:
        _quiet_remote_rm(fs, tmp)
        raise
    _remote_commit(fs, tmp, rlink)


def _save_link_local(target: str, link: str) -> None:
    if os.path.abspath(target) == os.path.abspath(link):
        return
    if not os.path.exists(target):  # a file, or a sharded checkpoint directory
        raise CheckpointNotFoundError(f"Cannot link to checkpoint {target!r}: it does not exist.")
    link_dir = os.path.dirname(link)
    os.makedirs(link_dir, exist_ok=True)
    try:
        pointer = os.path.relpath(target, link_dir)
    except ValueError:  # different drives on Windows: no relative path exists
        pointer = target
    tmp = _temp_name(link, sep=os.sep)
    try:
        os.symlink(pointer, tmp)
    except (OSError, NotImplementedError):
        _atomic_write_local(link, lambda f: _copy_into(target, f))
        return
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(link_dir)


def _copy_into(source: str, f: IO[bytes]) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, f, length=16 * 1024 * 1024)


def _atomic_write_local(path: str, write: Callable[[IO[bytes]], None]) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = _temp_name(path, sep=os.sep)
    # O_EXCL: never share a temp file with another writer; 0o666 lets the umask decide the mode,
    # as a plain open() would have.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    # The rename is only durable once the directory entry is on disk. Windows cannot open a
    # directory for fsync (and its rename is journaled), some filesystems refuse it: best effort.
    if os.name == "nt":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(path: str, sep: str) -> str:
    head, _, name = path.rpartition(sep)
    tmp = f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    return f"{head}{sep}{tmp}" if head or path.startswith(sep) else tmp


def _remote_commit(fs: fsspec.AbstractFileSystem, tmp: str, dst: str) -> None:
    try:
        fs.mv(tmp, dst)
    except NotImplementedError:
        # No rename here: one whole-object write of the finished bytes is the nearest we can get.
        try:
            fs.pipe_file(dst, fs.cat_file(tmp))
        finally:
            _quiet_remote_rm(fs, tmp)
    except BaseException:
        _quiet_remote_rm(fs, tmp)
        raise


def _quiet_remote_rm(fs: fsspec.AbstractFileSystem, path: str) -> None:
    with contextlib.suppress(Exception):
        fs.rm_file(path)


def _reduce_defaultdict(d: collections.defaultdict) -> tuple[Any, ...]:
    # The default pickle of a defaultdict fills it with SETITEMS, which the weights-only
    # unpickler allows on plain dicts only; one constructor call from a plain dict loads safely.
    return (collections.defaultdict, (d.default_factory, dict(d)))


class _CheckpointPickler(pickle.Pickler):
    dispatch_table = {**copyreg.dispatch_table, collections.defaultdict: _reduce_defaultdict}


# torch.save takes a pickle *module* and subclasses its Pickler; this one differs from pickle
# only in how a defaultdict is written. The files remain ordinary torch checkpoints.
_checkpoint_pickle = ModuleType("fulmen_checkpoint_pickle")
_checkpoint_pickle.Pickler = _CheckpointPickler  # type: ignore[attr-defined]
_checkpoint_pickle.Unpickler = pickle.Unpickler  # type: ignore[attr-defined]
_checkpoint_pickle.dump = pickle.dump  # type: ignore[attr-defined]
_checkpoint_pickle.load = pickle.load  # type: ignore[attr-defined]


def _torch_save(obj: Any, f: IO[bytes]) -> None:
    torch.save(obj, f, pickle_module=_checkpoint_pickle)


# --------------------------------------------------------------------------------------------
# Loading

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
    display = _to_str(path)
    try:
        local = _local_path(path)
        if local is not None:
            if os.path.isdir(local):
                raise CheckpointError(_directory_message(display))
            if not os.path.isfile(local):
                raise CheckpointNotFoundError(_not_found_message(display))
            with open(local, "rb") as f:
                _check_header(f.read(2), display)
            return _torch_load(local, map_location, weights_only, mmap)
        fs, rpath = url_to_fs(display, **(storage_options or {}))
        if not fs.isfile(rpath):
            raise CheckpointNotFoundError(_not_found_message(display))
        with fs.open(rpath, "rb") as f:
            _check_header(f.read(2), display)
            f.seek(0)
            return _torch_load(f, map_location, weights_only)
    except CheckpointError:
        raise
    except FileNotFoundError as err:
        raise CheckpointNotFoundError(_not_found_message(display)) from err
    except pickle.UnpicklingError as err:
        refusal = _refusal_reason(str(err))
        if refusal is not None:
            reason, allowlistable = refusal
            message = (
                f"Refused to load checkpoint {display!r}: {reason} (loading a checkpoint never runs code from it)."
            )
            if opt_in:
                remedy = "pass `weights_only=False` to load it with full pickle"
                if allowlistable:
                    remedy += ", or allow just this type with `fulmen.utilities.cloud_io.add_safe_globals(...)`"
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


def _refusal_reason(message: str) -> tuple[str, bool] | None:
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
        f"Checkpoint {display!r} appears truncated or corrupted ({_short_reason(err)}). A copy or download"
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


def _short_reason(err: BaseException) -> str:
    message = str(err)
    if "WeightsUnpickler error:" in message:
        message = message.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reason = lines[0] if lines else type(err).__name__
    reason = reason.split(". ", 1)[0].rstrip(".")
    return reason[:200]


def _to_str(path: _PATH) -> str:
    return os.fsdecode(os.fspath(path))


def _local_path(path: _PATH) -> str | None:
    """The absolute OS path for a local path or ``file://`` URL, ``None`` for any other URL."""
    text = _to_str(path)
    if get_protocol(text) not in _LOCAL_PROTOCOLS:
        return None
    return os.path.abspath(os.path.expanduser(strip_protocol(text) if "://" in text else text))
