"""The main job's helper processes on a GPU: compile workers (``WarmUp``) and the check
(``CheckProcess``), beside the process that times.

Cold, most of the main job on a GPU is compilation, one graph or kernel after the other in
the timing process: Inductor compiling the torch.compile baseline (a graph per pass, layout,
dtype and activation) and Triton compiling our kernels for each configuration. Worker
processes run one untimed step of each compiled implementation (the Triton backend, the
torch.compile baseline and its static checks) on every case, groups of cases that share a
compiled graph spread over the workers; the correctness check runs in a process of its own.
Both compilers keep what they build in on-disk caches (Inductor's FX-graph and AOTAutograd
caches, Triton's kernel cache), where the timing process then finds it.

Each worker reports each part of a case (bench_schedule: our kernels, the baseline) as soon
as it has compiled it, and the timing process takes it then, so timing overlaps the
compilation of the other groups instead of waiting for all of it. The workers then use CPU
cores the timing process does not need, and the GPU for one step per case: a timed wall-time
row may share the GPU with such a step, while the GPU-time column (CUDA graph replays,
milliseconds) rarely does. A worker that fails only costs time: the timed run compiles what
is missing itself.
"""

import multiprocessing
import os
import queue as queue_module
import time
import traceback
from dataclasses import dataclass, field

import torch

from . import bench
from .bench_schedule import BASELINE, PARTS, part_of

#: Implementations whose first call compiles something worth doing in a worker (bn_fused:
#: the fused BatchNorm + SE op's Triton kernels, where they exist).
COMPILED = {"triton", "compile", "compile_static", "bn_fused"}
# A worker's peak device memory at the largest GPU case (batch 256, 256x56x56, forward +
# backward with the residual: inputs, gradients and the compiled baseline's buffers).
_GPU_BYTES_PER_WORKER = 6 << 30


