"""Sharded modules called directly (callbacks, after fit, validate, predict, a second Trainer) under
ModelParallelStrategy, HSDP and TP x DP, against the same module unsharded; blocks compiled with
``torch.compile`` in ``configure_model`` on CPU: trained where torch computes them right, refused where not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_python

WORKER = Path(__file__).parent / "scripts" / "direct_calls_worker.py"
ENV = {"FULMEN_DIST_TIMEOUT": "60", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
WHERE = [
    "fit:on_validation_epoch_end", "fit:on_fit_end", "after_fit", "after_validate",
    "second_fit:on_validation_epoch_end", "second_fit:on_fit_end", "after_second_fit",
]  # fmt: skip


def _run(tmp_path, part, ranks, timeout):
    proc = run_python(str(WORKER), str(tmp_path), part, timeout=timeout, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((tmp_path / f"{part}_rank{rank}.json").read_text()) for rank in range(ranks)]


def _check_round(seen, tag, predictions, global_step):
    for where in WHERE:
        # The module, then two of its submodules: each output equals the unsharded module's.
        assert seen[f"{tag}:{where}"] == [True, True, True], (tag, where)
    assert seen[f"{tag}:predictions"] == [True] * predictions, tag
    assert seen[f"{tag}:global_step"] == global_step, tag


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_tensor_parallel_module_called_directly_and_compiled_blocks(tmp_path):
    for seen in _run(tmp_path, "tp", 2, timeout=400):
        # TP=1 x DP=2, every block compiled (inductor): the weights of the eager, unsharded model.
        assert seen["compiled:blocks"] == ["FSDPOptimizedModule", "FSDPOptimizedModule"]
        assert seen["compiled:graphs"] >= 1 and seen["compiled:weight_diff"] < 1e-5
        assert seen["compiled:direct_call"] == [True, True, True]
        # TP=2: 16 rows in batches of 4, the same on both ranks; 4 steps, then 4 more in the second fit.
        _check_round(seen, "tp", predictions=2, global_step=8)


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_compiled_tensor_parallel_blocks_are_refused_on_cpu(tmp_path):
    proc = run_python(str(WORKER), str(tmp_path), "refused", timeout=180, env=ENV)
    assert proc.returncode != 0
    errors = [json.loads(path.read_text())["error"] for path in sorted(tmp_path.glob("refused_rank*.json"))]
    refused = [message for kind, message in errors if kind == "MisconfigurationException"]
    assert refused, errors
    assert "`model.layers.0` is compiled with `torch.compile`" in refused[0]
    assert "`tensor_parallel_size=2` CPU processes" in refused[0] and "does not support this on CPU" in refused[0]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_hsdp_and_two_d_modules_called_directly_on_four_processes(tmp_path):
    for seen in _run(tmp_path, "meshes", 4, timeout=400):
        # HSDP 2 x 2 (only the root a unit, then every block one too), then TP=2 x DP=2.
        _check_round(seen, "hsdp_root", predictions=1, global_step=2)
        _check_round(seen, "hsdp_units", predictions=1, global_step=2)
        _check_round(seen, "tp_dp", predictions=1, global_step=4)
