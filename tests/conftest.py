"""Shared test set-up: every distributed test stays on loopback and fails fast."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Loopback only; a missing rank fails collectives in seconds, not gloo's 30 minutes.
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
os.environ.setdefault("FULMEN_DIST_TIMEOUT", "20")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# DeepSpeed builds a communication op on first use (~90 s): one build directory for every test.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(tempfile.gettempdir(), "fulmen-torch-extensions"))


def run_python(*args: str, timeout: float = 120, cwd: str | Path | None = None, env: dict | None = None):
    """Run ``python *args`` in a fresh process; returns the CompletedProcess (never hangs)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=full_env
    )


@pytest.fixture(autouse=True)
def _clean_fulmen_environment(monkeypatch: pytest.MonkeyPatch):
    """Tests must not inherit rank or CLI variables from each other."""
    for name in (
        "FULMEN_ACCELERATOR", "FULMEN_DEVICES", "FULMEN_STRATEGY", "FULMEN_PRECISION", "FULMEN_NUM_NODES",
        "LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT",
        "FULMEN_LAUNCHED_CHILD", "SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    from fulmen.utilities.rank_zero import rank_zero_only

    rank = rank_zero_only.rank
    rank_zero_only.rank = 0
    yield
    rank_zero_only.rank = rank
