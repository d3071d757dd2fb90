"""Sharded checkpoint directory -> one ordinary fulmen checkpoint (weights gathered, fp32).

The result loads anywhere, on one process, without the engine that wrote the shards:
``Model.load_from_checkpoint``, ``Trainer(...).validate(ckpt_path=...)`` with any strategy,
``torch.load``. It keeps fulmen's own state (loop position, callbacks, hyperparameters) and
drops the sharded optimizer state, so training resumes from it only on the strategy that wrote
the directory. Each sharded format has a reader in ``_READERS`` (its ``"format"`` name, as the
state's ``"sharded"`` entry gives it): ``reader(directory, sharded_meta)`` returns the module's
full state dict.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch import Tensor

from fulmen.checkpointing import atomic, safe_reading, sharded_dir
from fulmen.utilities.exceptions import CheckpointError

Reader = Callable[[str, dict[str, Any]], dict[str, Tensor]]


def _deepspeed_reader(directory: str, meta: dict[str, Any]) -> dict[str, Tensor]:
    from fulmen.checkpointing.zero_format import check_shards, consolidated_state_dict

    folder = check_shards(directory, meta.get("tag"), meta.get("world_size"), meta.get("zero_stage"))
    return consolidated_state_dict(folder, meta.get("module_prefix", ""))


def _fsdp_reader(directory: str, meta: dict[str, Any]) -> dict[str, Tensor]:
    from fulmen.checkpointing.dcp_format import full_module_state

    return full_module_state(directory, meta)


_READERS: dict[str, Reader] = {"deepspeed": _deepspeed_reader, "fsdp": _fsdp_reader}


def read_sharded_state(
    path: str | os.PathLike, weights_only: bool = True, opt_in: bool = True
) -> tuple[str, dict[str, Any]]:
    """The directory's OS path and fulmen's state from it (sharded entries still as placeholders).
    ``opt_in``: whether the caller takes ``weights_only=False`` (a refusal then says so)."""
    local = sharded_dir.check_complete(path)
    state_file = os.path.join(local, sharded_dir.STATE_FILE)
    state = safe_reading.safe_load(state_file, weights_only=weights_only, opt_in=opt_in)
    meta = state.get(sharded_dir.SHARDED_KEY)
    if not isinstance(meta, dict) or meta.get("format") not in _READERS:
        known = sorted(_READERS)
        raise CheckpointError(
            f"{local!r} does not say how its shards are laid out (format {meta and meta.get('format')!r}; "
            f"fulmen reads {known})."
        )
    return local, state


def load_consolidated(path: str | os.PathLike, weights_only: bool = True, opt_in: bool = True) -> dict[str, Any]:
    """The checkpoint in ``path`` as one dict, as if a single-process strategy had written it."""
    local, state = read_sharded_state(path, weights_only, opt_in)
    meta = state.pop(sharded_dir.SHARDED_KEY)
    weights = _READERS[meta["format"]](local, meta)

    result = {}
    for key, value in state.items():
        ref = sharded_dir.ShardedStateRef.from_placeholder(value)
        if ref is not None:
            if ref.kind == "module":
                result[key] = weights
            continue  # a sharded optimizer's state is not carried over
        if isinstance(value, list) and any(sharded_dir.ShardedStateRef.from_placeholder(v) is not None for v in value):
            continue  # "optimizer_states": the same
        result[key] = value
    return result


def consolidate_checkpoint(path: str | os.PathLike, output: str | os.PathLike) -> None:
    """Write the sharded checkpoint directory ``path`` as one checkpoint file ``output`` (atomically).

    ``Model.load_from_checkpoint(output)`` then works on one process without DeepSpeed or FSDP.
    """
    if os.path.abspath(os.fspath(path)) == os.path.abspath(os.fspath(output)):
        raise CheckpointError(f"`output` must differ from the checkpoint directory {os.fspath(path)!r}.")
    atomic.atomic_save(load_consolidated(path, opt_in=False), output)
