"""FSDP through the Trainer: every option takes effect or is refused; sharded checkpoints save, prune,
resume, consolidate and load without running code from the files."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from fulmen.checkpointing.consolidation import consolidate_checkpoint, load_consolidated
from fulmen.strategies import FSDPStrategy
from fulmen.utilities.exceptions import CheckpointError, MisconfigurationException
from tests.conftest import run_python

WORKER = Path(__file__).parent / "scripts" / "fsdp_checkpoint_worker.py"
ENV = {"FULMEN_DIST_TIMEOUT": "60", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}


@pytest.fixture(scope="module")
def worker_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_checkpoints")
    proc = run_python(str(WORKER), str(out), timeout=170, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank_{rank}.json").read_text()) for rank in (0, 1)]
    return out, ranks


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_sharded_checkpoints_are_directories_of_one_shard_per_rank_pruned_by_top_k(worker_run):
    out, ranks = worker_run
    entries = sorted(os.listdir(out / "sharded"))
    # save_top_k=1 kept one of the three step checkpoints, plus last; no staging directory is left.
    assert len(entries) == 2 and "last.ckpt" in entries, entries
    assert ranks[0]["best_k"] == [e for e in entries if e != "last.ckpt"]
    for entry in entries:
        files = sorted(os.listdir(out / "sharded" / entry))
        assert files == [".metadata", "__0_0.distcp", "__1_0.distcp", "fulmen_checkpoint.pt"], files


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_fit_resumes_from_a_sharded_last_and_a_full_strategy_reads_it(worker_run):
    _out, ranks = worker_run
    for seen in ranks:
        assert seen["first_step"] == 8
        assert (seen["resumed_step"], seen["resumed_epoch"]) == (16, 2)  # one more epoch after the resumed one
        # The last checkpoint (taken at the end) read back into a fresh model equals the trained weights.
        assert seen["weights_read_back"] == seen["weights_after_first"]
        # The same sharded module validated after its fit, and a second Trainer resumed and saved it.
        assert seen["val_after_fit"] > 0 and seen["refit_step"] == 16
    files = sorted(os.listdir(_out / "refit.ckpt"))
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp", "fulmen_checkpoint.pt"]
    state = torch.load(_out / "refit.ckpt" / "fulmen_checkpoint.pt", weights_only=True)
    assert state["optimizer_states"] == [{"__fulmen_sharded__": "optimizer"}]  # the Adam state is in the shards


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_sharded_saves_in_the_background_write_the_same_checkpoints(worker_run):
    out, ranks = worker_run
    assert sorted(os.listdir(out / "async")) == sorted(os.listdir(out / "sharded"))  # no staging left behind
    for seen in ranks:
        assert seen["async_best_k"] == seen["best_k"]
        assert seen["async_weights"] == seen["weights_after_first"]
        assert seen["async_read_back"] == seen["weights_after_first"]


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_init_module_builds_on_meta_and_setup_materialises_sharded(worker_run):
    for seen in worker_run[1]:
        assert seen["meta_before_setup"] is True
        assert seen["meta_after_fit"] is False


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_activation_checkpointing_recomputes_and_mixed_precision_casts(worker_run):
    for seen in worker_run[1]:
        plain, recomputed = seen["forward_calls"]
        assert (plain, recomputed) == (3, 6)  # 3 steps; the checkpointed block runs again in each backward
        assert seen["dtype_in_forward"] == ["torch.bfloat16"]
        assert seen["dtype_at_rest"] == "torch.float32"


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_consolidated_sharded_directory_loads_on_one_process(worker_run, tmp_path):
    out, ranks = worker_run
    target = tmp_path / "whole.ckpt"
    consolidate_checkpoint(out / "sharded" / "last.ckpt", target)
    state = torch.load(target, weights_only=True)
    expected = ranks[0]["weights_after_first"]
    assert sorted(state["state_dict"]) == sorted(expected)
    for name, value in expected.items():
        assert torch.equal(state["state_dict"][name], torch.tensor(value)), name
    assert "optimizer_states" not in state  # sharded optimizer state is not carried into one file


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_crafted_index_is_refused_without_running_code(worker_run, tmp_path):
    out, _ = worker_run
    copy = tmp_path / "crafted.ckpt"
    shutil.copytree(out / "sharded" / "last.ckpt", copy)
    (copy / ".metadata").write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(CheckpointError, match="'.metadata'.*refers to `(posix|os).system`.*not loaded"):
        load_consolidated(copy)
    assert not (Path.cwd() / "pwned").exists()


def test_every_option_is_taken_or_refused_by_name():
    from torch.distributed.fsdp import MixedPrecision, MixedPrecisionPolicy

    strategy = FSDPStrategy(
        sharding_strategy="SHARD_GRAD_OP",
        mixed_precision=MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32),
        activation_checkpointing=[torch.nn.Linear],
        state_dict_type="SHARDED_STATE_DICT",
        timeout=30,
    )
    assert isinstance(strategy.mixed_precision, MixedPrecisionPolicy)
    assert strategy.mixed_precision.param_dtype == torch.bfloat16
    assert strategy.state_dict_type == "sharded"
    assert "state_dict_type='sharded'" in repr(strategy)
    with pytest.raises(MisconfigurationException, match="use_orig_params.*FSDP1"):
        FSDPStrategy(use_orig_params=False)
    with pytest.raises(MisconfigurationException, match="`FSDPStrategy\\(bucket_cap=...\\)` is not an option"):
        FSDPStrategy(bucket_cap=25)
    with pytest.raises(ValueError, match="state_dict_type.*'local'.*'full', 'sharded'"):
        FSDPStrategy(state_dict_type="local")
    with pytest.raises(MisconfigurationException, match="buffer_dtype"):
        FSDPStrategy(mixed_precision=MixedPrecision(param_dtype=torch.bfloat16, buffer_dtype=torch.float16))
    with pytest.raises(ValueError, match="activation_checkpointing_policy"):
        FSDPStrategy(activation_checkpointing_policy=["Linear"])
    with pytest.raises(MisconfigurationException, match="same option"):
        FSDPStrategy(activation_checkpointing=[torch.nn.Linear], activation_checkpointing_policy={torch.nn.Linear})
