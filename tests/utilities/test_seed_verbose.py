"""seed_everything(verbose=...) as Lightning and Fabric accept it: the INFO line and warnings only when verbose."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

import fulmen as L
from fulmen.lite import Lite


@pytest.fixture(autouse=True)
def _restore_seed_variables(monkeypatch):
    """seed_everything exports its seed; put the variables back as they were after each test."""
    for name in ("FULMEN_GLOBAL_SEED", "FULMEN_SEED_WORKERS"):
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)


def test_verbose_logs_the_seed_and_quiet_does_not(caplog):
    with caplog.at_level(logging.INFO, logger="fulmen"):
        assert L.seed_everything(3) == 3
    assert "[rank: 0] Seed set to 3" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fulmen"):
        assert L.seed_everything(4, verbose=False) == 4
        first = torch.rand(1)
        L.seed_everything(4, workers=True, verbose=False)
        assert torch.equal(first, torch.rand(1))
    assert "Seed set" not in caplog.text


def test_out_of_range_seed_warns_only_when_verbose():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert L.seed_everything(-1, verbose=False) == 0
    assert not caught
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert L.seed_everything(-1) == 0
    assert any("outside" in str(w.message) for w in caught)


def test_lite_and_fabric_take_verbose():
    assert Lite.seed_everything(5, verbose=False) == 5
    assert L.Fabric.seed_everything(6, workers=False, verbose=False) == 6
