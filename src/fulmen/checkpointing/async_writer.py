"""Checkpoint writes in the background: the training loop waits for a copy of the state, not for the disk.

A durable save costs the time to serialise the state, write it, ``fsync`` it and rename it into
place (:func:`fulmen.checkpointing.atomic.atomic_save`). Only the first step needs the loop to hold
still: :func:`snapshot` copies every tensor of the checkpoint into fresh CPU memory (so training
that continues in place cannot change what is written), and one writer thread per process
(:func:`writer`) does the rest.

The promises of a synchronous save are kept:

- **Atomic publish**: the writer uses :func:`~fulmen.checkpointing.atomic.atomic_save`, so a file
  is the old one or the new one, never torn.
- **Order**: :meth:`AsyncCheckpointWriter.save` first waits for the pending save (one snapshot
  in memory at a time); work handed to :meth:`~AsyncCheckpointWriter.then` (deleting files that
  fell out of the top k, pointing ``last`` at a new file) runs only after every save handed over
  before it is on disk, and never after a save that failed.
- **No lost error**: a failed write is raised, naming the path, by the next :meth:`save`,
  :meth:`wait` or :meth:`then`; the Trainer waits at the end of every run (and before a
  signal-triggered save), and an ``atexit`` hook waits for anything still pending.
"""

from __future__ import annotations

import atexit
import collections
import copy
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fulmen.checkpointing.atomic import atomic_save
from fulmen.utilities.exceptions import CheckpointError

# Leaves that cannot change after the snapshot: no copy needed.
_IMMUTABLE = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device, torch.Size, range)


# ------------------------------------------------------------------------------------ snapshot
def snapshot(obj: Any) -> Any:
    """A copy of ``obj`` that nothing done to the original later can change.

    Tensors are copied into new CPU memory; tensors that share memory (tied weights, views)
    still share it in the copy, as ``torch.save`` would have written them. Dicts (their type,
    ``default_factory`` included), lists and tuples are rebuilt; other objects are deep-copied,
    or kept as they are when they cannot be copied.
    """
    return _Snapshot().copy(obj)


class _Snapshot:
    def __init__(self, buffers: dict[int, list[Any]] | None = None) -> None:
        # One copy per storage, so that tensors sharing memory keep sharing it.
        self.storages: dict[tuple[str, int], Any] = {}
        # CPU storages of a finished snapshot, by size: copying into memory already touched once
        # costs a memcpy; fresh memory costs a page fault per page on top.
        self._buffers = buffers if buffers is not None else {}

    def copy(self, obj: Any) -> Any:
        if isinstance(obj, Tensor):
            return self._tensor(obj)
        if isinstance(obj, _IMMUTABLE):
            return obj
        if isinstance(obj, dict):
            new = copy.copy(obj)  # keeps the type and, for a defaultdict, its factory
            for key in list(new):
                new[key] = self.copy(new[key])
            return new
        if isinstance(obj, list):
            return type(obj)(self.copy(v) for v in obj) if type(obj) is list else _copy_list(obj, self.copy)
        if isinstance(obj, tuple):
            items = [self.copy(v) for v in obj]
            if type(obj) is tuple:
                return tuple(items)
            try:  # a namedtuple takes its fields one by one, other subclasses an iterable
                return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
            except Exception:
                return copy.deepcopy(obj)
        try:
            return copy.deepcopy(obj)
        except Exception:  # written as it is at write time, as a synchronous save would write it now
            return obj

    def _tensor(self, tensor: Tensor) -> Tensor:
        t = tensor.detach()
        if t.layout != torch.strided or t.is_quantized or t.is_nested or type(t) is not Tensor:
            copied = t.cpu() if t.device.type != "cpu" else t.clone()
        else:
            storage = t.untyped_storage()
            key = (str(t.device), storage.data_ptr())
            cpu_storage = self.storages.get(key)
            if cpu_storage is None:
                spare = self._buffers.get(storage.nbytes())
                if spare:
                    cpu_storage = spare.pop().copy_(storage)
                else:
                    cpu_storage = storage.cpu() if t.device.type != "cpu" else storage.clone()
                self.storages[key] = cpu_storage
            copied = torch.empty(0, dtype=t.dtype).set_(cpu_storage, t.storage_offset(), t.size(), t.stride())
        if isinstance(tensor, torch.nn.Parameter):
            return torch.nn.Parameter(copied, requires_grad=tensor.requires_grad)
        return copied


def _copy_list(obj: list, fn: Callable[[Any], Any]) -> list:
    new = copy.copy(obj)
    new[:] = [fn(v) for v in obj]
    return new


