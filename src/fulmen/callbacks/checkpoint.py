"""``Checkpoint``: the base class that marks a callback as one that writes checkpoints.

The Trainer finds checkpointing callbacks by this class (``trainer.checkpoint_callbacks``) and
runs their ``on_train_epoch_end`` after the module's, so that they can monitor values the module
logs there. The small path helpers below are shared by :class:`ModelCheckpoint` and
:class:`OnExceptionCheckpoint`, so that both spell local paths and fsspec URLs the same way.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from fulmen.callbacks.callback import CHECKPOINT, Callback
from fulmen.checkpointing.remote import is_local
from fulmen.utilities.exceptions import invalid_argument

if TYPE_CHECKING:
    from fulmen.trainer import Trainer


class Checkpoint(Callback):
    """Base class of the callbacks that save checkpoints (``ModelCheckpoint``, ``OnExceptionCheckpoint``)."""

    trainer_role = CHECKPOINT

    def resume_candidates(self, trainer: Trainer) -> set[str]:
        """The checkpoints this callback wrote that ``fit(ckpt_path="last")`` may resume from.

        The Trainer asks every checkpoint callback and resumes from the newest file among the
        answers (and ``hpc_ckpt_N.ckpt``). None by default: a callback that writes ``last``
        files says where they are.
        """
        return set()


def _normalize_dirpath(dirpath: Any, name: str = "dirpath") -> str:
    """A checkpoint folder as one canonical string.

    Local folders become absolute and resolved, so ``best_model_path`` stays valid after the
    working directory changes and two spellings of one folder compare equal (pruning and resume
    decisions compare paths). URLs are kept as written, without a trailing slash.
    """
    if not isinstance(dirpath, (str, os.PathLike)):
        raise invalid_argument(name, dirpath, "a folder path or an fsspec URL such as 's3://bucket/ckpts'")
    text = os.fsdecode(os.fspath(dirpath))
    if not text:
        raise invalid_argument(name, dirpath, "a non-empty folder path or fsspec URL")
    if is_local(text):
        if "://" in text:  # file:///x
            text = text.split("://", 1)[1]
        return os.path.realpath(os.path.expanduser(text))
    return text.rstrip("/") if not text.endswith("://") else text


def _join(dirpath: str, name: str) -> str:
    # URLs always use "/", whatever the local OS is.
    if "://" in dirpath:
        return f"{dirpath.rstrip('/')}/{name}" if not dirpath.endswith("://") else f"{dirpath}{name}"
    return os.path.join(dirpath, name)
