"""``LightningCLI``: configs, overrides, subclass mode, optimizers, saved configs, seeds, hooks, errors.

Each test runs the CLI in-process with ``args=[...]`` and a tiny model on CPU; the example
project runs once as a subprocess.
"""

from __future__ import annotations

import re
import sys

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from fulmen import LightningDataModule, LightningModule
from fulmen.callbacks import Callback, EarlyStopping, ModelCheckpoint
from fulmen.cli import LightningCLI, OptimizerCallable, ReduceLROnPlateau, SaveConfigCallback
from fulmen.loggers import CSVLogger
from tests.conftest import ROOT, run_python


# ------------------------------------------------------------------------------- the project
def _regression_data(num_samples: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(num_samples, 3, generator=generator)
    return TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5]))


class Regressor(LightningModule):
    """A linear regression whose every hyperparameter is a CLI argument."""

    def __init__(self, hidden: int = 4, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Linear(3, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.body(x)).squeeze(-1)

    def _loss(self, batch):
        x, y = batch
        return F.mse_loss(self(x), y)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self._loss(batch))

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class DeepRegressor(Regressor):
    """Another choice for subclass mode (``--model=DeepRegressor``)."""

    def __init__(self, hidden: int = 4, lr: float = 0.1, depth: int = 2):
        super().__init__(hidden, lr)
        self.depth = depth


class PlainRegressor(Regressor):
    """No ``configure_optimizers`` of its own: the optimizer must come from the config."""

    configure_optimizers = LightningModule.configure_optimizers


class InjectedRegressor(Regressor):
    """Receives a function that builds its optimizer (``--model.optimizer=Adam``)."""

    def __init__(self, hidden: int = 4, optimizer: OptimizerCallable = torch.optim.SGD):
        super().__init__(hidden)
        self.optimizer = optimizer

    def configure_optimizers(self):
        return self.optimizer(self.parameters())


class LinkedRegressor(Regressor):
    """Receives the optimizer's ``class_path``/``init_args`` from ``add_optimizer_args(link_to=...)``."""

    def __init__(self, hidden: int = 4, optimizer_init: dict | None = None):
        super().__init__(hidden)
        self.optimizer_init = optimizer_init

    def configure_optimizers(self):
        from fulmen.cli import instantiate_class

        return instantiate_class(self.parameters(), self.optimizer_init)


class RegressionData(LightningDataModule):
    def __init__(self, batch_size: int = 4, num_samples: int = 16):
        super().__init__()
        self.batch_size = batch_size
        self.num_samples = num_samples

    def train_dataloader(self):
        return DataLoader(_regression_data(self.num_samples), batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(_regression_data(8), batch_size=self.batch_size)

    def test_dataloader(self):
        return self.val_dataloader()

    def predict_dataloader(self):
        return self.val_dataloader()


def _quiet(tmp_path, **extra):
    """Trainer defaults that keep a test fast and its files in ``tmp_path``."""
    return {
        "accelerator": "cpu",
        "default_root_dir": str(tmp_path),
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "max_epochs": 1,
        **extra,
    }


def _cli(tmp_path, args, model=Regressor, data=RegressionData, cli_class=LightningCLI, **kwargs):
    kwargs.setdefault("trainer_defaults", _quiet(tmp_path))
    return cli_class(model, data, args=args, **kwargs)


def _write(path, content: dict) -> str:
    path.write_text(yaml.safe_dump(content))
    return str(path)


def _parse_error(capsys, build) -> str:
    with pytest.raises(SystemExit) as exc:
        build()
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """The CLI warns when given ``args`` beside a command line; a test has no command line of its own."""
    monkeypatch.setattr(sys, "argv", ["main.py"])


# ------------------------------------------------------------------------- config and flags
def test_fit_from_a_config_file_with_flags_on_top(tmp_path):
    config = _write(
        tmp_path / "input.yaml",
        {"trainer": {"max_epochs": 3, "limit_val_batches": 1}, "model": {"hidden": 6}, "data": {"batch_size": 2}},
    )
    cli = _cli(tmp_path, ["fit", "--config", config, "--trainer.max_epochs=2", "--model.lr=0.05"])

    assert cli.subcommand == "fit"
    assert isinstance(cli.model, Regressor) and cli.model.body.out_features == 6
    assert cli.model.hparams["lr"] == 0.05 and cli.datamodule.batch_size == 2
    assert cli.trainer.max_epochs == 2 and cli.trainer.limit_val_batches == 1
    assert cli.trainer.current_epoch == 2 and cli.trainer.global_step == 16  # 16 samples / 2 per batch, 2 epochs
    assert cli.config.fit.trainer.max_epochs == 2 and cli.config.fit.model.lr == 0.05

    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())  # logger=False: log_dir is default_root_dir
    assert saved["trainer"]["max_epochs"] == 2 and saved["model"] == {"hidden": 6, "lr": 0.05}
    assert saved["data"] == {"batch_size": 2, "num_samples": 16}


