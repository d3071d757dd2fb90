"""Checkpoint directories: a sharded checkpoint that is written in parallel and published whole.

Sharded engines (DeepSpeed's ZeRO, FSDP) save one file per rank. fulmen gathers those files and
its own state (``fulmen_checkpoint.pt``: loop position, callbacks, every rank's RNG,
hyperparameters) in one directory that stands where a checkpoint file would. The promises of
:mod:`fulmen.checkpointing` hold for it too:

- every rank writes into a hidden staging directory next to the target
  (``.NAME.partial-TOKEN``); once all shards are written (and fsynced, a share per rank, so
  that a power cut cannot publish data that never reached the disk) rank zero publishes it
  with one rename, so a crash at any moment leaves the previous checkpoint as it was and a
  half-written directory never carries a checkpoint's name;
- replacing an existing checkpoint (``last.ckpt``) swaps the two directory entries atomically
  (``renameat2(RENAME_EXCHANGE)`` on Linux) before the old one is deleted;
- a directory counts as a checkpoint only when it holds ``fulmen_checkpoint.pt`` (published
  directories always do).

Sharded directories live on local (or mounted) filesystems; remote URLs are refused by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
import shutil
import threading
from typing import Any

from fulmen.checkpointing import atomic, confinement, remote
from fulmen.utilities.exceptions import CheckpointError

#: fulmen's own state inside a checkpoint directory; its presence marks the directory complete.
STATE_FILE = "fulmen_checkpoint.pt"
#: Key of the fulmen state that says how the shards are laid out (format, world size, ...).
SHARDED_KEY = "sharded"
_PARTIAL = ".partial-"
_DELETING = ".deleting-"


class ShardedStateRef(dict):
    """Stands for a module's or an optimizer's state that lives in the shards, not in this dict.

    A sharded strategy returns one from ``get_module_state_dict``/``get_optimizer_state``; its
    ``save_checkpoint`` writes the shards itself and keeps only a placeholder in fulmen's state,
    and its ``load_checkpoint`` returns one where the engine has already restored the state.
    A dict subclass, so code that reads a state dict sees a (possibly empty) mapping.
    """

    def __init__(self, kind: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind

    def placeholder(self) -> dict[str, str]:
        return {"__fulmen_sharded__": self.kind}

    @staticmethod
    def from_placeholder(value: Any) -> ShardedStateRef | None:
        if isinstance(value, dict) and set(value) == {"__fulmen_sharded__"}:
            return ShardedStateRef(value["__fulmen_sharded__"])
        return None


def to_placeholders(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every ``ShardedStateRef`` (as a value, or in a list value) made a plain placeholder."""
    return {key: _map_refs(value, lambda ref: ref.placeholder()) for key, value in state.items()}


def from_placeholders(state: dict[str, Any], resolve: Any = None) -> dict[str, Any]:
    """The inverse of :func:`to_placeholders`; ``resolve(ref)`` may replace each reference."""

    def convert(value: Any) -> Any:
        ref = ShardedStateRef.from_placeholder(value)
        if ref is None:
            return value
        return resolve(ref) if resolve is not None else ref

    return {
        key: [convert(v) for v in value] if isinstance(value, list) else convert(value) for key, value in state.items()
    }


def _map_refs(value: Any, fn: Any) -> Any:
    if isinstance(value, ShardedStateRef):
        return fn(value)
    if isinstance(value, list):
        return [fn(v) if isinstance(v, ShardedStateRef) else v for v in value]
    return value


