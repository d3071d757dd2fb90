"""The profilers on their own: recording, reports, files, argument checks."""

from __future__ import annotations

import pickle
import pstats
import time

import pytest
import torch

from fulmen.profilers import AdvancedProfiler, PassThroughProfiler, Profiler, PyTorchProfiler, SimpleProfiler


def test_simple_profiler_records_each_call_and_sorts_the_table_by_total_time():
    profiler = SimpleProfiler()
    profiler.setup("fit")
    for _ in range(3):
        with profiler.profile("slow"):
            time.sleep(0.02)
    with profiler.profile("fast"):
        pass
    assert len(profiler.recorded_durations["slow"]) == 3
    assert all(d >= 0.019 for d in profiler.recorded_durations["slow"])
    report = profiler.summary()
    lines = report.splitlines()
    assert lines[0] == "FIT Profiler Report"
    assert "Mean duration (s)" in report and "Num calls" in report and "Percentage %" in report
    rows = [line for line in lines if line.startswith("|  ")]
    assert [row.split("|")[1].strip() for row in rows] == ["Action", "Total", "slow", "fast"]
    assert rows[1].split("|")[3].strip() == "4"  # every call of every action
    assert rows[2].split("|")[3].strip() == "3"


def test_simple_profiler_short_table_and_a_fresh_start_per_call():
    profiler = SimpleProfiler(extended=False)
    profiler.setup("fit")
    with profiler.profile("a"):
        pass
    assert "Num calls" not in profiler.summary()
    profiler.setup("validate")  # the next Trainer call reports its own actions only
    assert profiler.summary() == ""
    assert not profiler.recorded_durations


def test_start_and_stop_out_of_order_are_errors():
    profiler = SimpleProfiler()
    profiler.start("a")
    with pytest.raises(ValueError, match="'a', which has already started"):
        profiler.start("a")
    with pytest.raises(ValueError, match="'b', which was never started"):
        profiler.stop("b")


def test_profile_iterable_times_each_fetch_and_the_last_empty_one():
    profiler = SimpleProfiler()
    assert list(profiler.profile_iterable(iter([1, 2, 3]), "next")) == [1, 2, 3]
    assert len(profiler.recorded_durations["next"]) == 4
    assert not profiler.current_actions


def test_report_goes_to_a_file_per_stage_and_rank(tmp_path, capsys):
    profiler = SimpleProfiler(dirpath=tmp_path / "out", filename="perf")
    profiler.setup("fit", local_rank=1)
    with profiler.profile("x"):
        pass
    profiler.describe()
    text = (tmp_path / "out" / "fit-perf-1.txt").read_text()
    assert "FIT Profiler Report (rank 1)" in text and "|  x " in text
    assert capsys.readouterr().out == ""


def test_without_filename_the_report_is_printed(capsys):
    profiler = SimpleProfiler()
    profiler.setup("test")
    with profiler.profile("x"):
        pass
    profiler.describe()
    assert "TEST Profiler Report" in capsys.readouterr().out


def test_dirpath_defaults_to_the_log_dir_it_is_given(tmp_path):
    profiler = SimpleProfiler(filename="perf")
    profiler.setup("fit", log_dir=str(tmp_path))
    with profiler.profile("x"):
        pass
    profiler.describe()
    assert (tmp_path / "fit-perf.txt").exists()


def test_advanced_profiler_reports_functions_per_action_and_dumps_stats(tmp_path):
    profiler = AdvancedProfiler(dirpath=tmp_path, filename="adv", line_count_restriction=10, dump_stats=True)
    profiler.setup("fit")

    def inner_work():
        return sorted(range(20000), key=lambda v: -v)

    def outer_work():
        return sum(range(20000))

    with profiler.profile("outer"):
        outer_work()
        with profiler.profile("inner"):
            inner_work()
    report = profiler.summary()
    assert "Profile stats for: outer" in report and "Profile stats for: inner" in report
    outer_part, inner_part = report.split("Profile stats for: inner")
    # Nested actions hand over: the inner function is reported under "inner" only.
    assert "inner_work" in inner_part and "inner_work" not in outer_part
    assert "outer_work" in outer_part
    stats = pstats.Stats(str(tmp_path / "fit-adv-inner.prof"))
    assert any(name == "inner_work" for (_, _, name) in stats.stats)


