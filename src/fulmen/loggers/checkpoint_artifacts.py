"""Which checkpoint files an experiment tracker should upload, and what to record beside each.

``MLFlowLogger`` and ``WandbLogger`` both take ``log_model``: after each save (``"all"``, or
``True`` with ``save_top_k=-1``) or once at the end (``True``) they upload the checkpoint
callback's files that are new or rewritten since their last upload. This module answers that
question once for both; each logger only knows how its tracker stores a file.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch

from fulmen.loggers.logger import _yaml_safe
from fulmen.utilities.exceptions import invalid_argument

# The callback settings recorded with each uploaded file, so a checkpoint can be told apart
# later (what was monitored, in which direction, how many were kept).
_CALLBACK_SETTINGS = (
    "monitor",
    "mode",
    "save_last",
    "save_top_k",
    "save_weights_only",
    "_every_n_train_steps",
    "_every_n_epochs",
)


class CheckpointFile(NamedTuple):
    """A checkpoint on local disk, with the score the callback gave it."""

    mtime: float
    path: str
    score: float | None


def check_log_model(log_model: Any) -> bool | str:
    if log_model is True or log_model is False or log_model == "all":
        return log_model
    raise invalid_argument("log_model", log_model, "False, True (at the end of training) or 'all' (after each save)")


def uploads_each_save(log_model: bool | str, checkpoint_callback: Any) -> bool:
    """``True`` uploads at the end, unless every checkpoint is kept: then each one is final at once."""
    return log_model == "all" or (log_model is True and getattr(checkpoint_callback, "save_top_k", None) == -1)


def new_checkpoints(checkpoint_callback: Any, uploaded: dict[str, float]) -> list[CheckpointFile]:
    """The callback's files not uploaded yet, or rewritten since (same name, newer mtime), oldest first.

    Only local files count: a checkpoint on remote storage is already off this machine.
    """
    scores: dict[str, Any] = {}
    last = getattr(checkpoint_callback, "last_model_path", "")
    if last:
        scores[last] = getattr(checkpoint_callback, "current_score", None)
    best = getattr(checkpoint_callback, "best_model_path", "")
    if best:
        scores[best] = getattr(checkpoint_callback, "best_model_score", None)
    scores.update(getattr(checkpoint_callback, "best_k_models", {}) or {})

    found = []
    for path, score in scores.items():
        if "://" in path or not os.path.isfile(path):
            continue
        mtime = os.path.getmtime(path)
        if path in uploaded and uploaded[path] >= mtime:
            continue
        found.append(CheckpointFile(mtime, path, _score(score)))
    return sorted(found)


def checkpoint_metadata(checkpoint_callback: Any, checkpoint: CheckpointFile, settings_key: str) -> dict[str, Any]:
    """Score, original file name and the callback's settings, in plain types (YAML and JSON safe)."""
    settings = {
        name: _yaml_safe(getattr(checkpoint_callback, name))
        for name in _CALLBACK_SETTINGS
        if hasattr(checkpoint_callback, name)
    }
    return {
        "score": checkpoint.score,
        "original_filename": os.path.basename(checkpoint.path),
        settings_key: settings,
    }


def checkpoint_aliases(checkpoint_callback: Any, checkpoint: CheckpointFile) -> list[str]:
    """Every upload is the latest; the one the callback ranks first is also the best."""
    best = getattr(checkpoint_callback, "best_model_path", "")
    return ["latest", "best"] if best and checkpoint.path == best else ["latest"]


def _score(score: Any) -> float | None:
    if isinstance(score, torch.Tensor):
        return score.item()
    return None if score is None else float(score)