def test_several_configs_merge_in_order_and_later_flags_win(tmp_path):
    first = _write(tmp_path / "a.yaml", {"trainer": {"max_epochs": 5}, "model": {"hidden": 3, "lr": 0.5}})
    second = _write(tmp_path / "b.yaml", {"model": {"lr": 0.25}})
    cli = _cli(
        tmp_path, ["--model.hidden=9", "--config", first, "--config", second, "--trainer.max_epochs=4"], run=False
    )
    # The flag before the first config is overwritten by it; the second file only changes lr.
    assert cli.model.hparams == {"hidden": 3, "lr": 0.25}
    assert cli.trainer.max_epochs == 4
    assert cli.trainer.global_step == 0  # run=False builds and does not run


def test_print_config_prints_a_complete_config_that_runs_again(tmp_path, capsys):
    args = [
        "fit",
        "--trainer.max_epochs=2",
        "--model.hidden=5",
        "--optimizer=Adam",
        "--optimizer.lr=0.02",
        "--seed_everything=3",
    ]
    with pytest.raises(SystemExit) as exc:
        _cli(tmp_path, [*args, "--print_config"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert set(config) >= {"seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler", "ckpt_path"}
    assert config["trainer"]["max_epochs"] == 2 and config["trainer"]["accelerator"] == "cpu"
    assert config["model"] == {"hidden": 5, "lr": 0.1}
    assert config["optimizer"]["class_path"] == "torch.optim.Adam" and config["optimizer"]["init_args"]["lr"] == 0.02
    assert not (tmp_path / "config.yaml").exists()  # printing runs nothing

    path = tmp_path / "printed.yaml"
    path.write_text(printed)
    cli = _cli(tmp_path / "again", ["fit", "--config", str(path), "--trainer.default_root_dir", str(tmp_path / "b")])
    assert isinstance(cli.trainer.optimizers[0], torch.optim.Adam) and cli.trainer.current_epoch == 2
    saved = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    config["trainer"]["default_root_dir"] = str(tmp_path / "b")
    assert saved == config


def test_unknown_keys_and_wrong_types_name_the_key(tmp_path, capsys):
    err = _parse_error(capsys, lambda: _cli(tmp_path, ["fit", "--model.hiden=3"]))
    assert "--model.hiden=3" in err
    err = _parse_error(capsys, lambda: _cli(tmp_path, ["fit", "--model.lr=fast"]))
    assert "model.lr" in err and "fast" in err
    err = _parse_error(capsys, lambda: _cli(tmp_path, ["fit", "--trainer.max_epochs=2.5"]))
    assert "trainer.max_epochs" in err
    config = _write(tmp_path / "bad.yaml", {"trainer": {"max_epoch": 3}})
    err = _parse_error(capsys, lambda: _cli(tmp_path, ["fit", "--config", config]))
    assert "max_epoch" in err
    err = _parse_error(capsys, lambda: _cli(tmp_path, ["fit", "--trainer.logger=loud"]))
    assert "trainer.logger" in err and "loud" in err
    err = _parse_error(capsys, lambda: _cli(tmp_path, ["train"]))
    assert "train" in err and "fit" in err


# ------------------------------------------------------------------------------ subclass mode
def test_subclass_mode_chooses_the_model_by_name_or_class_path(tmp_path):
    cli = _cli(
        tmp_path,
        ["--model=DeepRegressor", "--model.depth=5", "--model.hidden=7"],
        model=Regressor,
        subclass_mode_model=True,
        run=False,
    )
    assert type(cli.model) is DeepRegressor and cli.model.depth == 5 and cli.model.body.out_features == 7

    config = _write(
        tmp_path / "c.yaml",
        {
            "model": {"class_path": f"{__name__}.DeepRegressor", "init_args": {"depth": 3}},
            "data": {"class_path": f"{__name__}.RegressionData", "init_args": {"batch_size": 8}},
        },
    )
    # No class given at all: any LightningModule and any LightningDataModule.
    cli = _cli(tmp_path, ["--config", config], model=None, data=None, run=False)
    assert type(cli.model) is DeepRegressor and cli.model.depth == 3 and cli.datamodule.batch_size == 8
    dumped = yaml.safe_load(cli.parser.dump(cli.config))
    assert dumped["model"] == {
        "class_path": f"{__name__}.DeepRegressor",
        "init_args": {"hidden": 4, "lr": 0.1, "depth": 3},
    }


def test_without_a_datamodule_class_the_data_is_optional(tmp_path):
    cli = _cli(tmp_path, [], data=None, run=False)
    assert cli.datamodule is None and isinstance(cli.model, Regressor)


# ------------------------------------------------------------------- optimizers and schedulers
def test_optimizer_and_lr_scheduler_from_the_command_line(tmp_path):
    args = [
        "fit",
        "--optimizer=SGD",
        "--optimizer.lr=0.4",
        "--optimizer.momentum=0.5",
        "--lr_scheduler=StepLR",
        "--lr_scheduler.step_size=1",
        "--lr_scheduler.gamma=0.5",
        "--trainer.max_epochs=2",
    ]
    cli = _cli(tmp_path, args, model=PlainRegressor)
    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] == 0.5
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # 0.4 halved after each of 2 epochs
    (scheduler_config,) = cli.trainer.lr_scheduler_configs
    assert type(scheduler_config.scheduler) is torch.optim.lr_scheduler.StepLR


def test_reduce_lr_on_plateau_hands_its_monitor_to_the_trainer(tmp_path):
    config = _write(
        tmp_path / "c.yaml",
        {
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}},
            "lr_scheduler": {
                "class_path": "fulmen.cli.ReduceLROnPlateau",
                "init_args": {"monitor": "val_loss", "patience": 0, "factor": 0.5},
            },
        },
    )
    cli = _cli(tmp_path, ["fit", "--config", config, "--trainer.max_epochs=2"], model=PlainRegressor)
    (scheduler_config,) = cli.trainer.lr_scheduler_configs
    assert isinstance(scheduler_config.scheduler, ReduceLROnPlateau) and scheduler_config.monitor == "val_loss"
    assert type(cli.trainer.optimizers[0]) is torch.optim.Adam


