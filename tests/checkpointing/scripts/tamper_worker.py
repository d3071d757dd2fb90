"""Real checkpoints to tamper with, and the loaders that must refuse the tampered copies.

python tamper_worker.py make-fsdp OUT       Trainer (FSDP sharded, sync and async) and Lite (FSDP
                                            sharded) checkpoints of 2 processes, in OUT
python tamper_worker.py make-deepspeed OUT  a Trainer ZeRO-2 checkpoint of 2 processes, in OUT
python tamper_worker.py load LOADER CASES OUT
                                            every rank runs LOADER on each case of the JSON file
                                            CASES and writes one JSON line per case to
                                            OUT/LOADER_rankR.jsonl (started by the test as torchrun
                                            would start it, so one failed load does not end the job)
"""

from __future__ import annotations

import json
import os
import sys
import traceback

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))

import torch  # noqa: E402
from tests.checkpointing.tampering import TamperNet, loader  # noqa: E402

import fulmen as L  # noqa: E402
from fulmen.callbacks import ModelCheckpoint  # noqa: E402
from fulmen.lite import Lite  # noqa: E402
from fulmen.strategies import DeepSpeedStrategy, FSDPStrategy  # noqa: E402


def trainer(out: str, strategy, devices: int = 2, **flags) -> L.Trainer:
    settings = dict(
        accelerator="cpu", devices=devices, strategy=strategy, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=out, max_epochs=1,
        num_sanity_val_steps=0,
    )  # fmt: skip
    settings.update(flags)
    return L.Trainer(**settings)


def make_fsdp(out: str) -> None:
    fit = trainer(out, FSDPStrategy(state_dict_type="sharded"))
    fit.fit(TamperNet(), loader())
    fit.save_checkpoint(os.path.join(out, "trainer_fsdp.ckpt"))
    fit.save_checkpoint(os.path.join(out, "trainer_fsdp_async.ckpt"), async_save=True)
    fit.strategy.wait_for_checkpoint_saves()

    lite = Lite(accelerator="cpu", devices=2, strategy=FSDPStrategy(state_dict_type="sharded"))
    lite.launch()
    model = TamperNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model, optimizer = lite.setup(model, optimizer)
    for batch in lite.setup_dataloaders(loader()):
        lite.backward(model(batch).pow(2).mean())
        optimizer.step()
        optimizer.zero_grad()
    lite.save(os.path.join(out, "lite_fsdp.ckpt"), {"model": model, "optimizer": optimizer, "step": 2})


def make_deepspeed(out: str) -> None:
    # Saved while the engine lives (by the callback at the end of the epoch): a ZeRO directory.
    checkpoint = ModelCheckpoint(dirpath=out, filename="trainer_zero2", save_top_k=-1)
    trainer(out, DeepSpeedStrategy(stage=2), enable_checkpointing=True, callbacks=[checkpoint]).fit(
        TamperNet(), loader()
    )


# ----------------------------------------------------------------------------------- loaders
def fit_fsdp(path: str) -> None:
    trainer(os.path.dirname(path), FSDPStrategy(state_dict_type="sharded"), max_epochs=2).fit(
        TamperNet(), loader(), ckpt_path=path
    )


def fit_deepspeed(path: str) -> None:
    trainer(os.path.dirname(path), DeepSpeedStrategy(stage=2), max_epochs=2).fit(TamperNet(), loader(), ckpt_path=path)


def lite_fsdp(path: str) -> None:
    lite = Lite(accelerator="cpu", devices=2, strategy=FSDPStrategy(state_dict_type="sharded"))
    lite.launch()
    model = TamperNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model, optimizer = lite.setup(model, optimizer)
    rest = lite.load(path, {"model": model, "optimizer": optimizer})
    assert rest == {"step": 2}, rest


LOADERS = {"fit_fsdp": fit_fsdp, "fit_deepspeed": fit_deepspeed, "lite_fsdp": lite_fsdp}


def load(name: str, cases_file: str, out: str) -> None:
    cases = json.loads(open(cases_file).read())
    rank = int(os.environ["RANK"])
    with open(os.path.join(out, f"{name}_rank{rank}.jsonl"), "w") as results:
        for case in cases:
            record = {"case": case["name"], "error": None, "message": ""}
            try:
                LOADERS[name](case["path"])
            except BaseException as err:  # noqa: BLE001 - the test asserts on what it was
                record["error"] = type(err).__name__
                record["message"] = str(err)
                if not isinstance(err, Exception):
                    record["message"] += traceback.format_exc()
            results.write(json.dumps(record) + "\n")
            results.flush()


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "make-fsdp":
        make_fsdp(sys.argv[2])
    elif command == "make-deepspeed":
        make_deepspeed(sys.argv[2])
    else:
        load(*sys.argv[2:5])
