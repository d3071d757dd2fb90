"""Rebuilding an optimizer over a module's new parameters (what FSDP and model parallelism need)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fulmen.strategies.optimizer_rebuild import parameter_names, rebuild_optimizer


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.AdamW(p, lr=0.003, weight_decay=0.05, betas=(0.8, 0.9)),  # defaults hold more
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.Adam([{"params": p[:1], "lr": 0.5}, {"params": p[1:]}], lr=0.01),
    ],
)
def test_the_rebuilt_optimizer_holds_the_new_parameters_and_the_same_settings(make):
    module = nn.Linear(3, 2)
    optimizer = make(list(module.parameters()))
    names = parameter_names(module)
    replaced = copy.deepcopy(module)  # new parameter objects, the same names
    rebuilt = rebuild_optimizer(optimizer, names, replaced)
    assert type(rebuilt) is type(optimizer)
    rebuilt_params = [p for group in rebuilt.param_groups for p in group["params"]]
    assert all(p is q for p, q in zip(rebuilt_params, replaced.parameters()))
    for old, new in zip(optimizer.param_groups, rebuilt.param_groups):
        assert {k: v for k, v in old.items() if k != "params"} == {k: v for k, v in new.items() if k != "params"}
        assert [id(p) for p in new["params"]] != [id(p) for p in old["params"]]