def test_a_config_optimizer_replaces_the_models_own_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="Regressor.configure_optimizers` will be overridden"):
        cli = _cli(tmp_path, ["--optimizer=Adam", "--optimizer.lr=0.03"], run=False)
    optimizer = cli.model.configure_optimizers()
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["lr"] == 0.03
    # Without --optimizer the model keeps its own method.
    cli = _cli(tmp_path, [], run=False)
    assert type(cli.model.configure_optimizers()) is torch.optim.SGD


def test_add_optimizer_args_linked_to_a_model_argument(tmp_path):
    class LinkedCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.add_optimizer_args(torch.optim.Adam, link_to="model.optimizer_init")

    cli = _cli(tmp_path, ["fit", "--optimizer.lr=0.07"], model=LinkedRegressor, cli_class=LinkedCLI)
    assert cli.model.optimizer_init["class_path"] == "torch.optim.adam.Adam"
    assert cli.model.optimizer_init["init_args"]["lr"] == 0.07
    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["lr"] == 0.07


def test_an_optimizer_callable_is_injected_into_the_model(tmp_path):
    cli = _cli(tmp_path, ["fit", "--model.optimizer=Adam", "--model.optimizer.lr=0.02"], model=InjectedRegressor)
    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["lr"] == 0.02


def test_optimizer_classes_are_checked(tmp_path):
    class BadCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.add_optimizer_args(nn.Linear)

    with pytest.raises(TypeError, match=r"optimizer_class=<class 'torch.nn.modules.linear.Linear'>.*Optimizer"):
        _cli(tmp_path, [], cli_class=BadCLI, run=False)


