import argparse
import collections
import copy
import datetime
import os
import pathlib
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import zipfile

import fsspec
import numpy as np
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

from fulmen.checkpointing import atomic, safe_reading
from fulmen.checkpointing.atomic import atomic_save, save_link
from fulmen.checkpointing.remote import (
    CheckpointNotFoundError,
    file_exists,
    get_filesystem,
    is_local,
    makedirs,
    remove_file,
)
from fulmen.checkpointing.safe_reading import add_safe_globals, get_safe_globals, safe_load
from fulmen.utilities.exceptions import CheckpointError
from fulmen.utilities.parsing import AttributeDict


@pytest.fixture
def memory_dir():
    """A fresh directory on fsspec's process-wide in-memory filesystem, removed afterwards."""
    root = f"/fulmen-test-{uuid.uuid4().hex}"
    yield f"memory://{root}"
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _memory_listing(url):
    fs = fsspec.filesystem("memory")
    return sorted(posix_name.rsplit("/", 1)[-1] for posix_name in fs.find(url[len("memory://") :]))


def _rich_state():
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    return {
        "state_dict": collections.OrderedDict(weight=torch.randn(3, 4), bias=torch.zeros(3)),
        "optimizer": {"state": {0: {"step": torch.tensor(7.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "hparams": AttributeDict(lr=0.01, layers=[64, 32], nested=AttributeDict(act="relu")),
        "namespace": argparse.Namespace(batch_size=16, root=pathlib.Path("/data/x")),
        "counters": collections.defaultdict(int, train=3, val=1),
        "paths": [pathlib.PurePosixPath("a/b"), pathlib.PureWindowsPath("C:/x/y")],
        "duration": datetime.timedelta(hours=2, seconds=3),
        "shape": torch.Size([2, 3]),
        "best_score": np.float64(0.25),
        "best_step": np.int64(12),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
        "text": "ok",
        "raw": b"\x00\x01",
    }


def _assert_same(loaded, expected):
    assert torch.equal(loaded["state_dict"]["weight"], expected["state_dict"]["weight"])
    assert type(loaded["state_dict"]) is collections.OrderedDict
    assert list(loaded["state_dict"]) == ["weight", "bias"]
    assert torch.equal(loaded["optimizer"]["state"][0]["step"], torch.tensor(7.0))
    assert loaded["optimizer"]["param_groups"] == expected["optimizer"]["param_groups"]

    hparams = loaded["hparams"]
    assert type(hparams) is AttributeDict and hparams == expected["hparams"]
    assert hparams.nested.act == "relu" and type(hparams.nested) is AttributeDict

    assert loaded["namespace"] == expected["namespace"]
    counters = loaded["counters"]
    assert type(counters) is collections.defaultdict and counters.default_factory is int
    assert counters == {"train": 3, "val": 1}
    counters["new"] += 1  # the factory still works after loading
    assert loaded["paths"] == expected["paths"]
    assert loaded["duration"] == expected["duration"]
    assert loaded["shape"] == torch.Size([2, 3]) and type(loaded["shape"]) is torch.Size
    assert loaded["best_score"] == 0.25 and type(loaded["best_score"]) is np.float64
    assert loaded["best_step"] == 12 and type(loaded["best_step"]) is np.int64
    assert loaded["text"] == "ok" and loaded["raw"] == b"\x00\x01"

    # Restoring each generator reproduces the stream that followed the saved state.
    rng = loaded["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    resumed = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    torch.set_rng_state(expected["rng"]["torch"])
    np.random.set_state(expected["rng"]["numpy"])
    random.setstate(expected["rng"]["python"])
    reference = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(resumed[0], reference[0])
    np.testing.assert_array_equal(resumed[1], reference[1])
    assert resumed[2] == reference[2]


def test_round_trip_local_with_weights_only(tmp_path):
    state = _rich_state()
    path = tmp_path / "deep" / "dir" / "model.ckpt"  # parents do not exist yet
    atomic_save(state, path)
    assert sorted(os.listdir(path.parent)) == ["model.ckpt"]  # no temporary file left behind
    _assert_same(safe_load(path), state)
    _assert_same(safe_load(f"file://{path}", map_location="cpu"), state)


def test_round_trip_memory_url(memory_dir):
    state = _rich_state()
    url = f"{memory_dir}/run/epoch=1.ckpt"
    atomic_save(state, url)
    assert _memory_listing(memory_dir) == ["epoch=1.ckpt"]
    _assert_same(safe_load(url), state)
    assert file_exists(url) and not file_exists(f"{memory_dir}/run/other.ckpt")


def test_saved_file_is_an_ordinary_torch_checkpoint(tmp_path):
    path = tmp_path / "m.ckpt"
    atomic_save({"w": torch.ones(2), "d": collections.defaultdict(list, a=[1])}, path)
    plain = torch.load(path, weights_only=False)
    assert torch.equal(plain["w"], torch.ones(2)) and plain["d"]["a"] == [1]


def test_loading_does_not_leave_fulmen_types_in_torch_global_allowlist(tmp_path):
    before = list(torch.serialization.get_safe_globals())
    atomic_save({"h": AttributeDict(a=1)}, tmp_path / "m.ckpt")
    safe_load(tmp_path / "m.ckpt")
    # torch adds its own types lazily (DTensor's, once torch.distributed loads); none of ours may stay.
    added = [g for g in torch.serialization.get_safe_globals() if g not in before]
    assert not [g for g in added if g in get_safe_globals()]
    assert AttributeDict not in torch.serialization.get_safe_globals()
    assert AttributeDict in get_safe_globals()


def test_overwrite_replaces_previous_content(tmp_path):
    path = tmp_path / "m.ckpt"
    atomic_save({"v": 1}, path)
    atomic_save({"v": 2}, path)
    assert safe_load(path) == {"v": 2}
    assert os.listdir(tmp_path) == ["m.ckpt"]


def _torch_save_that_dies_midway(exc_type):
    def fake_save(obj, f, **kwargs):
        f.write(b"PK\x03\x04 half of a zip archive")
        raise exc_type("disk full")

    return fake_save


@pytest.mark.parametrize("exc_type", [OSError, KeyboardInterrupt])
def test_failed_save_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch, exc_type):
    path = tmp_path / "last.ckpt"
    atomic_save({"weights": torch.arange(5)}, path)
    monkeypatch.setattr(atomic.torch, "save", _torch_save_that_dies_midway(exc_type))
    with pytest.raises(exc_type, match="disk full"):
        atomic_save({"weights": torch.zeros(5)}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last.ckpt"]
    assert torch.equal(safe_load(path)["weights"], torch.arange(5))


def test_failed_save_on_memory_url_keeps_previous_object(memory_dir, monkeypatch):
    url = f"{memory_dir}/last.ckpt"
    atomic_save({"weights": torch.arange(5)}, url)
    monkeypatch.setattr(atomic.torch, "save", _torch_save_that_dies_midway(OSError))
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"weights": torch.zeros(5)}, url)
    monkeypatch.undo()
    assert _memory_listing(memory_dir) == ["last.ckpt"]
    assert torch.equal(safe_load(url)["weights"], torch.arange(5))


def test_remote_filesystem_without_rename_gets_one_whole_write(memory_dir, monkeypatch):
    fs = fsspec.filesystem("memory")

    def no_mv(*args, **kwargs):
        raise NotImplementedError

    monkeypatch.setattr(type(fs), "mv", no_mv)
    url = f"{memory_dir}/m.ckpt"
    atomic_save({"v": torch.ones(3)}, url)
    assert _memory_listing(memory_dir) == ["m.ckpt"]
    assert torch.equal(safe_load(url)["v"], torch.ones(3))


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from fulmen.checkpointing.atomic import atomic_save
    path = sys.argv[1]
    step = 0
    while True:
        step += 1
        # Large enough that much of the time is spent inside a save.
        atomic_save({"step": step, "payload": torch.full((1_000_000,), float(step))}, path)
        print(step, flush=True)
    """
)


def test_sigkill_during_repeated_saves_never_leaves_a_torn_file(tmp_path):
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        for _ in range(3):  # a few completed saves first, so that there is an old file to protect
            assert proc.stdout.readline(), "the writer process died"
        # Kill while a save is under way: its temporary file is on disk, so the write (or the
        # rename) is in progress at this moment.
        deadline = time.monotonic() + 10
        while not any(name.startswith(".last.ckpt.tmp-") for name in os.listdir(tmp_path)):
            assert time.monotonic() < deadline, "never saw a save in progress"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
    loaded = safe_load(path)
    assert loaded["step"] >= 3
    assert torch.equal(loaded["payload"], torch.full((1_000_000,), float(loaded["step"])))
    # A SIGKILL may strand a temporary file (nothing can clean up then), but never under the target name.
    assert all(name == "last.ckpt" or name.startswith(".last.ckpt.tmp-") for name in os.listdir(tmp_path))


def test_missing_file(tmp_path, memory_dir):
    for missing in (tmp_path / "nope.ckpt", f"{memory_dir}/nope.ckpt"):
        with pytest.raises(CheckpointNotFoundError, match="nope.ckpt.*does not exist") as info:
            safe_load(missing)
        assert isinstance(info.value, CheckpointError) and isinstance(info.value, FileNotFoundError)


def _real_checkpoint_bytes(tmp_path):
    path = tmp_path / "good.ckpt"
    atomic_save(_rich_state(), path)
    return path.read_bytes()


@pytest.mark.parametrize("weights_only", [True, False])
def test_truncated_file(tmp_path, weights_only):
    data = _real_checkpoint_bytes(tmp_path)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"broken\.ckpt.*appears truncated or corrupted") as info:
        safe_load(broken, weights_only=weights_only)
    assert info.value.__cause__ is not None


# Fixed random bytes: with and without a pickle's first byte, so both refusal paths are taken.
GARBAGE = [
    b"",
    b"\x80\x02",
    random.Random(0).randbytes(4096),
    b"\x80" + random.Random(1).randbytes(4095),
    b"not a checkpoint\n" * 50,
]


@pytest.mark.parametrize("weights_only", [True, False])
@pytest.mark.parametrize("content", GARBAGE)
def test_garbage_file_is_reported_as_corrupted(tmp_path, content, weights_only):
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"garbage\.ckpt.*appears truncated or corrupted") as info:
        safe_load(path, weights_only=weights_only)
    assert not isinstance(info.value, FileNotFoundError)
    assert info.value.__cause__ is not None


def test_truncated_file_on_memory_url(tmp_path, memory_dir):
    data = _real_checkpoint_bytes(tmp_path)
    url = f"{memory_dir}/broken.ckpt"
    fsspec.filesystem("memory").pipe_file(url[len("memory://") :], data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="appears truncated or corrupted"):
        safe_load(url)


class _RunsShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _TouchesAFile:
    """Builds its payload from an allowlisted type (a path), then asks for a bound method."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (getattr, (pathlib.PosixPath(self.marker), "touch"))


class _CallsEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",))


class _Custom:
    def __init__(self, value):
        self.value = value


@pytest.mark.parametrize(
    ("payload", "named_global"),
    [(_RunsShellCommand, os.system.__module__ + ".system"), (_TouchesAFile, "getattr"), (_CallsEval, "eval")],
)
def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, memory_dir, payload, named_global):
    marker = tmp_path / "pwned"
    evil = {"state_dict": {"w": torch.ones(1)}, "extra": payload(marker)}
    local = tmp_path / "evil.ckpt"
    torch.save(evil, local)  # written by an attacker, not through fulmen
    url = f"{memory_dir}/evil.ckpt"
    with fsspec.open(url, "wb") as f:
        torch.save(evil, f)

    for source in (local, url):
        with pytest.raises(CheckpointError) as info:
            safe_load(source)
        message = str(info.value)
        assert "evil.ckpt" in message and "Refused" in message
        assert f"`{named_global}`" in message
        assert "weights_only=False" in message
        assert isinstance(info.value.__cause__, pickle.UnpicklingError)
        assert not marker.exists()


def test_hand_made_zip_with_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    # A torch-format zip whose data.pkl is a raw pickle calling os.system, no torch.save involved.
    payload = pickle.dumps(_RunsShellCommand(marker), protocol=2)
    path = tmp_path / "crafted.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("crafted/data.pkl", payload)
        archive.writestr("crafted/version", "3\n")
        archive.writestr("crafted/byteorder", "little")
    with pytest.raises(CheckpointError, match="Refused.*system.*weights_only=False"):
        safe_load(path)
    assert not marker.exists()


def test_unknown_class_is_refused_then_loads_with_explicit_opt_in(tmp_path):
    path = tmp_path / "custom.ckpt"
    atomic_save({"obj": _Custom(41)}, path)
    with pytest.raises(CheckpointError, match=r"`[\w.]*_Custom`.*pass `weights_only=False`"):
        safe_load(path)
    assert safe_load(path, weights_only=False)["obj"].value == 41


def test_class_missing_at_load_time_with_weights_only_false(tmp_path, monkeypatch):
    path = tmp_path / "custom.ckpt"
    atomic_save({"obj": _Custom(1)}, path)
    monkeypatch.delattr(sys.modules[__name__], "_Custom")
    with pytest.raises(CheckpointError, match=r"custom\.ckpt.*_Custom") as info:
        safe_load(path, weights_only=False)
    assert isinstance(info.value.__cause__, AttributeError)


def test_add_safe_globals_extends_the_allowlist(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_reading, "_user_safe_globals", [])
    path = tmp_path / "custom.ckpt"
    atomic_save({"obj": _Custom(7)}, path)
    add_safe_globals(_Custom)
    add_safe_globals(_Custom)  # idempotent
    assert get_safe_globals().count(_Custom) == 1
    loaded = safe_load(path)["obj"]
    assert type(loaded) is _Custom and loaded.value == 7
    with pytest.raises(TypeError, match="classes or functions"):
        add_safe_globals("not a type")


def test_allowlist_is_narrow():
    allowed = {item[0] if isinstance(item, tuple) else item for item in get_safe_globals()}
    for dangerous in (eval, exec, getattr, os.system, subprocess.Popen, pathlib.Path.touch, type(np.dtype("O"))):
        assert dangerous not in allowed


def test_legacy_non_zip_checkpoint_still_loads(tmp_path):
    path = tmp_path / "legacy.ckpt"
    torch.save({"w": torch.arange(3)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(safe_load(path)["w"], torch.arange(3))


def test_filesystem_helpers(tmp_path, memory_dir):
    assert is_local(tmp_path) and is_local("relative/x.ckpt") and is_local(f"file://{tmp_path}")
    assert not is_local("memory://x") and not is_local("s3://bucket/key")
    assert type(get_filesystem(tmp_path)).__name__ == "LocalFileSystem"
    assert isinstance(get_filesystem(memory_dir), MemoryFileSystem)

    for root in (str(tmp_path), memory_dir):
        makedirs(f"{root}/a/b")
        makedirs(f"{root}/a/b")  # exist_ok by default
        target = f"{root}/a/b/x.ckpt"
        assert not file_exists(target)
        atomic_save({"x": 1}, target)
        assert file_exists(target)
        remove_file(target)
        assert not file_exists(target)
        remove_file(target)  # already gone: fine
    with pytest.raises(FileExistsError):
        makedirs(tmp_path, exist_ok=False)


def test_save_link_makes_relative_symlink_and_updates_it_atomically(tmp_path):
    first, second = tmp_path / "epoch=1.ckpt", tmp_path / "epoch=2.ckpt"
    atomic_save({"epoch": 1}, first)
    atomic_save({"epoch": 2}, second)
    link = tmp_path / "last.ckpt"

    save_link(first, link)
    assert link.is_symlink() and os.readlink(link) == "epoch=1.ckpt"
    assert safe_load(link) == {"epoch": 1}

    save_link(second, link)  # replaces the existing link
    assert os.readlink(link) == "epoch=2.ckpt" and safe_load(link) == {"epoch": 2}
    assert sorted(os.listdir(tmp_path)) == ["epoch=1.ckpt", "epoch=2.ckpt", "last.ckpt"]

    # The link is relative, so the directory can move as a whole.
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    os.rename(tmp_path, moved)
    try:
        assert safe_load(moved / "last.ckpt") == {"epoch": 2}
    finally:
        os.rename(moved, tmp_path)

    # Saving onto the link replaces the link, never writes through it into the target.
    atomic_save({"epoch": 3}, link)
    assert not link.is_symlink() and safe_load(second) == {"epoch": 2}


def test_save_link_into_another_directory(tmp_path):
    target = tmp_path / "ckpts" / "best.ckpt"
    atomic_save({"v": 1}, target)
    link = tmp_path / "links" / "last.ckpt"  # directory does not exist yet
    save_link(target, link)
    assert os.readlink(link) == os.path.join("..", "ckpts", "best.ckpt")
    assert safe_load(link) == {"v": 1}
    save_link(target, target)  # linking a file to itself is a no-op, not a loop
    assert safe_load(target) == {"v": 1}


def test_save_link_copies_where_symlinks_are_unsupported(tmp_path, monkeypatch):
    target = tmp_path / "best.ckpt"
    atomic_save({"v": torch.ones(2)}, target)

    def no_symlinks(*args, **kwargs):
        raise OSError("symbolic links are not supported here")

    monkeypatch.setattr(atomic.os, "symlink", no_symlinks)
    link = tmp_path / "last.ckpt"
    save_link(target, link)
    assert not link.is_symlink() and link.read_bytes() == target.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["best.ckpt", "last.ckpt"]


def test_save_link_on_memory_url_copies(memory_dir):
    target, link = f"{memory_dir}/best.ckpt", f"{memory_dir}/sub/last.ckpt"
    atomic_save({"v": 5}, target)
    save_link(target, link)
    assert safe_load(link) == {"v": 5}
    assert _memory_listing(memory_dir) == ["best.ckpt", "last.ckpt"]


def test_save_link_to_missing_target(tmp_path, memory_dir):
    with pytest.raises(CheckpointNotFoundError, match="missing.ckpt"):
        save_link(tmp_path / "missing.ckpt", tmp_path / "last.ckpt")
    with pytest.raises(CheckpointNotFoundError, match="missing.ckpt"):
        save_link(f"{memory_dir}/missing.ckpt", f"{memory_dir}/last.ckpt")
    assert not os.path.lexists(tmp_path / "last.ckpt")


def test_attribute_dict():
    hparams = AttributeDict(lr=0.1, batch_size=32)
    assert hparams.lr == hparams["lr"] == 0.1
    hparams.momentum = 0.9
    assert hparams["momentum"] == 0.9
    del hparams.momentum
    assert "momentum" not in hparams
    with pytest.raises(AttributeError, match="missing"):
        hparams.missing
    with pytest.raises(AttributeError, match="missing"):
        del hparams.missing
    assert isinstance(hparams, dict) and type(hparams.copy()) is AttributeDict
    assert repr(hparams) == "AttributeDict(lr=0.1, batch_size=32)"
    assert repr(AttributeDict({1: "a"})) == "AttributeDict({1: 'a'})"
    assert str(hparams) == "'lr':         0.1\n'batch_size': 32"
    assert pickle.loads(pickle.dumps(hparams)) == hparams
    # A key named like a protocol method stays data: copying still works.
    tricky = AttributeDict(__deepcopy__=1, __setstate__=2)
    assert copy.deepcopy(tricky) == tricky and type(copy.deepcopy(tricky)) is AttributeDict


def test_defaultdict_saved_by_plain_torch_save_is_refused_with_the_right_hint(tmp_path):
    # Plain pickle fills a defaultdict item by item, which weights-only loading cannot allow;
    # fulmen's own saves write it as one constructor call (see the round-trip tests).
    path = tmp_path / "plain.ckpt"
    torch.save({"d": collections.defaultdict(list, a=[1])}, path)
    with pytest.raises(CheckpointError, match="fills a `collections.defaultdict`.*`weights_only=False`") as info:
        safe_load(path)
    assert "add_safe_globals" not in str(info.value)
    assert safe_load(path, weights_only=False)["d"]["a"] == [1]


def test_documented_import_paths_still_work():
    """The names the docs gave before checkpoint I/O moved into fulmen.checkpointing are the same objects."""
    import fulmen.checkpointing as checkpointing
    import fulmen.strategies as strategies
    from fulmen.utilities import cloud_io

    assert cloud_io.add_safe_globals is checkpointing.add_safe_globals is add_safe_globals
    assert cloud_io.safe_load is checkpointing.safe_load and cloud_io.atomic_save is checkpointing.atomic_save
    assert cloud_io.CheckpointNotFoundError is CheckpointNotFoundError
    assert strategies.consolidate_checkpoint is checkpointing.consolidate_checkpoint
    assert checkpointing.SCHEMA_VERSION == 2
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        checkpointing.nope  # noqa: B018
