"""Seeding of every random generator a training run touches, workers included."""

from __future__ import annotations

import logging
import os
import random

import torch

from fulmen.utilities.rank_zero import rank_zero_only, rank_zero_warn

log = logging.getLogger("fulmen")

_SEED_VAR = "FULMEN_GLOBAL_SEED"
_WORKERS_VAR = "FULMEN_SEED_WORKERS"
_MAX_SEED = 2**32 - 1


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed python, numpy and torch (all devices); with ``workers=True`` dataloader workers too.

    The seed is exported in the environment so that processes started later (launched ranks,
    dataloader workers) derive the same streams. ``verbose=False`` silences the "Seed set to"
    INFO line and the warning about an out-of-range seed, as in Lightning.
    """
    if seed is None:
        env_seed = os.environ.get(_SEED_VAR)
        seed = int(env_seed) if env_seed is not None else random.randint(0, _MAX_SEED)
    if not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
        if verbose:
            rank_zero_warn(f"`seed={seed!r}` is outside [0, {_MAX_SEED}]; using 0 instead.")
        seed = 0
    if verbose:
        log.info(f"[rank: {rank_zero_only.rank}] Seed set to {seed}")
    os.environ[_SEED_VAR] = str(seed)
    os.environ[_WORKERS_VAR] = "1" if workers else "0"
    random.seed(seed)
    _seed_numpy(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device, lazily
    return seed


def _seed_numpy(seed: int) -> None:
    try:
        import numpy as np
    except ImportError:  # numpy is optional for torch users
        return
    np.random.seed(seed)


def reset_seed() -> None:
    """Re-apply the exported seed in a freshly started process (spawned ranks)."""
    seed = os.environ.get(_SEED_VAR)
    if seed is not None:
        seed_everything(int(seed), workers=os.environ.get(_WORKERS_VAR) == "1", verbose=False)


def worker_init_function(worker_id: int, rank: int | None = None) -> None:
    """Give each dataloader worker on each rank its own, reproducible stream."""
    base = torch.initial_seed() - worker_id  # torch already offsets the worker's seed by its id
    global_rank = rank if rank is not None else rank_zero_only.rank
    # A string seed goes through sha512, so nearby (base, worker, rank) triples do not collide.
    mixer = random.Random(f"{base}/{worker_id}/{global_rank}")
    torch.manual_seed(mixer.getrandbits(63))
    random.seed(mixer.getrandbits(63))
    try:
        import numpy as np

        np.random.seed(mixer.getrandbits(32))
    except ImportError:
        pass


def seed_workers_requested() -> bool:
    return os.environ.get(_WORKERS_VAR) == "1"
