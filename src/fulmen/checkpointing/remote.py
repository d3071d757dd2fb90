"""Where a checkpoint lives: local paths and any fsspec URL (``s3://``, ``gs://``, ``memory://``, ...).

Every checkpoint path fulmen touches goes through these functions, so a local folder and an
object store behave alike: existence, listing, folders and deletion. A local path (or
``file://`` URL) is handled with ``os`` directly; anything else through its fsspec filesystem,
imported only when such a URL is used.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Union

import fsspec
from fsspec.core import strip_protocol, url_to_fs
from fsspec.utils import get_protocol

from fulmen.utilities.exceptions import CheckpointError

_PATH = Union[str, os.PathLike]

_LOCAL_PROTOCOLS = ("file", "local")


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist; catchable as ``FileNotFoundError`` too."""


def get_filesystem(path: _PATH, **storage_options: Any) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem that serves ``path`` (local paths and ``file://`` give the local one)."""
    fs, _ = url_to_fs(to_str(path), **storage_options)
    return fs


def is_local(path: _PATH) -> bool:
    """Whether ``path`` is on the local filesystem; decided from the URL alone, nothing is imported."""
    return get_protocol(to_str(path)) in _LOCAL_PROTOCOLS


def file_exists(path: _PATH, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``path`` exists (a dangling local symlink does not count)."""
    local = local_os_path(path)
    if local is not None:
        return os.path.exists(local)
    fs, rpath = url_to_fs(to_str(path), **(storage_options or {}))
    return fs.exists(rpath)


def makedirs(path: _PATH, exist_ok: bool = True, storage_options: dict[str, Any] | None = None) -> None:
    """Create the directory ``path`` and its parents (object stores without directories accept it)."""
    local = local_os_path(path)
    if local is not None:
        os.makedirs(local, exist_ok=exist_ok)
        return
    fs, rpath = url_to_fs(to_str(path), **(storage_options or {}))
    fs.makedirs(rpath, exist_ok=exist_ok)


def remove_file(path: _PATH, storage_options: dict[str, Any] | None = None) -> None:
    """Delete the file (or the link itself, for a symlink) at ``path``; a missing file is fine.

    A local checkpoint directory (sharded strategies) is deleted whole, renamed away first.
    """
    local = local_os_path(path)
    if local is not None:
        if os.path.isdir(local) and not os.path.islink(local):
            from fulmen.checkpointing import sharded_dir

            sharded_dir.remove(local)
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(local)
        return
    fs, rpath = url_to_fs(to_str(path), **(storage_options or {}))
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(rpath)


def to_str(path: _PATH) -> str:
    return os.fsdecode(os.fspath(path))


def local_os_path(path: _PATH) -> str | None:
    """The absolute OS path for a local path or ``file://`` URL, ``None`` for any other URL."""
    text = to_str(path)
    if get_protocol(text) not in _LOCAL_PROTOCOLS:
        return None
    return os.path.abspath(os.path.expanduser(strip_protocol(text) if "://" in text else text))