# -------------------------------------------------------------------------------------- writer
class AsyncCheckpointWriter:
    """One background thread that writes checkpoints and runs the work that must follow them, in order."""

    def __init__(self, write: Callable[..., None] | None = None) -> None:
        #: ``write(obj, path, storage_options)``; ``None``: :func:`~fulmen.checkpointing.atomic.atomic_save`.
        #: It must not keep ``obj``: the memory of its tensors is reused by the next snapshot.
        self.write = write
        self._cond = threading.Condition()
        self._jobs: collections.deque[tuple[str, Callable[[], None]]] = collections.deque()
        self._busy = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._buffers: dict[int, list[Any]] = {}

    @property
    def pending(self) -> bool:
        """Whether a save or its follow-up work is queued or running."""
        with self._cond:
            return self._busy or bool(self._jobs)

    def save(
        self,
        checkpoint: dict[str, Any],
        path: str,
        storage_options: dict | None = None,
        write: Callable[..., None] | None = None,
    ) -> None:
        """Wait for the pending save, copy ``checkpoint``, and write the copy to ``path`` in the background
        (with ``write(obj, path, storage_options)`` when given: a ``CheckpointIO``'s own save)."""
        self.wait()
        copier = _Snapshot(self._buffers)
        state = copier.copy(checkpoint)
        write = write or self.write or atomic_save

        def job() -> None:
            write(state, path, storage_options)
            # This copy's memory serves the next snapshot (at most one copy's worth is kept).
            buffers: dict[int, list[Any]] = {}
            for storage in copier.storages.values():
                buffers.setdefault(storage.nbytes(), []).append(storage)
            self._buffers = buffers

        self._submit(f"Asynchronous checkpoint save to {path!r} failed", job)

    def submit(self, job: Callable[[], None], failure: str) -> None:
        """Run ``job`` (a whole save its caller snapshotted itself, e.g. a sharded one) in the background,
        in order with the saves and follow-ups handed over before it; ``failure`` prefixes its error."""
        self._submit(failure, job)

    def release(self) -> None:
        """Free the memory kept for the next snapshot (when no save is pending; it never blocks or raises)."""
        with self._cond:
            if not self._busy and not self._jobs:
                self._buffers = {}

    def then(self, fn: Callable[[], None], what: str = "work after a checkpoint save") -> None:
        """Run ``fn`` once every save handed over so far is on disk: now when none is pending.

        It is skipped when one of those saves failed (so a file is never deleted in favour of one
        that was not written); that failure is raised here or by the next call.
        """
        with self._cond:
            idle = not self._busy and not self._jobs
        if idle:
            self._raise_error()
            fn()
            return
        self._submit(f"{what} failed", fn)

    def wait(self) -> None:
        """Block until every save and follow-up handed over is done; raise the first failure among them."""
        with self._cond:
            while self._busy or self._jobs:
                self._cond.wait()
        self._raise_error()

    def _raise_error(self) -> None:
        with self._cond:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _submit(self, failure: str, job: Callable[[], None]) -> None:
        with self._cond:
            self._jobs.append((failure, job))
            if self._thread is None or not self._thread.is_alive():
                # A daemon thread: it never keeps the interpreter alive by itself; the atexit
                # hook below waits for its work instead.
                self._thread = threading.Thread(target=self._work, name="fulmen-checkpoint-writer", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                failure, job = self._jobs.popleft()
                self._busy = True
                skip = self._error is not None
            try:
                if not skip:
                    job()
            except BaseException as err:  # kept for the loop's thread, which raises it
                error = CheckpointError(f"{failure}: {type(err).__name__}: {err}")
                error.__cause__ = err
                with self._cond:
                    self._error = error
            finally:
                job = None  # the snapshot is freed now, not when the next job arrives
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


_writer: AsyncCheckpointWriter | None = None
_writer_lock = threading.Lock()
_all_writers: weakref.WeakSet[AsyncCheckpointWriter] = weakref.WeakSet()


def writer() -> AsyncCheckpointWriter:
    """The process's checkpoint writer (created on first use; its thread starts with the first save)."""
    global _writer
    with _writer_lock:
        if _writer is None:
            _writer = AsyncCheckpointWriter()
            _all_writers.add(_writer)
        return _writer


def _forget_in_child() -> None:
    # A forked child has no writer thread (and maybe a lock held by it): it starts afresh.
    global _writer, _writer_lock, _all_writers
    _writer, _writer_lock, _all_writers = None, threading.Lock(), weakref.WeakSet()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register
def _wait_at_exit() -> None:
    for w in list(_all_writers):
        try:
            w.wait()
        except CheckpointError as err:
            import sys

            print(f"fulmen: {err}", file=sys.stderr)
