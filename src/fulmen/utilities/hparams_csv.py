"""``save_hparams_to_tags_csv`` / ``load_hparams_from_tags_csv``: hyperparameters as a two-column CSV.

The older format of Lightning's loggers (``tags.csv``, a ``key,value`` header and one row per
hyperparameter), kept for projects that still read or write it. Values are read back as Python
literals where they are one (``0.1``, ``True``, ``[1, 2]``), else as strings; nothing is executed.
"""

from __future__ import annotations

import ast
import csv
import os
from argparse import Namespace
from typing import Any

from fulmen.utilities.rank_zero import rank_zero_warn


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def save_hparams_to_tags_csv(tags_csv: str | os.PathLike, hparams: dict[str, Any] | Namespace) -> None:
    """Write ``hparams`` (a dict or an ``argparse.Namespace``) to ``tags_csv``; its folder must exist."""
    from fsspec.core import url_to_fs

    path = os.fspath(tags_csv)
    fs, rpath = url_to_fs(path)
    folder = os.path.dirname(rpath)
    if folder and not fs.isdir(folder):
        raise RuntimeError(f"Missing folder: {os.path.dirname(path)}. Create it before saving `tags_csv={path}`.")
    if isinstance(hparams, Namespace):
        hparams = vars(hparams)
    if not isinstance(hparams, dict):
        raise TypeError(f"`hparams` is a {type(hparams).__name__}; Accepted: a dict or an argparse.Namespace.")
    with fs.open(rpath, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "value"])
        for key, value in hparams.items():
            writer.writerow([key, value])


def load_hparams_from_tags_csv(tags_csv: str | os.PathLike) -> dict[str, Any]:
    """The hyperparameters in ``tags_csv``; a missing file warns (``RuntimeWarning``) and gives ``{}``."""
    from fsspec.core import url_to_fs

    path = os.fspath(tags_csv)
    fs, rpath = url_to_fs(path)
    if not fs.exists(rpath):
        rank_zero_warn(f"Missing Tags: {path}.", category=RuntimeWarning)
        return {}
    with fs.open(rpath, "r", newline="") as handle:
        rows = list(csv.reader(handle))
    return {row[0]: _literal(row[1]) for row in rows[1:] if len(row) >= 2}
