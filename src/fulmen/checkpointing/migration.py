"""Bring checkpoints written by older fulmen versions to the current schema (:mod:`fulmen.checkpointing.schema`).

Every reader goes through :func:`migrate`: the Trainer's ``ckpt_path``, ``Lite.load`` and
``LightningModule.load_from_checkpoint`` alike, so an old file loads the same way everywhere.
"""

from __future__ import annotations

from typing import Any

from fulmen.checkpointing.schema import SCHEMA_VERSION
from fulmen.utilities.exceptions import CheckpointError


def migrate(checkpoint: Any, path: str) -> dict[str, Any]:
    """Upgrade ``checkpoint`` (read from ``path``) to schema ``SCHEMA_VERSION``, in place."""
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path!s} is not a fulmen checkpoint: it has no 'state_dict' entry (found {found}). A file written "
            "with `torch.save(model.state_dict())` loads with `model.load_state_dict(torch.load(path))`."
        )
    version = checkpoint.get("schema_version", 1)
    if version > SCHEMA_VERSION:
        raise CheckpointError(
            f"{path!s} was written by a newer fulmen (schema {version}; this one reads up to {SCHEMA_VERSION}). "
            "Upgrade fulmen to load it."
        )
    if version == 1:
        _from_schema_1(checkpoint)
    checkpoint["state_dict"] = strip_compile_prefix(checkpoint["state_dict"])
    return checkpoint


def _from_schema_1(checkpoint: dict[str, Any]) -> None:
    """Schema 1 (fulmen's first Trainer) keyed precision and datamodule state by class name."""
    for key in list(checkpoint):
        value = checkpoint[key]
        if key.endswith("Precision") and isinstance(value, dict):
            checkpoint["precision"] = checkpoint.pop(key)
        elif key.endswith(("DataModule", "Datamodule")) and isinstance(value, dict):
            checkpoint["datamodule"] = checkpoint.pop(key)
    loops = checkpoint.setdefault(
        "loops", {"current_epoch": checkpoint.get("epoch", 0), "global_step": checkpoint.get("global_step", 0)}
    )
    loops.setdefault("phase", None)
    checkpoint["schema_version"] = SCHEMA_VERSION


def strip_compile_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``torch.compile`` prefixes keys with ``_orig_mod.``; the plain module has none."""
    if not any(key.startswith("_orig_mod.") or "._orig_mod." in key for key in state_dict):
        return state_dict
    return type(state_dict)((key.replace("_orig_mod.", ""), value) for key, value in state_dict.items())


def match_module_keys(state_dict: dict[str, Any], module: Any) -> dict[str, Any]:
    """Rename ``state_dict``'s keys to ``module``'s where they differ only by ``_orig_mod.``.

    A checkpoint of a plain module then loads into one with ``torch.compile``d parts, and back.
    """
    own = module.state_dict().keys()
    by_plain_name = {key.replace("_orig_mod.", ""): key for key in own}
    if all(key in own for key in state_dict):
        return state_dict
    return type(state_dict)((by_plain_name.get(key, key), value) for key, value in state_dict.items())
