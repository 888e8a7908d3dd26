"""The main job's timing order and time budget (senet_kernels/bench_schedule.py), with a fake
clock and a fake warm-up; then a real run cut by its budget."""

import time

import torch

from senet_kernels import bench
from senet_kernels.bench_schedule import BASELINE, KERNELS, Schedule, part_of


class FakeWorkers:
    """Reports, one batch per poll, then goes quiet; ``active`` until told otherwise."""

    def __init__(self, batches, active=True):
        self.batches, self.active, self.timeouts = list(batches), active, []

    def poll(self, timeout=0.0):
        self.timeouts.append(timeout)
        return self.batches.pop(0) if self.batches else []


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0  # every look at the clock is a second later
        return self.now


def test_parts():
    assert part_of("compile") == part_of("compile_static") == BASELINE
    assert part_of("triton") == part_of("cuda") == part_of("eager") == part_of("cpu") == KERNELS


def test_without_workers_cases_go_in_order():
    schedule = Schedule(3)
    assert list(schedule) == [(0, KERNELS), (0, BASELINE), (1, KERNELS), (1, BASELINE),
                              (2, KERNELS), (2, BASELINE)]
    assert schedule.from_workers == 0 and not schedule.out_of_time
    assert schedule.remaining(KERNELS) == schedule.remaining(BASELINE) == []


def test_parts_are_taken_as_the_workers_report_them():
    """Kernels as reported; a reported baseline as soon as its case's kernels are done, before
    other kernels; once the workers are gone, everything left, in order."""
    workers = FakeWorkers([[(KERNELS, 2), (BASELINE, 2)], [], [], [(KERNELS, 0)], [(KERNELS, 1)]])
    schedule = Schedule(4, workers)
    taken = []
    for step in schedule:
        taken.append(step)
        if len(taken) == 4:
            workers.active = False  # the workers end: the rest is ready
    assert taken[:4] == [(2, KERNELS), (2, BASELINE), (0, KERNELS), (1, KERNELS)]
    assert taken[4:] == [(0, BASELINE), (1, BASELINE), (3, KERNELS), (3, BASELINE)]
    assert schedule.from_workers == 4
    # with nothing ready it waited on the workers (a poll with a timeout), not spun
    assert any(t > 0 for t in workers.timeouts)


def test_nothing_starts_past_the_deadline():
    """At the deadline the schedule stops, says so, and names what was left."""
    schedule = Schedule(5, deadline=6.5, clock=FakeClock())
    taken = list(schedule)
    assert 0 < len(taken) < 10 and schedule.out_of_time
    done = {KERNELS: {p for p, part in taken if part == KERNELS},
            BASELINE: {p for p, part in taken if part == BASELINE}}
    assert schedule.remaining(KERNELS) == [p for p in range(5) if p not in done[KERNELS]]
    assert schedule.remaining(BASELINE) == [p for p in range(5) if p not in done[BASELINE]]


def test_waiting_for_workers_ends_at_the_deadline():
    """Workers that never report: the kernels are not ready, the run waits until the deadline
    and ends with everything untimed, never blocking past it."""
    clock = FakeClock()
    schedule = Schedule(2, FakeWorkers([]), deadline=10.0, clock=clock)
    assert list(schedule) == [] and schedule.out_of_time
    assert clock.now < 20


def _tiny_cases():
    shape = bench.Shape("efficientnet_b0", 2, 20, 3, 5)
    return [bench.Case(shape, "fwd", "float32", "nchw"),
            bench.Case(shape, "fwd", "float32", "channels_last")]


def test_run_past_its_budget_times_nothing_and_says_so():
    cases = _tiny_cases()
    result = bench.run(cases, "cpu", min_run_time=0.01, progress=False,
                       deadline=time.perf_counter() - 1)
    assert result["rows"] == [] and result["phases"]["out_of_time"]
    assert result["untimed"] == {"kernels": [c.label for c in cases],
                                 "baseline": [c.label for c in cases]}
    result["phases"].update(total_seconds=1.0, budget_seconds=50.0)
    text = bench.summary(result)
    assert "NOT TIMED within the 50 s time budget" in text
    assert f"untimed: {cases[1].label}" in text


def test_run_whose_baseline_is_not_compiled_in_time_has_no_compile_column():
    """The workers report the kernels but no baseline before the deadline: eager and our
    kernels are timed, torch.compile is not, and no row claims a speedup vs compile."""
    cases = _tiny_cases()
    workers = FakeWorkers([[(KERNELS, 0), (KERNELS, 1)]])
    result = bench.run(cases, "cpu", min_run_time=0.01, progress=False, source=workers,
                       deadline=time.perf_counter() + 3.0)
    backends = {row["backend"] for row in result["rows"]}
    assert "eager" in backends and "compile" not in backends
    assert all(row["speedup_vs_compile"] is None for row in result["rows"])
    assert result["untimed"] == {"kernels": [], "baseline": [c.label for c in cases]}
    table = bench.format_table(result)
    eager = next(line for line in table.splitlines() if "| eager |" in line)
    assert "| 1.00x | - |" in eager
    result["phases"]["total_seconds"] = 4.0
    text = bench.summary(result)
    assert "0 cases entirely, and the torch.compile baseline of 2 more" in text
    if torch.cuda.is_available() or "cpu" in result["backends"]:
        assert "vs compile -" in text


def test_bench_command_keeps_to_its_budget(tmp_path, capsys):
    """``python -m senet_kernels bench --budget S``: past S nothing more is timed, the summary
    names what was left out, and the JSON records the budget (a tiny one here: no case)."""
    import json

    from senet_kernels.__main__ import DEFAULT_BUDGET, main

    assert DEFAULT_BUDGET == {"cuda": 50.0, "cpu": 300.0}
    out = tmp_path / "bench.json"
    assert main(["bench", "--budget", "0.001", "--skip-check", "--no-progress",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "NOT TIMED within the 0.001 s time budget" in text
    # 40 SE cases and 16 BatchNorm + SE cases (4 SE-ResNet shapes x 2 passes x 2 layouts)
    assert "56 cases entirely, and the torch.compile baseline of 0 more" in text
    result = json.loads(out.read_text())
    assert result["phases"]["budget_seconds"] == 0.001 and result["rows"] == []
