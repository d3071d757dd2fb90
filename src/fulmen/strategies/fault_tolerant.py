"""``strategy="fault_tolerant"``: replica groups that keep training when one dies, on torchft.

A replica group is one process, or several that train together as with ``DDPStrategy`` or
``FSDPStrategy`` (``inner="ddp"`` / ``"fsdp"``: FSDP inside a group, the groups replicating each
other, is hybrid sharding). Every step asks torchft's lighthouse for a quorum of
the live groups (``begin_step``), averages the gradients across the quorum through torchft's
Manager, and commits the optimizer step only if every group of the quorum got there
(``should_commit``). A group that died and restarted joins the next quorum and receives a live
peer's state (see ``ft_state``) before its first step, so that its weights equal the others'.

The next step's quorum is asked for as soon as a step's commit vote is in, in a background
thread, while the optimizer steps and the loop does its bookkeeping; the next batch waits for what
is left of it. What it heals (sent or received) waits for that next batch too, so the state that
travels is always the one at a step boundary (see ``ft_state``).

Gradients go through ``manager.allreduce`` rather than torchft's DDP wrapper: on gloo that
wrapper ends the surviving process when the peer dies inside an all-reduce, while the Manager
records the failure and lets the step fail to commit. With several processes per group, each
process averages its gradients (its shards, under FSDP) with the process of the same rank in the
other groups, after the inner strategy has reduced them inside the group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen.strategies.accelerators import Accelerator
from fulmen.strategies.ddp import DDPStrategy
from fulmen.strategies.fsdp import FSDPStrategy
from fulmen.strategies.ft_data import EpochPosition, ExactlyOnceLoader
from fulmen.strategies.ft_state import ReplicaState
from fulmen.strategies.precision import Precision
from fulmen.strategies.strategy import Strategy
from fulmen.strategies.wrapped import unwrap_optimizer
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.rank_zero import rank_zero_warn

#: What ``fulmen run --replica-groups`` exports to every process (and what other launchers must set).
LIGHTHOUSE_ENV = "TORCHFT_LIGHTHOUSE"
GROUP_ENV = "FULMEN_REPLICA_GROUP"
NUM_GROUPS_ENV = "FULMEN_NUM_REPLICA_GROUPS"
#: Set by ``fulmen run`` to how many times this group was restarted (0: its first start).
RESTART_ENV = "FULMEN_REPLICA_GROUP_RESTART"
#: What runs inside a replica group, by ``inner=`` name (None: one process, no inner strategy).
INNER_STRATEGIES = ("single", "ddp", "fsdp")
#: Seconds between a lone restarted group's quorum requests.
_PEER_POLL = 0.2
#: Gradients with fewer elements are averaged together in one flat buffer.
_FLATTEN_BELOW = 1 << 16


class FaultTolerantStrategy(Strategy):
    """Replica groups on torchft: gradients averaged over the live groups, steps committed or skipped.

    Args:
        min_replicas: fewest groups a step needs to commit.
        timeout: seconds an all-reduce, a commit vote or a state transfer may take.
        quorum_timeout: seconds to wait for a quorum (a group restarting takes this long at most to join).
        quorum_retries: times a quorum request is tried again when the lighthouse does not answer (a
            lighthouse restarted on the same address while the groups train is reached again).
        lighthouse: the lighthouse's address (``http://host:port``); default ``$TORCHFT_LIGHTHOUSE``.
        replica_group: this group's index; default ``$FULMEN_REPLICA_GROUP``.
        num_replica_groups: how many groups the job has when none is dead; default ``$FULMEN_NUM_REPLICA_GROUPS``.
        host: the address this process's servers listen on and advertise (loopback by default).
        inner: what runs inside a group: ``"single"`` (one process), ``"ddp"`` or ``"fsdp"`` (several
            processes, one per device, as ``DDPStrategy`` / ``FSDPStrategy``; ``"fsdp"`` across
            groups is hybrid sharding). Default: ``"ddp"`` when the process is one of several
            (``WORLD_SIZE`` > 1, as ``fulmen run --replica-groups N --devices K`` starts them), else ``"single"``.
        **inner_kwargs: passed to the inner strategy (e.g. ``auto_wrap_policy`` for ``"fsdp"``).
    """

    def __new__(cls, *args: Any, inner: str | None = None, **kwargs: Any) -> FaultTolerantStrategy:
        if cls is FaultTolerantStrategy:  # the class that runs the chosen inner strategy inside each group
            cls = _WITH_INNER.get(_inner_name(inner), FaultTolerantStrategy)
        return super().__new__(cls)

    def __init__(
        self,
        min_replicas: int = 1,
        timeout: float = 60.0,
        quorum_timeout: float = 120.0,
        quorum_retries: int = 3,
        lighthouse: str | None = None,
        replica_group: int | None = None,
        num_replica_groups: int | None = None,
        host: str = "127.0.0.1",
        inner: str | None = None,
        accelerator: Accelerator | None = None,
        precision: Precision | None = None,
        **inner_kwargs: Any,
    ) -> None:
        self.inner = _inner_name(inner)
        if self.inner == "single" and inner_kwargs:
            raise MisconfigurationException(
                f"FaultTolerantStrategy got {sorted(inner_kwargs)}, which are options of an inner strategy, but "
                "inner='single' has none. Pass inner='ddp' or inner='fsdp' with them."
            )
        super().__init__(accelerator=accelerator, precision=precision, **inner_kwargs)
        if isinstance(min_replicas, bool) or not isinstance(min_replicas, int) or min_replicas < 1:
            raise invalid_argument("min_replicas", min_replicas, "a positive int")
        if isinstance(quorum_retries, bool) or not isinstance(quorum_retries, int) or quorum_retries < 0:
            raise invalid_argument("quorum_retries", quorum_retries, "an int >= 0")
        self.quorum_retries = quorum_retries
        for name, value in (("timeout", timeout), ("quorum_timeout", quorum_timeout)):
            if not _is_seconds(value):
                raise invalid_argument(name, value, "a positive number of seconds")
        self.min_replicas = min_replicas
        # A timedelta, as the inner strategies keep theirs (the group's process group waits as long).
        self.timeout = timedelta(seconds=float(timeout))
        self.quorum_timeout = timedelta(seconds=float(quorum_timeout))
        self.host = host
        self._lighthouse = lighthouse
        self._replica_group = replica_group
        self._num_replica_groups = num_replica_groups
        self.replica_state = ReplicaState(boundary_timeout=float(timeout))
        self.position = EpochPosition()
        self.replica_state.register("data", self.position.state_dict, self.position.load_state_dict)
        self._manager: Any = None
        self._transport: Any = None
        self._store: Any = None
        self._step_open = False
        self._launched: dict[int, Any] = {}  # id(parameter) -> its all-reduce, started during backward
        self._averaged = False
        self._sync_off = False  # inside no_backward_sync: gradients accumulate without being averaged
        self._participation = (0, 1)
        self.last_step_committed = True
        self._step_samples = 0
        self._resume_skip = 0
        self._defer_rng = False
        self._first_quorum = True  # before it, the groups wait for each other (see _wait_for_peers)
        self._next_quorum: _Background | None = None  # the next step's quorum, asked for after a commit vote

    # ----------------------------------------------------------------------------------- where
    @property
    def root_device(self) -> torch.device:
        if self.inner != "single":
            return super().root_device  # this process's device among the group's
        if self._parallel_devices:
            return self._parallel_devices[0]
        return torch.device("cpu")

    @property
    def replica_group(self) -> int:
        return _from_env("replica_group", self._replica_group, GROUP_ENV)

    @property
    def num_replica_groups(self) -> int:
        return _from_env("num_replica_groups", self._num_replica_groups, NUM_GROUPS_ENV)

    @property
    def is_global_zero(self) -> bool:
        """Rank 0 of the group that is rank 0 of the latest quorum: the one live group writes checkpoints and logs."""
        return self._manager is not None and self._participation[0] == 0 and self.global_rank == 0

    # ----------------------------------------------------------------------------------- setup
    def setup_environment(self) -> None:
        super().setup_environment()
        if self._manager is None:
            self._connect()

    def _connect(self) -> None:
        try:
            import torchft  # noqa: F401
        except ImportError:
            raise MisconfigurationException(
                "`strategy='fault_tolerant'` needs torchft, which is not installed: `pip install 'fulmen[ft]'`."
            ) from None
        from torch.distributed import TCPStore
        from torchft import Manager, ProcessGroupGloo

        from fulmen.strategies.ft_transport import HostCheckpointTransport

        _quiet_flight_recorder_warning()
        lighthouse = self._lighthouse or os.environ.get(LIGHTHOUSE_ENV)
        if not lighthouse:
            raise MisconfigurationException(
                f"`strategy='fault_tolerant'` needs the address of a torchft lighthouse: pass "
                f"FaultTolerantStrategy(lighthouse='http://host:port') or set ${LIGHTHOUSE_ENV} "
                "(`fulmen run --replica-groups N script.py` starts one and sets it)."
            )
        group, _ = self.replica_group, self.num_replica_groups
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        if processes != 1 and self.inner == "single":
            raise MisconfigurationException(
                f"FaultTolerantStrategy(inner='single') runs one process per replica group, but this process is one "
                f"of WORLD_SIZE={processes}. Use inner='ddp' or inner='fsdp' for several processes per group."
            )
        timeout = self.timeout
        if self.inner == "single":
            # The group's own store, where torchft's Manager finds its server (one process: this one).
            self._store = TCPStore(self.host, 0, is_master=True, wait_for_workers=False)
            store_addr, store_port = self.host, self._store.port
        else:  # the group's process group store (its rank 0 hosts it), joined in setup_environment
            store_addr = self.cluster_environment.main_address
            store_port = self.cluster_environment.main_port
        self._transport = HostCheckpointTransport(self.host, timeout)
        with _manager_server_bound_to(self.host):
            self._manager = Manager(
                pg=ProcessGroupGloo(timeout=timeout),
                load_state_dict=self.replica_state.load_state_dict,
                state_dict=self.replica_state.state_dict,
                min_replica_size=self.min_replicas,
                use_async_quorum=False,  # heal before the step's forward, with a consistent snapshot
                timeout=timeout,
                quorum_timeout=self.quorum_timeout,
                quorum_retries=self.quorum_retries,
                connect_timeout=timeout,
                rank=self.global_rank,
                world_size=self.world_size,
                store_addr=store_addr,
                store_port=store_port,
                lighthouse_addr=lighthouse,
                replica_id=f"fulmen_group_{group}",
                hostname=self.host,
                checkpoint_transport=self._transport,
                init_sync=True,  # step 0: every group starts from one group's weights
            )

    def setup_module(self, module: nn.Module) -> nn.Module:
        module = super().setup_module(module)  # the inner strategy's wrapper or shards
        if module not in self.replica_state.modules:
            self.replica_state.modules.append(module)
            if self.inner != "single":
                return module  # the inner strategy reduces inside the group during backward: average after it
            for parameter in module.parameters():
                if parameter.requires_grad and parameter.numel() >= _FLATTEN_BELOW:
                    parameter.register_post_accumulate_grad_hook(self._gradient_ready)
        return module

    def _gradient_ready(self, parameter: Tensor) -> None:
        """A large gradient is complete: start averaging it while backward goes on (as DDP overlaps)."""
        # After the step's first backward (Lite accumulating over several), the next backward averages
        # the accumulated gradients again once it ends: averaging values that agree changes nothing.
        if not self._step_open or self._averaged or self._sync_off:
            return
        if parameter.grad is None or not parameter.grad.is_contiguous():
            return
        self._launched[id(parameter)] = self._manager.allreduce(parameter.grad)

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        optimizer = unwrap_optimizer(super().setup_optimizer(optimizer))
        if optimizer not in self.replica_state.optimizers:
            self.replica_state.optimizers.append(optimizer)
        return optimizer

    def configure_training(
        self,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Any = None,
    ) -> None:
        if accumulate_grad_batches != 1:
            # An epoch whose last step did not commit takes one more batch than len(loader), so windows
            # counted in batches would no longer line up with steps: one could end open.
            raise MisconfigurationException(
                f"`accumulate_grad_batches={accumulate_grad_batches}` is not supported with strategy='fault_tolerant' "
                "in the Trainer: each optimizer step is one quorum step. Use 1 and a larger batch size."
            )

    def register_replica_state(
        self, key: str, state_dict: Callable[[], Any], load_state_dict: Callable[[Any], None]
    ) -> None:
        self.replica_state.register(key, state_dict, load_state_dict)

    def progress_state_dict(self) -> dict[str, Any]:
        """The exactly-once position (the same on every live group), for a job resumed from disk."""
        return {"data_position": self.position.state_dict()}

    def load_progress_state_dict(self, state: dict[str, Any]) -> None:
        if "data_position" in state:
            self.position.load_state_dict(state["data_position"])
            self._resume_skip = self.position.steps  # the loop replays that many batches to resume mid-epoch

    def exactly_once(self, dataloader: Any) -> ExactlyOnceLoader:
        """``dataloader``'s dataset, each sample in exactly one committed step per epoch (see ``ft_data``)."""
        from fulmen.strategies.dataloaders import global_seed

        skip, self._resume_skip = self._resume_skip, 0
        return ExactlyOnceLoader(
            dataloader,
            self.position,
            self.num_replica_groups,
            group_rank=self.global_rank,
            group_size=self.world_size,
            quorum=self.begin_step,
            on_assigned=self._assign,
            pending=self._pending,
            seed=global_seed(),
            skip_first=skip,
        )

    def process_train_dataloader(self, dataloader: Any) -> Any:
        """A map-style DataLoader becomes an exactly-once loader; other iterables are fed as they are
        (each group then reads its own copy: the exactly-once guarantee needs indexable samples)."""
        from torch.utils.data import DataLoader, IterableDataset

        if isinstance(dataloader, DataLoader) and not isinstance(dataloader.dataset, IterableDataset):
            return self.exactly_once(dataloader)
        rank_zero_warn(
            f"strategy='fault_tolerant' feeds this training data ({type(dataloader).__name__}) as it is: every "
            "replica group reads all of it. Samples are assigned exactly once per epoch only from a DataLoader over "
            "a map-style dataset."
        )
        return dataloader

    def sync_replicas(self) -> None:
        """Join the first step's quorum before the loop: a restarted group receives the live groups' state
        here (the loop then resumes mid-epoch as from a checkpoint); its random states wait for the first batch."""
        self._defer_rng = True
        try:
            self.begin_step()
        finally:
            self._defer_rng = False
        if self.replica_state.healed:
            self._resume_skip = self.position.steps

    # ----------------------------------------------------------------------------------- train
    def begin_step(self) -> tuple[int, int]:
        """Join this step's quorum (healing from a peer if this group is behind); ``(rank, groups)`` in it.

        Called when the step's batch is fetched; otherwise at its first backward.
        """
        if not self._step_open:
            self._require_connected()
            self.replica_state.at_step_boundary()  # what the quorum heals may be read or written from here on
            if self._next_quorum is not None:
                self._next_quorum, next_quorum = None, self._next_quorum
                next_quorum.result()
            else:
                self._manager.start_quorum()
            if self._first_quorum:
                self._first_quorum = False
                self._wait_for_peers()
            self._participation = (self._manager.participating_rank() or 0, max(self._manager.num_participants(), 1))
            self._step_open = True
        if not self._defer_rng:
            self.replica_state.apply_pending_rng()
        return self._participation

    def _wait_for_peers(self) -> None:
        """The first quorum of this process: it asks again (every ``_PEER_POLL`` s, up to ``quorum_timeout``)
        until the groups it must train with are in it.

        - A first start waits for every group, unless the others have trained already (it then healed
          from them): a group that started late would otherwise train alone, and a short job could end
          before the others join.
        - A restarted group waits for one live group to heal from. Alone, it would start over from
          scratch and, as rank 0 of its own quorum, overwrite the job's checkpoints; if none comes (the
          others have finished or died), it fails.
        """
        restarted = int(os.environ.get(RESTART_ENV, "0") or 0) > 0
        wanted = 2 if restarted else self.num_replica_groups
        deadline = time.monotonic() + self.quorum_timeout.total_seconds()
        while self._manager.num_participants() < wanted:
            if self.replica_state.healed if restarted else self._manager.current_step() > 0:
                return  # joined groups that were ahead: healed from them
            if time.monotonic() > deadline:
                if restarted:
                    raise RuntimeError(
                        f"Replica group {self.replica_group} was restarted, but no live replica group joined it "
                        f"within quorum_timeout={self.quorum_timeout.total_seconds():.0f}s to heal it: the others "
                        "have finished or died. Resume the job from its last checkpoint (`ckpt_path='last'`)."
                    )
                rank_zero_warn(
                    f"Replica group {self.replica_group} starts with {self._manager.num_participants()} of "
                    f"{wanted} replica groups: the others did not join within quorum_timeout="
                    f"{self.quorum_timeout.total_seconds():.0f}s (they join, and heal, when they come)."
                )
                return
            time.sleep(_PEER_POLL)
            self._manager.start_quorum()

    def _assign(self, samples: int) -> None:
        self._step_samples += samples  # several batches when gradients accumulate over them

    def _pending(self) -> int:
        """Samples the open step has taken so far (its earlier batches, when gradients accumulate)."""
        return self._step_samples

    def backward(self, tensor: Tensor, module: nn.Module | None = None, *args: Any, **kwargs: Any) -> None:
        """Backward, then the gradients averaged over the quorum: clipping after it sees the averages, as with DDP."""
        self.begin_step()
        super().backward(tensor, module, *args, **kwargs)
        if self._sync_off:  # an accumulating backward: the step's last one averages the sum
            return
        params = [p for m in self.replica_state.modules for p in m.parameters()]
        self._average_gradients(params)

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """Run the closure, average gradients over the quorum, and step only if the step commits."""
        self.begin_step()
        output = closure() if closure is not None else None
        optimizer = unwrap_optimizer(optimizer)
        if not self._averaged:  # a backward that did not go through the strategy
            self._average_gradients([p for group in optimizer.param_groups for p in group["params"]])
        self._step_open, self._averaged = False, False
        self.last_step_committed = bool(self._manager.should_commit())
        self._ask_next_quorum()
        if self.last_step_committed:
            self.position.cursor += self._step_samples
            self.precision.optimizer_step(optimizer, closure=_no_closure, **kwargs)
        else:
            optimizer.zero_grad(set_to_none=True)  # the gradients may hold a partial all-reduce
        self._step_samples = 0
        return output

    def _ask_next_quorum(self) -> None:
        """Start the next step's quorum in the background (torchft's own thread pool holds the previous
        step's future until this call, so a thread of ours runs it); ``begin_step`` waits for it."""
        self.replica_state.leave_step_boundary()
        device = self.root_device
        self._next_quorum = _Background(self._manager.start_quorum, device if device.type == "cuda" else None)

    def _average_gradients(self, params: list[Tensor]) -> None:
        """Every gradient in place: the large ones started during backward are waited for; the others are
        started now, the small ones in one flat buffer (one collective instead of many)."""
        works, launched = list(self._launched.values()), set(self._launched)
        self._launched = {}
        seen: set[int] = set()
        grads = []
        for p in params:
            if p.grad is not None and id(p) not in launched and id(p) not in seen:
                seen.add(id(p))
                grads.append(_local(p.grad))
        large = [g for g in grads if g.numel() >= _FLATTEN_BELOW and g.is_contiguous()]
        small = [g for g in grads if g.numel() < _FLATTEN_BELOW or not g.is_contiguous()]
        works += [self._manager.allreduce(grad) for grad in large]
        flats = [(torch.cat([g.reshape(-1) for g in same]), same) for same in _by_dtype(small)]
        works += [self._manager.allreduce(flat) for flat, _ in flats]
        for work in works:
            work.wait()
        for flat, same in flats:
            offset = 0
            for grad in same:
                grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                offset += grad.numel()
        self._averaged = True

    @contextlib.contextmanager
    def no_backward_sync(self, module: nn.Module, enabled: bool = True) -> Iterator[None]:
        """Backwards inside only add to the gradients (across groups, and inside the group through the
        inner strategy); the step's last backward, or the optimizer step, averages the sum. A backward
        outside averages what has accumulated so far, which is correct too (averaging is linear)."""
        if not enabled:
            yield
            return
        self._sync_off = True
        try:
            if self.inner == "single":
                yield
            else:
                with super().no_backward_sync(module, enabled):
                    yield
        finally:
            self._sync_off = False

    def _require_connected(self) -> None:
        if self._manager is None:
            raise RuntimeError("FaultTolerantStrategy is not connected: call setup_environment() first.")

    # -------------------------------------------------------------------------------- teardown
    def teardown(self) -> None:
        if self._next_quorum is not None:  # asked for after the last step: let it end (peers may heal from it)
            self.replica_state.at_step_boundary()
            self._next_quorum.join(self.timeout.total_seconds())
            self._next_quorum = None
        if self._manager is not None:
            self._manager.shutdown(wait=False)
            self._manager = None
        super().teardown()

    def __repr__(self) -> str:
        return (
            f"FaultTolerantStrategy(inner={self.inner!r}, min_replicas={self.min_replicas}, "
            f"precision={self.precision!r})"
        )


