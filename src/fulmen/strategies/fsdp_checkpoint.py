"""FSDP's sharded checkpoints: torch's distributed checkpoint (DCP) inside a fulmen checkpoint directory.

``FSDPStrategy(state_dict_type="sharded")`` saves every rank's shards of the module and the
optimizers with DCP (each rank writes its own ``__R_0.distcp`` file, in parallel) into the
staging directory of :mod:`fulmen.utilities.checkpoint_dir`, rank zero adds fulmen's state,
and the directory is published whole. DCP re-shards on load, so a directory written by N
processes loads on M, or gathered on one process without a process group (consolidation).

Loading never runs code from the files: DCP keeps its index in a pickle (``.metadata``) and
non-tensor values (an optimizer's learning rate) as ``torch.save`` bytes; here the index is read
with an unpickler that knows only DCP's record types, and the bytes with the weights-only
unpickler.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from fulmen.utilities import checkpoint_dir, cloud_io
from fulmen.utilities.checkpoint_dir import ShardedStateRef
from fulmen.utilities.exceptions import CheckpointError

FORMAT = "fsdp"
_METADATA_TYPES = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    *(("pathlib", name) for name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Reads DCP's index: its own record classes, torch dtypes and sizes, paths; nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch.distributed.checkpoint.metadata" or (module, name) in _METADATA_TYPES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(
            f"The checkpoint index refers to {module}.{name}, which a distributed checkpoint never holds; "
            "it is not loaded (loading would run code from the file)."
        )


def _reader(directory: str) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            rank = kwargs.get("rank")
            path = os.path.join(directory, ".metadata" if rank is None else f"__{rank}.metadata")
            try:
                with open(path, "rb") as f:
                    metadata = _MetadataUnpickler(f).load()
            except pickle.UnpicklingError as err:
                self.refused = str(err)  # DCP folds it into a long report; fulmen raises it alone
                raise
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(directory)


def _safe_bytes(value: io.BytesIO) -> Any:
    with torch.serialization.safe_globals(cloud_io.get_safe_globals()):
        return torch.load(value, map_location="cpu", weights_only=True)


def _planner(base: type) -> type:
    """``base`` (a DCP load planner) reading non-tensor values with the weights-only unpickler."""

    class SafeLoadPlanner(base):  # type: ignore[misc, valid-type]
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            from torch.distributed.checkpoint._traverse import set_element

            loaded = _safe_bytes(value)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return SafeLoadPlanner


# ------------------------------------------------------------------------------------------ save
def has_refs(checkpoint: dict[str, Any]) -> bool:
    return any(isinstance(ref, ShardedStateRef) for _, ref in _refs(checkpoint))


def _refs(checkpoint: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(dcp key, value)`` for each top-level value and list item that may be a reference."""
    found = []
    for key, value in checkpoint.items():
        if isinstance(value, list):
            found.extend((f"{key}.{i}", item) for i, item in enumerate(value) if isinstance(item, ShardedStateRef))
        elif isinstance(value, ShardedStateRef):
            found.append((key, value))
    return found


def save(strategy: Any, checkpoint: dict[str, Any], filepath: str, asynchronous: bool = False) -> None:
    """Every rank writes its shards into a staging directory that rank zero then publishes as ``filepath``.

    ``asynchronous``: the loop waits only while the shards are read and copied into CPU memory;
    DCP's planning, the writes, the fsync and the publish run on the process's checkpoint writer
    thread, their collectives on a process group of their own (never the one training uses).
    """
    from fulmen.utilities import async_checkpoint

    token = strategy.broadcast(checkpoint_dir.new_token() if strategy.is_global_zero else None)
    staging = checkpoint_dir.staging_path(filepath, token)
    if strategy.is_global_zero:
        checkpoint_dir.remove_stale_staging(filepath)
    shards: dict[str, Any] = {}
    module_key = None
    for key, ref in _refs(checkpoint):
        shards[key] = ref.read()
        if ref.kind == "module" and module_key is None:
            module_key = key
    state = None
    if strategy.is_global_zero:
        state = checkpoint_dir.to_placeholders(checkpoint)
        state[checkpoint_dir.SHARDED_KEY] = {
            "format": FORMAT,
            "world_size": strategy.world_size,
            "module_key": module_key,
        }
    if not asynchronous:
        _write(strategy, shards, state, staging, filepath, group=None)
        return
    group = strategy.checkpoint_process_group()
    shards, state = async_checkpoint.snapshot(shards), async_checkpoint.snapshot(state)
    async_checkpoint.writer().submit(
        lambda: _write(strategy, shards, state, staging, filepath, group),
        f"Asynchronous sharded save to {filepath!r} failed",
    )


