"""FSDP and ddp_sharded train like DDP and write full checkpoints that load into a plain module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import run_python

WORKER = str(Path(__file__).parent / "scripts" / "sharded_worker.py")
pytestmark = [pytest.mark.slow]


def _train(name: str, out_dir: Path) -> dict:
    out_dir.mkdir()
    proc = run_python(WORKER, str(out_dir), name, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out_dir / "result.json").read_text())


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory):
    return _train("ddp", tmp_path_factory.mktemp("ref") / "ddp")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["fsdp", "fsdp_grad_op", "ddp_sharded", "fsdp_sharded_checkpoint"])
def test_sharded_training_matches_ddp_and_checkpoints_are_full(name, ddp_reference, tmp_path):
    result = _train(name, tmp_path / name)
    # A sharded save was consolidated into state.ckpt: the optimizer state stays in the shards.
    expected_keys = [] if name == "fsdp_sharded_checkpoint" else ["param_groups", "state"]
    assert result["optimizer_keys"] == expected_keys
    for key, expected in ddp_reference["weights"].items():
        assert torch.allclose(torch.tensor(result["weights"][key]), torch.tensor(expected), atol=1e-6), key
    # A full (unsharded) checkpoint: loads into the plain model on one process.
    state = torch.load(tmp_path / name / "state.ckpt", weights_only=True)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    model.load_state_dict(state["model"])
    assert model[0].weight.shape == (16, 8)
    if name == "fsdp_sharded_checkpoint":
        _assert_sharded_round_trip(tmp_path / name)


def _assert_sharded_round_trip(out_dir: Path) -> None:
    """``lite.save`` under FSDP(state_dict_type="sharded") wrote one shard per rank; ``lite.load``
    restored weights, Adam moments and the learning rate into a newly set-up model and optimizer."""
    for rank in (0, 1):
        record = json.loads((out_dir / f"round_trip_{rank}.json").read_text())
        assert record["files"] == [".metadata", "__0_0.distcp", "__1_0.distcp", "fulmen_checkpoint.pt"]
        assert record["same_weights"] and record["same_moments"]
        assert record["lr"] == 0.01  # the saved learning rate replaced the fresh optimizer's 0.5
        assert record["remainder"] == {"step": 8}


def test_fsdp_rejects_bad_arguments():
    from fulmen.strategies import FSDPStrategy, select_strategy
    from fulmen.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match="`sharding_strategy='HALF'`"):
        FSDPStrategy(sharding_strategy="HALF")
    with pytest.raises(MisconfigurationException, match="not supported with FSDPStrategy"):
        select_strategy(accelerator="cpu", devices=2, strategy="fsdp", precision="64-true")
    strategy = select_strategy(accelerator="cpu", devices=2, strategy="fsdp", precision="bf16-mixed")
    assert isinstance(strategy, FSDPStrategy) and strategy.precision.precision == "bf16-mixed"