class FaultTolerantDDPStrategy(FaultTolerantStrategy, DDPStrategy):
    """``FaultTolerantStrategy(inner="ddp")``: DDP inside each replica group."""


class FaultTolerantFSDPStrategy(FaultTolerantStrategy, FSDPStrategy):
    """``FaultTolerantStrategy(inner="fsdp")``: FSDP2 inside each replica group, the groups replicating
    each other (hybrid sharding whose replicas can fail and heal)."""


_WITH_INNER: dict[str, type[FaultTolerantStrategy]] = {
    "ddp": FaultTolerantDDPStrategy,
    "fsdp": FaultTolerantFSDPStrategy,
}


class _Background:
    """``function()`` in a daemon thread; ``result()`` waits for it and raises what it raised."""

    def __init__(self, function: Callable[[], Any], device: torch.device | None = None) -> None:
        self._function, self._device = function, device
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fulmen-ft-next-quorum", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if self._device is not None:
                torch.cuda.set_device(self._device)
            self._function()
        except BaseException as error:  # raised in the training thread by result()
            self._error = error

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def _inner_name(inner: str | None) -> str:
    if inner is None:
        return "ddp" if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else "single"
    if inner not in INNER_STRATEGIES:
        raise invalid_argument("inner", inner, INNER_STRATEGIES)
    return inner


