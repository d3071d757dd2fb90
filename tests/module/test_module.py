"""LightningModule: hyperparameters, optimizer configuration, both optimization modes, properties."""

from __future__ import annotations

import copy
import pickle
import re
from argparse import Namespace
from typing import Any

import pytest
import torch
from torch import nn

from fulmen import Callback, LightningModule, Trainer
from fulmen.module import LightningOptimizer
from fulmen.module.optimizer import parse_optimizers_config
from fulmen.utilities.exceptions import MisconfigurationException
from tests.trainer.helpers import BoringModel, RecordingLogger, loader, quiet

# --------------------------------------------------------------------------- hyperparameters


class HParams(LightningModule):
    def __init__(self, lr: float = 0.1, layers: int = 2, *, name: str = "x", **extra: Any) -> None:
        super().__init__()
        self.save_hyperparameters()


class Selected(LightningModule):
    def __init__(self, lr: float, layers: int, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.save_hyperparameters("lr", "layers")


class Ignoring(LightningModule):
    def __init__(self, lr: float, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.save_hyperparameters(ignore=["backbone"])


class Child(HParams):
    def __init__(self, depth: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()


def test_save_hyperparameters_captures_init_arguments():
    model = HParams(0.5, name="y", extra_key=1)
    assert model.hparams == {"lr": 0.5, "layers": 2, "name": "y", "extra_key": 1}
    assert model.hparams.lr == 0.5


def test_save_hyperparameters_selected_names_and_ignore():
    assert Selected(0.1, 4).hparams == {"lr": 0.1, "layers": 4}
    assert Ignoring(0.1, nn.Linear(1, 1)).hparams == {"lr": 0.1}


def test_save_hyperparameters_in_a_subclass_includes_the_base_arguments():
    assert Child(depth=5, lr=0.2).hparams == {"lr": 0.2, "layers": 2, "name": "x", "depth": 5}


def test_save_hyperparameters_from_a_dict_or_namespace():
    class FromDict(LightningModule):
        def __init__(self, config: dict) -> None:
            super().__init__()
            self.save_hyperparameters(config)

    assert FromDict({"a": 1}).hparams == {"a": 1}
    assert FromDict(Namespace(b=2)).hparams == {"b": 2}  # type: ignore[arg-type]


def test_hparams_initial_is_not_changed_by_later_edits():
    model = HParams(lr=0.1)
    model.hparams.lr = 0.9
    assert model.hparams.lr == 0.9 and model.hparams_initial.lr == 0.1


def test_module_hyperparameter_warns():
    class KeepsModule(LightningModule):
        def __init__(self, backbone: nn.Module) -> None:
            super().__init__()
            self.save_hyperparameters()

    with pytest.warns(UserWarning, match="ignore"):
        KeepsModule(nn.Linear(1, 1))


def test_hyperparameters_go_to_the_loggers():
    class Logged(BoringModel):
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__(lr)
            self.save_hyperparameters()

    logger = RecordingLogger()
    Trainer(**quiet(logger=logger, max_epochs=1)).fit(Logged(), loader(16))
    assert logger.hparams == [{"lr": 0.05}]
    assert logger.statuses == ["success"]


# ------------------------------------------------------------------------ configure_optimizers


def _optimizers(model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    return torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.Adam(model.parameters(), lr=0.1)


def test_every_configure_optimizers_form_is_read():
    model = nn.Linear(2, 2)
    sgd, adam = _optimizers(model)
    step = torch.optim.lr_scheduler.StepLR(sgd, 1)
    assert parse_optimizers_config(sgd) == ([sgd], [], None)
    assert parse_optimizers_config([sgd, adam]) == ([sgd, adam], [], None)
    assert parse_optimizers_config(([sgd], [step])) == ([sgd], [step], None)
    assert parse_optimizers_config({"optimizer": sgd, "lr_scheduler": step, "monitor": "m"}) == ([sgd], [step], "m")
    optimizers, schedulers, _ = parse_optimizers_config(
        [{"optimizer": sgd, "lr_scheduler": {"scheduler": step, "interval": "step"}}, {"optimizer": adam}]
    )
    assert optimizers == [sgd, adam] and schedulers == [{"scheduler": step, "interval": "step"}]
    with pytest.raises(MisconfigurationException, match="configure_optimizers"):
        parse_optimizers_config("sgd")
    with pytest.raises(MisconfigurationException, match="unknown keys"):
        parse_optimizers_config({"optimizer": sgd, "scheduler": step})


class Scheduled(BoringModel):
    def __init__(self, scheduler_config: Any) -> None:
        super().__init__(lr=1.0)
        self.scheduler_config = scheduler_config

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        if self.scheduler_config is None:
            return [optimizer], [scheduler]
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **self.scheduler_config}}


@pytest.mark.parametrize(
    ("config", "epochs", "expected_steps"),
    [(None, 3, 3), ({"interval": "epoch"}, 3, 3), ({"interval": "step"}, 1, 4),
     ({"interval": "step", "frequency": 2}, 1, 2), ({"interval": "epoch", "frequency": 2}, 4, 2)],
)  # fmt: skip
def test_scheduler_interval_and_frequency(config, epochs, expected_steps):
    trainer = Trainer(**quiet(max_epochs=epochs))
    trainer.fit(Scheduled(config), loader(32))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == expected_steps
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.5**expected_steps)


def test_reduce_on_plateau_reads_the_monitored_value():
    class Plateau(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("val_metric", 1.0)

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, factor=0.5)
            return {"optimizer": optimizer, "lr_scheduler": scheduler, "monitor": "val_metric"}

    trainer = Trainer(**quiet(max_epochs=3, num_sanity_val_steps=0))
    trainer.fit(Plateau(), loader(16), loader(16))
    # the value never improves after the first epoch: halved after epochs 2 and 3
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.25)


