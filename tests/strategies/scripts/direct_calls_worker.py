"""``python direct_calls_worker.py OUT PART``: sharded modules called directly, and compiled blocks.

PART ``tp`` (2 processes): a ``configure_model`` that compiles each block with ``torch.compile``
is refused on CPU with TP=2 (torch gets the gradients wrong there) and, with TP=1 x DP=2, trains
as the same model unsharded and uncompiled does; then the direct-call round below under
ModelParallelStrategy with TP=2. PART ``meshes`` (4 processes): the round
under HSDP 2 x 2 (only the root an FSDP unit, and every block a unit too) and TP=2 x DP=2.

The round: a callback calls the LightningModule and two of its submodules in
``on_validation_epoch_end`` and ``on_fit_end``; the script calls them again after ``fit``,
``validate``, ``predict`` and a second Trainer's ``fit``. Each output is compared with an unsharded
copy holding the gathered weights. Each rank writes ``OUT/PART_rankN.json``.
"""

import copy
import json
import os
import sys

import torch
from torch import nn
from torch.distributed.tensor.parallel import loss_parallel
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))

from tests.strategies.tp_models import DIM, SEQ, Transformer, batches, loss_of, parallelize  # noqa: E402

import fulmen as L  # noqa: E402
from fulmen.strategies import FSDPStrategy, ModelParallelStrategy  # noqa: E402

TOKENS = batches(1, batch_size=3, seed=9)[0][:, :-1]
HIDDEN = torch.randn(3, SEQ, DIM, generator=torch.Generator().manual_seed(5))
POINTS = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))


def rows_of_points(count):
    return torch.randn(count, 16, generator=torch.Generator().manual_seed(0))


def full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def unsharded(module, fresh):
    """``fresh`` holding ``module``'s weights gathered into whole tensors (every rank takes part)."""
    state = {k.replace("_orig_mod.", ""): full(v) for k, v in module.state_dict().items()}
    fresh.load_state_dict(state)
    return fresh


# ------------------------------------------------------------------------------------ the modules
class TPModule(L.LightningModule):
    """Lays itself out once (every fit/validate/predict calls configure_model), compiled or not."""

    def __init__(self, compile_blocks=False):
        super().__init__()
        torch.manual_seed(0)
        self.model = Transformer()
        self.compile_blocks = compile_blocks
        self.laid_out = False

    def configure_model(self):
        if self.laid_out:
            return
        self.laid_out = True
        parallelize(self.model, self.device_mesh, compile_blocks=self.compile_blocks)

    def forward(self, tokens):
        return full(self.model(tokens))

    def training_step(self, batch, batch_idx):
        logits = self.model(batch[:, :-1])
        with loss_parallel():
            loss = loss_of(logits, batch)
        return loss

    def validation_step(self, batch, batch_idx):
        with loss_parallel():
            self.log("val_loss", full(loss_of(self.model(batch[:, :-1]), batch)), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return batch, self(batch[:, :-1])

    def backward(self, loss, *args, **kwargs):
        with loss_parallel():
            loss.backward(*args, **kwargs)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def tp_calls(module):
    """The module, a submodule of the root unit (not tensor parallel), a tensor-parallel one in a block."""
    model = module.model
    return [full(module(TOKENS)), model.norm(HIDDEN), full(model.layers[0].feed_forward(HIDDEN))]


def tp_reference(module):
    plain = unsharded(module.model, Transformer())
    return [plain(TOKENS), plain.norm(HIDDEN), plain.layers[0].feed_forward(HIDDEN)]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(16, 16), nn.Tanh())

    def forward(self, x):
        return self.inner(x)


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.block = Block()
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.block(x))

    def training_step(self, batch, batch_idx):
        return self(batch).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val", self(batch).pow(2).mean(), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return batch, self(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def net_calls(module):
    return [module(POINTS), module.block.inner(POINTS), module.head(POINTS)]


def net_reference(module):
    plain = unsharded(module, Net())
    return [plain(POINTS), plain.block.inner(POINTS), plain.head(POINTS)]


# -------------------------------------------------------------------------------------- the round
def close(outputs, expected):
    return [bool(torch.allclose(a, b, atol=1e-5)) for a, b in zip(outputs, expected)]


def probe(module, case, where, seen):
    with torch.no_grad():
        seen[f"{case['tag']}:{where}"] = close(case["calls"](module), case["reference"](module))


class Probe(L.Callback):
    def __init__(self, case, seen, run):
        self.case, self.seen, self.run = case, seen, run

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.state.fn == "fit":
            probe(pl_module, self.case, f"{self.run}:on_validation_epoch_end", self.seen)

    def on_fit_end(self, trainer, pl_module):
        probe(pl_module, self.case, f"{self.run}:on_fit_end", self.seen)


