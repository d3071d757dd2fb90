"""Tampered copies of real checkpoints, as an attacker would make them, for the loading tests.

Every payload calls ``os.mkdir(marker)``: it creates one folder inside the test's temporary
directory, and nothing else. A load that runs it leaves the marker behind, which the tests look for.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import fulmen as L

DCP_METADATA = "torch.distributed.checkpoint.metadata"


# --------------------------------------------------------------------------------- the model
class TamperNet(L.LightningModule):
    """Small, with Adam (so DCP also stores non-tensor optimizer values as pickled bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))

    def training_step(self, batch, batch_idx):
        return self(batch).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self(batch).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def loader() -> DataLoader:
    return DataLoader(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)), batch_size=4)


# ------------------------------------------------------------------------------ the payloads
class Payload:
    """Unpickles as ``os.mkdir(marker)``, the plain way (``posix.mkdir``)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class DottedPickler(pickle._Pickler):
    """Writes ``os.mkdir`` under another module's name, dotted (``torch.distributed.checkpoint.metadata``
    ``os.mkdir``): protocol 4's attribute walk reaches it through any module that imports ``os``."""

    def __init__(self, file: Any, protocol: int, module: str = DCP_METADATA, name: str = "os.mkdir") -> None:
        super().__init__(file, protocol)
        self.dotted = (module, name)

    def save_global(self, obj: Any, name: Any = None) -> None:
        if obj is not os.mkdir:
            return super().save_global(obj, name)
        module, dotted = self.dotted
        if self.proto >= 4:
            self.save(module)
            self.save(dotted)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{dotted}\n".encode())
        self.memoize(obj)
        return None


def dotted_dumps(obj: Any, protocol: int, module: str = DCP_METADATA, name: str = "os.mkdir") -> bytes:
    buffer = io.BytesIO()
    DottedPickler(buffer, protocol, module, name).dump(obj)
    return buffer.getvalue()


def global_reference(module: str, name: str, protocol: int) -> bytes:
    """A pickle whose only content is a reference to ``module.name`` (nothing called)."""
    head = pickle.PROTO + bytes([protocol]) if protocol >= 2 else b""
    if protocol >= 4:
        body = pickle.SHORT_BINUNICODE + bytes([len(module.encode())]) + module.encode()
        body += pickle.SHORT_BINUNICODE + bytes([len(name.encode())]) + name.encode() + pickle.STACK_GLOBAL
    else:
        body = pickle.GLOBAL + f"{module}\n{name}\n".encode()
    return head + body + pickle.STOP


def _dotted_module(module: str) -> types.ModuleType:
    """A pickle *module* for ``torch.save`` whose Pickler writes the dotted payload."""

    class Pickler(DottedPickler):
        def __init__(self, file: Any, protocol: int = 2) -> None:
            super().__init__(file, protocol, module)

    fake = types.ModuleType("tamper_pickle")
    fake.Pickler = Pickler  # type: ignore[attr-defined]
    fake.Unpickler = pickle.Unpickler  # type: ignore[attr-defined]
    fake.load = pickle.load  # type: ignore[attr-defined]
    return fake


def torch_file_with_payload(path: Path, marker: str, dotted_module: str | None = None) -> None:
    """Rewrite the torch file ``path``: all it held, plus one payload entry (plain or dotted)."""
    state = torch.load(path, weights_only=False)
    state = dict(state) if isinstance(state, dict) else {"value": state}
    state["extra"] = Payload(marker)
    path.unlink()
    if dotted_module is None:
        torch.save(state, path)
    else:
        torch.save(state, path, pickle_module=_dotted_module(dotted_module))


# ---------------------------------------------------------------------------- DCP index edits
def read_index(directory: Path) -> Any:
    return pickle.loads((directory / ".metadata").read_bytes())  # the test's own genuine file


def write_index(directory: Path, metadata: Any, payload_marker: str | None = None) -> None:
    """Write the index back; with a marker, every genuine record plus a dotted call hidden in it."""
    if payload_marker is None:
        (directory / ".metadata").write_bytes(pickle.dumps(metadata, protocol=4))
        return
    metadata.planner_data = Payload(payload_marker)  # unpickled, it would be the call's result: None
    (directory / ".metadata").write_bytes(dotted_dumps(metadata, protocol=4))


