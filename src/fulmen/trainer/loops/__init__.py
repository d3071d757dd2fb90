"""The loops, as plain functions of a :class:`fulmen.trainer.run.Run`.

Where to look:

- :mod:`~fulmen.trainer.loops.fit`: ``fit_loop`` → ``train_epoch`` (the batch loop), when to
  validate, stop, step schedulers;
- :mod:`~fulmen.trainer.loops.optimization`: one training batch (``automatic_step``: closure,
  zero_grad, backward, clipping, optimizer step; ``manual_step``);
- :mod:`~fulmen.trainer.loops.evaluation`: the sanity check, validation, test and predict loops;
- :mod:`~fulmen.trainer.loops.resume`: continuing an epoch from a mid-epoch checkpoint, and the
  signal that ends fit with one;
- :mod:`~fulmen.trainer.loops.transfer`: moving a batch to the device through the transfer hooks.

The hook order they follow is written once, in :mod:`fulmen.trainer.dispatch`.
"""

from fulmen.trainer.loops.evaluation import evaluation_run, predict_loop
from fulmen.trainer.loops.fit import fit_loop

__all__ = ["evaluation_run", "fit_loop", "predict_loop"]
