"""Every DeepSpeed check that needs two processes, in one launch (DeepSpeed's start-up is the cost).

    python deepspeed_worker.py OUT [PART ...]

PARTS (``trainer lite`` by default): ``trainer`` (DDP, then ZeRO 1, 2, 2-offload, 3, 3-offload through the
Trainer: fit/validate/test/predict, checkpoints, a run stopped mid-epoch and resumed from "last"
for stages 1-3; ZeRO-3 built under ``init_module``; bf16), ``lite`` (a Lite loop with
accumulation and save/load for each stage, against DDP), ``kill`` (ZeRO-2, rank 0 SIGKILLed
between writing the shards of "last" and publishing them) then ``resume`` (from "last"). Each rank writes each result to
``OUT/results/NAME_rankR.pt`` as soon as it has it; the tests read those files.
"""

from __future__ import annotations

import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))

from tests.strategies.deepspeed_models import Regressor, eval_loader, train_loader  # noqa: E402

import fulmen as L  # noqa: E402
from fulmen.callbacks import Callback, ModelCheckpoint  # noqa: E402
from fulmen.checkpointing import async_writer  # noqa: E402
from fulmen.lite import Lite  # noqa: E402
from fulmen.strategies import DeepSpeedStrategy, consolidate_checkpoint  # noqa: E402

# Loading must never run code from a file: record every file that torch.load reads with full pickle.
# (torch.distributed's object collectives unpickle what the job's own ranks sent: not files.)
UNSAFE_LOADS: list[str] = []
_torch_load = torch.load


def _recording_load(f, *args, **kwargs):
    if kwargs.get("weights_only") is False and isinstance(f, (str, os.PathLike)):
        UNSAFE_LOADS.append(os.fspath(f))
    return _torch_load(f, *args, **kwargs)


torch.load = _recording_load

OUT = sys.argv[1]
PARTS = sys.argv[2:] or ["trainer", "lite"]
STAGES = {
    "zero1": {"stage": 1},
    "zero2": {"stage": 2},
    "zero2_offload": {"stage": 2, "offload_optimizer": True},
    "zero3": {"stage": 3},
    "zero3_offload": {"stage": 3, "offload_optimizer": True, "offload_parameters": True},
}
STOP_AT = 5  # optimizer steps; 8 per epoch: the run stops in the middle of the first epoch


BACKGROUND_SAVES: list[str] = []
_submit = async_writer.AsyncCheckpointWriter.submit


def _counting_submit(self, job, failure):
    BACKGROUND_SAVES.append(failure)
    return _submit(self, job, failure)


async_writer.AsyncCheckpointWriter.submit = _counting_submit


def write(name: str, value: dict) -> None:
    rank = int(os.environ.get("LOCAL_RANK", 0))
    os.makedirs(os.path.join(OUT, "results"), exist_ok=True)
    torch.save(value, os.path.join(OUT, "results", f"{name}_rank{rank}.pt"))