# --------------------------------------------------------------------------- saving the config
def test_saved_config_is_not_overwritten_unless_told(tmp_path):
    _cli(tmp_path, ["fit", "--trainer.max_epochs=1"])
    first = (tmp_path / "config.yaml").read_text()
    with pytest.raises(RuntimeError, match=r"config.yaml to NOT exist.*\"overwrite\": True"):
        _cli(tmp_path, ["fit", "--trainer.max_epochs=2"])
    assert (tmp_path / "config.yaml").read_text() == first

    cli = _cli(tmp_path, ["fit", "--trainer.max_epochs=2"], save_config_kwargs={"overwrite": True})
    assert cli.trainer.current_epoch == 2
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["trainer"]["max_epochs"] == 2


def test_config_goes_beside_each_loggers_run_and_can_be_turned_off(tmp_path):
    logger = {"class_path": "CSVLogger", "init_args": {"save_dir": str(tmp_path / "logs"), "name": "exp"}}
    config = _write(tmp_path / "c.yaml", {"trainer": {"logger": logger}})
    for version in range(2):  # a new version folder per run: nothing to overwrite
        cli = _cli(tmp_path, ["fit", "--config", config], save_config_kwargs={"config_filename": "run.yaml"})
        assert isinstance(cli.trainer.logger, CSVLogger)
        assert (tmp_path / "logs" / "exp" / f"version_{version}" / "run.yaml").is_file()

    _cli(tmp_path / "off", ["fit"], save_config_callback=None)
    assert not (tmp_path / "off" / "config.yaml").exists()
    _cli(tmp_path / "dev", ["fit", "--trainer.fast_dev_run=true"])
    assert not (tmp_path / "dev" / "config.yaml").exists()


def test_save_config_can_send_the_config_elsewhere(tmp_path):
    sent = []

    class TrackerSaveConfig(SaveConfigCallback):
        def save_config(self, trainer, pl_module, stage):
            sent.append((stage, self.parser.dump(self.config, skip_unset=False)))

    _cli(
        tmp_path,
        ["fit", "--model.hidden=2"],
        save_config_callback=TrackerSaveConfig,
        save_config_kwargs={"save_to_log_dir": False},
    )
    assert not (tmp_path / "config.yaml").exists()
    ((stage, dumped),) = sent
    assert stage == "fit" and yaml.safe_load(dumped)["model"]["hidden"] == 2
    with pytest.raises(ValueError, match="save_to_log_dir=False"):
        SaveConfigCallback(None, None, save_to_log_dir=False)