def trainer(case, callbacks, devices, **flags):
    settings = dict(
        accelerator="cpu", devices=devices, strategy=case["strategy"](), max_epochs=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        callbacks=callbacks, default_root_dir=os.environ["OUT"],
    )  # fmt: skip
    return L.Trainer(**{**settings, **flags})


def direct_call_round(case, devices, seen):
    module, data = case["module"](), case["data"]
    first = trainer(case, [Probe(case, seen, "fit")], devices)
    first.fit(module, DataLoader(data, batch_size=4), DataLoader(data[:8], batch_size=4))
    probe(module, case, "after_fit", seen)
    first.validate(module, DataLoader(data[:8], batch_size=4), verbose=False)
    probe(module, case, "after_validate", seen)
    predictions = first.predict(module, DataLoader(data[:8], batch_size=4))
    reference = case["reference_model"](module)
    with torch.no_grad():
        seen[f"{case['tag']}:predictions"] = [
            bool(torch.allclose(out, reference(case["inputs"](batch)), atol=1e-5)) for batch, out in predictions
        ]
    second = trainer(case, [Probe(case, seen, "second_fit")], devices, max_epochs=2)
    second.fit(module, DataLoader(data, batch_size=4), DataLoader(data[:8], batch_size=4))
    probe(module, case, "after_second_fit", seen)
    seen[f"{case['tag']}:global_step"] = second.global_step


def tp_case(tag, strategy):
    return {
        "tag": tag, "strategy": strategy, "module": TPModule, "data": torch.cat(batches(4)),
        "calls": tp_calls, "reference": tp_reference, "inputs": lambda batch: batch[:, :-1],
        "reference_model": lambda module: unsharded(module.model, Transformer()),
    }  # fmt: skip


def net_case(tag, strategy):
    return {
        "tag": tag, "strategy": strategy, "module": Net, "data": rows_of_points(16),
        "calls": net_calls, "reference": net_reference, "inputs": lambda batch: batch,
        "reference_model": lambda module: unsharded(module, Net()),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ parts
def refused_part(seen):
    """Blocks compiled in configure_model with TP=2 on CPU: refused at setup, with the reason."""
    try:
        trainer(tp_case("compiled", ModelParallelStrategy), [], 2, max_steps=1).fit(
            TPModule(compile_blocks=True), DataLoader(torch.cat(batches(2)), batch_size=4)
        )
    except Exception as err:
        seen["error"] = [type(err).__name__, str(err)]
        write(seen, "refused")
        raise


def compiled_part(seen):
    """Blocks compiled in configure_model with TP=1 x DP=2: the same weights as the model eager and unsharded."""
    from torch._dynamo.utils import counters

    rows = torch.cat(batches(4))
    module = TPModule(compile_blocks=True)
    plain = copy.deepcopy(module.model)
    strategy = lambda: ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)  # noqa: E731
    # Each data-parallel rank takes every other row: together they make one batch of 8 rows per step.
    trainer(tp_case("compiled", strategy), [], 2).fit(module, DataLoader(rows, batch_size=4))
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    for i in range(0, len(rows), 8):
        loss_of(plain(rows[i : i + 8, :-1]), rows[i : i + 8]).backward()
        optimizer.step()
        optimizer.zero_grad()
    weights = {k.replace("_orig_mod.", ""): full(v) for k, v in module.model.state_dict().items()}
    seen["compiled:weight_diff"] = max((weights[k] - v).abs().max().item() for k, v in plain.state_dict().items())
    seen["compiled:graphs"] = counters["stats"]["unique_graphs"]
    seen["compiled:blocks"] = [type(layer).__name__ for layer in module.model.layers]
    with torch.no_grad():
        seen["compiled:direct_call"] = close(tp_calls(module), tp_reference(module))


def tp_part(seen):
    compiled_part(seen)
    direct_call_round(tp_case("tp", ModelParallelStrategy), 2, seen)


def meshes_part(seen):
    direct_call_round(net_case("hsdp_root", lambda: FSDPStrategy(device_mesh=(2, 2))), 4, seen)
    direct_call_round(
        net_case("hsdp_units", lambda: FSDPStrategy(device_mesh=(2, 2), auto_wrap_policy={Block})), 4, seen
    )
    direct_call_round(
        tp_case("tp_dp", lambda: ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=2)), 4, seen
    )


def write(seen, part):
    with open(os.path.join(os.environ["OUT"], f"{part}_rank{int(os.environ.get('LOCAL_RANK', 0))}.json"), "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    os.environ["OUT"], part, seen = sys.argv[1], sys.argv[2], {}
    {"tp": tp_part, "meshes": meshes_part, "refused": refused_part}[part](seen)
    write(seen, part)
