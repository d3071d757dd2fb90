"""``ModelCheckpoint``'s files: how they are named, which ``last`` files a folder holds, which stale ones may go.

Whether a stale file may be deleted takes the callback's bookkeeping at the moment a check ends
(:class:`KeptFiles`) and the disk at the moment of deletion: with asynchronous saving the
deletion runs in the background once the new files and links of that check are published, and a
``last`` link must be read as it is then, not as it was before it was moved.
"""

from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

import torch

from fulmen.callbacks.checkpoint import _join
from fulmen.checkpointing import remote

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
