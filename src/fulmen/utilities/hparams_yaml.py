"""``load_hparams_from_yaml``: read back the ``hparams.yaml`` a logger wrote next to its metrics."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from fulmen.utilities.hparams_csv import load_hparams_from_tags_csv, save_hparams_to_tags_csv
from fulmen.utilities.rank_zero import rank_zero_warn

# Lightning's `core.saving` keeps the hyperparameter files together; so does this module's face.
__all__ = ["load_hparams_from_tags_csv", "load_hparams_from_yaml", "save_hparams_to_tags_csv"]


def load_hparams_from_yaml(config_yaml: str | os.PathLike, use_omegaconf: bool = True) -> Any:
    """The hyperparameters in ``config_yaml`` (a local path or a URL) as a dict.

    A missing file warns (``RuntimeWarning``) and gives ``{}``, as in Lightning. With
    ``use_omegaconf`` and omegaconf installed the result is an ``omegaconf.DictConfig``. The file
    is read with ``yaml.safe_load``: a YAML tag that would build a Python object is refused.
    """
    import yaml
    from fsspec.core import url_to_fs

    path = os.fspath(config_yaml)
    fs, rpath = url_to_fs(path)
    if not fs.exists(rpath):
        rank_zero_warn(f"`config_yaml={path}` does not exist; no hyperparameters were loaded.", RuntimeWarning)
        return {}
    with fs.open(rpath, "r") as f:
        hparams = yaml.safe_load(f)
    if hparams is None:
        hparams = {}
    if not isinstance(hparams, dict):
        raise ValueError(f"`config_yaml={path}` holds a {type(hparams).__name__}; Accepted: a YAML mapping.")
    if use_omegaconf and importlib.util.find_spec("omegaconf") is not None:
        from omegaconf import OmegaConf

        return OmegaConf.create(hparams)
    return hparams