def default_workers(device, groups):
    """How many workers: none on the CPU (the timing process needs the few cores there are);
    on a GPU one per compile group (each then compiles one graph: the warm-up takes as long
    as the slowest graph), leaving two cores to the timing and the check process, and as many
    as the device memory holds. (At most 8, one per two cores, the H200's 16 cores gave 8
    workers for 10 groups: 59-70 s of warm-up, two graphs for some.)"""
    if device.type != "cuda":
        return 0
    free, _total = torch.cuda.mem_get_info(device)
    return max(0, min(groups, (os.cpu_count() or 2) - 2, free // _GPU_BYTES_PER_WORKER))


def share_out(cases, workers):
    """Cases split into ``workers`` lists, whole compile groups each (a group's graph is then
    compiled by one worker only), balanced by cost (forward + backward counts double)."""
    groups = {}
    for case in cases:
        groups.setdefault(case.compile_group, []).append(case)
    loads = [[0, []] for _ in range(workers)]

    def cost(group):
        return sum(2 if c.pass_name in ("fwd_bwd", "bn_fwd_bwd") else 1 for c in group)
    for group in sorted(groups.values(), key=cost, reverse=True):
        lightest = min(loads, key=lambda load: load[0])
        lightest[0] += cost(group)
        lightest[1].extend(group)
    return [cases for _, cases in loads if cases]


def compile_groups(cases):
    return len({case.compile_group for case in cases})


def _worker(indexed_cases, messages):
    """Compile both parts of each case (bench_schedule): first our Triton kernels of every
    case, one untimed step each (seconds in all), then the baseline's graphs (Inductor, tens
    of seconds per compile group); report each part done, with the case's index in the run's
    list of cases."""
    try:
        import torch._inductor.config as inductor_config
        # The workers together use the cores: each compiles in its own process, without a
        # pool of compile subprocesses of its own.
        inductor_config.compile_threads = 1
        bench.configure_compiler()
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        impls = {kind: [(name, fn) for name, fn in fns if name in COMPILED]
                 for kind, fns in bench.implementations(device).items()}
        for part in PARTS:
            for index, case in indexed_cases:
                tensors, activation, with_residual, backward = bench.case_inputs(case, device)
                for name, fn in bench.case_implementations(case, impls):  # + its static check
                    if part_of(name) == part:
                        bench.make_step(fn, tensors, activation, with_residual, backward)()
                del tensors
                messages.put((part, index))
    except BaseException:  # noqa: BLE001 - reported to the parent, which compiles instead
        messages.put(("error", traceback.format_exc()))
    finally:
        messages.put(("exit", None))


@dataclass
class WarmUp:
    """Worker processes warming the caches (``start``); ``poll`` returns the parts of cases
    they have compiled since the last call (the ``source`` of bench_schedule.Schedule);
    ``finish`` stops them and sums up. Workers still compiling ``time_limit`` seconds after
    the start are stopped: the timing process compiles what they did not (a slow warm-up
    costs time, never the run)."""
    processes: list
    messages: object
    total: int
    time_limit: float = 120.0
    started: float = field(default_factory=time.perf_counter)
    done: int = 0  # cases with both parts compiled
    errors: list = field(default_factory=list)
    running: int = 0  # workers that have not said they exit
    timed_out: bool = False
    stopped: bool = False
    ended: float = None  # when poll() saw the last worker done, or the workers were stopped

    @classmethod
    def start(cls, cases, workers, time_limit=120.0):
        """Start ``workers`` processes over ``cases``; None when there is nothing to do."""
        index_of = {id(case): i for i, case in enumerate(cases)}
        shares = share_out(cases, workers) if workers > 0 else []
        if not shares:
            return None
        context = multiprocessing.get_context("spawn")  # CUDA does not survive a fork
        messages = context.Queue()
        # Not daemonic: a daemonic process may not start the subprocesses compilers use.
        processes = [context.Process(target=_worker, args=(
            [(index_of[id(c)], c) for c in share], messages)) for share in shares]
        for process in processes:
            process.start()
        return cls(processes, messages, sum(len(s) for s in shares), time_limit=time_limit,
                   running=len(processes))

    @property
    def active(self):
        """Whether a worker may still report a compiled part."""
        return not self.stopped and self.running > 0

    def poll(self, timeout=0.0):
        """[(part, case index)] reported since the last call, waiting up to ``timeout``
        seconds for the first; stops the workers past the time limit."""
        reported = []
        wait_until = time.perf_counter() + timeout
        limit = self.started + self.time_limit
        while self.active:
            now = time.perf_counter()
            if now >= limit:
                self._stop()
                break
            try:
                if reported:  # take what is queued already, wait no more
                    kind, payload = self.messages.get_nowait()
                else:
                    kind, payload = self.messages.get(
                        timeout=max(0.0, min(wait_until, limit, now + 5.0) - now))
            except queue_module.Empty:
                if not any(p.is_alive() for p in self.processes):
                    self._stop()  # crashed without a word: _stop says so
                    break
                if reported or time.perf_counter() >= wait_until:
                    break
                continue
            if kind in PARTS:
                self.done += kind == BASELINE
                reported.append((kind, payload))
            elif kind == "error":
                self.errors.append(payload)
            else:
                self.running -= 1
        if self.running == 0:
            self._stop()
        return reported

    def _stop(self):
        """Join the workers; stop those still compiling (past the time limit, or when the
        timing is over)."""
        if self.stopped:
            return
        self.stopped = True
        self.ended = time.perf_counter()
        still_working = self.running > 0 and any(p.is_alive() for p in self.processes)
        if still_working:
            self.timed_out = True
        elif self.running:
            self.errors.append(f"{self.running} worker(s) ended without a word (crashed?)")
        if still_working:  # all at once: the run waits for none of them
            for process in self.processes:
                if process.is_alive():
                    process.terminate()
        for process in self.processes:
            # a worker that said it is done only has to exit
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
                process.join()

    def finish(self):
        """Stop any worker still running; a summary dict for the results."""
        self._stop()
        return {"workers": len(self.processes), "cases": self.total, "cases_done": self.done,
                "seconds": self.ended - self.started, "timed_out": self.timed_out,
                "errors": [e.strip().splitlines()[-1] for e in self.errors]}


def check_shards(workers):
    """How many processes share the main job's check on a GPU: the cores the warm-up workers
    and the timing process leave, at most 4 (the check's cases compile about a hundred Triton
    kernel configurations, one after the other in each process)."""
    return max(1, min(4, (os.cpu_count() or 2) - workers - 1))


def _check_worker(messages, shard, shards):
    """One shard of the main job's correctness check (senet_kernels/check.py): puts
    (shard, {backend: results}, seconds), or (shard, traceback text, seconds) if it raised."""
    started = time.perf_counter()
    try:
        from . import check
        messages.put((shard, check.run(shard, shards), time.perf_counter() - started))
    except BaseException:  # noqa: BLE001 - reported to the parent
        messages.put((shard, traceback.format_exc(), time.perf_counter() - started))


@dataclass
class CheckProcess:
    """The correctness check in processes of its own (``shards`` of them, each a share of the
    cases), beside the warm-up workers and the timing, on a GPU: most of its time is Triton
    compiling the kernels of its 36 small cases (CPU work), while its kernels keep the GPU
    busy for a fraction of a millisecond per case. ``result`` waits for them."""
    processes: list
    messages: object
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, shards=1):
        context = multiprocessing.get_context("spawn")
        messages = context.Queue()
        processes = [context.Process(target=_check_worker, args=(messages, shard, shards))
                     for shard in range(shards)]
        for process in processes:
            process.start()
        return cls(processes, messages)

    def result(self):
        """(failures, printout, seconds the check took); failures is None if a shard crashed
        or raised (the printout then says why)."""
        from . import check
        merged, errors, seconds = {}, [], 0.0
        waiting = set(range(len(self.processes)))
        while waiting:
            try:
                shard, results, took = self.messages.get(timeout=1.0)
            except queue_module.Empty:
                if any(self.processes[s].is_alive() for s in waiting):
                    continue
                try:  # a result put just before the process ended
                    shard, results, took = self.messages.get(timeout=1.0)
                except queue_module.Empty:
                    codes = ", ".join(str(self.processes[s].exitcode) for s in sorted(waiting))
                    errors.append(f"the check process ended without a result (exit code "
                                  f"{codes})")
                    seconds = time.perf_counter() - self.started
                    break
            waiting.discard(shard)
            seconds = max(seconds, took)
            if isinstance(results, str):
                errors.append(results)
                continue
            for backend, rows in results.items():
                merged.setdefault(backend, []).extend(rows)
        for process in self.processes:
            process.join()
        failures, lines = check.report(merged)
        text = "\n".join(check.header_lines() + lines + errors)
        return (None if errors else failures), text, seconds
