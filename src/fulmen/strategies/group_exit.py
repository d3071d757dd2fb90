"""The process group at interpreter exit: a rank whose work succeeded ends with its script's exit code.

Why a rank could die after all its work succeeded: gloo runs every collective on a worker thread
of its process group (named ``pt_gloo_runloop``), and that thread drops its reference to the finished
work a moment after the caller's wait returned. When the work holds tensors that Python holds too
(an ``all_gather`` into a list, say), the drop takes the GIL: torch releases a tensor's Python object
when the last C++ reference but one goes. Once the interpreter is finalising, Python ends a thread
that asks for the GIL with a forced unwind, which meets a ``noexcept`` destructor on the way out, and
the process aborts (``terminate called without an active exception``, SIGABRT). The thread drops the
work while it holds its group's queue lock, so a backend freed meanwhile with the GIL held (a DDP
reducer collected during finalisation) waits for that lock, and the process hangs instead.

torch gives no way to wait for that thread. ``destroy_process_group`` only forgets the group: the
backend and its threads live on while anything holds it (every DDP reducer, DeepSpeed's engine,
FSDP's device mesh, the user's own reference), gloo's ``shutdown()`` does nothing, and the threads
are joined only when the backend is freed, during finalisation, when it is too late. So whether the
script destroys the group itself, once, twice or not at all decides nothing; what decides is whether
a worker thread still has a reference to drop when finalisation begins. Sleeping a fixed time only
serves a thread that already waits for the GIL, not one that the scheduler has not run yet.

The handler below therefore waits, while Python still runs (``atexit``), until every gloo worker
thread of the process is idle: asleep, and not woken once during an interval in which this thread
left the GIL free. A thread that wanted the GIL would have taken it (and been woken) in that
interval; a thread still running or runnable shows as such; and a worker asleep on an empty queue
stays asleep, since nothing gives it work after this handler. The threads are found by name under
``/proc/self/task`` (Linux); where they cannot be (no ``/proc``, a torch that does not name them),
the handler falls back to leaving the GIL free for a fixed time.

No barrier: each rank looks after its own threads, so ranks need not agree on when they end (a peer
that left first does not matter). Outside the guarantee: a collective that the script started
(``async_op=True``) and never waited for, which may still end during finalisation; and another
Python thread that holds the GIL through a whole interval.
"""

from __future__ import annotations

import atexit
import os
import time

import torch.distributed as dist

#: What torch names gloo's worker threads (``c10::setThreadName`` in ``ProcessGroupGloo::runLoop``).
WORKER_THREAD_NAMES = frozenset({"pt_gloo_runloop"})
#: Seconds the GIL is left free between two looks at the worker threads.
SETTLE_INTERVAL = 0.01
#: Looks in a row (each after an interval) that must find every worker asleep and not woken: two, so
#: that a worker queued for the GIL behind another thread (one wake-up per release) gets its turn.
SETTLE_LOOKS = 2
#: Seconds the handler waits at most for busy workers (a collective that is still running) to settle.
SETTLE_TIMEOUT = 10.0
#: Seconds the GIL is left free where the worker threads cannot be seen.
FALLBACK_SECONDS = 0.1

_registered = False
_destroy_at_exit = False
#: Whether this torch names its gloo worker threads: None until a gloo group has been seen.
_names_visible: bool | None = None


def register(created: bool) -> None:
    """Run the exit handler in this process; called once a strategy has created or joined a group.

    ``created``: fulmen created the group, so the handler destroys it too if nobody did. A group
    that Ray Train or the user's own ``init_process_group`` made is theirs to destroy.
    """
    global _registered, _destroy_at_exit, _names_visible
    _destroy_at_exit = _destroy_at_exit or created
    if _names_visible is None and dist.is_initialized() and dist.get_backend() == "gloo":
        workers = worker_threads()
        _names_visible = bool(workers) if workers is not None else None
    if not _registered:
        # Registered when the first group appears, so it runs after the handlers of anything that
        # fulmen sets up later (atexit runs the last registered first): an asynchronous checkpoint
        # writer's last collectives, say, are over before the workers are watched.
        atexit.register(_at_exit)
        _registered = True


def _at_exit() -> None:
    settle_worker_threads()
    if _destroy_at_exit and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def settle_worker_threads(timeout: float = SETTLE_TIMEOUT) -> bool:
    """Leave the GIL free until every gloo worker thread is idle; whether they were within ``timeout``.

    Where the workers cannot be seen, leaves the GIL free for ``FALLBACK_SECONDS`` and returns False.
    """
    before = worker_threads()
    if before is None or (not before and _names_visible is False):
        time.sleep(FALLBACK_SECONDS)
        return False
    if not before:  # none left (or never any): nothing can ask for the GIL
        return True
    deadline = time.monotonic() + timeout
    idle_looks = 0
    while True:
        time.sleep(SETTLE_INTERVAL)  # the GIL is free: a worker waiting for it takes it now
        after = worker_threads()
        if after is None:
            return False
        unchanged = after == before and all(state == "S" for state, _ in after.values())
        idle_looks = idle_looks + 1 if unchanged else 0
        if idle_looks >= SETTLE_LOOKS:
            return True
        if time.monotonic() > deadline:
            return False
        before = after


def worker_threads() -> dict[str, tuple[str, int]] | None:
    """gloo's worker threads in this process: thread id -> (scheduler state, context switches so far).

    None where threads cannot be listed (no ``/proc``). A thread whose state stays ``S`` (asleep)
    with the same count of context switches has not run in between: it was never woken.
    """
    try:
        thread_ids = os.listdir("/proc/self/task")
    except OSError:
        return None
    found: dict[str, tuple[str, int]] = {}
    for thread_id in thread_ids:
        try:
            with open(f"/proc/self/task/{thread_id}/status") as status:
                lines = status.read().splitlines()
        except OSError:  # the thread ended meanwhile
            continue
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        if fields.get("Name", "").strip() not in WORKER_THREAD_NAMES:
            continue
        try:
            switches = int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])
            found[thread_id] = (fields["State"].split()[0], switches)
        except (KeyError, ValueError, IndexError):
            return None  # a kernel that reports threads differently: do not guess
    return found
