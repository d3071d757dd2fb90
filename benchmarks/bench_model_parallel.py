"""Per-step time of tensor parallelism (TP=2) through the Trainer against a raw DTensor loop, same processes.

Two CPU processes (gloo on loopback) train the small Llama-style transformer of the tests with
its tensor-parallel layout and ``loss_parallel``. Contenders, interleaved round by round:

- ``raw DTensor``: the loop a user writes with ``parallelize_module`` on the same 1 x 2 mesh;
- ``fulmen Trainer``: ``ModelParallelStrategy`` with the module's ``configure_model``.

Each prints its median seconds per step and its ratio to the raw loop from the same round (goal <= 1.05x).

    python benchmarks/bench_model_parallel.py [--steps 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import print_ratios, two_rank_times  # noqa: E402
from tests.strategies.tp_models import Transformer, batches, loss_of, parallelize  # noqa: E402


def median_step(stamps: list[float]) -> float:
    deltas = [b - a for a, b in zip(stamps, stamps[1:])][3:]  # the first steps warm up
    return statistics.median(deltas)


def raw_loop(steps: int, mesh) -> float:
    from torch.distributed.tensor.parallel import loss_parallel

    torch.manual_seed(0)
    model = parallelize(Transformer(), mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    stamps = []
    for tokens in DataLoader(torch.cat(batches(steps)), batch_size=4):
        optimizer.zero_grad()
        logits = model(tokens[:, :-1])
        with loss_parallel():
            loss_of(logits, tokens).backward()
        optimizer.step()
        stamps.append(time.perf_counter())
    return median_step(stamps)


def fulmen_fit(steps: int) -> float:
    from torch.distributed.tensor.parallel import loss_parallel

    import fulmen as L
    from fulmen.strategies import ModelParallelStrategy

    class Stamps(L.Callback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.stamps.append(time.perf_counter())

    class LanguageModel(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.model = Transformer()

        def configure_model(self):
            parallelize(self.model, self.device_mesh)

        def training_step(self, batch, batch_idx):
            logits = self.model(batch[:, :-1])
            with loss_parallel():
                return loss_of(logits, batch)

        def backward(self, loss, *args, **kwargs):
            with loss_parallel():
                loss.backward(*args, **kwargs)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    stamps = Stamps()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=ModelParallelStrategy(), max_epochs=1, callbacks=[stamps],
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(LanguageModel(), DataLoader(torch.cat(batches(steps)), batch_size=4))
    return median_step(stamps.stamps)


def worker(steps: int, rounds: int, out: str) -> None:
    """One rank (started by torchrun): both contenders per round, in the same process group."""
    warnings.filterwarnings("ignore")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        fulmen_fit(8)  # joins the process group (it outlives the fit) and warms up
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (1, 2), mesh_dim_names=("data_parallel", "tensor_parallel"))
    runs = {"raw DTensor": lambda: raw_loop(steps, mesh), "fulmen Trainer": lambda: fulmen_fit(steps)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(rounds):
        order = list(runs.items()) if round_index % 2 == 0 else list(reversed(runs.items()))
        for name, run in order:
            dist.barrier()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                times[name].append(run())
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.steps, args.rounds, args.worker)
        return 0
    times = two_rank_times(__file__, "--steps", str(args.steps), "--rounds", str(args.rounds))
    print(f"\nPer-step time, tensor parallel TP=2 on 2 CPU processes ({args.steps} steps, {args.rounds} rounds)")
    print_ratios(times, "raw DTensor", 1e3, "ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
