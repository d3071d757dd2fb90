"""``python fsdp_direct_calls.py OUT``: a sharded module called directly, 2 processes (FSDP).

A callback calls the LightningModule and one of its submodules in ``on_validation_epoch_end`` and
``on_fit_end``; the script calls them again after ``fit``, ``validate`` and ``predict`` and in a
second Trainer. Each output is compared with the same module unsharded (weights gathered);
each rank writes ``OUT/rank_N.json``.
"""

import json
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))

from fulmen import Callback, LightningModule, Trainer  # noqa: E402
from fulmen.strategies import FSDPStrategy  # noqa: E402

PROBE = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(16, 16), nn.Tanh())

    def forward(self, x):
        return self.inner(x)


class Net(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.block(x))

    def training_step(self, batch, batch_idx):
        return self(batch).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val", self(batch).pow(2).mean())

    def predict_step(self, batch, batch_idx):
        return self(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def reference(model):
    """The module's outputs with its weights gathered into an unsharded copy (every rank takes part)."""
    state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in model.state_dict().items()}
    plain = Net()
    plain.load_state_dict(state)
    with torch.no_grad():
        return plain(PROBE), plain.block.inner(PROBE)


def probe(model, where, seen):
    with torch.no_grad():
        whole, sub = model(PROBE), model.block.inner(PROBE)
    ref_whole, ref_sub = reference(model)
    seen[where] = [bool(torch.allclose(whole, ref_whole, atol=1e-6)), bool(torch.allclose(sub, ref_sub, atol=1e-6))]


class Probe(Callback):
    def __init__(self, seen, tag):
        self.seen, self.tag = seen, tag

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.state.fn == "fit":
            probe(pl_module, f"{self.tag}:on_validation_epoch_end", self.seen)

    def on_fit_end(self, trainer, pl_module):
        probe(pl_module, f"{self.tag}:on_fit_end", self.seen)


def loader():
    return DataLoader(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)), batch_size=4)


def trainer(strategy, callbacks, **flags):
    settings = dict(
        accelerator="cpu", devices=2, strategy=strategy, max_epochs=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, callbacks=callbacks,
    )  # fmt: skip
    return Trainer(**{**settings, **flags})


def main(out):
    seen = {}
    for tag, strategy in (("root", FSDPStrategy()), ("units", FSDPStrategy(auto_wrap_policy={Block}))):
        model = Net()
        first = trainer(strategy, [Probe(seen, tag)])
        first.fit(model, loader(), loader())
        probe(model, f"{tag}:after_fit", seen)
        # Saved after the fit's last validation (the root keeps gathered weights after a forward
        # without backward): the optimizer's state is still read by parameter name.
        path = os.path.join(out, f"{tag}.ckpt")
        first.save_checkpoint(path)
        saved = torch.load(path, weights_only=True)["optimizer_states"][0]["param_groups"][0]["params"]
        seen[f"{tag}:optimizer_params"] = saved
        first.validate(model, loader(), verbose=False)
        probe(model, f"{tag}:after_validate", seen)
        predictions = first.predict(model, loader())
        seen[f"{tag}:predictions"] = [len(predictions), list(predictions[0].shape)]
        second = trainer(strategy, [Probe(seen, f"{tag}2")], max_epochs=2)
        second.fit(model, loader(), loader())
        probe(model, f"{tag}:after_second_fit", seen)
        seen[f"{tag}:global_step"] = second.global_step
    rank = int(os.environ.get("LOCAL_RANK", 0))
    with open(os.path.join(out, f"rank_{rank}.json"), "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main(sys.argv[1])
