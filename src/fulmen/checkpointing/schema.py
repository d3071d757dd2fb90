"""The checkpoint schema: one dict, versioned, written once here.

A fulmen checkpoint is one dict (``torch.save``d, loaded with ``weights_only=True``)::

    {
        "schema_version": 2,                 # this layout; older files are migrated on load
        "fulmen_version": "0.1.0",
        "epoch": int, "global_step": int,    # also in "loops"; kept at the top as Lightning has them
        "state_dict": {...},                 # the LightningModule's weights (no wrapper prefixes)
        "loops": {                           # trainer.state.state_dict(): where the run stands
            "version", "current_epoch", "global_step", "batches_that_stepped",
            "batch_idx",                     # training batches done in the current epoch
            "total_batch_idx", "last_val_total_batch",
            "phase",                         # where inside the epoch it was taken (see loops.py)
        },
        "rng": {                             # every rank's generators, indexed by global rank
            "ranks": [{"python", "numpy", "torch", "cuda"?}, ...],   # at the moment of saving
            "epoch_start": [...] | None,     # when the current epoch drew its data order
        },
        "loader": [{...} | None, ...],       # every rank's training-loader place in its epoch order
                                             # (ResumableSampler.state_dict); absent when not resumable
        "optimizer_states": [...], "lr_schedulers": [...],
        "precision": {...},                  # the GradScaler's state under 16-mixed
        "strategy_progress": {...},          # Strategy.progress_state_dict(); fault_tolerant: the
                                             # exactly-once data position; absent when empty
        "callbacks": {state_key: state},
        "datamodule": {...},                 # LightningDataModule.state_dict()
        "hparams_name", "hyper_parameters",
        "datamodule_hparams_name", "datamodule_hyper_parameters",
    }

``save_weights_only`` files hold the version keys, ``state_dict``, ``loops`` and the hyperparameters.

A sharded checkpoint (DeepSpeed, FSDP) is a directory holding this dict as
``fulmen_checkpoint.pt`` beside the shards, with placeholders where a state lives in the
shards and a ``"sharded"`` entry saying how they are laid out (:mod:`fulmen.checkpointing.sharded_dir`).
The Trainer fills and reads the dict (``fulmen/trainer/checkpoint_state.py``); older layouts are
brought to this one by :mod:`fulmen.checkpointing.migration`.
"""

from __future__ import annotations

from typing import Any

#: The layout written now; :func:`fulmen.checkpointing.migration.migrate` upgrades older ones.
SCHEMA_VERSION = 2

#: The Lightning release whose checkpoint layout fulmen's top-level keys follow.
LIGHTNING_COMPATIBLE_VERSION = "2.6.0"

#: What a checkpoint needs beyond the weights for ``fit`` to resume from it.
TRAINING_STATE_KEYS = ("optimizer_states", "lr_schedulers", "callbacks", "rng")


def contents(checkpoint: dict[str, Any]) -> str:
    """What a checkpoint holds, in words a user can act on (used when it cannot serve as asked)."""
    if "optimizer_states" not in checkpoint:
        return (
            "the model's weights only, with its loop counters and hyperparameters (it was saved with "
            "`save_weights_only=True`): no optimizer or scheduler state"
        )
    if not checkpoint["optimizer_states"]:
        return (
            "the model's weights and loop counters but no optimizer state: it was saved outside `fit` (after "
            "`validate`, `test` or `predict`), or by a module without optimizers"
        )
    count = len(checkpoint["optimizer_states"])
    return f"the full training state of `fit`, with {count} optimizer state(s)"
