"""``python model_parallel_worker.py OUT PART``: tensor parallelism (TP=2) on 2 CPU processes.

PART ``lite``: a raw loop with ``parallelize_fn``; ``trainer``: a LightningModule whose
``configure_model`` parallelises itself. Both train a small Llama-style transformer with
``loss_parallel`` and compare, on every rank, the losses, the first step's gradients and the
final weights with the same model trained unsharded in this process; then save a DCP directory
(and one file of whole tensors), load it into a fresh parallel model and call the module
directly. Each rank writes ``OUT/PART_rankN.json``.
"""

import copy
import json
import os
import sys

import torch
from torch.distributed.tensor.parallel import loss_parallel
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))

from tests.strategies.tp_models import SEQ, Transformer, batches, loss_of, parallelize  # noqa: E402

import fulmen as L  # noqa: E402
from fulmen.callbacks import ModelCheckpoint  # noqa: E402
from fulmen.lite import Lite  # noqa: E402
from fulmen.strategies import FSDPStrategy, ModelParallelStrategy  # noqa: E402

STEPS = 3
CLIP = 0.05  # below the gradients' norm: every step is clipped


def full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def reference_run(model, data, clip=None):
    """The same model, unsharded, on this process alone: losses, first gradients, final weights."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses, grads = [], None
    for tokens in data:
        loss = loss_of(model(tokens[:, :-1]), tokens)
        loss.backward()
        if grads is None:
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def compare(named, expected):
    return max((full(value).detach() - expected[name]).abs().max().item() for name, value in named)


def probe(model):
    with torch.no_grad():
        return full(model(batches(1, seed=9)[0][:, :-1])).float().sum().item()


def lite_part(out):
    lite = Lite(accelerator="cpu", devices=2, strategy=ModelParallelStrategy(parallelize_fn=parallelize))
    lite.launch()
    torch.manual_seed(0)
    model = Transformer()
    plain = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = lite.setup(model, optimizer)
    data = batches(STEPS)
    losses, first_grads = [], None
    for tokens in data:
        logits = model(tokens[:, :-1])
        with loss_parallel():
            loss = loss_of(logits, tokens)
            lite.backward(loss)
        if first_grads is None:
            first_grads = [(n, full(p.grad).clone()) for n, p in model.module.named_parameters()]
        lite.clip_gradients(model, optimizer, max_norm=CLIP)  # over DTensors on two meshes
        optimizer.step()
        optimizer.zero_grad()
        losses.append(full(loss).item())
    ref_losses, ref_grads, ref_weights = reference_run(plain, data, clip=CLIP)
    seen = {
        "mesh": list(lite.strategy.device_mesh.mesh_dim_names),
        "losses": losses,
        "ref_losses": ref_losses,
        "grad_diff": compare(first_grads, ref_grads),
        "weight_diff": compare(model.module.named_parameters(), ref_weights),
        "probe": probe(model),
        "ref_probe": probe(plain),
    }
    path = os.path.join(out, "lite.ckpt")
    lite.save(path, {"model": model, "optimizer": optimizer, "step": STEPS})
    torch.manual_seed(1)  # other initial weights: the load must replace them
    fresh = Transformer()
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1)
    fresh, fresh_optimizer = lite.setup(fresh, fresh_optimizer)
    rest = lite.load(path, {"model": fresh, "optimizer": fresh_optimizer})
    seen["loaded_rest"] = rest
    seen["loaded_diff"] = compare(fresh.module.named_parameters(), ref_weights)
    seen["checkpoint_files"] = sorted(os.listdir(path)) if os.path.isdir(path) else None
    write(out, "lite", seen)


class TPModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = Transformer()
        self.mesh_seen = None

    def configure_model(self):
        # Called by every fit/validate/test/predict: lay the model out once.
        if self.mesh_seen is None:
            self.mesh_seen = list(self.device_mesh.mesh_dim_names)
            parallelize(self.model, self.device_mesh)

    def forward(self, tokens):
        return self.model(tokens)

    def training_step(self, batch, batch_idx):
        logits = self.model(batch[:, :-1])
        with loss_parallel():
            loss = loss_of(logits, batch)
        self.log("train_loss", full(loss), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        with loss_parallel():
            self.log("val_loss", full(loss_of(self.model(batch[:, :-1]), batch)))

    def backward(self, loss, *args, **kwargs):
        with loss_parallel():
            loss.backward(*args, **kwargs)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Recorder(L.Callback):
    def __init__(self):
        self.losses, self.grads, self.probe = [], None, None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.grads is None:
            self.grads = [(n, full(p.grad).clone()) for n, p in pl_module.model.named_parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(full(outputs["loss"]).item())

    def on_fit_end(self, trainer, pl_module):
        self.probe = probe(pl_module)  # the module called directly, outside any step


def trainer_part(out):
    data = batches(STEPS)
    plain = copy.deepcopy(TPModule().model)
    module, recorder = TPModule(), Recorder()
    # Saved right after validation (a forward without backward, after which FSDP's root keeps its
    # parameters gathered): the optimizer's state must still be read from the shards.
    after_validation = ModelCheckpoint(dirpath=os.path.join(out, "cb"), monitor="val_loss")
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=ModelParallelStrategy(), max_epochs=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder, after_validation],
        default_root_dir=out,
    )  # fmt: skip
    # One batch per step: batch_size 4 over a dataset of the 3 batches' rows, no shuffling.
    rows = torch.cat(data)
    trainer.fit(module, DataLoader(rows, batch_size=4), DataLoader(rows[:4], batch_size=4))
    ref_losses, ref_grads, ref_weights = reference_run(plain, [rows[i : i + 4] for i in range(0, len(rows), 4)])
    seen = {
        "mesh": module.mesh_seen,
        "losses": recorder.losses,
        "ref_losses": ref_losses,
        "grad_diff": compare(recorder.grads, ref_grads),
        "weight_diff": compare(module.model.named_parameters(), ref_weights),
        "probe": recorder.probe,
        "ref_probe": probe(plain),
        "global_step": trainer.global_step,
        "logged": float(trainer.callback_metrics["train_loss"]),
    }
    sharded, whole = os.path.join(out, "tp.ckpt"), os.path.join(out, "tp_whole.ckpt")
    trainer.save_checkpoint(sharded)  # after the fit's last validation: a forward without backward
    seen["checkpoint_files"] = sorted(os.listdir(sharded))
    state = torch.load(os.path.join(after_validation.best_model_path, "fulmen_checkpoint.pt"), weights_only=True)
    seen["optimizer_placeholders"] = state["optimizer_states"]
    fresh = TPModule()
    again = L.Trainer(
        accelerator="cpu", devices=2, strategy=ModelParallelStrategy(save_distributed_checkpoint=False),
        max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=out,
    )  # fmt: skip
    again.validate(fresh, DataLoader(rows, batch_size=4), ckpt_path=sharded, verbose=False)
    seen["validated_diff"] = compare(fresh.model.named_parameters(), ref_weights)
    again.save_checkpoint(whole)
    seen["whole_is_file"] = os.path.isfile(whole)
    # The TP=2 directory on another mesh: no tensor parallelism, data parallel over both processes.
    reshaped = TPModule()
    other_mesh = L.Trainer(
        accelerator="cpu", devices=2, strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=out,
    )  # fmt: skip
    other_mesh.validate(reshaped, DataLoader(rows, batch_size=4), ckpt_path=sharded, verbose=False)
    seen["reshaped_mesh"] = list(other_mesh.strategy.device_mesh.shape)
    seen["reshaped_diff"] = compare(reshaped.model.named_parameters(), ref_weights)
    # Built on the meta device (no memory), laid out there, materialised by the strategy; clipped steps.
    with other_mesh.init_module(empty_init=True):
        on_meta = TPModule()
    seen["meta_before"] = all(p.is_meta for p in on_meta.parameters())
    clipped = L.Trainer(
        accelerator="cpu", devices=2, strategy=ModelParallelStrategy(), max_steps=2, gradient_clip_val=0.01,
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=out,
    )  # fmt: skip
    clipped.fit(on_meta, DataLoader(rows, batch_size=4))
    seen["meta_after"] = any(full(p).is_meta for p in on_meta.model.parameters())
    seen["meta_trained"] = [clipped.global_step, bool(torch.isfinite(full(on_meta.model.output.weight)).all())]
    write(out, "trainer", seen)


class HSDPNet(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        return self(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def two_d_part(out):
    """4 processes: TP=2 x DP=2 through ModelParallelStrategy, then HSDP 2 x 2 through FSDPStrategy."""
    data = batches(2 * STEPS)
    rows = torch.cat(data)
    plain = copy.deepcopy(TPModule().model)
    module, recorder = TPModule(), Recorder()
    settings = dict(
        accelerator="cpu", devices=4, max_epochs=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=out,
    )  # fmt: skip
    trainer = L.Trainer(strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=2),
                        callbacks=[recorder], **settings)  # fmt: skip
    # Each data-parallel rank takes every other row: together they make one batch of 8 rows per step.
    trainer.fit(module, DataLoader(rows, batch_size=4))
    _, ref_grads, ref_weights = reference_run(plain, [rows[i : i + 8] for i in range(0, len(rows), 8)])
    seen = {
        "tp_dp_global_step": trainer.global_step,
        "tp_dp_grad_diff": compare(recorder.grads, ref_grads),
        "tp_dp_weight_diff": compare(module.model.named_parameters(), ref_weights),
        "tp_dp_probe": recorder.probe,
        "tp_dp_ref_probe": probe(plain),
    }
    hsdp = HSDPNet()
    reference = copy.deepcopy(hsdp)
    strategy = FSDPStrategy(device_mesh=(2, 2))
    hsdp_trainer = L.Trainer(strategy=strategy, max_steps=2, **settings)
    points = torch.randn(32, 8, generator=torch.Generator().manual_seed(3))
    hsdp_trainer.fit(hsdp, DataLoader(points, batch_size=4))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for step in range(2):  # 4 ranks x 4 rows per step, interleaved: rows step*16 .. step*16+15
        optimizer.zero_grad()
        reference(points[step * 16 : (step + 1) * 16]).pow(2).mean().backward()
        optimizer.step()
    weights = {k: full(v) for k, v in hsdp.state_dict().items()}
    seen["hsdp_mesh"] = [list(strategy.device_mesh.mesh_dim_names), list(strategy.device_mesh.shape)]
    seen["hsdp_weight_diff"] = max((weights[k] - v).abs().max().item() for k, v in reference.state_dict().items())
    with torch.no_grad():
        seen["hsdp_direct_call_diff"] = (hsdp(points[:4]) - reference(points[:4])).abs().max().item()
    write(out, "2d", seen)


def write(out, part, seen):
    rank = int(os.environ.get("LOCAL_RANK", 0))
    with open(os.path.join(out, f"{part}_rank{rank}.json"), "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    {"lite": lite_part, "trainer": trainer_part, "2d": two_d_part}[sys.argv[2]](sys.argv[1])
    assert SEQ
