"""Flag validation and resolution (``trainer/configuration.py``): Lightning's words for bad values,
the INFO lines for ambiguous ones, and ``max_epochs`` resolved at fit."""

from __future__ import annotations

import logging
import re
import warnings

import pytest

from fulmen import Callback, Trainer
from fulmen.callbacks import Timer
from fulmen.utilities.exceptions import MisconfigurationException, PossibleUserWarning
from tests.trainer.helpers import BoringModel, loader, quiet


class StopAtFirstBatch(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.should_stop = True


def test_max_epochs_stays_unset_until_fit_then_1000_only_without_other_limits():
    assert Trainer(**quiet()).max_epochs is None
    trainer = Trainer(**quiet(limit_train_batches=1, callbacks=[StopAtFirstBatch()]))
    with pytest.warns(PossibleUserWarning, match=r"`max_epochs` was not set. Setting it to 1000 epochs"):
        trainer.fit(BoringModel(), loader(16))
    assert trainer.max_epochs == 1000
    for flags in ({"max_steps": 1}, {"max_time": "00:00:01:00"}, {"callbacks": [Timer(duration="00:01:00:00")]}):
        callbacks = [StopAtFirstBatch(), *flags.pop("callbacks", [])]
        trainer = Trainer(**quiet(limit_train_batches=1, callbacks=callbacks, **flags))
        with warnings.catch_warnings():
            warnings.simplefilter("error", PossibleUserWarning)
            trainer.fit(BoringModel(), loader(16))
        assert trainer.max_epochs == -1


@pytest.mark.parametrize("flag", ["limit_train_batches", "limit_val_batches", "overfit_batches", "val_check_interval"])
def test_one_and_one_point_zero_are_explained_at_info_level(caplog, flag):
    with caplog.at_level(logging.INFO, logger="fulmen"):
        Trainer(**quiet(**{flag: 1}))
        Trainer(**quiet(**{flag: 1.0}))
        Trainer(**quiet())  # the defaults say nothing
    lines = [r.getMessage() for r in caplog.records if "was configured so" in r.getMessage()]
    assert len(lines) == 2
    assert lines[0].startswith(f"`Trainer({flag}=1)` was configured so ")
    assert lines[1].startswith(f"`Trainer({flag}=1.0)` was configured so ")
    if flag == "val_check_interval":
        assert "validation will run after every training batch" in lines[0]
    else:
        assert "1 batch" in lines[0] and "100% of the batches" in lines[1]


@pytest.mark.parametrize(
    ("flags", "error", "lightning_words"),
    [({"max_epochs": -2}, MisconfigurationException, "`max_epochs` must be a non-negative integer or -1"),
     ({"max_steps": -5}, MisconfigurationException, "`max_steps` must be a non-negative integer or -1"),
     ({"check_val_every_n_epoch": 1.5}, MisconfigurationException, "`check_val_every_n_epoch` should be an integer"),
     ({"gradient_clip_val": "1"}, TypeError, "`gradient_clip_val` should be an int or a float"),
     ({"gradient_clip_algorithm": "norm2"}, MisconfigurationException, "`gradient_clip_algorithm` norm2 is invalid"),
     ({"val_check_interval": 0.5, "check_val_every_n_epoch": None}, MisconfigurationException,
      "`val_check_interval` should be an integer or a time-based duration")],
)  # fmt: skip
def test_invalid_flags_say_what_lightning_says(flags, error, lightning_words):
    with pytest.raises(error, match=re.escape(lightning_words)):
        Trainer(**quiet(**flags))
