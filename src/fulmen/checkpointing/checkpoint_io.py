"""Lightning's checkpoint I/O plugins: ``CheckpointIO``, ``TorchCheckpointIO``, ``AsyncCheckpointIO``.

A strategy writes, reads and removes whole-file checkpoints through its ``checkpoint_io``
(``plugins=[...]`` or ``checkpoint_io=`` on the strategy). ``TorchCheckpointIO`` is fulmen's
default: an atomic write (the old file or the new one, never a torn one) and a weights-only read.
``AsyncCheckpointIO`` hands each save to the process's background writer, which copies the
state first so that training goes on at once. A subclass of ``CheckpointIO`` that implements the
three methods may store checkpoints anywhere. Sharded checkpoints (FSDP, DeepSpeed) keep their
own directory formats.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

__all__ = ["AsyncCheckpointIO", "CheckpointIO", "TorchCheckpointIO"]


class CheckpointIO(ABC):
    """How one checkpoint dict is saved to, loaded from and removed at a path."""

    #: Whether ``save_checkpoint`` returns before the file is written (saves run in the background).
    asynchronous: bool = False
    #: Whether a path names a file that fsspec can see; the Trainer then checks that ``ckpt_path``
    #: exists before resuming, for a clearer error. A CheckpointIO storing elsewhere leaves it False.
    paths_are_files: bool = False

    @abstractmethod
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        """Write ``checkpoint`` to ``path``."""

    @abstractmethod
    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Read the checkpoint at ``path`` (tensors placed by ``map_location``, as ``torch.load`` does)."""

    @abstractmethod
    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        """Delete the checkpoint at ``path``."""

    def teardown(self) -> None:
        """Called when the strategy is torn down (an asynchronous writer waits for its saves)."""


class TorchCheckpointIO(CheckpointIO):
    """``torch.save`` written atomically (beside, fsynced, renamed) and a weights-only ``torch.load``.

    Paths may be local or fsspec URLs. Loading a directory that a sharded strategy wrote gives its
    weights merged into one dict. ``weights_only=False`` is the explicit opt-in for a trusted file
    that holds types beyond fulmen's allowlist.
    """

    paths_are_files = True

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        from fulmen.checkpointing.atomic import atomic_save

        if storage_options is not None and not isinstance(storage_options, dict):
            raise TypeError(
                f"`storage_options` is a {type(storage_options).__name__}; TorchCheckpointIO takes a dict of "
                "fsspec options (or None)."
            )
        atomic_save(checkpoint, os.fspath(path), storage_options=storage_options)

    def load_checkpoint(
        self,
        path: str | os.PathLike,
        map_location: Any = None,
        weights_only: bool | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        import torch

        from fulmen.checkpointing import remote
        from fulmen.checkpointing.safe_reading import safe_load

        weights_only = True if weights_only is None else weights_only
        local = None if storage_options else remote.local_os_path(os.fspath(path))
        if local is not None and os.path.isdir(local):
            # A sharded directory (DeepSpeed, FSDP): its weights merged, as one file would hold them.
            from fulmen.checkpointing.consolidation import load_consolidated

            return load_consolidated(path, weights_only=weights_only)
        location = map_location if map_location is not None else torch.device("cpu")
        return safe_load(path, map_location=location, weights_only=weights_only, storage_options=storage_options)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        from fulmen.checkpointing import remote

        remote.remove_file(os.fspath(path))


class AsyncCheckpointIO(CheckpointIO):
    """Saves in the background through ``checkpoint_io`` (default ``TorchCheckpointIO``).

    ``save_checkpoint`` waits for the previous save, copies the tensors into CPU memory and
    returns; the write runs in the process's checkpoint writer thread, in order with every other
    background save. A failed write is raised by the next save, load or ``teardown``. Loading
    and removing wait for pending saves first, so they never see a half-written state.
    """

    asynchronous = True

    @property
    def paths_are_files(self) -> bool:  # type: ignore[override]
        return self.checkpoint_io.paths_are_files

    def __init__(self, checkpoint_io: CheckpointIO | None = None) -> None:
        if checkpoint_io is not None and not isinstance(checkpoint_io, CheckpointIO):
            raise TypeError(
                f"`checkpoint_io={checkpoint_io!r}` is not a CheckpointIO; pass TorchCheckpointIO(), your own "
                "CheckpointIO subclass, or None."
            )
        if checkpoint_io is not None and checkpoint_io.asynchronous:
            raise ValueError("`checkpoint_io` is asynchronous already; pass the synchronous CheckpointIO it wraps.")
        self.checkpoint_io = checkpoint_io if checkpoint_io is not None else TorchCheckpointIO()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        from fulmen.checkpointing import async_writer

        inner = self.checkpoint_io
        write = None if type(inner) is TorchCheckpointIO else inner.save_checkpoint
        async_writer.writer().save(checkpoint, os.fspath(path), storage_options, write=write)

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        self._wait()
        return self.checkpoint_io.load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        from fulmen.checkpointing import async_writer

        # After every pending save (a file is never removed in favour of one not yet written).
        async_writer.writer().then(lambda: self.checkpoint_io.remove_checkpoint(path), "removing a checkpoint")

    def teardown(self) -> None:
        self._wait()
        self.checkpoint_io.teardown()

    @staticmethod
    def _wait() -> None:
        from fulmen.checkpointing import async_writer

        async_writer.writer().wait()