# ------------------------------------------------------------------------------------ seeding
def test_seed_everything_from_the_config(tmp_path):
    cli = _cli(tmp_path, ["--seed_everything=1234"], run=False)
    assert torch.initial_seed() == 1234 and cli.config.seed_everything == 1234

    cli = _cli(tmp_path, ["fit"])  # default True: a random seed, recorded where the run can repeat it
    seed = yaml.safe_load((tmp_path / "config.yaml").read_text())["seed_everything"]
    assert isinstance(seed, int) and not isinstance(seed, bool) and seed == cli.config.fit.seed_everything

    torch.manual_seed(99)
    cli = _cli(tmp_path, ["--seed_everything=false"], run=False)
    assert torch.initial_seed() == 99 and cli.config.seed_everything is False

    torch.manual_seed(5)
    _cli(tmp_path, [], run=False, seed_everything_default=42)
    assert torch.initial_seed() == 42
    with pytest.raises(TypeError, match="seed_everything_default='7'"):
        _cli(tmp_path, [], run=False, seed_everything_default="7")


def test_same_seed_same_weights(tmp_path):
    weights = [_cli(tmp_path, ["--seed_everything=7"], run=False).model.body.weight.detach().clone() for _ in range(2)]
    assert torch.equal(*weights)


# ------------------------------------------------------------------------ programmatic use
def test_run_false_with_a_dict_of_args(tmp_path):
    args = {"trainer": {"max_epochs": 2}, "model": {"hidden": 3}, "data": {"batch_size": 8}}
    cli = _cli(tmp_path, args, run=False)
    assert cli.subcommand is None and cli.trainer.max_epochs == 2
    assert cli.model.body.out_features == 3 and cli.datamodule.batch_size == 8
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 4


def test_args_beside_a_command_line_warn(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["main.py", "--model.hidden=3"])
    with pytest.warns(UserWarning, match=r"args.*sys.argv\[1:\]=\['--model.hidden=3'\]"):
        cli = _cli(tmp_path, ["--model.hidden=2"], run=False)
    assert cli.model.body.out_features == 2


def test_trainer_defaults_and_their_callbacks(tmp_path):
    class Marker(Callback):
        pass

    marker = Marker()
    defaults = _quiet(tmp_path, max_epochs=3, callbacks=[marker])
    cli = _cli(tmp_path, [], trainer_defaults=defaults, run=False)
    assert cli.trainer.max_epochs == 3 and marker in cli.trainer.callbacks
    assert any(isinstance(c, SaveConfigCallback) for c in cli.trainer.callbacks)
    assert cli.config.trainer.callbacks is None  # callbacks from the code are not config values
    cli = _cli(tmp_path, ["--trainer.max_epochs=1"], trainer_defaults=defaults, run=False)
    assert cli.trainer.max_epochs == 1 and marker in cli.trainer.callbacks


def test_callbacks_by_short_name_in_the_config(tmp_path):
    config = _write(
        tmp_path / "c.yaml",
        {
            "trainer": {
                "callbacks": [
                    {"class_path": "EarlyStopping", "init_args": {"monitor": "val_loss", "patience": 1}},
                    {
                        "class_path": "ModelCheckpoint",
                        "init_args": {"dirpath": str(tmp_path / "ckpt"), "monitor": "val_loss"},
                    },
                ]
            }
        },
    )
    cli = _cli(tmp_path, ["fit", "--config", config])
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert EarlyStopping in kinds and ModelCheckpoint in kinds
    assert cli.trainer.early_stopping_callback.patience == 1
    assert list((tmp_path / "ckpt").glob("*.ckpt"))


def test_profiler_by_name_or_class(tmp_path):
    profilers = pytest.importorskip("fulmen.profilers")
    cli = _cli(tmp_path, ["--trainer.profiler=SimpleProfiler", "--trainer.profiler.filename=perf"], run=False)
    assert isinstance(cli.config_init.trainer.profiler, profilers.SimpleProfiler)
    assert cli.config.trainer.profiler.init_args.filename == "perf"
    cli = _cli(tmp_path, ["--trainer.profiler=simple"], run=False)
    assert cli.config.trainer.profiler == "simple"