def _entry(metadata: Any, want_bytes: bool) -> Any:
    """A bytes entry (an optimizer's value), or a tensor entry of the module (which every loader reads)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    for index in metadata.storage_data:
        is_bytes = isinstance(metadata.state_dict_metadata[index.fqn], BytesStorageMetadata)
        if is_bytes and want_bytes:
            return index
        if not is_bytes and not want_bytes and index.fqn.split(".")[0] in ("state_dict", "model"):
            return index
    raise AssertionError("no such entry in the index")


def repoint_entry(directory: Path, want_bytes: bool, data: bytes) -> str:
    """Append ``data`` to the shard file of one (bytes or tensor) entry and point the entry at it."""
    metadata = read_index(directory)
    index = _entry(metadata, want_bytes)
    info = metadata.storage_data[index]
    shard = directory / info.relative_path
    offset = shard.stat().st_size
    with open(shard, "ab") as f:
        f.write(data)
    info.offset, info.length = offset, len(data)
    write_index(directory, metadata)
    return str(info.relative_path)


def saved_payload(marker: str) -> bytes:
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    return buffer.getvalue()


# --------------------------------------------------------------------------------- the tampers
Tamper = Callable[[Path, str], str]  # (copy, marker) -> a file name the error must name


def dcp_index_payload(copy: Path, marker: str) -> str:
    write_index(copy, read_index(copy), payload_marker=marker)
    return ".metadata"


def state_payload(copy: Path, marker: str) -> str:
    torch_file_with_payload(copy / "fulmen_checkpoint.pt", marker)
    return "fulmen_checkpoint.pt"


def state_dotted_payload(copy: Path, marker: str) -> str:
    torch_file_with_payload(copy / "fulmen_checkpoint.pt", marker, dotted_module="pathlib")
    return "fulmen_checkpoint.pt"


def dcp_bytes_payload(copy: Path, marker: str) -> str:
    return repoint_entry(copy, want_bytes=True, data=saved_payload(marker))


def dcp_tensor_payload(copy: Path, marker: str) -> str:
    return repoint_entry(copy, want_bytes=False, data=saved_payload(marker))


def dcp_traversal(copy: Path, marker: str) -> str:
    metadata = read_index(copy)
    outside = copy.parent / f"{copy.name}-outside.distcp"
    shutil.copy(copy / "__0_0.distcp", outside)  # a complete shard: following the path would load
    for info in metadata.storage_data.values():
        if info.relative_path == "__0_0.distcp":
            info.relative_path = f"../{outside.name}"
    write_index(copy, metadata)
    return f"../{outside.name}"


def dcp_symlink(copy: Path, marker: str) -> str:
    outside = copy.parent / f"{copy.name}-linked.distcp"
    shutil.move(copy / "__0_0.distcp", outside)
    os.symlink(outside, copy / "__0_0.distcp")
    return "__0_0.distcp"


def dcp_truncated(copy: Path, marker: str) -> str:
    shard = copy / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return "__1_0.distcp"


def dcp_missing(copy: Path, marker: str) -> str:
    (copy / "__1_0.distcp").unlink()
    return "__1_0.distcp"


def dcp_garbage_index(copy: Path, marker: str) -> str:
    (copy / ".metadata").write_bytes(os.urandom(64))
    return ".metadata"


def dcp_truncated_index(copy: Path, marker: str) -> str:
    data = (copy / ".metadata").read_bytes()
    (copy / ".metadata").write_bytes(data[: len(data) // 2])
    return ".metadata"


def state_symlink(copy: Path, marker: str) -> str:
    outside = copy.parent / f"{copy.name}-state.pt"
    shutil.move(copy / "fulmen_checkpoint.pt", outside)
    os.symlink(outside, copy / "fulmen_checkpoint.pt")
    return "fulmen_checkpoint.pt"


# DeepSpeed ZeRO directories: <dir>/checkpoint/{mp_rank_00_model_states.pt, *optim_states.pt}
def _ds_state_edit(copy: Path, **changes: Any) -> None:
    path = copy / "fulmen_checkpoint.pt"
    state = torch.load(path, weights_only=False)
    state["sharded"].update(changes)
    path.unlink()
    torch.save(state, path)


def _optim_file(copy: Path, rank: int) -> Path:
    return next((copy / "checkpoint").glob(f"*zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"))


def ds_model_payload(copy: Path, marker: str) -> str:
    torch_file_with_payload(copy / "checkpoint" / "mp_rank_00_model_states.pt", marker)
    return "mp_rank_00_model_states.pt"


def ds_optim_payload(copy: Path, marker: str) -> str:
    path = _optim_file(copy, 1)
    torch_file_with_payload(path, marker, dotted_module="pathlib")
    return path.name


def ds_tag_traversal(copy: Path, marker: str) -> str:
    outside = copy.parent / f"{copy.name}-outside"
    shutil.copytree(copy / "checkpoint", outside)  # a complete tag folder: following the tag would load
    _ds_state_edit(copy, tag=f"../{outside.name}")
    return "tag"


def ds_tag_none_latest(copy: Path, marker: str) -> str:
    outside = copy.parent / f"{copy.name}-latest"
    shutil.copytree(copy / "checkpoint", outside)
    (copy / "latest").write_text(f"../{outside.name}")
    _ds_state_edit(copy, tag=None)
    return "tag"


def ds_tag_garbage(copy: Path, marker: str) -> str:
    _ds_state_edit(copy, tag=["checkpoint"])
    return "tag"


def ds_truncated(copy: Path, marker: str) -> str:
    path = _optim_file(copy, 1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path.name


def ds_missing(copy: Path, marker: str) -> str:
    path = _optim_file(copy, 1)
    path.unlink()
    return path.name.replace("bf16_", "")


def ds_symlink(copy: Path, marker: str) -> str:
    path = copy / "checkpoint" / "mp_rank_00_model_states.pt"
    outside = copy.parent / f"{copy.name}-model.pt"
    shutil.move(path, outside)
    os.symlink(outside, path)
    return "mp_rank_00_model_states.pt"


# Single files (a Trainer's, or one written in the background)
def file_payload(copy: Path, marker: str) -> str:
    torch_file_with_payload(copy, marker)
    return copy.name


def file_dotted_payload(copy: Path, marker: str) -> str:
    torch_file_with_payload(copy, marker, dotted_module="pathlib")
    return copy.name


def file_truncated(copy: Path, marker: str) -> str:
    copy.write_bytes(copy.read_bytes()[: copy.stat().st_size // 2])
    return copy.name


def file_garbage(copy: Path, marker: str) -> str:
    copy.write_bytes(os.urandom(256))
    return copy.name


def control(copy: Path, marker: str) -> str:
    return ""


DCP_TAMPERS: dict[str, Tamper] = {
    "control": control,
    "index_payload": dcp_index_payload,
    "state_payload": state_payload,
    "state_dotted_payload": state_dotted_payload,
    "bytes_payload": dcp_bytes_payload,
    "tensor_payload": dcp_tensor_payload,
    "traversal": dcp_traversal,
    "symlink": dcp_symlink,
    "state_symlink": state_symlink,
    "truncated": dcp_truncated,
    "missing": dcp_missing,
    "garbage_index": dcp_garbage_index,
    "truncated_index": dcp_truncated_index,
}
DEEPSPEED_TAMPERS: dict[str, Tamper] = {
    "control": control,
    "model_payload": ds_model_payload,
    "optim_payload": ds_optim_payload,
    "state_payload": state_payload,
    "tag_traversal": ds_tag_traversal,
    "tag_none_latest": ds_tag_none_latest,
    "tag_garbage": ds_tag_garbage,
    "truncated": ds_truncated,
    "missing": ds_missing,
    "symlink": ds_symlink,
}
FILE_TAMPERS: dict[str, Tamper] = {
    "control": control,
    "payload": file_payload,
    "dotted_payload": file_dotted_payload,
    "truncated": file_truncated,
    "garbage": file_garbage,
}


def make_cases(source: Path, tampers: dict[str, Tamper], into: Path) -> list[dict[str, str]]:
    """One tampered copy of ``source`` per tamper in ``into``: ``[{name, path, names, marker}]``."""
    into.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, tamper in tampers.items():
        case_dir = into / name
        case_dir.mkdir()
        copy = case_dir / source.name
        if source.is_dir():
            shutil.copytree(source, copy)
        else:
            shutil.copy(source, copy)
        marker = str(case_dir / "marker")
        names = tamper(copy, marker)
        cases.append({"name": name, "path": str(copy), "names": names, "marker": marker})
    return cases
