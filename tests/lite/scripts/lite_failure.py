"""Lite with strategy="ddp" and a training loop that fails on one rank: it raises, or SIGKILLs itself.

    python lite_failure.py OUT_DIR FAILING_RANK raise|kill STEP direct|function

``direct``: ``lite.launch()``, then the user's own loop, where the failure happens outside any
fulmen call: only the launcher's own machinery can stop the other rank. ``function``: the same
loop run by ``lite.launch(train)``. Every rank writes its pid to ``OUT_DIR/pid_<rank>`` first.
"""

import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn

from fulmen import Lite


def train(lite: Lite, out_dir: str, failing_rank: int, mode: str, failing_step: int) -> None:
    Path(out_dir, f"pid_{lite.global_rank}").write_text(str(os.getpid()))
    layer = nn.Linear(4, 1)
    model, optimizer = lite.setup(layer, torch.optim.SGD(layer.parameters(), lr=0.01))
    for step in range(100_000):
        optimizer.zero_grad()
        lite.backward(model(torch.randn(8, 4)).pow(2).mean())  # all-reduces: the ranks stay in step
        optimizer.step()
        if lite.global_rank == failing_rank and step == failing_step:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"rank {failing_rank} broke on purpose at step {step}")
    print(f"unreachable: rank {lite.global_rank} finished", flush=True)


if __name__ == "__main__":
    out_dir, failing_rank, mode, failing_step, style = sys.argv[1:6]
    lite = Lite(strategy="ddp", devices=2, accelerator="cpu")
    if style == "direct":
        lite.launch()
        train(lite, out_dir, int(failing_rank), mode, int(failing_step))
    else:
        lite.launch(train, out_dir, int(failing_rank), mode, int(failing_step))