# --------------------------------------------------------------------------------------- paths
def local_path(path: str | os.PathLike) -> str:
    """The OS path of a local checkpoint directory; a remote URL is refused with the reason."""
    local = remote.local_os_path(path)
    if local is None:
        raise CheckpointError(
            f"Sharded checkpoints are written to a local or mounted filesystem, not to {os.fspath(path)!s}. "
            "Save to a local path (and copy the directory afterwards), or consolidate it into one file."
        )
    return local


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a complete checkpoint directory (it holds fulmen's state file)."""
    local = remote.local_os_path(path)
    return local is not None and os.path.isfile(os.path.join(local, STATE_FILE))


def check_complete(path: str | os.PathLike) -> str:
    """``path`` as an OS path if it is a complete checkpoint directory, else a CheckpointError saying why
    (a symlink inside it that leads outside it, anywhere in the tree, is refused here)."""
    local = local_path(path)
    if not os.path.isdir(local):
        raise remote.CheckpointNotFoundError(f"Checkpoint directory {local!r} does not exist.")
    confinement.check_tree(local)
    if not os.path.isfile(confinement.inside(local, STATE_FILE)):
        raise CheckpointError(
            f"{local!r} is a directory but not a complete fulmen checkpoint: it has no {STATE_FILE}. A save that "
            "was interrupted never publishes its directory under the checkpoint's name; was this one copied "
            "partially, or written by another tool?"
        )
    return local


def new_token() -> str:
    """A name part that one save shares across ranks (rank zero draws it and broadcasts it)."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def staging_path(target: str | os.PathLike, token: str) -> str:
    """The hidden sibling directory a save writes into before it is published as ``target``."""
    local = local_path(target).rstrip(os.sep)
    head, name = os.path.split(local)
    return os.path.join(head, f".{name}{_PARTIAL}{token}")


def remove_stale_staging(target: str | os.PathLike) -> None:
    """Delete staging directories that crashed saves of ``target`` left behind (rank zero, before a save)."""
    local = local_path(target).rstrip(os.sep)
    head, name = os.path.split(local)
    prefix = f".{name}{_PARTIAL}"
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(head or "."):
            if entry.startswith(prefix):
                shutil.rmtree(os.path.join(head, entry), ignore_errors=True)


# -------------------------------------------------------------------------------------- writing
def write_state(directory: str, state: dict[str, Any]) -> None:
    """Write fulmen's state into the staging ``directory`` (rank zero; :func:`fsync_share` makes it durable)."""
    with open(os.path.join(directory, STATE_FILE), "wb") as f:
        atomic.torch_save(state, f)


def fsync_share(directory: str, rank: int, world_size: int) -> None:
    """fsync this rank's share of the files under ``directory``, so that ranks flush in parallel."""
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(directory) for name in names)
    for path in files[rank::world_size]:
        fsync_file(path)


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staging: str, target: str | os.PathLike, sync: bool = True) -> None:
    """Make the finished ``staging`` directory the checkpoint ``target`` in one step (rank zero only).

    A missing target is one rename. An existing one (a file, a link or a directory) is swapped
    with the new directory atomically where the OS can (Linux) and deleted in the background
    (a leftover is hidden and cleared by the next save); elsewhere it is moved aside first, so
    only a crash between the two renames leaves no entry under ``target``. ``sync``: fsync the
    directory entries, so that the rename survives a power cut (the files are fsynced before).
    """
    target = local_path(target).rstrip(os.sep)
    parent = os.path.dirname(target) or "."
    if sync:
        for directory, _, _ in os.walk(staging):
            atomic.fsync_dir(directory)
    if not os.path.lexists(target):
        os.rename(staging, target)
    elif _exchange(staging, target):
        _remove_in_background(staging)  # now the previous checkpoint, under the hidden staging name
    else:
        aside = f"{staging}{_DELETING}old"
        os.rename(target, aside)
        os.rename(staging, target)
        _remove_in_background(aside)
    if sync:
        atomic.fsync_dir(parent)


_removals: list[threading.Thread] = []


def _remove_in_background(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        # Not a daemon: the interpreter finishes the deletion before it exits.
        thread = threading.Thread(target=shutil.rmtree, args=(path,), kwargs={"ignore_errors": True})
        thread.start()
        _removals[:] = [t for t in _removals if t.is_alive()]
        _removals.append(thread)
    else:
        remove(path)


def wait_for_removals() -> None:
    """Wait until the checkpoints replaced by :func:`publish` are deleted (a strategy's teardown calls it)."""
    while _removals:
        _removals.pop().join()


def remove(path: str | os.PathLike) -> None:
    """Delete a checkpoint file, link or directory; a directory is renamed away first, so a
    deletion cut short never leaves a partial checkpoint under its name."""
    local = local_path(path).rstrip(os.sep)
    if os.path.islink(local) or os.path.isfile(local):
        with contextlib.suppress(FileNotFoundError):
            os.remove(local)
        return
    if not os.path.isdir(local):
        return
    head, name = os.path.split(local)
    aside = os.path.join(head, f".{name}{_DELETING}{new_token()}")
    try:
        os.rename(local, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


# ------------------------------------------------------------------------------ atomic exchange
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Any = None


def _exchange(a: str, b: str) -> bool:
    """Swap the directory entries ``a`` and ``b`` atomically; False where the OS cannot."""
    global _renameat2
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    if _renameat2 is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _renameat2 = getattr(libc, "renameat2", False)
        if _renameat2:
            _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if not _renameat2:
        return False
    result = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0  # EINVAL/ENOSYS (a filesystem without it): the caller falls back
