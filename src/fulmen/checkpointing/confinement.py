"""Every file a checkpoint directory names stays inside that directory.

A sharded checkpoint is a directory whose files name each other: DCP's index lists the shard
files, fulmen's state names DeepSpeed's tag folder. A tampered copy could name ``../x`` or hold
a symlink that leads elsewhere, making a load read (or a later save overwrite) files the user
never pointed at. So names are checked before anything is read: a tag is one plain name, a
relative path has no ``..`` and no root, and after resolving symlinks every file is under the
directory's own resolved path.
"""

from __future__ import annotations

import os
from typing import Any

from fulmen.utilities.exceptions import CheckpointError


def refused(checkpoint: str, file: str, reason: str) -> CheckpointError:
    """The one shape of a refused load: the checkpoint, the file in it, and what was wrong."""
    return CheckpointError(f"Refused to load checkpoint {checkpoint!r}: {file!r} {reason.rstrip('.')}.")


def plain_name(value: Any, what: str, checkpoint: str) -> str:
    """``value`` if it is one plain file name (no separator, not ``.``/``..``); else a CheckpointError."""
    if (
        not isinstance(value, str)
        or not value
        or value in (".", "..")
        or "\0" in value
        or os.sep in value
        or (os.altsep and os.altsep in value)
    ):
        raise CheckpointError(
            f"Refused to load checkpoint {checkpoint!r}: its {what} is {value!r}, but it must be one plain "
            "name inside the checkpoint directory."
        )
    return value


def inside(checkpoint: str, relative: Any, what: str = "file") -> str:
    """The path of ``relative`` in the directory ``checkpoint``, refused unless it resolves inside it."""
    if not isinstance(relative, (str, os.PathLike)):
        raise CheckpointError(
            f"Refused to load checkpoint {checkpoint!r}: a {what} name is {relative!r}, not a relative path."
        )
    text = os.fspath(relative)
    parts = text.replace(os.altsep or os.sep, os.sep).split(os.sep)
    if not text or "\0" in text or os.path.isabs(text) or ".." in parts:
        raise refused(checkpoint, text, f"is named as a {what}, but it is not a path inside the checkpoint directory")
    path = os.path.join(checkpoint, text)
    if not _within(os.path.realpath(path), os.path.realpath(checkpoint)):
        raise refused(checkpoint, text, f"(a {what}) leads outside the checkpoint directory through a symlink")
    return path


def check_tree(checkpoint: str) -> None:
    """Refuse a directory any entry of which (a symlink, at any depth) resolves outside it."""
    root = os.path.realpath(checkpoint)
    for directory, subdirs, names in os.walk(checkpoint):
        for name in (*subdirs, *names):
            path = os.path.join(directory, name)
            if os.path.islink(path) and not _within(os.path.realpath(path), root):
                relative = os.path.relpath(path, checkpoint)
                raise refused(checkpoint, relative, "is a symlink that leads outside the checkpoint directory")


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
