"""Importing Ray Train with an error that says how to install it."""

from __future__ import annotations

from types import ModuleType

INSTALL_HINT = "pip install fulmen[ray]"


def require_ray_train() -> ModuleType:
    """``ray.train``, or a ModuleNotFoundError naming ``pip install fulmen[ray]``."""
    try:
        import ray.train
        import ray.train.torch  # noqa: F401  (get_device, TorchTrainer)
    except ImportError as err:
        raise ModuleNotFoundError(
            f"fulmen.integrations.ray needs Ray Train, which is not installed: `{INSTALL_HINT}` "
            f"(or `pip install 'ray[train]'`). Import error: {err}"
        ) from err
    return ray.train


def train_context():
    """Ray Train's context of this worker, or an error saying where these classes work."""
    train = require_ray_train()
    try:
        context = train.get_context()
        context.get_world_size()  # Ray Train v2 raises here outside a worker, v1 earlier
    except (RuntimeError, AttributeError, ValueError) as err:
        raise RuntimeError(
            "fulmen.integrations.ray reads ranks, world size and device from Ray Train's context, which "
            "exists only inside the training function that `ray.train.torch.TorchTrainer` runs on its "
            f"workers. Create the Trainer/Lite inside `train_func`. ({type(err).__name__}: {err})"
        ) from err
    return context