class SaveAtEnd(Callback):
    """A checkpoint of the final state, taken while the engine still runs (a sharded directory)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path)


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.should_stop = True


def make_trainer(strategy, folder: str, extra_callbacks=(), async_save=False, **kwargs) -> L.Trainer:
    callbacks = [
        ModelCheckpoint(
            dirpath=os.path.join(folder, "steps"),
            every_n_train_steps=STOP_AT,
            save_top_k=0,
            save_last=True,
            async_save=async_save,
        ),
        # Saves at steps 3, 6, 9, 12, 15 and keeps the two highest: top-k pruning deletes directories.
        ModelCheckpoint(
            dirpath=os.path.join(folder, "best"),
            monitor="progress",
            mode="max",
            save_top_k=2,
            every_n_train_steps=3,
            async_save=async_save,
        ),
        *extra_callbacks,
    ]
    options = dict(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=2,
        accumulate_grad_batches=2,
        gradient_clip_val=1.0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=folder,
        callbacks=callbacks,
    )
    options.update(kwargs)
    return L.Trainer(**options)


def full_weights(trainer: L.Trainer, model: nn.Module) -> dict[str, torch.Tensor]:
    # ZeRO-3 leaves the parameters partitioned after fit; the strategy gathers them.
    return {k: v.detach().float().clone() for k, v in trainer.strategy.get_module_state_dict(model).items()}


def build(trainer: L.Trainer, partitioned: bool) -> Regressor:
    L.seed_everything(1234, workers=True)
    if not partitioned:
        return Regressor()
    with trainer.init_module():
        return Regressor()


def trainer_part() -> None:
    for name, options in [("ddp", None), *STAGES.items()]:
        folder = os.path.join(OUT, name)
        strategy = "ddp" if options is None else DeepSpeedStrategy(**options)
        partitioned = name == "zero3"
        trainer = make_trainer(strategy, os.path.join(folder, "full"), [SaveAtEnd(os.path.join(folder, "final.ckpt"))])
        model = build(trainer, partitioned)
        local = {n: p.ds_tensor.numel() for n, p in model.named_parameters()} if partitioned else {}
        start = time.perf_counter()
        trainer.fit(model, train_loader(), eval_loader())
        fit_seconds = time.perf_counter() - start
        result = {
            "losses": torch.tensor(model.losses),
            "weights": full_weights(trainer, model),
            "global_step": trainer.global_step,
            "fit_seconds": fit_seconds,
            "local_numel": local,
            "param_dtype": str(next(iter(trainer.strategy.get_module_state_dict(model).values())).dtype),
        }
        result["validate"] = trainer.validate(model, eval_loader())[0]["val_loss"]
        result["test"] = trainer.test(model, eval_loader())[0]["test_loss"]
        result["predict"] = torch.cat(trainer.predict(model, eval_loader()))
        if trainer.is_global_zero:
            ckpt_root = os.path.join(folder, "full")
            result["listing"] = {sub: sorted(os.listdir(os.path.join(ckpt_root, sub))) for sub in ("steps", "best")}
            if options is not None:
                consolidate_checkpoint(os.path.join(folder, "final.ckpt"), os.path.join(folder, "final.pt"))
        trainer.strategy.barrier()
        write(name, result)

        if name in ("zero1", "zero2", "zero3"):
            # ZeRO-2 and 3 checkpoint in the background here (ModelCheckpoint(async_save=True)).
            background = name != "zero1"
            resumed_dir = os.path.join(folder, "resumed")
            stopped = make_trainer(DeepSpeedStrategy(**options), resumed_dir, [StopAt(STOP_AT)], async_save=background)
            model = build(stopped, partitioned)
            stopped.fit(model, train_loader(), eval_loader())
            stopped_at = stopped.global_step
            resumed = make_trainer(DeepSpeedStrategy(**options), resumed_dir, async_save=background)
            model = build(resumed, partitioned)
            resumed.fit(model, train_loader(), eval_loader(), ckpt_path="last")
            record = {
                "stopped_at": stopped_at,
                "global_step": resumed.global_step,
                "weights": full_weights(resumed, model),
                "background_saves": list(BACKGROUND_SAVES),
            }
            BACKGROUND_SAVES.clear()
            if resumed.is_global_zero:
                record["listing"] = {
                    sub: sorted(os.listdir(os.path.join(resumed_dir, sub))) for sub in ("steps", "best")
                }
            write(f"{name}_resume", record)

    # bf16 on the CPU: the engine holds the model in bfloat16, the checkpoint's fp32 master weights.
    trainer = make_trainer(
        DeepSpeedStrategy(stage=2), os.path.join(OUT, "zero2_bf16"), precision="bf16-mixed", max_epochs=1
    )
    model = build(trainer, partitioned=False)
    trainer.fit(model, train_loader(), eval_loader())
    write("zero2_bf16", {"losses": torch.tensor(model.losses), "param_dtype": str(model.net[0].weight.dtype)})


def kill_part() -> None:
    """ZeRO-2 whose rank 0 is SIGKILLed while it saves "last" at step 10: shards written, not yet published."""
    from fulmen.checkpointing import sharded_dir

    publish = sharded_dir.publish
    saves = []

    def publish_or_die(staging, target, **options):
        if os.path.basename(os.fspath(target)) == "last.ckpt":
            saves.append(target)
            if len(saves) == 2:
                os.kill(os.getpid(), 9)
        publish(staging, target, **options)

    sharded_dir.publish = publish_or_die
    trainer = make_trainer(DeepSpeedStrategy(stage=2), os.path.join(OUT, "zero2", "killed"))
    trainer.fit(build(trainer, partitioned=False), train_loader(), eval_loader())


def resume_part() -> None:
    folder = os.path.join(OUT, "zero2", "killed")
    leftovers = sorted(os.listdir(os.path.join(folder, "steps")))
    trainer = make_trainer(DeepSpeedStrategy(stage=2), folder)
    model = build(trainer, partitioned=False)
    trainer.fit(model, train_loader(), eval_loader(), ckpt_path="last")
    after = sorted(os.listdir(os.path.join(folder, "steps")))
    write("zero2_killed", {"leftovers": leftovers, "after": after, "weights": full_weights(trainer, model)})


def lite_run(strategy, name: str) -> None:
    """A raw loop: 2 micro-batches per step (no_backward_sync), a scheduler, save, more steps, load, the same steps."""
    lite = Lite(accelerator="cpu", devices=2, strategy=strategy)
    lite.launch()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    model, optimizer = lite.setup(model, optimizer)
    generator = torch.Generator().manual_seed(lite.global_rank)
    batches = [(torch.randn(4, 8, generator=generator), torch.randn(4, 1, generator=generator)) for _ in range(24)]

    def steps(first: int, count: int) -> list[float]:
        losses = []
        for step in range(first, first + count):
            for micro in range(2):
                x, y = batches[(2 * step + micro) % len(batches)]
                with lite.no_backward_sync(model, enabled=micro == 0):
                    loss = nn.functional.mse_loss(model(x), y)
                    lite.backward(loss / 2)
                losses.append(loss.item())
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
        return losses

    losses = steps(0, 4)
    path = os.path.join(OUT, "lite", name, "state.ckpt")
    lite.save(path, {"model": model, "optimizer": optimizer, "scheduler": scheduler, "step": 4})
    first = steps(4, 3)
    rest = lite.load(path, {"model": model, "optimizer": optimizer, "scheduler": scheduler})
    again = steps(rest["step"], 3)
    write(
        f"lite_{name}",
        {
            "losses": torch.tensor(losses + first),
            "after_load": torch.tensor(again),
            "rest": rest,
            "is_dir": os.path.isdir(path),
        },
    )


def lite_part() -> None:
    lite_run("ddp", "ddp")
    for name, options in STAGES.items():
        lite_run(DeepSpeedStrategy(**options), name)


if __name__ == "__main__":
    started = time.perf_counter()
    if "trainer" in PARTS:
        trainer_part()
    if "lite" in PARTS:
        lite_part()
    if "kill" in PARTS:
        kill_part()
    if "resume" in PARTS:
        resume_part()
    write("done_" + "_".join(PARTS), {"seconds": time.perf_counter() - started, "unsafe_loads": UNSAFE_LOADS})
