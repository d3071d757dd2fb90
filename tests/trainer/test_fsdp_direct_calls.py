"""A sharded module stays callable: the LightningModule and its submodules, called directly in callbacks,
after fit, validate and predict, and in a second Trainer, give the outputs of the same module unsharded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_python

WORKER = Path(__file__).parent / "scripts" / "fsdp_direct_calls.py"
ENV = {"FULMEN_DIST_TIMEOUT": "60", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_direct_calls_of_a_sharded_module_match_the_unsharded_module(tmp_path):
    proc = run_python(str(WORKER), str(tmp_path), timeout=220, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank_{rank}.json").read_text())
        # "root": the module is the only FSDP unit; "units": its block is a unit of its own too.
        for tag in ("root", "units"):
            places = ["on_validation_epoch_end", "on_fit_end", "after_fit", "after_validate", "after_second_fit"]
            for where in places:
                assert seen[f"{tag}:{where}"] == [True, True], (tag, where)  # the module, then a submodule
            for where in ("on_validation_epoch_end", "on_fit_end"):
                assert seen[f"{tag}2:{where}"] == [True, True], (tag, where)
            assert seen[f"{tag}:predictions"] == [2, [4, 4]]
            assert seen[f"{tag}:global_step"] == 4
            assert seen[f"{tag}:optimizer_params"] == ["block.inner.0.weight", "block.inner.0.bias", "head.weight",
                                                        "head.bias"]  # fmt: skip
