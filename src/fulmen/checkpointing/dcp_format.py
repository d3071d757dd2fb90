"""FSDP's sharded checkpoints: torch's distributed checkpoint (DCP) inside a fulmen checkpoint directory.

``FSDPStrategy(state_dict_type="sharded")`` saves every rank's shards of the module and the
optimizers with DCP (each rank writes its own ``__R_0.distcp`` file, in parallel) into the
staging directory of :mod:`fulmen.checkpointing.sharded_dir`, rank zero adds fulmen's state,
and the directory is published whole. DCP re-shards on load, so a directory written by N
processes loads on M, or gathered on one process without a process group (consolidation).

Loading never runs code from the files and never reads outside the directory: DCP keeps its
index in a pickle (``.metadata``) and non-tensor values (an optimizer's learning rate) as
``torch.save`` bytes; here the index is read with an unpickler that knows exactly DCP's record
types, every shard file it names must lie inside the directory, exist and be long enough before
anything else is read, and the bytes go through the weights-only unpickler. Every fault is a
``CheckpointError`` naming the checkpoint and the file, raised alike on every rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pickle
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.futures import Future
from torch.optim import Optimizer

from fulmen.checkpointing import confinement, restricted_unpickler, safe_reading, sharded_dir
from fulmen.checkpointing.sharded_dir import ShardedStateRef
from fulmen.utilities.exceptions import CheckpointError

FORMAT = "fsdp"
INDEX = ".metadata"
_DCP = "torch.distributed.checkpoint.metadata"
# Exactly what DCP's index holds: its record classes, tensor sizes, dtypes and layouts, paths.
_INDEX_NAMES = {
    *(
        (_DCP, name)
        for name in (
            "Metadata",
            "MetadataIndex",
            "StorageMeta",
            "TensorProperties",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "_MEM_FORMAT_ENCODING",
        )
    ),  # fmt: skip
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    *(("pathlib", name) for name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")),
}
_index_allowed: dict[tuple[str, str], Any] | None = None


def index_allowed() -> dict[tuple[str, str], Any]:
    """The exact ``(module, name)`` pairs a DCP index may name (torch's dtypes by their plain names)."""
    global _index_allowed
    if _index_allowed is None:
        dtypes = {("torch", name) for name, value in vars(torch).items() if isinstance(value, torch.dtype)}
        _index_allowed = restricted_unpickler.resolve(sorted(_INDEX_NAMES | dtypes))
    return _index_allowed


def read_index(directory: str) -> Any:
    """DCP's index of ``directory``, checked: only DCP's records, every shard file inside the directory,
    present and long enough for the entries it holds. Any fault is a CheckpointError naming the file."""
    from torch.distributed.checkpoint.metadata import Metadata

    path = confinement.inside(directory, INDEX, "index")
    try:
        with open(path, "rb") as f:
            metadata = restricted_unpickler.RestrictedUnpickler(f, index_allowed(), "The index").load()
    except FileNotFoundError as err:
        raise confinement.refused(directory, INDEX, "(DCP's index) is missing") from err
    except restricted_unpickler.Refused as err:
        raise confinement.refused(directory, INDEX, f"was refused: {err}") from err
    except Exception as err:  # a torn or garbled pickle fails in many ways
        raise confinement.refused(directory, INDEX, f"is truncated or corrupted ({type(err).__name__}: {err})") from err
    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
        raise confinement.refused(directory, INDEX, f"holds a {type(metadata).__name__}, not DCP's index")
    _check_shard_files(directory, metadata.storage_data)
    _check_values(directory, metadata)
    return metadata


def _check_shard_files(directory: str, storage_data: dict[Any, Any]) -> None:
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    needed: dict[str, int] = {}
    for info in storage_data.values():
        if not isinstance(info, _StorageInfo) or not isinstance(info.offset, int) or not isinstance(info.length, int):
            raise confinement.refused(directory, INDEX, f"holds an entry {info!r} that is not a shard address")
        name = os.fspath(info.relative_path) if isinstance(info.relative_path, os.PathLike) else info.relative_path
        confinement.inside(directory, name, "shard file")
        needed[name] = max(needed.get(name, 0), info.offset + info.length)
    for name, end in sorted(needed.items()):
        try:
            size = os.path.getsize(os.path.join(directory, name))
        except FileNotFoundError as err:
            raise confinement.refused(directory, name, "(a shard file the index names) is missing") from err
        if size < end:
            raise confinement.refused(
                directory, name, f"is truncated: {size} bytes, but the index places data up to byte {end}"
            )


def _check_values(directory: str, metadata: Any) -> None:
    """Unpickle every non-tensor value (an optimizer's step, betas, learning rate: small) with the
    weights-only unpickler now, so that a refused one stops every loader, whichever keys it reads."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    for index, info in metadata.storage_data.items():
        if not isinstance(metadata.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            continue
        if info.transform_descriptors:  # stored transformed (compressed): read when loaded, as safely
            continue
        with open(os.path.join(directory, info.relative_path), "rb") as f:
            f.seek(info.offset)
            data = f.read(info.length)
        try:
            _safe_bytes(io.BytesIO(data))
        except Exception as err:
            raise _shard_error(directory, str(info.relative_path), err) from err


def _safe_bytes(value: io.BytesIO) -> Any:
    with torch.serialization.safe_globals(safe_reading.get_safe_globals()):
        return torch.load(value, map_location="cpu", weights_only=True)


def _reader(directory: str) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    metadata = read_index(directory)  # every rank checks the same files: every rank refuses alike

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

        def read_data(self, plan: Any, planner: Any) -> Any:
            # File by file, so that a failure names the shard file it came from.
            by_file: dict[str, list[Any]] = {}
            for item in plan.items:
                by_file.setdefault(str(metadata.storage_data[item.storage_index].relative_path), []).append(item)
            for name, items in by_file.items():
                try:
                    super().read_data(dataclasses.replace(plan, items=items), planner).wait()
                except CheckpointError:
                    raise
                except Exception as err:
                    raise _shard_error(directory, name, err) from err
            done: Future[None] = Future()
            done.set_result(None)
            return done

    return SafeFileSystemReader(directory)


def _shard_error(directory: str, name: str, err: BaseException) -> CheckpointError:
    if isinstance(err, pickle.UnpicklingError):
        reason = safe_reading.refusal_reason(str(err))
        what = reason[0] if reason else safe_reading.short_reason(err)
        return confinement.refused(directory, name, f"was refused: {what} (loading never runs code from it)")
    return confinement.refused(directory, name, f"is truncated or corrupted ({safe_reading.short_reason(err)})")


def _planner(base: type, directory: str) -> type:
    """``base`` (a DCP load planner) reading non-tensor values with the weights-only unpickler."""

    class SafeLoadPlanner(base):  # type: ignore[misc, valid-type]
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            from torch.distributed.checkpoint._traverse import set_element

            try:
                loaded = _safe_bytes(value)
            except Exception as err:
                name = str(self.metadata.storage_data[read_item.storage_index].relative_path)
                raise _shard_error(directory, name, err) from err
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
    from fulmen.checkpointing import async_writer

    token = strategy.broadcast(sharded_dir.new_token() if strategy.is_global_zero else None)
    staging = sharded_dir.staging_path(filepath, token)
    if strategy.is_global_zero:
        sharded_dir.remove_stale_staging(filepath)
    shards: dict[str, Any] = {}
    module_key = None
    for key, ref in _refs(checkpoint):
        shards[key] = ref.read()
        if ref.kind == "module" and module_key is None:
            module_key = key
    state = None
    if strategy.is_global_zero:
        state = sharded_dir.to_placeholders(checkpoint)
        state[sharded_dir.SHARDED_KEY] = {
            "format": FORMAT,
            "world_size": strategy.world_size,
            "module_key": module_key,
        }
    if not asynchronous:
        _write(strategy, shards, state, staging, filepath, group=None)
        return
    group = strategy.checkpoint_process_group()
    shards, state = async_writer.snapshot(shards), async_writer.snapshot(state)
    async_writer.writer().submit(
        lambda: _write(strategy, shards, state, staging, filepath, group),
        f"Asynchronous sharded save to {filepath!r} failed",
    )


def _write(strategy: Any, shards: dict[str, Any], state: Any, staging: str, filepath: str, group: Any) -> None:
    import torch.distributed.checkpoint as dcp

    writer = dcp.FileSystemWriter(staging, sync_files=strategy.sync_files)
    dcp.save(shards, storage_writer=writer, process_group=group)
    if state is not None:
        sharded_dir.write_state(staging, state)
        if strategy.sync_files:
            sharded_dir.fsync_file(os.path.join(staging, sharded_dir.STATE_FILE))
    strategy.publish_checkpoint_dir(staging, filepath, group)


# ------------------------------------------------------------------------------------------ load
def load_state(directory: str, weights_only: bool) -> dict[str, Any] | None:
    """fulmen's state from ``directory``, each reference told where its shards are (``ref.source``);
    ``None`` when the directory holds another engine's shards."""
    from fulmen.checkpointing.consolidation import read_sharded_state

    local, state = read_sharded_state(directory, weights_only)
    if state.pop(sharded_dir.SHARDED_KEY).get("format") != FORMAT:
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
    with _errors_raised(directory):
        dcp.load(wrapped, storage_reader=reader, planner=_planner(DefaultLoadPlanner, directory)())
    return wrapped[key]


@contextlib.contextmanager
def _errors_raised(directory: str) -> Iterator[None]:
    """A failed load as one CheckpointError naming the file, on every rank.

    DCP gathers every rank's failure into a ``CheckpointException`` (a BaseException) that all
    ranks raise; fulmen raises the first rank's own error instead of DCP's report of all of them.
    """
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as err:
        failures = [failure[0] if isinstance(failure, tuple) else failure for failure in err.failures.values()]
        own = next((f for f in failures if isinstance(f, CheckpointError)), None)
        if own is not None:
            raise CheckpointError(str(own)) from err
        first = failures[0] if failures else err
        raise CheckpointError(
            f"Could not load checkpoint {directory!r}: {type(first).__name__}: {safe_reading.short_reason(first)}"
        ) from err


def full_module_state(directory: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The module's whole state dict from a sharded directory, on one process without a process group."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    key = meta.get("module_key") or "state_dict"
    state: dict[str, Any] = {}
    planner = _planner(_EmptyStateDictLoadPlanner, directory)(keys={key})
    reader = _reader(directory)
    with _errors_raised(directory):
        _load_state_dict(state, storage_reader=reader, planner=planner, no_dist=True)
    if not isinstance(state.get(key), dict):
        raise confinement.refused(directory, INDEX, f"holds no module state under {key!r}")
    return dict(state[key])


# ---------------------------------------------------------------------------------- references
class ModuleShards(ShardedStateRef):
    """The sharded module's state, read when the checkpoint is written."""

    def __init__(self, target: nn.Module) -> None:
        super().__init__("module")
        self.target = target

    def read(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.target)


class OptimizerShards(ShardedStateRef):
    def __init__(self, module: nn.Module, optimizer: Optimizer) -> None:
        super().__init__("optimizer")
        self.module, self.optimizer = module, optimizer

    def read(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.module, self.optimizer)


__all__ = [
    "FORMAT", "ModuleShards", "OptimizerShards", "full_module_state", "load_into", "load_state", "read_index", "save",
]  # fmt: skip
