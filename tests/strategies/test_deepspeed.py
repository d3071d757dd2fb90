"""DeepSpeed ZeRO 1, 2, 2-offload, 3, 3-offload on two CPU processes over gloo, through the Trainer and Lite.

DeepSpeed's start-up costs seconds per process (and its first use on a machine builds a
communication op, ~90 s, into the shared ``TORCH_EXTENSIONS_DIR`` that tests/conftest.py sets),
so one launch of ``scripts/deepspeed_worker.py`` runs every check and each rank writes each
result to a file; these tests read them. Two more launches: a ZeRO-2 run whose rank 0 is
SIGKILLed between writing the shards of "last" and publishing them, and its resumption.
About 75 s here once the op is built.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import run_python

WORKER = str(Path(__file__).parent / "scripts" / "deepspeed_worker.py")
STAGES = ["zero1", "zero2", "zero2_offload", "zero3", "zero3_offload"]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.deepspeed,
    pytest.mark.skipif(
        importlib.util.find_spec("deepspeed") is None,
        reason="deepspeed is not installed (`pip install fulmen[deepspeed]`; `make test` installs it)",
    ),
]


class Results:
    def __init__(self, out: Path) -> None:
        self.out = out

    def get(self, name: str, rank: int = 0) -> dict:
        path = self.out / "results" / f"{name}_rank{rank}.pt"
        assert path.exists(), f"the worker wrote no {path.name}; see its output above"
        return torch.load(path, weights_only=True)


def _launch(out: Path, *parts: str, expect_ok: bool = True, timeout: float = 420) -> None:
    proc = run_python(WORKER, str(out), *parts, timeout=timeout)
    if expect_ok:
        assert proc.returncode == 0, f"worker {parts} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    else:  # killed by its own SIGKILL, not failed for another reason
        assert proc.returncode == -9, f"worker {parts} was not killed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Results:
    out = tmp_path_factory.mktemp("deepspeed")
    _launch(out, "trainer", "lite")
    return Results(out)


@pytest.fixture(scope="module")
def killed(tmp_path_factory, results) -> Results:
    _launch(results.out, "kill", expect_ok=False, timeout=200)
    _launch(results.out, "resume", timeout=200)
    return results


def _assert_close(actual: dict, expected: dict, atol: float, what: str) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.allclose(actual[key], expected[key], atol=atol), f"{what}: {key} differs"


def _assert_equal(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), f"{what}: {key} is not bit-equal"


# ------------------------------------------------------------------------------------- Trainer
@pytest.mark.timeout(600)
@pytest.mark.parametrize("stage", STAGES)
def test_trainer_trains_like_ddp(results, stage):
    """Same data, dropout, Adam, StepLR, accumulate_grad_batches=2, gradient_clip_val=1.0: DDP's losses."""
    for rank in (0, 1):
        ddp, zero = results.get("ddp", rank), results.get(stage, rank)
        assert zero["global_step"] == ddp["global_step"] == 16
        assert torch.allclose(zero["losses"], ddp["losses"], atol=1e-5), f"{stage} rank {rank}"
        _assert_close(zero["weights"], ddp["weights"], atol=1e-5, what=f"{stage} rank {rank}")
        assert zero["param_dtype"] == "torch.float32"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("stage", STAGES)
def test_trainer_validate_test_predict(results, stage):
    ddp, zero = results.get("ddp"), results.get(stage)
    assert math.isclose(zero["validate"], ddp["validate"], rel_tol=1e-5)
    assert math.isclose(zero["test"], ddp["test"], rel_tol=1e-5)
    assert zero["predict"].shape == (16, 1)  # 32 samples over 2 ranks
    assert torch.allclose(zero["predict"], ddp["predict"], atol=1e-5)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("stage", STAGES)
def test_checkpoints_are_directories_pruned_by_top_k(results, stage):
    """ModelCheckpoint keeps "last" and the two best of five saves; nothing half-written is left."""
    listing = results.get(stage)["listing"]
    assert listing["steps"] == ["last.ckpt"]
    assert listing["best"] == ["epoch=1-step=12.ckpt", "epoch=1-step=15.ckpt"]
    last = results.out / stage / "full" / "steps" / "last.ckpt"
    assert last.is_dir() and (last / "fulmen_checkpoint.pt").is_file()
    shards = sorted(p.name for p in (last / "checkpoint").iterdir())
    assert sum("optim_states" in name for name in shards) == 2  # one optimizer shard per rank


@pytest.mark.timeout(600)
@pytest.mark.parametrize("stage", STAGES)
def test_consolidated_checkpoint_loads_on_one_process_without_deepspeed(results, stage, monkeypatch):
    from tests.strategies.deepspeed_models import Regressor

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # any import of deepspeed would fail
    consolidated = results.out / stage / "final.pt"
    model = Regressor.load_from_checkpoint(consolidated)
    final = results.get(stage)["weights"]
    _assert_equal({k: v.float() for k, v in model.state_dict().items()}, final, f"{stage} consolidated")
    checkpoint = torch.load(consolidated, weights_only=True)
    assert "optimizer_states" not in checkpoint and "sharded" not in checkpoint
    assert checkpoint["hyper_parameters"] == {"lr": 0.02, "dropout": 0.2}
    assert checkpoint["loops"]["global_step"] == 16


