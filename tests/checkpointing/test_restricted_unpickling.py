"""fulmen's restricted unpicklers take exact (module, name) pairs: no dotted name, nothing a module merely imports.

Two unpicklers read checkpoint pickles: the one for DCP's index (``dcp_format.read_index``)
and torch's weights-only unpickler with fulmen's allowlist (``safe_reading.safe_load``). Each is fed
a reference to every attribute of every module it allows, dotted names, and calls, in every
pickle protocol (0-5); the payloads only ever create a folder in the test's temporary directory.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import types
import zipfile

import fsspec
import pytest
import torch
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.state_dict_saver import _save_state_dict

from fulmen.checkpointing import safe_reading
from fulmen.checkpointing.dcp_format import index_allowed, read_index
from fulmen.checkpointing.restricted_unpickler import Refused, RestrictedUnpickler
from fulmen.utilities.exceptions import CheckpointError
from tests.checkpointing.tampering import DCP_METADATA, Payload, dotted_dumps, global_reference

PROTOCOLS = range(6)


def _unpickle_index(data: bytes):
    return RestrictedUnpickler(io.BytesIO(data), index_allowed(), "The index").load()


def _module_names(module: types.ModuleType) -> list[str]:
    return [name for name in dir(module) if "\n" not in name]


# ---------------------------------------------------------------------------- DCP's index
@pytest.fixture(scope="module")
def dcp_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dcp")
    state = {"state_dict": {"w": torch.ones(3, 3), "b": torch.zeros(3, dtype=torch.bfloat16)}, "lr": 0.1}
    _save_state_dict(state, storage_writer=FileSystemWriter(directory), no_dist=True)
    return directory


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_genuine_index_loads_in_every_protocol_that_can_write_it(dcp_dir, protocol):
    genuine = pickle.loads((dcp_dir / ".metadata").read_bytes())
    again = _unpickle_index(pickle.dumps(genuine, protocol=protocol))
    assert again.state_dict_metadata == genuine.state_dict_metadata
    assert again.storage_data == genuine.storage_data


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_index_refuses_everything_its_allowed_modules_merely_import(protocol):
    allowed = index_allowed()
    tried = 0
    for module_name in sorted({module for module, _ in allowed}):
        module = importlib.import_module(module_name)
        for name in _module_names(module):
            if (module_name, name) in allowed:
                continue
            with pytest.raises(Refused, match=f"`{module_name}.{name}`"):
                _unpickle_index(global_reference(module_name, name, protocol))
            tried += 1
    assert tried > 1000  # torch's own namespace alone has more


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_index_refuses_dotted_names_even_of_allowed_objects(protocol):
    dotted = [(DCP_METADATA, "os.mkdir"), (DCP_METADATA, "torch.load"), ("torch", "serialization.load")]
    for (module, name), obj in index_allowed().items():
        dotted += [(module, f"{name}.{attr}") for attr in dir(obj)[:20]]
    for module, name in dotted:
        with pytest.raises(Refused, match="never holds"):
            _unpickle_index(global_reference(module, name, protocol))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_genuine_index_with_a_hidden_call_is_refused_and_runs_nothing(dcp_dir, tmp_path, protocol):
    marker = tmp_path / "marker"
    metadata = pickle.loads((dcp_dir / ".metadata").read_bytes())
    metadata.planner_data = Payload(str(marker))
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(dcp_dir):
        (copy / name).write_bytes((dcp_dir / name).read_bytes())
    (copy / ".metadata").write_bytes(dotted_dumps(metadata, protocol))
    # Protocols 0 and 1 name copyreg's reconstructor before they reach the payload: refused there.
    refused_name = "os.mkdir" if protocol >= 2 else "copy_reg._reconstructor"
    with pytest.raises(CheckpointError, match=rf"'\.metadata' was refused.*{refused_name}") as info:
        read_index(str(copy))
    assert str(copy) in str(info.value)
    assert not marker.exists()
    if protocol >= 4:  # the payload is live: plain pickle follows the dotted name and calls os.mkdir
        pickle.loads((copy / ".metadata").read_bytes())
        assert marker.is_dir()


# ---------------------------------------------------------------------- safe_load (weights-only)
def _torch_file(data_pkl: bytes, url: str) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/byteorder", "little")
    with fsspec.open(url, "wb") as f:
        f.write(buffer.getvalue())
    return url


def _safe_objects() -> list[object]:
    from torch._weights_only_unpickler import _get_allowed_globals

    objects = [item[0] if isinstance(item, tuple) else item for item in safe_reading.get_safe_globals()]
    return objects + list(_get_allowed_globals().values())


def _safe_modules() -> list[str]:
    names = {"torch", "builtins", "pathlib", "collections", "numpy", "numpy._core.multiarray", "os", "posix"}
    for item in safe_reading.get_safe_globals():
        if isinstance(item, tuple):
            names.add(item[1].rpartition(".")[0])
        else:
            names.add(item.__module__)
    return sorted(names)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_safe_load_refuses_every_name_of_its_modules_beyond_the_allowlist(protocol):
    allowed = _safe_objects()
    refused = 0
    for module_name in _safe_modules():
        module = importlib.import_module(module_name)
        for name in _module_names(module):
            url = _torch_file(global_reference(module_name, name, protocol), "memory://safe/ref.ckpt")
            try:
                loaded = safe_reading.safe_load(url)
            except CheckpointError:
                refused += 1
                continue
            # What loads is the allowlisted object itself, never something reached through it.
            assert any(loaded is obj for obj in allowed), f"{module_name}.{name} loaded as {loaded!r}"
    assert refused > 1000


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_safe_load_refuses_dotted_names_and_calls_in_every_protocol(tmp_path, protocol):
    marker = tmp_path / "marker"
    dotted = [("pathlib", "os.mkdir"), ("collections", "_sys.modules"), ("torch", "serialization.load")]
    for item in safe_reading.get_safe_globals():
        obj = item[0] if isinstance(item, tuple) else item
        name = item[1] if isinstance(item, tuple) else f"{obj.__module__}.{obj.__qualname__}"
        module, _, attr = name.rpartition(".")
        dotted += [(module, f"{attr}.{sub}") for sub in ("__init__", "__class__", "mro", "fromkeys")]
    for module, name in dotted:
        with pytest.raises(CheckpointError):
            safe_reading.safe_load(_torch_file(global_reference(module, name, protocol), "memory://safe/dot.ckpt"))
    call = dotted_dumps({"w": 1, "extra": Payload(str(marker))}, protocol, module="pathlib")
    # torch's weights-only unpickler knows no text opcodes (protocol 0) nor frames (4, 5): refused as unreadable.
    with pytest.raises(CheckpointError, match=r"pathlib\.os\.mkdir|Unsupported operand"):
        safe_reading.safe_load(_torch_file(call, "memory://safe/call.ckpt"))
    assert not marker.exists()