def _write(strategy: Any, shards: dict[str, Any], state: Any, staging: str, filepath: str, group: Any) -> None:
    import torch.distributed.checkpoint as dcp

    writer = dcp.FileSystemWriter(staging, sync_files=strategy.sync_files)
    dcp.save(shards, storage_writer=writer, process_group=group)
    if state is not None:
        checkpoint_dir.write_state(staging, state)
        if strategy.sync_files:
            checkpoint_dir.fsync_file(os.path.join(staging, checkpoint_dir.STATE_FILE))
    strategy.publish_checkpoint_dir(staging, filepath, group)


# ------------------------------------------------------------------------------------------ load
def load_state(directory: str, weights_only: bool) -> dict[str, Any] | None:
    """fulmen's state from ``directory``, each reference told where its shards are (``ref.source``);
    ``None`` when the directory holds another engine's shards."""
    from fulmen.strategies.consolidate import read_sharded_state

    local, state = read_sharded_state(directory, weights_only)
    if state.pop(checkpoint_dir.SHARDED_KEY).get("format") != FORMAT:
        return None
    result = {}
    for key, value in state.items():
        if isinstance(value, list):
            result[key] = [_resolve(item, f"{key}.{i}", local) for i, item in enumerate(value)]
        else:
            result[key] = _resolve(value, key, local)
    return result


def _resolve(value: Any, key: str, directory: str) -> Any:
    ref = ShardedStateRef.from_placeholder(value)
    if ref is None:
        return value
    ref.source = (directory, key)
    return ref


def load_into(ref: ShardedStateRef, template: dict[str, Any]) -> dict[str, Any]:
    """``template`` (this rank's state dict, sharded as the running model is) filled from ``ref``'s shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    source = getattr(ref, "source", None)
    if source is None:
        raise CheckpointError("This sharded state comes from no checkpoint directory; load one saved by FSDPStrategy.")
    directory, key = source
    wrapped = {key: template}
    reader = _reader(directory)
    with _refusals_raised(reader, directory):
        dcp.load(wrapped, storage_reader=reader, planner=_planner(DefaultLoadPlanner)())
    return wrapped[key]


@contextlib.contextmanager
def _refusals_raised(reader: Any, directory: str) -> Iterator[None]:
    """A refused index as a CheckpointError of its own (not inside DCP's report of every rank)."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    try:
        yield
    except (Exception, CheckpointException) as err:
        refused = getattr(reader, "refused", None)
        if refused is None:
            raise
        raise CheckpointError(f"{directory!r}: {refused}") from err


def full_module_state(directory: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The module's whole state dict from a sharded directory, on one process without a process group."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    key = meta.get("module_key") or "state_dict"
    state: dict[str, Any] = {}
    planner = _planner(_EmptyStateDictLoadPlanner)(keys={key})
    reader = _reader(directory)
    with _refusals_raised(reader, directory):
        _load_state_dict(state, storage_reader=reader, planner=planner, no_dist=True)
    return dict(state[key])


# ---------------------------------------------------------------------------------- references
class ModuleShards(ShardedStateRef):
    """The sharded module's state, read when the checkpoint is written (names without fulmen's wrapper)."""

    def __init__(self, target: nn.Module, prefix: str) -> None:
        super().__init__("module")
        self.target, self.prefix = target, prefix

    def read(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(self.target)
        return strip_prefix(state, self.prefix)


class OptimizerShards(ShardedStateRef):
    def __init__(self, module: nn.Module, optimizer: Optimizer) -> None:
        super().__init__("optimizer")
        self.module, self.optimizer = module, optimizer

    def read(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.module, self.optimizer)


def strip_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {name[len(prefix) :]: value for name, value in state.items()} if prefix else state


def add_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {prefix + name: value for name, value in state.items()} if prefix else state


__all__ = ["FORMAT", "ModuleShards", "OptimizerShards", "full_module_state", "load_into", "load_state", "save"]