@pytest.mark.timeout(600)
def test_consolidate_command(results, tmp_path):
    output = tmp_path / "model.ckpt"
    proc = run_python(
        "-m", "fulmen", "checkpoint", "consolidate", str(results.out / "zero3" / "final.ckpt"), str(output)
    )
    assert proc.returncode == 0, proc.stderr
    assert "Wrote" in proc.stdout
    state = torch.load(output, weights_only=True)["state_dict"]
    _assert_equal(state, results.get("zero3")["weights"], "fulmen checkpoint consolidate")
    missing = run_python("-m", "fulmen", "checkpoint", "consolidate", str(tmp_path / "nope"), str(output))
    assert missing.returncode == 1 and "does not exist" in missing.stderr


@pytest.mark.timeout(600)
@pytest.mark.parametrize("stage", ["zero1", "zero2", "zero3"])
def test_stopped_mid_epoch_and_resumed_from_last_is_bit_equal(results, stage):
    """ZeRO-2 and 3 save asynchronously in this run: the same directories, and the resume is as exact."""
    for rank in (0, 1):
        resumed, full = results.get(f"{stage}_resume", rank), results.get(stage, rank)
        assert resumed["stopped_at"] == 5 and resumed["global_step"] == 16
        _assert_equal(resumed["weights"], full["weights"], f"{stage} rank {rank}")
    assert results.get(f"{stage}_resume")["listing"] == results.get(stage)["listing"]
    # ZeRO-2 and 3: every rank wrote its shards of every save of both runs on its writer thread
    # (each top-k save at steps 3, 6, ..., 15 followed by a "last"); ZeRO-1 saved synchronously.
    expected = [] if stage == "zero1" else [name for step in (3, 6, 9, 12, 15) for name in (f"step={step}", "last")]
    for rank in (0, 1):
        saves = results.get(f"{stage}_resume", rank)["background_saves"]
        assert [re.search(r"(step=\d+|last)\.ckpt", message).group(1) for message in saves] == expected


@pytest.mark.timeout(900)
def test_killed_while_saving_keeps_the_previous_checkpoint_and_resumes_bit_equal(killed):
    result = killed.get("zero2_killed")
    # The save at step 10 died before publishing: only a hidden staging folder, "last" still step 5.
    assert result["leftovers"][1:] == ["last.ckpt"] and result["leftovers"][0].startswith(".last.ckpt.partial-")
    assert result["after"] == ["last.ckpt"]  # the next save of "last" cleared the leftover
    for rank in (0, 1):
        _assert_equal(killed.get("zero2_killed", rank)["weights"], killed.get("zero2", rank)["weights"], "killed")


@pytest.mark.timeout(600)
def test_init_module_builds_zero3_partitioned(results):
    full = {"net.0.weight": 256, "net.0.bias": 32, "net.3.weight": 32, "net.3.bias": 1}
    for rank in (0, 1):
        local = results.get("zero3", rank)["local_numel"]
        assert local == {name: math.ceil(numel / 2) for name, numel in full.items()}


@pytest.mark.timeout(600)
def test_bf16_on_cpu(results):
    result = results.get("zero2_bf16")
    assert result["param_dtype"] == "torch.bfloat16"
    assert torch.isfinite(result["losses"]).all() and len(result["losses"]) == 16


@pytest.mark.timeout(600)
def test_loading_never_unpickles_with_full_pickle_from_a_file(killed):
    for launch in ("done_trainer_lite", "done_resume"):  # resumes of stages 1-3, Lite loads, the killed run
        for rank in (0, 1):
            assert killed.get(launch, rank)["unsafe_loads"] == []


# ----------------------------------------------------------------------------------------- Lite
@pytest.mark.timeout(600)
@pytest.mark.parametrize("stage", STAGES)
def test_lite_loop_trains_like_ddp_and_resumes_from_its_save(results, stage):
    for rank in (0, 1):
        ddp, zero = results.get("lite_ddp", rank), results.get(f"lite_{stage}", rank)
        assert torch.allclose(zero["losses"], ddp["losses"], atol=1e-5), f"{stage} rank {rank}"
        # save at step 4, three steps, load, the same three steps: the same losses, to the bit.
        assert torch.equal(zero["after_load"], zero["losses"][-6:])
        assert zero["rest"] == {"step": 4}
        assert zero["is_dir"]


def test_worker_output_location_is_per_rank(results):
    names = {p.name for p in (results.out / "results").iterdir()}
    assert {"done_trainer_lite_rank0.pt", "done_trainer_lite_rank1.pt"} <= names
    assert os.path.isdir(results.out / "lite" / "zero2" / "state.ckpt")


@pytest.mark.timeout(600)
def test_any_strategy_reads_a_sharded_directory(results, monkeypatch):
    """One process, no DeepSpeed: ``validate(ckpt_path=<ZeRO directory>)`` loads the merged weights."""
    import fulmen as L
    from tests.strategies.deepspeed_models import Regressor, eval_loader

    monkeypatch.setitem(sys.modules, "deepspeed", None)
    model = Regressor()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    trainer.validate(model, eval_loader(), ckpt_path=str(results.out / "zero3" / "final.ckpt"))
    _assert_equal(model.state_dict(), results.get("zero3")["weights"], "validate(ckpt_path=directory)")
