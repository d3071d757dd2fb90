"""``PyTorchProfiler``: operator-level time and memory from ``torch.profiler``, and a trace file.

Each action becomes a ``record_function`` range, so the Trainer's phases frame the operators
they ran. By default the profiler records steps 3 to 5 of the call (one step waits, one warms
up: the first steps are not typical) and writes the trace to
``dirpath/<stage>[-<filename>].<time>.pt.trace.json``: open it in Chrome (``chrome://tracing``),
Perfetto (``ui.perfetto.dev``) or TensorBoard's profiler plugin (``tensorboard --logdir dirpath``
with ``torch-tb-profiler`` installed). ``torch.profiler`` is imported when recording starts.
"""

from __future__ import annotations

import inspect
import os
import time
from typing import Any

import torch

from fulmen.profilers.profiler import Profiler

#: What ``EventList.table(sort_by=...)`` accepts ("cuda" reads as "device" in recent torch).
SORT_KEYS = frozenset(
    {
        "cpu_time", "cuda_time", "device_time", "cpu_time_total", "cuda_time_total", "device_time_total",
        "self_cpu_time_total", "self_cuda_time_total", "self_device_time_total", "cpu_memory_usage",
        "cuda_memory_usage", "device_memory_usage", "self_cpu_memory_usage", "self_cuda_memory_usage",
        "self_device_memory_usage", "count", "flops",
    }
)  # fmt: skip

#: The action whose end is one profiler step, per Trainer call (drives the ``schedule``).
_STEP_ACTION = {"fit": "training_step", "validate": "validation_step", "test": "test_step", "predict": "predict_step"}