def test_reduce_on_plateau_without_monitor_fails():
    class NoMonitor(BoringModel):
        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
            return [optimizer], [torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)]

    with pytest.raises(MisconfigurationException, match="monitor"):
        Trainer(**quiet(max_epochs=1)).fit(NoMonitor(), loader(16))


def test_reduce_on_plateau_with_a_missing_metric_fails_clearly():
    class Missing(BoringModel):
        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
            return {"optimizer": optimizer, "lr_scheduler": scheduler, "monitor": "absent"}

    with pytest.raises(MisconfigurationException, match="absent"):
        Trainer(**quiet(max_epochs=1)).fit(Missing(), loader(16))


def test_several_optimizers_need_manual_optimization():
    class Two(BoringModel):
        def configure_optimizers(self):
            return list(_optimizers(self))

    with pytest.raises(MisconfigurationException, match="manual optimization"):
        Trainer(**quiet(max_epochs=1)).fit(Two(), loader(16))


def test_configure_optimizers_returning_none_trains_without_stepping():
    class NoOptimizer(BoringModel):
        def configure_optimizers(self):
            return None

    model = NoOptimizer()
    before = copy.deepcopy(model.state_dict())
    with pytest.warns(UserWarning, match="without an optimizer"):
        Trainer(**quiet(max_epochs=1)).fit(model, loader(16))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_training_step_or_optimizers_fail_clearly():
    class NoStep(LightningModule):
        def configure_optimizers(self):
            return None

    with pytest.raises(MisconfigurationException, match="training_step"):
        Trainer(**quiet()).fit(NoStep(), loader(16))

    class NoOptimizers(LightningModule):
        def training_step(self, batch, batch_idx):
            return None

    with pytest.raises(MisconfigurationException, match="configure_optimizers"):
        Trainer(**quiet()).fit(NoOptimizers(), loader(16))


# ------------------------------------------------------------------------ automatic optimization


def test_lbfgs_gets_a_closure_and_calls_it_repeatedly():
    class LBFGSModel(BoringModel):
        def __init__(self):
            super().__init__()
            self.training_steps = 0

        def training_step(self, batch, batch_idx):
            self.training_steps += 1
            return super().training_step(batch, batch_idx)

        def configure_optimizers(self):
            return torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=5)

    model = LBFGSModel()
    trainer = Trainer(**quiet(max_epochs=1))
    trainer.fit(model, loader(16))
    assert trainer.global_step == 2 and model.training_steps > 2


def test_optimizer_step_override_receives_a_working_closure():
    class WarmUp(BoringModel):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            assert isinstance(optimizer, LightningOptimizer) and isinstance(optimizer, torch.optim.SGD)
            for group in optimizer.param_groups:
                group["lr"] = 0.01 * (batch_idx + 1)
            optimizer.step(closure=optimizer_closure)

    model = WarmUp()
    trainer = Trainer(**quiet(max_epochs=1))
    trainer.fit(model, loader(32))
    assert trainer.global_step == 4
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.04)


def test_training_step_returning_none_skips_the_backward():
    class SkipOdd(BoringModel):
        def training_step(self, batch, batch_idx):
            return None if batch_idx % 2 else super().training_step(batch, batch_idx)

    with pytest.warns(UserWarning, match="returned None"):
        Trainer(**quiet(max_epochs=1)).fit(SkipOdd(), loader(32))


