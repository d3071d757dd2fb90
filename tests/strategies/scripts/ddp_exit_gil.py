"""A gloo worker thread still waiting for the GIL when the script ends: the exit that aborted ranks.

``python ddp_exit_gil.py [--no-release]``. One process, a world of one (no port, no peer). A DDP
reducer keeps the gloo backend alive past ``destroy_process_group``, as in training. ``all_gather``
into Python tensors is left to the worker thread, which must take the GIL to drop them once the
collective is done; the main thread never lets the GIL go (a switch interval of 1000 s, and a busy
wait with no torch call) until the script ends. Without fulmen's exit handler waiting for the
worker threads to settle (``--no-release``: the handler only destroys the group), that thread asks
for the GIL during finalisation and the process aborts with ``terminate called without an active
exception`` (about one run in two).
"""

import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fulmen.strategies import group_exit

if "--no-release" in sys.argv:  # the handler without the hand-over: destroy only
    group_exit.settle_worker_threads = lambda: True

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
group_exit.register(created=True)  # what DDPStrategy does when it creates the group
model = DistributedDataParallel(torch.nn.Linear(2, 2))  # its reducer holds the backend

out = [torch.zeros(4)]
arrived = out[0].numpy()  # read without a torch call: torch calls release the GIL
sys.setswitchinterval(1000.0)
work = dist.all_gather(out, torch.ones(4), async_op=True)
del work  # the worker thread now holds the last reference, and the tensors with it
while arrived[3] != 1.0:
    pass
deadline = time.monotonic() + 0.3  # long enough for the worker to be waiting for the GIL
while time.monotonic() < deadline:
    pass
print("done")
