"""``python fsdp_checkpoint_worker.py OUT``: FSDP options and sharded checkpoints through the Trainer, 2 processes.

One launch runs every check (process start-up is the expensive part); each rank writes
``OUT/rank_N.json`` with what it saw, and the test asserts on those files and on OUT's
checkpoint directories.
"""

import json
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))

from tests.trainer.helpers import loader  # noqa: E402

from fulmen import LightningModule, Trainer  # noqa: E402
from fulmen.callbacks import ModelCheckpoint  # noqa: E402
from fulmen.strategies import FSDPStrategy  # noqa: E402


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(32, 32)
        self.forward_calls = 0
        self.weight_dtypes: set[str] = set()

    def forward(self, x):
        self.forward_calls += 1
        self.weight_dtypes.add(str(self.linear.weight.dtype))
        return torch.relu(self.linear(x))


class Net(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        return self.head(self.block(x))

    def _loss(self, batch):
        out = self(batch).float()
        return nn.functional.mse_loss(out, torch.ones_like(out))

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def trainer(out, strategy, **flags):
    settings = dict(
        accelerator="cpu", devices=2, strategy=strategy, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=out, max_epochs=1,
    )  # fmt: skip
    settings.update(flags)
    return Trainer(**settings)


def full_weights(model):
    """The whole weights of a sharded model, gathered on every rank."""
    state = model.state_dict()
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in state.items()}


def main(out: str) -> None:
    seen = {}
    # Sharded checkpoints with top-k pruning, "last" and a step interval; then resume from "last".
    ckpt_dir = os.path.join(out, "sharded")
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, monitor="val_loss", save_top_k=1, save_last=True, every_n_train_steps=2
    )
    first = trainer(out, FSDPStrategy(state_dict_type="sharded"), callbacks=[checkpoint], val_check_interval=2)
    torch.manual_seed(0)
    with first.init_module():
        model = Net()
    seen["meta_before_setup"] = model.head.weight.is_meta
    first.fit(model, loader(128), loader(16))
    seen["meta_after_fit"] = any(p.is_meta for p in model.parameters())
    seen["best_k"] = sorted(os.path.basename(p) for p in checkpoint.best_k_models)
    seen["last"] = os.path.basename(checkpoint.last_model_path)
    seen["first_step"] = first.global_step
    seen["weights_after_first"] = {k: v.tolist() for k, v in full_weights(model).items()}
    # The fitted (sharded) module evaluates, then a new Trainer fits it on from "last" and saves.
    seen["val_after_fit"] = first.validate(model, loader(16), verbose=False)[0]["val_loss"]
    refit = trainer(out, FSDPStrategy(state_dict_type="sharded"), max_epochs=2, enable_checkpointing=False)
    refit.fit(model, loader(128), loader(16), ckpt_path=checkpoint.last_model_path)
    refit.save_checkpoint(os.path.join(out, "refit.ckpt"))
    seen["refit_step"] = refit.global_step

    # The same run with saves written in the background: the same checkpoints, the same weights.
    background = ModelCheckpoint(
        dirpath=os.path.join(out, "async"), monitor="val_loss", save_top_k=1, save_last=True, every_n_train_steps=2,
        async_save=True,
    )  # fmt: skip
    third = trainer(out, FSDPStrategy(state_dict_type="sharded"), callbacks=[background], val_check_interval=2)
    torch.manual_seed(0)
    with third.init_module():
        async_model = Net()
    third.fit(async_model, loader(128), loader(16))
    seen["async_best_k"] = sorted(os.path.basename(p) for p in background.best_k_models)
    seen["async_weights"] = {k: v.tolist() for k, v in full_weights(async_model).items()}
    reread = Net()
    reader = trainer(out, FSDPStrategy(state_dict_type="full"), enable_checkpointing=False)
    reader.validate(reread, loader(16), ckpt_path=background.last_model_path, verbose=False)
    seen["async_read_back"] = {k: v.tolist() for k, v in full_weights(reread).items()}

    resumed_model = Net()
    second = trainer(out, FSDPStrategy(state_dict_type="sharded"), max_epochs=2, enable_checkpointing=False)
    second.fit(resumed_model, loader(128), loader(16), ckpt_path=checkpoint.last_model_path)
    seen["resumed_step"] = second.global_step
    seen["resumed_epoch"] = second.current_epoch

    # A sharded checkpoint read into a model of a strategy that saves full checkpoints.
    reader = trainer(out, FSDPStrategy(state_dict_type="full"), enable_checkpointing=False)
    fresh = Net()
    reader.validate(fresh, loader(16), ckpt_path=checkpoint.last_model_path, verbose=False)
    seen["weights_read_back"] = {k: v.tolist() for k, v in full_weights(fresh).items()}

    # Activation checkpointing: the block's forward runs again in backward.
    plain, recomputed = Net(), Net()
    trainer(out, FSDPStrategy(), enable_checkpointing=False, max_steps=3).fit(plain, loader(64))
    policy = FSDPStrategy(activation_checkpointing_policy={Block})
    trainer(out, policy, enable_checkpointing=False, max_steps=3).fit(recomputed, loader(64))
    seen["forward_calls"] = [plain.block.forward_calls, recomputed.block.forward_calls]

    # A mixed precision policy: parameters are cast for the forward, kept in fp32 outside it.
    from torch.distributed.fsdp import MixedPrecisionPolicy

    mixed = Net()
    policy = FSDPStrategy(mixed_precision=MixedPrecisionPolicy(param_dtype=torch.bfloat16))
    trainer(out, policy, enable_checkpointing=False, max_steps=2).fit(mixed, loader(64))
    seen["dtype_in_forward"] = sorted(mixed.block.weight_dtypes)
    seen["dtype_at_rest"] = str(mixed.head.weight.dtype)

    rank = int(os.environ.get("LOCAL_RANK", 0))
    with open(os.path.join(out, f"rank_{rank}.json"), "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main(sys.argv[1])
