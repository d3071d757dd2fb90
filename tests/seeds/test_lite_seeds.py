"""The seeds' Lite examples run with only their import lines changed, in both styles."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.conftest import run_python

HERE = Path(__file__).parent


def test_subclass_style_seed_trains_in_process(capsys):
    from tests.seeds import lite_seed_subclass as seed

    seed.seed_everything(42)
    model = seed.BoringModel()
    before = model.layer.weight.detach().clone()
    trained = seed.Lite(accelerator="cpu").run(10, model, seed.train_dataloader(), seed.val_dataloader())
    out = capsys.readouterr().out
    losses = [float(v) for v in re.findall(r"Train Epoch Loss: ([0-9.]+)", out)]
    assert len(losses) == 10 and losses[-1] < losses[0]
    assert "9/10| Valid Epoch Loss" in out
    assert not torch.equal(before, trained.module.layer.weight)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_subclass_style_seed_on_two_processes_via_the_cli():
    proc = run_python(
        "-m",
        "fulmen",
        "run",
        str(HERE / "lite_seed_subclass.py"),
        "--accelerator=cpu",
        "--devices=2",
        "--strategy=ddp",
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Both ranks print (the seed uses print, not lite.print): 10 epochs each.
    assert proc.stdout.count("Train Epoch Loss") == 20


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_direct_style_seed_with_fulmen_run_ddp():
    proc = run_python(
        "-m",
        "fulmen",
        "run",
        str(HERE / "lite_seed_direct.py"),
        "--accelerator=cpu",
        "--devices=2",
        "--strategy=ddp",
        "--precision=bf16",
        "--",
        "--num-epochs",
        "4",
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Two processes share one pipe, so their lines may interleave: match records, not lines.
    lines = sorted(re.findall(r"rank=\d .*?precision=(?:bf16|16|32|64)-(?:mixed|true)", proc.stdout))
    assert len(lines) == 2
    assert lines[0].startswith("rank=0 local_rank=0 node_rank=0 world_size=2 zero=True gathered=[0, 1]")
    assert lines[1].startswith("rank=1 local_rank=1 node_rank=0 world_size=2 zero=False gathered=[0, 1]")
    assert all("token='from rank 0'" in line and "precision=bf16-mixed" in line for line in lines)
    losses = [float(v) for v in re.findall(r"epoch \d+ loss ([0-9.]+)", proc.stdout)]
    assert len(losses) == 4 and losses[-1] < losses[0]  # printed once: rank zero only


def test_direct_style_seed_single_process():
    proc = run_python(str(HERE / "lite_seed_direct.py"), "--num-epochs", "2", timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank=0 local_rank=0 node_rank=0 world_size=1 zero=True" in proc.stdout
