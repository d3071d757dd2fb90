"""Writing a checkpoint so that it is never torn: the old file or the new one, whatever happens.

Locally a file is written beside its target, flushed, fsynced and renamed into place; on an
object store it is written under a temporary key and moved onto the target, which the store
publishes only once complete. :func:`torch_save` is the one serialiser: ordinary torch files,
with defaultdicts written so that the weights-only unpickler can read them back.
"""

from __future__ import annotations

import collections
import contextlib
import copyreg
import os
import pickle
import posixpath
import secrets
import shutil
from collections.abc import Callable
from types import ModuleType
from typing import IO, Any

import fsspec
import torch
from fsspec.core import url_to_fs

from fulmen.checkpointing.remote import _PATH, CheckpointNotFoundError, local_os_path, to_str
from fulmen.utilities.exceptions import CheckpointError


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
    local = local_os_path(path)
    if local is not None:
        _atomic_write_local(local, lambda f: torch_save(obj, f))
        return
    fs, rpath = url_to_fs(to_str(path), **(storage_options or {}))
    parent = posixpath.dirname(rpath)
    if parent:
        with contextlib.suppress(FileExistsError):
            fs.makedirs(parent, exist_ok=True)
    tmp = _temp_name(rpath, sep="/")
    try:
        with fs.open(tmp, "wb") as f:
            torch_save(obj, f)
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
    local_link = local_os_path(link_path)
    local_target = local_os_path(target)
    if (local_link is None) != (local_target is None):
        raise CheckpointError(
            f"Cannot link {to_str(link_path)!r} to {to_str(target)!r}: both must be on the same filesystem."
        )
    if local_link is not None and local_target is not None:
        _save_link_local(local_target, local_link)
        return
    fs, rlink = url_to_fs(to_str(link_path), **(storage_options or {}))
    _, rtarget = url_to_fs(to_str(target), **(storage_options or {}))
    if rlink == rtarget:
        return
    if not fs.isfile(rtarget):
        raise CheckpointNotFoundError(f"Cannot link to checkpoint {to_str(target)!r}: it does not exist.")
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
    fsync_dir(link_dir)


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
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
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


def torch_save(obj: Any, f: IO[bytes]) -> None:
    torch.save(obj, f, pickle_module=_checkpoint_pickle)