def test_parser_kwargs_for_all_parsers_and_per_subcommand(tmp_path, monkeypatch):
    defaults = _write(tmp_path / "defaults.yaml", {"model": {"hidden": 11}})
    monkeypatch.setenv("PL_FIT__TRAINER__MAX_EPOCHS", "2")
    cli = _cli(tmp_path, ["fit"], parser_kwargs={"default_env": True, "fit": {"default_config_files": [defaults]}})
    assert cli.model.body.out_features == 11 and cli.trainer.max_epochs == 2 and cli.trainer.current_epoch == 2
    cli = _cli(tmp_path / "v", ["validate"], parser_kwargs={"fit": {"default_config_files": [defaults]}})
    assert cli.model.body.out_features == 4  # only fit reads that file


# ------------------------------------------------------------------- hooks, links, callbacks
def test_subcommand_hooks_run_around_the_subcommand(tmp_path):
    calls = []

    class HookedCLI(LightningCLI):
        def before_instantiate_classes(self):
            calls.append(("before_instantiate_classes", getattr(self, "model", None)))

        def before_fit(self):
            calls.append(("before_fit", self.trainer.global_step))

        def after_fit(self):
            calls.append(("after_fit", self.trainer.global_step))

    _cli(tmp_path, ["fit"], cli_class=HookedCLI)
    assert calls == [("before_instantiate_classes", None), ("before_fit", 0), ("after_fit", 4)]


def test_link_arguments_and_callback_arguments(tmp_path):
    class SizedData(RegressionData):
        def __init__(self, batch_size: int = 4, width: int = 6):
            super().__init__(batch_size)
            self.width = width

    class LinkingCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.link_arguments("data.width", "model.hidden")  # when parsing
            parser.link_arguments("data.batch_size", "model.lr", compute_fn=lambda b: b / 100)
            parser.link_arguments(
                "data", "trainer.limit_train_batches", compute_fn=lambda d: d.batch_size // 2, apply_on="instantiate"
            )
            parser.add_lightning_class_args(EarlyStopping, "early_stopping")
            parser.set_defaults({"early_stopping.monitor": "val_loss", "early_stopping.patience": 2})

    cli = _cli(
        tmp_path,
        ["fit", "--data.width=9", "--data.batch_size=4", "--early_stopping.patience=4"],
        data=SizedData,
        cli_class=LinkingCLI,
    )
    assert cli.model.body.out_features == 9 and cli.model.hparams["lr"] == 0.04
    assert cli.trainer.limit_train_batches == 2 and cli.trainer.global_step == 2
    (early_stopping,) = [c for c in cli.trainer.callbacks if isinstance(c, EarlyStopping)]
    assert early_stopping.patience == 4 and early_stopping.monitor == "val_loss"
    err = _parse_error_with(lambda: _cli(tmp_path, ["fit", "--model.hidden=3"], data=SizedData, cli_class=LinkingCLI))
    assert 'Linked "model.hidden" must be given via "data.width"' in err  # a link target is not an argument


def _parse_error_with(build) -> str:
    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit):
        build()
    return stderr.getvalue()


# ------------------------------------------------------------------- the other subcommands
def test_validate_test_predict_with_ckpt_path(tmp_path):
    cli = _cli(tmp_path, ["fit", "--trainer.max_epochs=2", "--trainer.enable_checkpointing=true"])
    (checkpoint,) = (tmp_path / "checkpoints").glob("*.ckpt")
    trained = cli.model.state_dict()

    for subcommand in ("validate", "test"):
        cli = _cli(tmp_path / subcommand, [subcommand, f"--ckpt_path={checkpoint}", "--verbose=false"])
        assert all(torch.equal(v, trained[k]) for k, v in cli.model.state_dict().items())
        key = "val_loss" if subcommand == "validate" else "test_loss"
        assert key in cli.trainer.callback_metrics

    class PredictCLI(LightningCLI):
        def predict(self, model, **kwargs):  # a CLI method of the subcommand's name runs instead of the Trainer's
            self.predictions = self.trainer.predict(model, **kwargs)

    cli = _cli(tmp_path / "p", ["predict", f"--ckpt_path={checkpoint}"], cli_class=PredictCLI)
    assert torch.cat(cli.predictions).shape == (8,)
    assert all(torch.equal(v, trained[k]) for k, v in cli.model.state_dict().items())


