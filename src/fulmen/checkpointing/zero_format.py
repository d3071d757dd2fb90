"""The files of a DeepSpeed ZeRO checkpoint: reading them safely, and merging them into full weights.

A ZeRO checkpoint directory (``<dir>/checkpoint/``, DeepSpeed's tag folder) holds, for 2 ranks:

- stages 1 and 2: ``mp_rank_00_model_states.pt`` (the module's buffers, parameter shapes) and one
  ``[bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt`` per rank with that rank's flat fp32
  partition of every parameter group;
- stage 3: one ``zero_pp_rank_R_mp_rank_00_model_states.pt`` and one optimizer file per rank; each
  parameter is cut into ``world_size`` equal slices (the last padded) laid end to end.

Reading never runs code from a file: torch's weights-only unpickler with an allowlist of exactly
the DeepSpeed types these files hold (a stage enum, the loss scaler). The tag is one plain name
of a folder inside the checkpoint (DeepSpeed's ``latest`` file is never read), and the whole
folder is checked before an engine reads any of it (:func:`check_shards`). Without DeepSpeed
installed, stand-ins take their place (consolidation then needs no DeepSpeed at all).
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor

from fulmen.checkpointing import confinement, safe_reading
from fulmen.utilities.exceptions import CheckpointError

#: The ``"format"`` of a ZeRO checkpoint directory's ``"sharded"`` entry.
FORMAT = "deepspeed"
#: DeepSpeed's tag (sub-folder) that fulmen saves under.
TAG = "checkpoint"

_ENUM = "deepspeed.runtime.zero.config.ZeroStageEnum"
# Plain records: the loss scalers and the (numel, start) address of a parameter in a partition.
_RECORDS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


class _Record:
    """Stand-in for DeepSpeed's record classes when reading files without DeepSpeed: attributes only."""


def deepspeed_safe_globals(real: bool) -> list[Any]:
    """What DeepSpeed's files need beyond fulmen's allowlist; ``real``: DeepSpeed's own classes."""
    if real:
        import importlib

        found = []
        for name in (_ENUM, *_RECORDS):
            module, _, attr = name.rpartition(".")
            try:
                found.append(getattr(importlib.import_module(module), attr))
            except (ImportError, AttributeError):  # not in this DeepSpeed version: its files lack it too
                pass
        return found
    # The stage enum is pickled as a call ZeroStageEnum(2): int(2) reads it as its number.
    return [(int, _ENUM), *((_Record, name) for name in _RECORDS)]


