"""The INFO lines a Lightning user sees by default (device banner, why fit stopped, where a resume
restores from) print by default, and go quiet the usual way: the ``fulmen`` logger's level."""

from __future__ import annotations

import subprocess
import sys

import torch

from fulmen.strategies.accelerators.cpu import CPUAccelerator
from fulmen.utilities.device_banner import device_banner

SCRIPT = """
import logging, sys
import torch
from torch.utils.data import DataLoader
import fulmen as L
from fulmen.demos.boring_classes import BoringModel

if sys.argv[2] == "quiet":
    logging.getLogger("fulmen").setLevel(logging.WARNING)
flags = dict(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
             enable_progress_bar=False, enable_model_summary=False, default_root_dir=sys.argv[1])
trainer = L.Trainer(**flags)
trainer.fit(BoringModel())
path = sys.argv[1] + "/first.ckpt"
trainer.save_checkpoint(path)
L.Trainer(**{**flags, "max_epochs": 2}).fit(BoringModel(), ckpt_path=path)
"""


def _run(tmp_path, mode):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), mode], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr.splitlines()


def test_lightnings_info_lines_print_by_default_and_the_fulmen_logger_silences_them(tmp_path):
    lines = _run(tmp_path, "loud")
    gpu = "True (cuda), used: False" if torch.cuda.is_available() else "False, used: False"
    assert lines.count(f"GPU available: {gpu}") == 2  # one banner per Trainer
    assert lines.count("TPU available: False, using: 0 TPU cores") == 2
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in lines
    assert "`Trainer.fit` stopped: `max_epochs=2` reached." in lines
    assert f"Restoring states from the checkpoint path at {tmp_path}/first.ckpt" in lines
    quiet = _run(tmp_path, "quiet")
    shown = ("available:", "`Trainer.fit` stopped", "Restoring states")
    assert not [line for line in quiet if any(text in line for text in shown)]


def test_the_banner_says_which_gpu_exists_and_whether_it_is_used():
    kind = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else None)
    available = f"True ({kind})" if kind else "False"
    assert device_banner(CPUAccelerator()) == [
        f"GPU available: {available}, used: False",
        "TPU available: False, using: 0 TPU cores",
    ]
