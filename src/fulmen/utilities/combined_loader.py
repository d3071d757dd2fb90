"""``CombinedLoader``: step through several dataloaders (a dict, list or tuple of them) together.

Iterating yields ``(batch, batch_idx, dataloader_idx)``, as Lightning 2.x does. ``batch`` has the
structure of the loaders (a dict of loaders gives a dict of batches) in every mode but
``"sequential"``, which gives each loader's batches on their own, one loader after the other:

- ``"min_size"`` (default): stop when the shortest loader is done;
- ``"max_size_cycle"``: stop when the longest is done, restarting the shorter ones;
- ``"max_size"``: stop when the longest is done, ``None`` in place of the finished ones;
- ``"sequential"``: every batch of loader 0, then of loader 1, ...; ``dataloader_idx`` says which.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from fulmen.utilities.exceptions import invalid_argument

MODES = ("min_size", "max_size_cycle", "max_size", "sequential")
_PLAIN_MAPPINGS = (dict, OrderedDict)


class CombinedLoader(Iterable):
    """Combine ``iterables`` (one iterable, or a dict/list/tuple of them, nested or not) under ``mode``."""

    def __init__(self, iterables: Any, mode: str = "min_size") -> None:
        if mode not in MODES:
            raise invalid_argument("mode", mode, MODES)
        self._mode = mode
        self._iterables = iterables
        self._flattened = _flatten(iterables)

    @property
    def iterables(self) -> Any:
        """The loaders, in the structure they were given."""
        return self._iterables

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def flattened(self) -> list[Any]:
        """The loaders as a flat list (dict values in order, then nested ones depth first)."""
        return list(self._flattened)

    @flattened.setter
    def flattened(self, loaders: list[Any]) -> None:
        """Replace the loaders (for instance with sharded copies), keeping the structure."""
        loaders = list(loaders)
        if len(loaders) != len(self._flattened):
            expected = f"as many loaders as the structure holds ({len(self._flattened)})"
            raise invalid_argument("flattened", f"{len(loaders)} loaders", expected)
        self._flattened = loaders
        self._iterables = _unflatten(self._iterables, iter(loaders))

    @property
    def sampler(self) -> Any:
        """Each loader's ``sampler`` (``None`` where it has none), in the loaders' structure."""
        return _unflatten(self._iterables, iter([getattr(x, "sampler", None) for x in self._flattened]))

    @property
    def batch_sampler(self) -> Any:
        return _unflatten(self._iterables, iter([getattr(x, "batch_sampler", None) for x in self._flattened]))

    def __len__(self) -> int:
        lengths = []
        for index, loader in enumerate(self._flattened):
            try:
                lengths.append(len(loader))
            except TypeError:
                raise TypeError(
                    f"CombinedLoader has no length: its loader {index} ({type(loader).__name__}) has none."
                ) from None
        if not lengths:
            return 0
        if self._mode == "min_size":
            return min(lengths)
        if self._mode == "sequential":
            return sum(lengths)
        return max(lengths)

    def __iter__(self) -> Iterator[tuple[Any, int, int]]:
        if self._mode == "sequential":
            for dataloader_idx, loader in enumerate(self._flattened):
                for batch_idx, batch in enumerate(loader):
                    yield batch, batch_idx, dataloader_idx
            return
        step = _STEPPERS[self._mode]
        for batch_idx, batches in enumerate(step(self._flattened)):
            yield _unflatten(self._iterables, iter(batches)), batch_idx, 0

    def __repr__(self) -> str:
        return f"CombinedLoader(mode={self._mode!r}, loaders={len(self._flattened)})"


def _min_size(loaders: list[Any]) -> Iterator[list[Any]]:
    if not loaders:
        return
    iterators = [iter(loader) for loader in loaders]
    while True:
        try:
            yield [next(it) for it in iterators]
        except StopIteration:
            return


def _max_size_cycle(loaders: list[Any]) -> Iterator[list[Any]]:
    # Done once every loader has run out at least once: the longest sets the length, and an
    # unsized loader works too. A loader that is empty from the start ends the iteration.
    iterators = [iter(loader) for loader in loaders]
    exhausted = [False] * len(loaders)
    while loaders:
        batches = []
        for index, loader in enumerate(loaders):
            try:
                batches.append(next(iterators[index]))
            except StopIteration:
                exhausted[index] = True
                if all(exhausted):
                    return
                iterators[index] = iter(loader)
                try:
                    batches.append(next(iterators[index]))
                except StopIteration:
                    return
        yield batches


def _max_size(loaders: list[Any]) -> Iterator[list[Any]]:
    iterators = [iter(loader) for loader in loaders]
    exhausted = [False] * len(loaders)
    while loaders:
        batches: list[Any] = []
        for index, iterator in enumerate(iterators):
            batch = None
            if not exhausted[index]:
                try:
                    batch = next(iterator)
                except StopIteration:
                    exhausted[index] = True
            batches.append(batch)
        if all(exhausted):
            return
        yield batches


_STEPPERS: dict[str, Callable[[list[Any]], Iterator[list[Any]]]] = {
    "min_size": _min_size,
    "max_size_cycle": _max_size_cycle,
    "max_size": _max_size,
}


def _flatten(obj: Any) -> list[Any]:
    if isinstance(obj, Mapping):
        return [leaf for value in obj.values() for leaf in _flatten(value)]
    if isinstance(obj, (list, tuple)):
        return [leaf for value in obj for leaf in _flatten(value)]
    return [obj]


def _unflatten(structure: Any, leaves: Iterator[Any]) -> Any:
    """``structure`` with its leaves replaced, in order, by the next items of ``leaves``."""
    if isinstance(structure, Mapping):
        items = {key: _unflatten(value, leaves) for key, value in structure.items()}
        return type(structure)(items) if type(structure) in _PLAIN_MAPPINGS else items
    if isinstance(structure, tuple) and hasattr(structure, "_fields"):  # namedtuple
        return type(structure)(*(_unflatten(value, leaves) for value in structure))
    if isinstance(structure, (list, tuple)):
        return type(structure)(_unflatten(value, leaves) for value in structure)
    return next(leaves)