def load_file(path: str, real: bool = False, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """Load one DeepSpeed file with the weights-only unpickler (and fulmen's allowlist plus DeepSpeed's)."""
    with torch.serialization.safe_globals(deepspeed_safe_globals(real)):
        return safe_reading.safe_load(path, map_location=map_location, opt_in=False, mmap=mmap)


def tag_folder(checkpoint: str, tag: Any) -> str:
    """The path of DeepSpeed's tag folder in ``checkpoint``: ``tag`` must be one plain name of a folder inside."""
    name = confinement.plain_name(tag, "DeepSpeed tag", checkpoint)
    folder = confinement.inside(checkpoint, name, "DeepSpeed tag folder")
    if not os.path.isdir(folder):
        raise confinement.refused(checkpoint, name, "(the DeepSpeed tag folder its state names) is missing")
    return folder


def check_shards(checkpoint: str, tag: Any, world_size: Any, stage: Any, real: bool = False) -> str:
    """Check the whole ZeRO checkpoint before any engine reads it; returns the tag folder.

    Every file each rank will need is present, and every file in the tag folder unpickles with the
    weights-only unpickler (tensors memory-mapped, so this reads little). Every rank checks every
    file, so every rank reaches the same verdict without a collective, and none is left waiting
    inside DeepSpeed for a rank that failed.
    """
    folder = tag_folder(checkpoint, tag)
    if not isinstance(world_size, int) or not isinstance(stage, int) or world_size < 1 or stage not in (0, 1, 2, 3):
        raise CheckpointError(
            f"Refused to load checkpoint {checkpoint!r}: its state gives world size {world_size!r} and ZeRO stage "
            f"{stage!r}; expected a positive number of processes and a stage of 0-3."
        )
    present = set(os.listdir(folder))
    if stage == 3:
        needed = [f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt" for rank in range(world_size)]
    else:
        needed = ["mp_rank_00_model_states.pt"]
    for name in needed:
        if name not in present:
            raise confinement.refused(checkpoint, os.path.join(tag, name), "(a DeepSpeed shard) is missing")
    if stage > 0:
        for rank in range(world_size):
            suffix = f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
            if not any(name.endswith(suffix) for name in present):
                raise confinement.refused(
                    checkpoint, os.path.join(tag, suffix), f"(rank {rank}'s optimizer shard) is missing"
                )
    for name in sorted(present):
        path = confinement.inside(checkpoint, os.path.join(tag, name), "DeepSpeed shard")
        if os.path.isfile(path):
            load_file(path, real=real, mmap=True)
    return folder


def sharded_entry(zero_stage: int, world_size: int, module_prefix: str) -> dict[str, Any]:
    """The ``"sharded"`` entry of fulmen's state in a ZeRO checkpoint directory: what :func:`check_shards`
    and consolidation read back (the tag folder, the stage and number of ranks, the engine's name prefix)."""
    return {
        "format": FORMAT,
        "tag": TAG,
        "zero_stage": zero_stage,
        "world_size": world_size,
        "module_prefix": module_prefix,
    }


# ------------------------------------------------------------------------------- consolidation
def consolidated_state_dict(tag_dir: str, prefix: str = "") -> dict[str, Tensor]:
    """Full fp32 weights (and buffers) from the shards in ``tag_dir``, keyed without ``prefix``.

    The fp32 master partitions of the optimizer files are the exact weights (under bf16 the
    module's own copy is rounded); buffers and frozen parameters come from the model files.
    """
    if not os.path.isdir(tag_dir):
        raise CheckpointError(f"{tag_dir!r} holds no DeepSpeed checkpoint (its folder {TAG!r} is missing).")
    optim_files = _sorted_by_rank(glob.glob(os.path.join(tag_dir, "*zero_pp_rank_*_optim_states.pt")))
    model_files = _sorted_by_rank(glob.glob(os.path.join(tag_dir, "*_model_states.pt")))
    if not optim_files or not model_files:
        raise CheckpointError(f"{tag_dir!r} lacks DeepSpeed's model or optimizer files; the checkpoint is incomplete.")
    model_states = [load_file(path) for path in model_files]
    optim_states = [load_file(path)["optimizer_state_dict"] for path in optim_files]
    stage = int(optim_states[0]["zero_stage"])
    world_size = _world_size(optim_states[0])
    if len(optim_files) != world_size:
        raise CheckpointError(
            f"{tag_dir!r} holds {len(optim_files)} optimizer shards, but they were written by {world_size} ranks."
        )
    first = model_states[0]
    state: dict[str, Tensor] = OrderedDict()
    buffer_names = set(first.get("buffer_names", []))
    state.update((name, value) for name, value in first["module"].items() if name in buffer_names)
    if stage <= 2:
        _frozen_replicated(state, first)
        _merge_stage_1_2(state, first, optim_states, world_size)
    else:
        _frozen_partitioned(state, model_states, world_size)
        _merge_stage_3(state, first, optim_states, world_size)
    for alias, source in first.get("shared_params", {}).items():
        if source in state:
            state[alias] = state[source]
    if prefix:
        state = OrderedDict((k[len(prefix) :] if k.startswith(prefix) else k, v) for k, v in state.items())
    return state


def _sorted_by_rank(paths: list[str]) -> list[str]:
    def rank(path: str) -> int:
        match = re.search(r"zero_pp_rank_(\d+)_", os.path.basename(path))
        return int(match.group(1)) if match else 0

    return sorted(paths, key=rank)


def _world_size(optim_state: dict[str, Any]) -> int:
    count = optim_state["partition_count"]
    return int(count[0] if isinstance(count, (list, tuple)) else count)


def _merge_stage_1_2(
    state: dict[str, Tensor], model_state: dict[str, Any], optim_states: list[dict[str, Any]], world_size: int
) -> None:
    paddings = optim_states[0].get("param_alignment_paddings")
    for group, shapes in enumerate(model_state["param_shapes"]):
        full = torch.cat([optim["single_partition_of_fp32_groups"][group] for optim in optim_states])
        offset = 0
        for index, (name, shape) in enumerate(shapes.items()):
            numel = math.prod(shape)
            state[name] = full.narrow(0, offset, numel).view(shape).clone()
            offset += numel
            if paddings is not None:
                offset += paddings[group][index]
        # What is left is the padding that makes the group divisible among the ranks.
        if offset > full.numel():
            raise CheckpointError(f"The ZeRO shards hold {full.numel()} values for group {group}, fewer than needed.")


def _merge_stage_3(
    state: dict[str, Tensor], model_state: dict[str, Any], optim_states: list[dict[str, Any]], world_size: int
) -> None:
    flats = [torch.cat(list(optim["fp32_flat_groups"])) for optim in optim_states]
    offset = 0
    for shapes in model_state["param_shapes"]:
        for name, shape in shapes.items():
            numel = math.prod(shape)
            part = math.ceil(numel / world_size)
            pieces = [flat.narrow(0, offset, part) for flat in flats]
            state[name] = torch.cat(pieces).narrow(0, 0, numel).view(shape).clone()
            offset += part
    if offset > flats[0].numel():
        raise CheckpointError("The ZeRO-3 shards hold fewer values than the parameter shapes need.")


def _frozen_replicated(state: dict[str, Tensor], model_state: dict[str, Any]) -> None:
    fragments = model_state.get("frozen_param_fragments") or {}
    for name, shape in (model_state.get("frozen_param_shapes") or {}).items():
        if name in fragments:
            state[name] = fragments[name].view(shape)


def _frozen_partitioned(state: dict[str, Tensor], model_states: list[dict[str, Any]], world_size: int) -> None:
    for name, shape in (model_states[0].get("frozen_param_shapes") or {}).items():
        numel = math.prod(shape)
        pieces = [m["frozen_param_fragments"][name] for m in model_states]
        state[name] = torch.cat(pieces).narrow(0, 0, numel).view(shape)
