"""``ModelCheckpoint``'s files: how they are named, which ``last`` files a folder holds, which stale ones may go.

Whether a stale file may be deleted takes the callback's bookkeeping at the moment a check ends
(:class:`KeptFiles`) and the disk at the moment of deletion: with asynchronous saving the
deletion runs in the background once the new files and links of that check are published, and a
``last`` link must be read as it is then, not as it was before it was moved.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from fulmen.callbacks.checkpoint import _join
from fulmen.checkpointing import atomic, remote

if TYPE_CHECKING:
    from fulmen.trainer import Trainer

# Keys of a template: "{name" followed by ":" (a format spec) or "}".
_TEMPLATE_KEY = re.compile(r"(\{.*?)[:}]")


def format_name(
    filename: str | None, metrics: dict[str, Any], auto_insert_metric_name: bool, join: str, equals: str
) -> str:
    """The file name (without extension) that the template ``filename`` gives for ``metrics``.

    A key missing from ``metrics`` is added to it as ``0``.
    """
    if not filename:
        filename = "{epoch}" + join + "{step}"
    # Longest key first, so that "{epoch}" is not replaced inside "{epoch_loss}".
    keys = sorted(set(_TEMPLATE_KEY.findall(filename)), key=len, reverse=True)
    for key in keys:
        name = key[1:]
        if auto_insert_metric_name:
            filename = filename.replace(key, name + equals + "{" + name)
        # "{0[name]}" looks the key up as a string, so names with "." or "/" work too.
        filename = filename.replace("{" + name, "{0[" + name + "]")
        if name not in metrics:
            metrics[name] = torch.tensor(0)
    return filename.format(metrics)


def find_last(dirpath: str, last: str, join: str, extension: str) -> set[str]:
    """The ``last`` checkpoints (``last.ckpt``, ``last-v1.ckpt``, ...) in ``dirpath``."""
    if not remote.file_exists(dirpath):
        return set()
    pattern = re.compile(rf"^{re.escape(last)}({re.escape(join)}v\d+)?{re.escape(extension)}$")
    fs = remote.get_filesystem(dirpath)
    found = set()
    for entry in fs.ls(dirpath, detail=False):
        base = entry.rstrip("/").rsplit("/", 1)[-1]
        if pattern.match(base):
            found.add(_join(dirpath, base))
    return found


class KeptFiles(NamedTuple):
    """What must survive a check: the files it lists, where ``last`` is, the folder, the resume checkpoint."""

    #: ``best_k_models``, ``last_model_path`` and ``best_model_path``.
    listed: frozenset[str]
    last_model_path: str
    dirpath: str | None
    #: The checkpoint the run resumed from, as :func:`resume_paths` spells it.
    resume: frozenset[str]

    def allows_removal(self, previous: str) -> bool:
        """Whether the stale file ``previous`` may be deleted now."""
        if not previous or previous in self.listed or self.dirpath is None:
            return False
        if not remote.is_local(previous):
            return previous not in self.resume and previous.startswith(self.dirpath.rstrip("/") + "/")
        target = os.path.realpath(previous)
        if target in self.resume or os.path.abspath(previous) in self.resume:
            return False
        # `last` may be a link to this file.
        last = self.last_model_path
        if last and remote.is_local(last) and os.path.realpath(last) == target:
            return False
        if not remote.is_local(self.dirpath):
            return False
        return os.path.abspath(previous).startswith(os.path.join(os.path.realpath(self.dirpath), ""))


def resume_paths(ckpt_path: Any) -> set[str]:
    """The checkpoint a run resumed from, as written, made absolute and (for a link) resolved."""
    if not isinstance(ckpt_path, (str, os.PathLike)):
        return set()
    path = os.fsdecode(os.fspath(ckpt_path))
    if not remote.is_local(path):
        return {path}
    if "://" in path:
        path = path.split("://", 1)[1]
    return {path, os.path.abspath(path), os.path.realpath(path)}


class StaleFileRemoval:
    """``ModelCheckpoint``'s deletions and links, run once the files of a check are published (a mixin
    reading its bookkeeping; subclasses may override ``_should_remove_checkpoint``/``_remove_checkpoint``)."""

    best_k_models: dict[str, Any]
    last_model_path: str
    best_model_path: str
    dirpath: str | None
    _resume_paths: set[str]

    def _link_checkpoint(self, trainer: Trainer, target: str, link: str) -> None:
        if trainer.is_global_zero:  # the target may still be on its way to the disk
            trainer.strategy.after_checkpoint_saves(lambda: atomic.save_link(target, link))

    def _remove_stale(self, trainer: Trainer, stale: list[str]) -> None:
        """Delete the files of ``stale`` that nothing needs, once every new file of this step is published."""
        if not trainer.is_global_zero or not any(stale):
            return
        # Decided from the bookkeeping of this moment, but against the disk as it is once the
        # new files and links are in place (a `last` link may then point elsewhere).
        keep = self._keep(trainer)

        def remove() -> None:
            for path in stale:
                if keep.allows_removal(path):
                    self._remove_checkpoint(trainer, path)

        trainer.strategy.after_checkpoint_saves(remove)

    def _keep(self, trainer: Trainer) -> KeptFiles:
        return KeptFiles(
            listed=frozenset((*self.best_k_models, self.last_model_path, self.best_model_path)),
            last_model_path=self.last_model_path,
            dirpath=self.dirpath,
            resume=frozenset(self._resume_paths | resume_paths(getattr(trainer, "ckpt_path", None))),
        )

    def _should_remove_checkpoint(self, trainer: Trainer, previous: str) -> bool:
        """Whether the stale file ``previous`` may be deleted now; see the module docstring."""
        return self._keep(trainer).allows_removal(previous)

    def _remove_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        trainer.strategy.remove_checkpoint(filepath)  # rank zero, through the strategy's CheckpointIO