def test_ckpt_path_brings_the_models_hyperparameters(tmp_path):
    _cli(tmp_path, ["fit", "--model.hidden=6", "--model.lr=0.3", "--trainer.enable_checkpointing=true"])
    (checkpoint,) = (tmp_path / "checkpoints").glob("*.ckpt")
    # Without the saved hidden=6 the weights would not fit a model built with the default 4.
    cli = _cli(tmp_path / "t", ["test", f"--ckpt_path={checkpoint}", "--model.lr=0.2"])
    assert cli.model.body.out_features == 6 and cli.model.hparams["lr"] == 0.2  # the command line still wins
    assert cli.config.test.model.hidden == 6
    with pytest.raises(RuntimeError, match="size mismatch"):
        _cli(tmp_path / "off", ["test", f"--ckpt_path={checkpoint}"], load_from_checkpoint_support=False)


def test_help_lists_the_subcommands_and_the_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _cli(tmp_path, ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("fit", "validate", "test", "predict", "--config", "--print_config"))
    with pytest.raises(SystemExit):
        _cli(tmp_path, ["fit", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--trainer.max_epochs",
        "--model.hidden",
        "--data.batch_size",
        "--optimizer",
        "--lr_scheduler",
        "--seed_everything",
        "--ckpt_path",
    ):
        assert flag in out
    # The Trainer's flags keep its own order.
    assert out.index("--trainer.strategy") < out.index("--trainer.devices") < out.index("--trainer.logger")


def test_lightning_class_args_refuse_other_classes(tmp_path):
    class Odd(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.add_lightning_class_args(nn.Linear, "linear")

    with pytest.raises(TypeError, match="lightning_class=.*Linear.*Accepted: a subclass of Trainer"):
        _cli(tmp_path, [], cli_class=Odd, run=False)


# ------------------------------------------------------------------------- outside the process
def test_the_fulmen_command_does_not_import_jsonargparse():
    code = "import sys, fulmen.cli.main, fulmen.cli; print('jsonargparse' in sys.modules)"
    proc = run_python("-c", code, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def test_missing_jsonargparse_names_the_extra():
    code = "import sys; sys.modules['jsonargparse'] = None\nfrom fulmen.cli import LightningCLI"
    proc = run_python("-c", code, timeout=60)
    assert proc.returncode == 1 and "pip install 'fulmen[cli]'" in proc.stderr


@pytest.mark.timeout(120)
def test_example_project_trains_from_its_config(tmp_path):
    example = ROOT / "examples" / "cli"
    args = ["fit", "--config", str(example / "config.yaml"), "--trainer.max_epochs=3"]
    proc = run_python(str(example / "main.py"), *args, cwd=tmp_path, timeout=110)
    assert proc.returncode == 0, proc.stderr[-2000:]
    accuracy = float(re.search(r"'val_acc': ([0-9.]+)", proc.stdout).group(1))
    assert accuracy > 0.9
    saved = yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 3 and saved["seed_everything"] == 7
    assert saved["data"]["num_classes"] == 3 and "num_classes" not in saved["model"]["init_args"]  # a link target
    hparams = yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text())
    assert hparams["num_classes"] == 3 and hparams["hidden_dim"] == 32
    assert saved["optimizer"]["class_path"] == "torch.optim.Adam"
