"""Checkpoint directories: written aside, published at once, never half-visible; placeholders for shards."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from fulmen.callbacks import ModelCheckpoint
from fulmen.checkpointing import atomic, remote, sharded_dir
from fulmen.checkpointing.sharded_dir import ShardedStateRef
from fulmen.utilities.exceptions import CheckpointError
from tests.conftest import run_python


def _save(target, step: int, token: str = "t") -> str:
    """What a sharded save does, on one rank: shards into the staging folder, the state last, publish."""
    staging = sharded_dir.staging_path(target, token)
    os.makedirs(os.path.join(staging, "checkpoint"))
    torch.save({"w": torch.full((3,), float(step))}, os.path.join(staging, "checkpoint", "shard_0.pt"))
    sharded_dir.fsync_share(staging, rank=0, world_size=1)
    sharded_dir.write_state(staging, {"step": step})
    sharded_dir.publish(staging, target)
    return staging


def _wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _step(target) -> int:
    return torch.load(os.path.join(target, sharded_dir.STATE_FILE), weights_only=True)["step"]


def test_publish_creates_and_replaces(tmp_path):
    target = tmp_path / "last.ckpt"
    _save(target, 1, "a")
    assert sharded_dir.is_checkpoint_dir(target) and _step(target) == 1
    _save(target, 2, "b")  # replaces the directory (atomic exchange on Linux)
    assert _step(target) == 2
    _wait_until(lambda: sorted(os.listdir(tmp_path)) == ["last.ckpt"])  # the previous one, deleted in the background
    shard = torch.load(target / "checkpoint" / "shard_0.pt", weights_only=True)
    assert torch.equal(shard["w"], torch.full((3,), 2.0))


def test_publish_replaces_a_file_or_a_link(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"an older single-file checkpoint")
    _save(target, 1, "a")
    assert target.is_dir() and _step(target) == 1
    other = tmp_path / "epoch=0.ckpt"
    _save(other, 5, "c")
    target_link = tmp_path / "link.ckpt"
    atomic.save_link(str(other), str(target_link))  # save_last="link" to a directory
    assert target_link.is_symlink() and _step(target_link) == 5
    _save(target_link, 6, "d")
    assert not target_link.is_symlink() and _step(target_link) == 6 and _step(other) == 5


def test_an_interrupted_save_leaves_the_previous_checkpoint(tmp_path):
    target = tmp_path / "last.ckpt"
    _save(target, 1, "a")
    staging = sharded_dir.staging_path(target, "b")
    os.makedirs(staging)
    with open(os.path.join(staging, "half_written.pt"), "wb") as f:
        f.write(b"PK\x03")  # the process died here, before publishing
    assert _step(target) == 1
    # "last" finds the published checkpoint only; the staging folder is hidden.
    callback = ModelCheckpoint(dirpath=str(tmp_path))
    assert callback._find_last_checkpoints(trainer=None) == {str(target)}
    sharded_dir.remove_stale_staging(target)  # the next save clears the leftover
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]


@pytest.mark.timeout(60)
def test_a_process_killed_while_saving_leaves_the_previous_checkpoint(tmp_path):
    target = tmp_path / "last.ckpt"
    _save(target, 1, "a")
    code = (
        "import os, signal, sys, torch\n"
        "from fulmen.checkpointing import sharded_dir\n"
        "staging = sharded_dir.staging_path(sys.argv[1], 'killed')\n"
        "os.makedirs(staging)\n"
        "torch.save({'w': torch.ones(1000)}, os.path.join(staging, 'shard_0.pt'))\n"
        "sharded_dir.write_state(staging, {'step': 2})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
        "sharded_dir.publish(staging, sys.argv[1])\n"
    )
    proc = run_python("-c", code, str(target), timeout=50)
    assert proc.returncode == -signal.SIGKILL
    assert _step(target) == 1
    assert [name for name in os.listdir(tmp_path) if name.startswith(".last.ckpt.partial-")]


def test_incomplete_or_missing_directories_are_refused_by_name(tmp_path):
    (tmp_path / "copied.ckpt").mkdir()
    with pytest.raises(CheckpointError, match="not a complete fulmen checkpoint"):
        sharded_dir.check_complete(tmp_path / "copied.ckpt")
    with pytest.raises(remote.CheckpointNotFoundError):
        sharded_dir.check_complete(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="local or mounted filesystem"):
        sharded_dir.staging_path("memory://bucket/last.ckpt", "t")


def test_remove_deletes_directories_through_cloud_io(tmp_path):
    target = tmp_path / "epoch=0.ckpt"
    _save(target, 1)
    remote.remove_file(str(target))  # what ModelCheckpoint's top-k pruning calls
    assert os.listdir(tmp_path) == []
    remote.remove_file(str(target))  # missing: fine


def test_placeholders_round_trip():
    state = {
        "state_dict": ShardedStateRef("module", {"a": 1}),
        "optimizer_states": [ShardedStateRef("optimizer")],
        "loops": {"global_step": 3},
    }
    stored = sharded_dir.to_placeholders(state)
    assert stored["state_dict"] == {"__fulmen_sharded__": "module"}
    assert stored["optimizer_states"] == [{"__fulmen_sharded__": "optimizer"}]
    back = sharded_dir.from_placeholders(stored)
    assert isinstance(back["state_dict"], ShardedStateRef) and back["state_dict"].kind == "module"
    assert back["optimizer_states"][0].kind == "optimizer" and back["loops"] == {"global_step": 3}
