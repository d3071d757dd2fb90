"""Containers for hyperparameters: ``hparams`` is an :class:`AttributeDict`."""

from __future__ import annotations

from typing import Any


class AttributeDict(dict):
    """A dict whose keys read and write as attributes, so ``hparams.lr`` is ``hparams["lr"]``.

    It stays a plain ``dict`` subclass so that loggers, YAML dumps and ``torch.save`` treat it as a
    mapping, and it pickles to a single constructor call so that a checkpoint holding it loads
    with ``torch.load(weights_only=True)`` once the class is allowlisted.
    """

    def __getattr__(self, key: str) -> Any:
        # Dunder lookups (copy, pickle, numpy protocols) must never pick up a stored key.
        if key.startswith("__") and key.endswith("__"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute {key!r}") from err

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        try:
            del self[key]
        except KeyError as err:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute {key!r}") from err

    def __reduce__(self) -> tuple[Any, ...]:
        # The default dict-subclass pickle fills the object with SETITEMS, which torch's
        # weights-only unpickler allows for plain dicts only; a constructor call from a dict passes.
        return (type(self), (dict(self),))

    def copy(self) -> AttributeDict:
        return type(self)(self)

    def __repr__(self) -> str:
        name = type(self).__name__
        if all(isinstance(k, str) and k.isidentifier() for k in self):
            return f"{name}({', '.join(f'{k}={v!r}' for k, v in self.items())})"
        return f"{name}({dict.__repr__(self)})"

    def __str__(self) -> str:
        # One aligned line per key: this is what people read when hparams are printed or logged.
        if not self:
            return f"{type(self).__name__}()"
        keys = [repr(k) for k in self]
        width = max(len(k) for k in keys)
        return "\n".join(f"{k}:{' ' * (width - len(k))} {v!r}" for k, v in zip(keys, self.values()))