class PyTorchProfiler(Profiler):
    """``torch.profiler`` around the Trainer's actions.

    ``record_shapes``, ``profile_memory``, ``with_stack``, ``with_flops``, ``with_modules``,
    ``activities``, ``schedule``, ``on_trace_ready``, ... go to ``torch.profiler.profile``
    (``profiler_kwargs``). ``export_to_chrome``: write the trace file (unless you pass your own
    ``on_trace_ready``). ``group_by_input_shapes``: one table row per operator and input shape
    (needs ``record_shapes=True``). ``row_limit``, ``sort_by_key`` and ``table_kwargs`` shape the
    summary table. ``record_module_names``: each ``nn.Module`` forward shows as its own range.
    ``emit_nvtx``: emit NVTX ranges for ``nsys`` instead (CUDA only; no table, no trace file).
    """

    def __init__(
        self,
        dirpath: str | os.PathLike | None = None,
        filename: str | None = None,
        group_by_input_shapes: bool = False,
        emit_nvtx: bool = False,
        export_to_chrome: bool = True,
        row_limit: int = 20,
        sort_by_key: str | None = None,
        record_module_names: bool = True,
        table_kwargs: dict[str, Any] | None = None,
        **profiler_kwargs: Any,
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        import torch.profiler

        accepted = [name for name in inspect.signature(torch.profiler.profile.__init__).parameters if name != "self"]
        for name in profiler_kwargs:
            if name not in accepted:
                raise ValueError(
                    f"`PyTorchProfiler({name}=...)` is not an argument of `torch.profiler.profile`; accepted: "
                    f"{', '.join(accepted)}."
                )
        if sort_by_key is not None and sort_by_key not in SORT_KEYS:
            raise ValueError(f"`sort_by_key={sort_by_key!r}` is not accepted; use one of {sorted(SORT_KEYS)}.")
        if isinstance(row_limit, bool) or not isinstance(row_limit, int) or (row_limit < 1 and row_limit != -1):
            raise ValueError(f"`row_limit={row_limit!r}` is not accepted: give an int >= 1, or -1 for every row.")
        if group_by_input_shapes and not profiler_kwargs.get("record_shapes", False):
            raise ValueError("`group_by_input_shapes=True` needs `record_shapes=True`, which records the shapes.")
        self.group_by_input_shapes = bool(group_by_input_shapes)
        self.emit_nvtx = bool(emit_nvtx)
        self.export_to_chrome = bool(export_to_chrome)
        self.row_limit = row_limit
        self.sort_by_key = sort_by_key
        self.record_module_names = bool(record_module_names)
        self.table_kwargs = dict(table_kwargs or {})
        self.profiler_kwargs = profiler_kwargs
        #: The traces written so far (with the default ``on_trace_ready``).
        self.trace_paths: list[str] = []
        self._reset_recording()

    def _reset_recording(self) -> None:
        self._profiler: Any = None
        self._nvtx: Any = None
        self._ranges: dict[str, Any] = {}
        self._module_ranges: list[Any] = []
        self._module_hooks: list[Any] = []
        #: What the last recording captured (a torch ``EventList``), kept after ``summary`` as in
        #: Lightning; None before anything was recorded or when the schedule recorded nothing.
        self.function_events: Any = None

    # ---------------------------------------------------------------------------- recording
    def start(self, action_name: str) -> None:
        if action_name in self._ranges:
            raise ValueError(f"Attempted to start {action_name!r}, which has already started.")
        if self._profiler is None and self._nvtx is None:
            self._start_recording()
        recording = torch.profiler.record_function(action_name)
        recording.__enter__()
        self._ranges[action_name] = recording

    def stop(self, action_name: str) -> None:
        recording = self._ranges.pop(action_name, None)
        if recording is None:
            raise ValueError(f"Attempted to stop {action_name!r}, which was never started.")
        recording.__exit__(None, None, None)
        step = _STEP_ACTION.get(self._stage or "fit")
        if self._profiler is not None and step is not None and action_name.endswith(step):
            self._profiler.step()

    def _start_recording(self) -> None:
        if self.emit_nvtx:
            if not torch.cuda.is_available():
                raise RuntimeError("`PyTorchProfiler(emit_nvtx=True)` emits NVTX ranges for CUDA; no CUDA device here.")
            record_shapes = self.profiler_kwargs.get("record_shapes", False)
            self._nvtx = torch.autograd.profiler.emit_nvtx(record_shapes=record_shapes)
            self._nvtx.__enter__()
        else:
            kwargs = dict(self.profiler_kwargs)
            if "schedule" not in kwargs:
                kwargs["schedule"] = torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1)
            if self.export_to_chrome and "on_trace_ready" not in kwargs:
                kwargs["on_trace_ready"] = self._export_trace
            self._profiler = torch.profiler.profile(**kwargs)
            self._profiler.__enter__()
        if self.record_module_names:
            self._module_hooks = [
                torch.nn.modules.module.register_module_forward_pre_hook(self._enter_module),
                torch.nn.modules.module.register_module_forward_hook(self._exit_module),
            ]

    def _enter_module(self, module: torch.nn.Module, args: Any) -> None:
        recording = torch.profiler.record_function(f"[module]{type(module).__name__}")
        recording.__enter__()
        self._module_ranges.append(recording)

    def _exit_module(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._module_ranges:
            self._module_ranges.pop().__exit__(None, None, None)

    def _export_trace(self, profiler: Any) -> None:
        name = self._prepare_filename(extension="") or "trace"
        path = os.path.join(self.dirpath if self.dirpath is not None else os.getcwd(), name)
        path = f"{path}.{time.time_ns()}.pt.trace.json"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        profiler.export_chrome_trace(path)
        self.trace_paths.append(path)

    def _stop_recording(self) -> None:
        for hook in self._module_hooks:
            hook.remove()
        self._module_hooks = []
        for recording in [*reversed(self._module_ranges), *reversed(list(self._ranges.values()))]:
            recording.__exit__(None, None, None)
        self._module_ranges, self._ranges = [], {}
        if self._nvtx is not None:
            self._nvtx.__exit__(None, None, None)
            self._nvtx = None
        if self._profiler is not None:
            profiler, self._profiler = self._profiler, None
            profiler.__exit__(None, None, None)
            try:
                self.function_events = profiler.events()
            except (AssertionError, RuntimeError):  # stopped before the schedule recorded anything
                self.function_events = None

    # ------------------------------------------------------------------------------ report
    def summary(self) -> str:
        self._stop_recording()
        events = self.function_events
        if not events:
            return ""
        sort_by = self.sort_by_key or self._default_sort_key()
        averages = events.key_averages(group_by_input_shapes=self.group_by_input_shapes)
        table = averages.table(sort_by=sort_by, row_limit=self.row_limit, **self.table_kwargs)
        return self._stats_to_str({"records": table})

    def _default_sort_key(self) -> str:
        activities = self.profiler_kwargs.get("activities")
        if activities is None:
            on_device = torch.cuda.is_available()
        else:
            on_device = any(getattr(activity, "name", "") == "CUDA" for activity in activities)
        return "device_time_total" if on_device else "cpu_time_total"

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        super().setup(stage, local_rank, log_dir)
        self._stop_recording()
        self.function_events = None

    def teardown(self, stage: str | None = None) -> None:
        self._stop_recording()
        super().teardown(stage)

    def __getstate__(self) -> dict[str, Any]:
        # Recording state does not pickle; a spawned process starts its own recording.
        state = super().__getstate__()
        for name in ("_profiler", "_nvtx", "function_events"):
            state[name] = None
        state.update(_ranges={}, _module_ranges=[], _module_hooks=[])
        return state