def _is_seconds(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0


def _no_closure() -> None:
    return None


def _local(grad: Tensor) -> Tensor:
    """A DTensor gradient's own shard (HSDP: each group rank averages its shard with the same rank elsewhere)."""
    to_local = getattr(grad, "to_local", None)
    return to_local() if to_local is not None else grad


def _by_dtype(grads: list[Tensor]) -> list[list[Tensor]]:
    groups: dict[torch.dtype, list[Tensor]] = {}
    for grad in grads:
        groups.setdefault(grad.dtype, []).append(grad)
    return list(groups.values())


def _from_env(name: str, value: int | None, variable: str) -> int:
    if value is not None:
        return value
    text = os.environ.get(variable)
    if text is None:
        raise MisconfigurationException(
            f"`strategy='fault_tolerant'` needs `{name}`: pass FaultTolerantStrategy({name}=...) or set ${variable} "
            "(`fulmen run --replica-groups N script.py` sets it for every process)."
        )
    try:
        return int(text)
    except ValueError:
        raise invalid_argument(variable, text, "an int") from None


def _quiet_flight_recorder_warning() -> None:
    """torchft warns at every new quorum that it cannot reset NCCL's flight recorder; a build without
    NCCL (the CPU one) has none to reset, so the line says nothing there."""
    if not torch.distributed.is_nccl_available():
        logging.getLogger("torchft.manager").addFilter(_not_flight_recorder)  # added once: the same function


def _not_flight_recorder(record: logging.LogRecord) -> bool:
    return "NCCL flight recorder" not in record.getMessage()


@contextlib.contextmanager
def _manager_server_bound_to(host: str) -> Iterator[None]:
    """torchft's Manager binds its server to every interface (``[::]:port``); listen on ``host`` only."""
    import torchft.manager as manager_module

    original = manager_module.ManagerServer

    def bound(**kwargs: Any) -> Any:
        port = kwargs["bind"].rsplit(":", 1)[-1]
        return original(**{**kwargs, "bind": f"{host}:{port}"})

    manager_module.ManagerServer = bound
    try:
        yield
    finally:
        manager_module.ManagerServer = original