def test_training_step_dict_output_reaches_batch_end_hooks():
    class DictOutput(BoringModel):
        def training_step(self, batch, batch_idx):
            return {"loss": self.loss(batch), "extra": batch_idx}

    class Outputs(Callback):
        outputs: list = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.outputs.append(outputs)

    callback = Outputs()
    Trainer(**quiet(max_epochs=1, callbacks=[callback])).fit(DictOutput(), loader(16))
    assert [o["extra"] for o in callback.outputs] == [0, 1]
    assert all(not o["loss"].requires_grad for o in callback.outputs)


def test_on_train_batch_start_returning_minus_one_ends_the_epoch():
    class Skip(BoringModel):
        def on_train_batch_start(self, batch, batch_idx):
            return -1 if batch_idx == 2 else None

    trainer = Trainer(**quiet(max_epochs=2))
    trainer.fit(Skip(), loader(80))
    assert trainer.global_step == 4 and trainer.current_epoch == 2


# ---------------------------------------------------------------------------- manual optimization


class ManualGAN(LightningModule):
    """Two optimizers, toggled, stepped by hand; a scheduler stepped by hand too."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Linear(4, 32)
        self.discriminator = nn.Linear(32, 1)
        self.frozen_seen: list[bool] = []

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        scheduler = self.lr_schedulers()
        fake = self.generator(torch.randn(batch.shape[0], 4))

        self.toggle_optimizer(opt_d)
        self.frozen_seen.append(not self.generator.weight.requires_grad)
        d_loss = self.discriminator(fake.detach()).mean() - self.discriminator(batch).mean()
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        with self.toggled_optimizer(opt_g):
            g_loss = -self.discriminator(fake).mean()
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()
        scheduler.step()
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss}, prog_bar=True)
        return {"loss": g_loss}

    def configure_optimizers(self):
        opt_g = torch.optim.SGD(self.generator.parameters(), lr=0.01)
        opt_d = torch.optim.SGD(self.discriminator.parameters(), lr=0.01)
        return [opt_g, opt_d], [torch.optim.lr_scheduler.StepLR(opt_g, step_size=1, gamma=0.9)]


def test_manual_optimization_with_two_optimizers():
    model = ManualGAN()
    before = copy.deepcopy(model.state_dict())
    trainer = Trainer(**quiet(max_epochs=2))
    trainer.fit(model, loader(32))
    assert trainer.global_step == 16  # every optimizer.step() counts, as in Lightning
    assert model.frozen_seen == [True] * 8
    assert all(p.requires_grad for p in model.parameters())  # untoggled
    # both networks trained (the discriminator's bias cancels out of its loss)
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k != "discriminator.bias")
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.9**8)
    assert set(trainer.progress_bar_metrics) == {"d_loss", "g_loss"}


def test_manual_backward_runs_the_backward_hooks():
    class Hooks(Callback):
        calls: list = []

        def on_before_backward(self, trainer, pl_module, loss):
            self.calls.append("before")

        def on_after_backward(self, trainer, pl_module):
            self.calls.append("after")

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.calls.append("step")

    hooks = Hooks()
    Trainer(**quiet(max_epochs=1, limit_train_batches=1, callbacks=[hooks])).fit(ManualGAN(), loader(16))
    assert hooks.calls == ["before", "after", "step", "before", "after", "step"]


def test_manual_optimization_refuses_automatic_only_flags():
    with pytest.raises(MisconfigurationException, match="accumulate_grad_batches"):
        Trainer(**quiet(accumulate_grad_batches=2)).fit(ManualGAN(), loader(16))
    with pytest.raises(MisconfigurationException, match="gradient_clip_val"):
        Trainer(**quiet(gradient_clip_val=1.0)).fit(ManualGAN(), loader(16))


class StepLessScheduler:
    """Has an optimizer and a state, but no ``step``: fine when the module steps it itself."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_a_scheduler_without_step_is_refused_in_automatic_optimization_only():
    class Automatic(BoringModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [StepLessScheduler(opt)]

    class Manual(Automatic):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            pass

    with pytest.raises(MisconfigurationException, match="`StepLessScheduler` doesn't follow PyTorch's LRScheduler"):
        Trainer(**quiet(max_epochs=1)).fit(Automatic(), loader(16))
    Trainer(**quiet(max_epochs=1)).fit(Manual(), loader(16))


def test_manual_optimization_warns_that_automatic_only_scheduler_keys_are_ignored():
    class Manual(BoringModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            return [opt], [{"scheduler": plateau, "monitor": "loss", "interval": "step"}]

    trainer = Trainer(**quiet(max_epochs=1))
    with pytest.warns(RuntimeWarning, match=r"\['monitor'\], but the keys will be ignored"):
        trainer.fit(Manual(), loader(16))
    assert trainer.lr_scheduler_configs[0].interval == "step"


def test_clip_gradients_with_other_values_than_the_trainer_flags_fails():
    class Clips(BoringModel):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            self.clip_gradients(optimizer, gradient_clip_val=0.01)

    said = "You have set `Trainer(gradient_clip_val=0.5)` and have passed `clip_gradients(gradient_clip_val=0.01)`"
    with pytest.raises(MisconfigurationException, match=re.escape(said)):
        Trainer(**quiet(max_epochs=1, gradient_clip_val=0.5)).fit(Clips(), loader(16))


def test_manual_backward_needs_manual_optimization():
    class Wrong(BoringModel):
        def training_step(self, batch, batch_idx):
            self.manual_backward(self.loss(batch))

    with pytest.raises(MisconfigurationException, match="manual"):
        Trainer(**quiet(max_epochs=1)).fit(Wrong(), loader(16))


def test_manual_clip_gradients():
    class Clipping(BoringModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(1000 * self.loss(batch))
            self.clip_gradients(opt, gradient_clip_val=0.1, gradient_clip_algorithm="value")
            self.max_grad = max(p.grad.abs().max().item() for p in self.parameters())
            opt.step()

    model = Clipping()
    Trainer(**quiet(max_epochs=1, limit_train_batches=1)).fit(model, loader(16))
    assert model.max_grad == pytest.approx(0.1)


# ----------------------------------------------------------------------------------- properties


def test_trainer_property_without_a_trainer_fails():
    model = BoringModel()
    with pytest.raises(RuntimeError, match="not attached"):
        _ = model.trainer
    assert model.current_epoch == 0 and model.global_step == 0 and model.logger is None


def test_properties_during_fit():
    class Probe(BoringModel):
        def on_train_epoch_end(self):
            self.seen = (self.trainer, self.current_epoch, self.global_step, self.device, self.logger)

    model = Probe()
    logger = RecordingLogger()
    trainer = Trainer(**quiet(max_epochs=2, logger=logger))
    trainer.fit(model, loader(16))
    assert model.seen == (trainer, 1, 4, torch.device("cpu"), logger)


def test_device_and_dtype_follow_the_parameters():
    model = BoringModel()
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    model.double()
    assert model.dtype == torch.float64
    model.to(torch.float32)
    assert model.dtype == torch.float32


def test_freeze_and_unfreeze():
    model = BoringModel()
    assert model.freeze() is model  # both return the module, as Lightning's do
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert model.unfreeze() is model
    assert all(p.requires_grad for p in model.parameters()) and model.training


def test_print_only_on_rank_zero(capsys):
    model = BoringModel()
    model.print("hello")
    assert capsys.readouterr().out == "hello\n"

    class Rank1:
        is_global_zero = False

    model.trainer = Rank1()  # type: ignore[assignment]
    model.print("hidden")
    assert capsys.readouterr().out == ""


def test_pickling_and_copying_leave_the_trainer_behind():
    model = BoringModel()
    trainer = Trainer(**quiet(max_epochs=1))
    trainer.fit(model, loader(16))
    assert model.trainer is trainer
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        with pytest.raises(RuntimeError, match="not attached"):
            _ = clone.trainer
        assert torch.equal(clone.layer.weight, model.layer.weight)


def test_all_gather_on_one_process_returns_the_input_unchanged():
    class Gather(BoringModel):
        def on_train_epoch_end(self):
            self.gathered = self.all_gather({"a": torch.tensor([1.0, 2.0]), "b": 3})

    model = Gather()
    Trainer(**quiet(max_epochs=1)).fit(model, loader(16))
    # As Lightning documents: no leading dimension on one process; numbers become tensors.
    assert model.gathered["a"].shape == (2,) and torch.equal(model.gathered["b"], torch.tensor(3))


def test_configure_callbacks_replaces_trainer_callbacks_of_the_same_type():
    class Marker(Callback):
        def __init__(self, source: str) -> None:
            self.source = source

    class WithCallbacks(BoringModel):
        def configure_callbacks(self):
            return [Marker("model")]

    trainer = Trainer(**quiet(max_epochs=1, callbacks=[Marker("trainer")]))
    trainer.fit(WithCallbacks(), loader(16))
    assert [cb.source for cb in trainer.callbacks if isinstance(cb, Marker)] == ["model"]
