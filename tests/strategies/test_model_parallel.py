"""ModelParallelStrategy: tensor parallelism (TP=2) on 2 CPU processes through Lite and the Trainer, against
the same model unsharded; DCP and whole-tensor checkpoints; the module called directly; errors by name."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from fulmen.strategies import ModelParallelStrategy, consolidate_checkpoint
from fulmen.utilities.exceptions import MisconfigurationException
from tests.conftest import run_python

SCRIPTS = Path(__file__).parent / "scripts"
ENV = {"FULMEN_DIST_TIMEOUT": "60", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}


def _run(part, tmp_path):
    proc = run_python(str(SCRIPTS / "model_parallel_worker.py"), str(tmp_path), part, timeout=200, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((tmp_path / f"{part}_rank{rank}.json").read_text()) for rank in (0, 1)]


def _check_training(seen):
    assert seen["mesh"] == ["data_parallel", "tensor_parallel"]
    # The same losses and gradients as the model unsharded on one process, for the same batches.
    assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(seen["losses"], seen["ref_losses"]))
    assert len(seen["losses"]) == 3 and seen["losses"][0] != seen["losses"][-1]
    assert seen["grad_diff"] < 1e-5 and seen["weight_diff"] < 1e-5
    assert math.isclose(seen["probe"], seen["ref_probe"], rel_tol=1e-5)  # the module called directly
    assert seen["checkpoint_files"] == [".metadata", "__0_0.distcp", "__1_0.distcp", "fulmen_checkpoint.pt"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_lite_tensor_parallel_matches_the_unsharded_model_and_checkpoints(tmp_path):
    for seen in _run("lite", tmp_path):
        _check_training(seen)
        assert seen["loaded_rest"] == {"step": 3}
        assert seen["loaded_diff"] < 1e-5  # a fresh parallel model loaded the DCP directory


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_trainer_tensor_parallel_matches_the_unsharded_model_and_checkpoints(tmp_path):
    for seen in _run("trainer", tmp_path):
        _check_training(seen)
        assert seen["global_step"] == 3
        # Saved after a validation: the optimizer's state is in the shards too, not pickled whole.
        assert seen["optimizer_placeholders"] == [{"__fulmen_sharded__": "optimizer"}]
        assert math.isclose(seen["logged"], seen["losses"][-1], rel_tol=1e-6)
        assert seen["validated_diff"] < 1e-5  # a second Trainer validated from the DCP directory
        assert seen["whole_is_file"]  # save_distributed_checkpoint=False: one file of whole tensors
        assert seen["reshaped_mesh"] == [2, 1] and seen["reshaped_diff"] < 1e-5  # DCP re-sharded TP=2 -> DP=2
        # init_module(empty_init=True): on meta until setup, then real, trained with gradient clipping.
        assert (seen["meta_before"], seen["meta_after"], seen["meta_trained"]) == (True, False, [2, True])
    # On one process: the directory consolidated into one file holds the same weights as the whole file.
    consolidate_checkpoint(tmp_path / "tp.ckpt", tmp_path / "consolidated.ckpt")
    merged = torch.load(tmp_path / "consolidated.ckpt", weights_only=True)["state_dict"]
    whole = torch.load(tmp_path / "tp_whole.ckpt", weights_only=True)["state_dict"]
    assert sorted(merged) == sorted(whole) and len(merged) > 10
    for name, value in whole.items():
        assert torch.allclose(merged[name], value, atol=1e-6), name


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_misconfigurations_fail_at_setup_with_clear_errors():
    proc = run_python(str(SCRIPTS / "model_parallel_misconfigured.py"), timeout=100, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cases = {c["case"]: c for c in map(json.loads, proc.stdout.splitlines()) if c.get("case")}
    assert cases["sizes"]["error"] == "MisconfigurationException"
    assert (
        "`data_parallel_size=2` and `tensor_parallel_size=1` multiplied should equal the world size (1)"
        in (cases["sizes"]["message"])
    )
    assert cases["not_parallelised"]["error"] == "TypeError"
    assert "required to override the `configure_model()` hook" in cases["not_parallelised"]["message"]
    assert "tensor_paralel" in cases["dim_typo"]["message"] and "tensor_parallel" in cases["dim_typo"]["message"]


def test_options_are_taken_or_refused_by_name():
    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2, save_distributed_checkpoint=False)
    assert (strategy.data_parallel_size, strategy.tensor_parallel_size, strategy.writes_shards) == (1, 2, False)
    with pytest.raises(MisconfigurationException, match="does not take `sharding_strategy`.*fully_shard"):
        ModelParallelStrategy(sharding_strategy="FULL_SHARD")
    with pytest.raises(MisconfigurationException, match="`data_parallel_size=0` is not valid. Accepted: 'auto'"):
        ModelParallelStrategy(data_parallel_size=0)
    with pytest.raises(MisconfigurationException, match="`tensor_parallel_size='2'`"):
        ModelParallelStrategy(tensor_parallel_size="2")
    with pytest.raises(MisconfigurationException, match="`parallelize_fn=3`"):
        ModelParallelStrategy(parallelize_fn=3)
    with pytest.raises(
        MisconfigurationException, match="`bogus=1` is not valid. Accepted: the keywords of its signature"
    ):
        ModelParallelStrategy(bogus=1)
    with pytest.raises(RuntimeError, match="device mesh exists once the processes have started"):
        _ = strategy.device_mesh
    with pytest.raises(TypeError, match="required to override the `configure_model\\(\\)` hook"):
        strategy.setup_module(nn.Linear(2, 2))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_d_meshes_on_four_processes(tmp_path):
    """TP=2 x DP=2 (ModelParallelStrategy) and HSDP 2 x 2 (FSDPStrategy(device_mesh=(2, 2))) against one process."""
    proc = run_python(str(SCRIPTS / "model_parallel_worker.py"), str(tmp_path), "2d", timeout=280, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in range(4):
        seen = json.loads((tmp_path / f"2d_rank{rank}.json").read_text())
        assert seen["tp_dp_global_step"] == 3
        assert seen["tp_dp_grad_diff"] < 1e-5 and seen["tp_dp_weight_diff"] < 1e-5
        assert math.isclose(seen["tp_dp_probe"], seen["tp_dp_ref_probe"], rel_tol=1e-5)
        assert seen["hsdp_mesh"] == [["replicate", "shard"], [2, 2]]
        assert seen["hsdp_weight_diff"] < 1e-6 and seen["hsdp_direct_call_diff"] < 1e-6


def test_hybrid_sharding_options_are_checked_by_name():
    from fulmen.strategies import FSDPStrategy

    assert FSDPStrategy(device_mesh=(2, 2)).sharding_strategy == "HYBRID_SHARD"
    with pytest.raises(MisconfigurationException, match="`device_mesh=\\(2, 0\\)` is not valid"):
        FSDPStrategy(device_mesh=(2, 0))
    with pytest.raises(MisconfigurationException, match="does not go with `NO_SHARD`"):
        FSDPStrategy(sharding_strategy="NO_SHARD", device_mesh=(1, 2))