def test_advanced_profiler_pickles_without_its_recordings():
    profiler = AdvancedProfiler()
    with profiler.profile("a"):
        pass
    copy = pickle.loads(pickle.dumps(profiler))
    assert copy.profiled_actions == {}


def test_pytorch_profiler_records_operators_shapes_memory_and_writes_a_trace(tmp_path):
    profiler = PyTorchProfiler(dirpath=tmp_path, record_shapes=True, profile_memory=True, row_limit=-1)
    profiler.setup("fit")
    model = torch.nn.Linear(8, 4)
    for _ in range(6):  # the default schedule: wait 1, warm up 1, record 3 steps
        with profiler.profile("[Strategy]SingleDeviceStrategy.training_step"):
            model(torch.randn(3, 8)).sum().backward()
    report = profiler.summary()
    assert "FIT Profiler Report" in report and "aten::addmm" in report and "CPU Mem" in report
    [trace] = profiler.trace_paths
    assert trace.startswith(str(tmp_path / "fit.")) and trace.endswith(".pt.trace.json")
    import json

    events = json.loads(open(trace).read())["traceEvents"]
    names = {event.get("name") for event in events}
    assert "[Strategy]SingleDeviceStrategy.training_step" in names
    assert "[module]Linear" in names  # record_module_names
    assert "[memory]" in names  # profile_memory
    assert any("Input Dims" in event.get("args", {}) for event in events)  # record_shapes
    steps = [e for e in events if e.get("name") == "[Strategy]SingleDeviceStrategy.training_step"]
    assert len(steps) == 3
    # function_events: the recorded EventList stays readable after the summary, as in Lightning.
    recorded = [e.name for e in profiler.function_events]
    assert recorded.count("[Strategy]SingleDeviceStrategy.training_step") == 3 and "aten::addmm" in recorded
    profiler.setup("validate")
    assert profiler.function_events is None


def test_pytorch_profiler_argument_checks():
    with pytest.raises(ValueError, match="`PyTorchProfiler\\(record_shape=...\\)`.*accepted:.*record_shapes"):
        PyTorchProfiler(record_shape=True)
    with pytest.raises(ValueError, match="sort_by_key='fastest'"):
        PyTorchProfiler(sort_by_key="fastest")
    with pytest.raises(ValueError, match="row_limit=0"):
        PyTorchProfiler(row_limit=0)
    with pytest.raises(ValueError, match="needs `record_shapes=True`"):
        PyTorchProfiler(group_by_input_shapes=True)


def test_other_argument_checks():
    with pytest.raises(ValueError, match="line_count_restriction=0"):
        AdvancedProfiler(line_count_restriction=0)
    with pytest.raises(ValueError, match="line_count_restriction=1.5"):
        AdvancedProfiler(line_count_restriction=1.5)
    with pytest.raises(ValueError, match="filename='logs/perf'"):
        SimpleProfiler(filename="logs/perf")


def test_passthrough_records_nothing_and_custom_profilers_subclass_the_base():
    profiler = PassThroughProfiler()
    with profiler.profile("x"):
        pass
    assert profiler.summary() == ""
    items = [1, 2]
    assert profiler.profile_iterable(items, "x") is items

    class Counting(Profiler):
        def __init__(self):
            super().__init__()
            self.events = []

        def start(self, action_name):
            self.events.append(("start", action_name))

        def stop(self, action_name):
            self.events.append(("stop", action_name))

    counting = Counting()
    with counting.profile("a"):
        pass
    assert counting.events == [("start", "a"), ("stop", "a")]
    with pytest.raises(TypeError):
        Profiler()  # start and stop are abstract
