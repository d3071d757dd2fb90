"""A Trainer inside a process group that the user created: it joins when the flags agree, else says what to pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_python

SCRIPT = str(Path(__file__).parent / "scripts" / "own_group.py")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_trainer_joins_the_users_own_process_group(tmp_path):
    proc = run_python(SCRIPT, str(tmp_path), timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for rank, record in enumerate(records):
        assert record["mismatch"].startswith("MisconfigurationException: A torch.distributed process group of 2 ")
        assert "this strategy describes 1 (devices=1 × num_nodes=1" in record["mismatch"]
        assert "pass devices=2 and num_nodes=1" in record["mismatch"]
        # No launcher (nothing re-ran the script), the group's ranks, the data split in two.
        assert record["launcher"] == "None"
        assert record["rank"] == rank and record["local_rank"] == rank and record["world_size"] == 2
        assert record["batches"] == 4 and record["ranks_agree"]
