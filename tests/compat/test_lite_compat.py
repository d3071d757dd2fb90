"""Fabric 2.x scripts on Lite: the names a Fabric user keeps work, and behave as Fabric documents.

Covers all_gather's structure, init_module/init_tensor, load_raw, rank_zero_first, log/log_dict
with loggers, callbacks with call, save(filter=), the accelerator/logger/loggers properties, the
find_unused_parameters / cpu-offload strategy names and ``fulmen run model``.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from fulmen import Lite
from fulmen.loggers import CSVLogger
from fulmen.utilities.exceptions import MisconfigurationException
from tests.conftest import run_python

SCRIPTS = Path(__file__).parent / "scripts"


def _model_and_optimizer(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def _train_steps(lite: Lite, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    for _ in range(steps):
        loss = model(torch.ones(2, 4)).pow(2).mean()
        optimizer.zero_grad()
        lite.backward(loss)
        optimizer.step()


# --------------------------------------------------------------------------------- all_gather
def test_all_gather_on_one_process_keeps_the_input_as_it_is():
    lite = Lite(accelerator="cpu")
    tensor = torch.tensor([1.0, 2.0])
    assert lite.all_gather(tensor) is tensor  # no leading world-size dim of 1 (Fabric's documented special case)
    number = lite.all_gather(3)
    assert isinstance(number, torch.Tensor) and number.shape == () and number.item() == 3
    losses = [torch.tensor(1.0), torch.tensor(3.0), torch.tensor(5.0)]
    gathered = lite.all_gather(losses)
    assert isinstance(gathered, list) and [t.item() for t in gathered] == [1.0, 3.0, 5.0]
    assert torch.stack(gathered).mean().item() == 3.0  # the seed's epoch mean, stacked by the user
    nested = lite.all_gather({"a": torch.zeros(2, 3), "b": (torch.ones(1), 2.5)})
    assert nested["a"].shape == (2, 3) and isinstance(nested["b"], tuple)
    assert nested["b"][0].shape == (1,) and nested["b"][1].item() == 2.5


# ------------------------------------------------------------------ init_module / init_tensor
@pytest.mark.parametrize(("precision", "dtype"), [("64-true", torch.float64), ("bf16-true", torch.bfloat16)])
def test_init_module_and_init_tensor_create_in_the_precision_dtype(precision, dtype):
    lite = Lite(accelerator="cpu", precision=precision)
    with lite.init_module():
        model = nn.Linear(3, 2)
    assert model.weight.dtype == dtype and model.weight.device == lite.device
    with lite.init_tensor():
        created = torch.zeros(4)
    assert created.dtype == dtype
    assert torch.zeros(1).dtype == torch.float32  # the default comes back after the block


def test_init_module_empty_init_skips_weight_initialisation():
    lite = Lite(accelerator="cpu")
    torch.manual_seed(0)
    with lite.init_module(empty_init=True):
        nn.Linear(64, 64)
    after_empty = torch.rand(3)
    torch.manual_seed(0)
    with lite.init_module(empty_init=False):
        initialised = nn.Linear(64, 64)
    after_init = torch.rand(3)
    torch.manual_seed(0)
    # The initialisation draws random numbers; skipped, the generator is left exactly where it was.
    assert torch.equal(after_empty, torch.rand(3))
    assert not torch.equal(after_init, after_empty)
    assert initialised.weight.abs().max() <= 1 / 8  # kaiming-uniform bound for 64 inputs: it did run


def test_sharded_model_is_the_deprecated_name_of_init_module():
    lite = Lite(accelerator="cpu", precision="64-true")
    with pytest.warns(DeprecationWarning, match="init_module"), lite.sharded_model():
        model = nn.Linear(2, 2)
    assert model.weight.dtype == torch.float64


# ------------------------------------------------------------------------- save / load / raw
def test_load_raw_reads_a_plain_torch_state_dict_into_set_up_objects(tmp_path):
    trained, trained_opt = _model_and_optimizer(seed=1)
    lite = Lite(accelerator="cpu")
    trained_model, trained_opt = lite.setup(trained, trained_opt)
    _train_steps(lite, trained_model, trained_opt)
    torch.save(trained.state_dict(), tmp_path / "model.pt")  # written without Lite, as a raw PyTorch user does
    torch.save(trained_opt.state_dict(), tmp_path / "optimizer.pt")

    fresh, fresh_opt = _model_and_optimizer(seed=2)
    model, optimizer = lite.setup(fresh, fresh_opt)
    lite.load_raw(tmp_path / "model.pt", model)
    lite.load_raw(tmp_path / "optimizer.pt", optimizer)
    for mine, theirs in zip(fresh.parameters(), trained.parameters()):
        assert torch.equal(mine, theirs)
    restored = optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(restored, trained_opt.state_dict()["state"][0]["momentum_buffer"])

    partial = nn.Sequential(nn.Linear(4, 8))  # keys "0.*" only: strict=False loads what matches
    with pytest.raises(RuntimeError, match="Unexpected key"):
        lite.load_raw(tmp_path / "model.pt", partial)
    lite.load_raw(tmp_path / "model.pt", partial, strict=False)
    assert torch.equal(partial[0].weight, trained[0].weight)
    with pytest.raises(MisconfigurationException, match="`obj='dict'` is not valid"):
        lite.load_raw(tmp_path / "model.pt", {"model": fresh})


def test_save_with_filter_keeps_only_the_chosen_entries(tmp_path):
    model, optimizer = _model_and_optimizer()
    lite = Lite(accelerator="cpu")
    model, optimizer = lite.setup(model, optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    _train_steps(lite, model, optimizer, steps=1)
    scheduler.step()
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "meta": {"a": 1, "b": 2}, "step": 7}
    path = tmp_path / "adapter.ckpt"
    lite.save(path, state, filter={"model": lambda name, value: name.startswith("2."), "meta": lambda k, v: v > 1})

    loaded = lite.load(path)
    assert sorted(loaded["model"]) == ["2.bias", "2.weight"]  # only the last layer reached the file
    assert loaded["meta"] == {"b": 2} and loaded["step"] == 7
    assert loaded["scheduler"]["last_epoch"] == 1  # stateful objects are saved through their state_dict
    assert "state" in loaded["optimizer"]  # no filter: the whole optimizer state

    for bad, message in [
        (["model"], "`filter=\\['model'\\]` is not valid"),
        ({"weights": lambda k, v: True}, "unknown: \\['weights'\\]"),
        ({"model": "2."}, "`filter\\['model'\\]='2.'` is not valid"),
    ]:
        with pytest.raises(MisconfigurationException, match=message):
            lite.save(tmp_path / "never.ckpt", state, filter=bad)
    assert not (tmp_path / "never.ckpt").exists()


# ------------------------------------------------------------------------- loggers, callbacks
def test_log_and_log_dict_write_to_the_loggers_given_to_the_constructor(tmp_path):
    csv_logger = CSVLogger(tmp_path, name="run", version=0)
    lite = Lite(accelerator="cpu", loggers=csv_logger)
    assert lite.logger is csv_logger and lite.loggers == [csv_logger]
    loss = torch.tensor(0.25, requires_grad=True) * 2
    lite.log("loss", loss)  # step=None: the logger counts the rows
    lite.log("loss", 0.125)
    lite.log_dict({"acc": torch.tensor([0.75]), "epoch": 1}, step=10)
    with pytest.raises(ValueError, match="`vector` is a tensor of shape \\(2,\\)"):
        lite.log("vector", torch.ones(2))
    lite.logger.finalize("success")

    rows = list(csv.DictReader(open(tmp_path / "run" / "version_0" / "metrics.csv")))
    assert [(r["step"], r["loss"]) for r in rows[:2]] == [("0", "0.5"), ("1", "0.125")]
    assert (rows[2]["step"], rows[2]["acc"], rows[2]["epoch"]) == ("10", "0.75", "1")


def test_without_loggers_log_is_a_no_op_and_logger_is_none():
    lite = Lite(accelerator="cpu")
    assert lite.logger is None and lite.loggers == []
    lite.log("loss", 1.0)
    with pytest.raises(MisconfigurationException, match="`loggers\\[1\\]=.*` is not valid"):
        Lite(accelerator="cpu", loggers=[CSVLogger("unused"), "tensorboard"])


def test_call_runs_the_hook_of_every_callback_that_has_it_in_order():
    order = []

    class Saver:
        def on_train_epoch_end(self, epoch, metrics=None):
            order.append(("saver", epoch, metrics))

    class Printer:
        def on_train_epoch_end(self, epoch, metrics=None):
            order.append(("printer", epoch, metrics))

    class Unrelated:
        on_train_epoch_end = "not a method"

    lite = Lite(accelerator="cpu", callbacks=[Saver(), Unrelated(), Printer()])
    with pytest.warns(UserWarning, match="`Unrelated.on_train_epoch_end` is not callable"):
        lite.call("on_train_epoch_end", 3, metrics={"loss": 0.5})
    lite.call("on_a_hook_nobody_has")
    assert order == [("saver", 3, {"loss": 0.5}), ("printer", 3, {"loss": 0.5})]
    single = Lite(accelerator="cpu", callbacks=Saver())  # one callback, not a list
    single.call("on_train_epoch_end", 4)
    assert order[-1] == ("saver", 4, None)


def test_a_fabric_style_training_script_runs_unchanged_but_its_imports(tmp_path):
    """A typical Fabric loop: init_module, setup, log, call, save/load, rank_zero_first, print."""

    class Checkpoint:
        def __init__(self):
            self.best = None

        def on_validation_end(self, lite, val_loss):
            if self.best is None or val_loss < self.best:
                self.best = val_loss
                lite.save(tmp_path / "best.ckpt", {"model": model, "val_loss": val_loss})

    checkpoint = Checkpoint()
    lite = Lite(accelerator="cpu", precision="64-true", callbacks=[checkpoint], loggers=[CSVLogger(tmp_path)])
    lite.seed_everything(7)
    with lite.rank_zero_first():
        data = torch.randn(32, 4, dtype=torch.float64)
    with lite.init_module():
        model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = lite.setup(model, optimizer)
    assert type(lite.accelerator).__name__ == "CPUAccelerator"
    for epoch in range(3):
        loss = (model(data) - 1).pow(2).mean()
        optimizer.zero_grad()
        lite.backward(loss)
        optimizer.step()
        lite.log("train_loss", loss, step=epoch)
        lite.call("on_validation_end", lite, val_loss=loss.item())
    lite.logger.finalize("success")
    best = lite.load(tmp_path / "best.ckpt")
    assert best["val_loss"] == checkpoint.best and best["model"]["weight"].dtype == torch.float64
    assert len(list(csv.DictReader(open(Path(lite.logger.log_dir) / "metrics.csv")))) == 3


# ------------------------------------------------------------------------------ strategy names
@pytest.mark.parametrize(
    ("name", "start_method", "find_unused"),
    [
        ("ddp_find_unused_parameters_true", "popen", True),
        ("ddp_find_unused_parameters_false", "popen", False),
        ("ddp_spawn_find_unused_parameters_true", "spawn", True),
        ("ddp_spawn_find_unused_parameters_false", "spawn", False),
        ("ddp_fork_find_unused_parameters_true", "fork", True),
        ("ddp_notebook_find_unused_parameters_false", "fork", False),
    ],
)
def test_find_unused_parameters_strategy_names(name, start_method, find_unused):
    strategy = Lite(accelerator="cpu", devices=2, strategy=name).strategy
    assert type(strategy).__name__ == "DDPStrategy" and strategy.start_method == start_method
    assert strategy.ddp_kwargs == {"find_unused_parameters": find_unused}
    assert strategy.world_size == 2 or strategy.num_processes == 2


def test_fsdp_cpu_offload_strategy_name():
    strategy = Lite(accelerator="cpu", devices=2, strategy="fsdp_cpu_offload").strategy
    assert type(strategy).__name__ == "FSDPStrategy" and strategy.cpu_offload is True
    assert Lite(accelerator="cpu", devices=2, strategy="fsdp").strategy.cpu_offload is False
    with pytest.raises(MisconfigurationException, match="ddp_find_unused_parameters_true"):
        Lite(accelerator="cpu", strategy="ddp_find_unused_parameters")  # the message lists the names


# ---------------------------------------------------------------------------- fulmen run model
def test_fulmen_run_model_is_the_older_spelling_of_fulmen_run(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import sys\nfrom fulmen import Lite\nlite = Lite()\n"
        "print('RAN', lite.strategy.precision.precision, sys.argv[1:])\n"
    )
    proc = run_python("-m", "fulmen", "run", "model", str(script), "--precision=64", "--", "--lr", "0.1", timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RAN 64-true ['--lr', '0.1']" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fabric_names_on_two_processes_through_fulmen_run_model(tmp_path):
    proc = run_python(
        "-m", "fulmen", "run", "model", str(SCRIPTS / "fabric_names_ddp.py"), "--accelerator=cpu", "--devices=2",
        "--strategy=ddp_find_unused_parameters_true", "--", str(tmp_path), timeout=110,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = (json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in (0, 1))
    for rank, record in enumerate((first, second)):
        assert (record["rank"], record["world_size"], record["strategy"]) == (rank, 2, "DDPStrategy")
        assert record["ddp_kwargs"] == {"find_unused_parameters": True}  # else the second step raises
        # A list stays a list of three gathered tensors of shape (2, 2), rank-major inside each.
        assert record["list_type"] == "list" and record["list_shapes"] == [[2, 2]] * 3
        assert record["list_values"] == [[[0.0, 0.0], [1.0, 10.0]]] * 3
        assert record["dict"] == {"loss": [0.0, 1.0], "count": [5, 5], "pair_type": "tuple", "pair": [[0], [1]]}
        assert record["marker_seen"] is True  # rank 1 entered the block after rank 0 had written the file
        assert record["init_device"] == "cpu"
        # Loggers and callbacks are called on every rank (fulmen's CSVLogger writes on rank 0 only).
        assert [step for _, step in record["recorder"]] == [0, 1, 2]
        assert record["recorder"][2][0] == {"final": 1.5, "rank_sum": 1}
        assert [epoch for _, epoch in record["callback"]] == [0, 1]
        assert [m["loss"] for m, _ in record["recorder"][:2]] == [loss for loss, _ in record["callback"]]
        assert record["saved_keys"] == ["used.bias", "used.weight"]  # filter= applied to the model's state
    rows = list(csv.DictReader(open(tmp_path / "logs" / "version_0" / "metrics.csv")))
    assert [r["step"] for r in rows] == ["0", "1", "2"]
    assert float(rows[0]["loss"]) == pytest.approx(first["recorder"][0][0]["loss"])  # rank 0's values


def test_rank_zero_first_on_one_process_runs_the_block_once():
    lite = Lite(accelerator="cpu")
    runs = []
    with lite.rank_zero_first():
        runs.append(lite.global_rank)
    with lite.rank_zero_first(local=True):
        runs.append(lite.local_rank)
    assert runs == [0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lite.barrier()
