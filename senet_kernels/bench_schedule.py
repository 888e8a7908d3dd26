"""The order in which the main job times its cases, within its time budget.

Each case is timed in two parts:

    kernels   our kernel backends and eager PyTorch: cheap to get ready (our Triton kernels
              compile in a second or two, the rest needs no compiling)
    baseline  torch.compile (and, on a few rows, its static variant): each of the run's
              compile groups costs Inductor tens of seconds the first time

On a GPU, worker processes (bench_warmup.py) compile both parts of every case and report
each part as they finish it: first the Triton kernels of all their cases, then the baseline's
graphs. The timing process takes what is ready, a case's baseline first (it completes a row
group), then any case's kernels, and waits only when nothing is. So the eager and fused
columns of every case come early, and a baseline still compiling when the budget runs out
leaves only its own column empty. The summary says which, and ``--budget 0`` times them all.
Without workers (the CPU) every part is ready at once, and the cases go in order, each case's
kernels then its baseline.
"""

import time

KERNELS, BASELINE = "kernels", "baseline"
PARTS = (KERNELS, BASELINE)
#: The implementations of the baseline part; every other one is in the kernels part.
BASELINE_IMPLEMENTATIONS = ("compile", "compile_static")


def part_of(implementation):
    return BASELINE if implementation in BASELINE_IMPLEMENTATIONS else KERNELS


class Schedule:
    """Iterating yields ``(position, part)`` for positions 0..total-1, each pair once, until
    all are done or the clock passes ``deadline`` (None: no limit).

    ``source`` is what the workers report: ``poll(timeout)`` returns the ``(part, position)``
    pairs compiled since the last call, waiting up to ``timeout`` seconds for one; ``active``
    is False once no worker will report more (all done, failed or stopped), and from then on
    every part counts as ready (the timing process compiles what is missing). None: no
    workers, everything ready.
    """

    def __init__(self, total, source=None, deadline=None, clock=time.perf_counter):
        self.total, self.source, self.deadline, self.clock = total, source, deadline, clock
        self.ready = {part: set() for part in PARTS}
        self.done = {part: set() for part in PARTS}
        #: parts taken as soon as a worker reported them compiled, while others still worked
        self.from_workers = 0
        self.out_of_time = False

    def _all_ready(self):
        return self.source is None or not self.source.active

    def _take_reports(self, timeout):
        if not self._all_ready():
            for part, position in self.source.poll(timeout):
                self.ready[part].add(position)

    def _is_ready(self, part, position):
        return self._all_ready() or position in self.ready[part]

    def _next(self):
        """A ready baseline whose case's kernels are done (it completes that case), else a
        ready kernels part; in position order. None when nothing is ready."""
        for position in range(self.total):
            if (position in self.done[KERNELS] and position not in self.done[BASELINE]
                    and self._is_ready(BASELINE, position)):
                return position, BASELINE
        for position in range(self.total):
            if position not in self.done[KERNELS] and self._is_ready(KERNELS, position):
                return position, KERNELS
        return None

    def remaining(self, part):
        """Positions whose ``part`` has not been timed."""
        return [p for p in range(self.total) if p not in self.done[part]]

    def __iter__(self):
        while any(self.remaining(part) for part in PARTS):
            if self.deadline is not None and self.clock() >= self.deadline:
                self.out_of_time = True
                return
            self._take_reports(0)
            step = self._next()
            if step is None:  # nothing compiled yet: wait for a worker's report
                wait = 1.0 if self.deadline is None else min(1.0, self.deadline - self.clock())
                self._take_reports(max(0.0, wait))
                continue
            if not self._all_ready():
                self.from_workers += 1
            self.done[step[1]].add(step[0])
            yield step
