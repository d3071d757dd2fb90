"""Sharding dataloaders between ranks keeps the user's order, drop_last, seed and custom samplers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, TensorDataset

from fulmen.strategies.dataloaders import DistributedSamplerWrapper, prepare_dataloader
from fulmen.utilities.seed import seed_everything

DATA = TensorDataset(torch.arange(10))


def _indices(loader: DataLoader) -> list[int]:
    return [int(v) for (batch,) in loader for v in batch]


@pytest.mark.parametrize("drop_last", [False, True])
def test_sequential_loader_is_split_in_order_and_keeps_drop_last(drop_last):
    shards = [
        prepare_dataloader(DataLoader(DATA, batch_size=2, drop_last=drop_last), {"num_replicas": 3, "rank": r})
        for r in range(3)
    ]
    assert all(isinstance(s.sampler, DistributedSampler) and not s.sampler.shuffle for s in shards)
    assert _indices(shards[0])[:2] == [0, 3]
    assert all(s.drop_last == drop_last for s in shards)


def test_shuffled_loader_uses_the_global_seed_and_together_covers_the_data():
    seed_everything(7)
    shards = [prepare_dataloader(DataLoader(DATA, shuffle=True), {"num_replicas": 2, "rank": r}) for r in (0, 1)]
    assert all(s.sampler.shuffle and s.sampler.seed == 7 for s in shards)
    assert sorted(_indices(shards[0]) + _indices(shards[1])) == list(range(10))


class EvenFirst(Sampler):
    """A user's own order: even indices, then odd ones."""

    def __iter__(self):
        return iter([*range(0, 10, 2), *range(1, 10, 2)])

    def __len__(self):
        return 10


def test_custom_sampler_is_wrapped_not_dropped():
    shards = [prepare_dataloader(DataLoader(DATA, sampler=EvenFirst()), {"num_replicas": 2, "rank": r}) for r in (0, 1)]
    assert all(isinstance(s.sampler, DistributedSamplerWrapper) for s in shards)
    assert _indices(shards[0]) == [0, 4, 8, 3, 7]  # every other index of the user's order
    assert _indices(shards[1]) == [2, 6, 1, 5, 9]


def test_unchanged_without_distribution_and_custom_batch_samplers_refused():
    loader = DataLoader(DATA, batch_size=2)
    assert prepare_dataloader(loader, None) is loader

    class Pairs(Sampler):
        def __iter__(self):
            return iter([[0, 1], [2, 3]])

        def __len__(self):
            return 2

    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        prepare_dataloader(DataLoader(DATA, batch_sampler=Pairs()), {"num_replicas": 2, "rank": 0})
    custom = DataLoader(DATA, batch_sampler=Pairs())
    assert prepare_dataloader(custom, {"num_replicas": 2, "rank": 0}, use_distributed_sampler=False) is custom
