"""Warm the main job's compiler caches in worker processes, in parallel with the check.

Cold, most of the main job on a GPU is compilation, one graph or kernel after the other in
the timing process: Inductor compiling the torch.compile baseline (a graph per pass, layout,
dtype and activation) and Triton compiling our kernels for each configuration. Worker
processes run one untimed step of each compiled implementation (the Triton backend, the
torch.compile baseline and its static checks) on every case, groups of cases that share a
compiled graph spread over the workers, while the timing process runs the correctness check.
Both compilers keep what they build in on-disk caches (Inductor's FX-graph and AOTAutograd
caches, Triton's kernel cache), where the timed run then finds it. The timed run starts after
the workers are done, so no compilation competes with its timings. A worker that fails only
costs time: the timed run compiles what is missing itself.
"""

import multiprocessing
import os
import queue as queue_module
import time
import traceback
from dataclasses import dataclass, field

import torch

from . import bench

#: Implementations whose first call compiles something worth doing in a worker.
COMPILED = {"triton", "compile", "compile_static"}
# A worker's peak device memory at the largest GPU case (batch 256, 256x56x56, forward +
# backward with the residual: inputs, gradients and the compiled baseline's buffers).
_GPU_BYTES_PER_WORKER = 6 << 30


def default_workers(device, groups):
    """How many workers: none on the CPU (the timing process needs the few cores there are);
    on a GPU one per two cores, at most 8, as many as the device memory holds, and no more
    than there are groups of cases to share out."""
    if device.type != "cuda":
        return 0
    free, _total = torch.cuda.mem_get_info(device)
    return max(0, min(8, (os.cpu_count() or 2) // 2, free // _GPU_BYTES_PER_WORKER, groups))


def share_out(cases, workers):
    """Cases split into ``workers`` lists, whole compile groups each (a group's graph is then
    compiled by one worker only), balanced by cost (forward + backward counts double)."""
    groups = {}
    for case in cases:
        groups.setdefault(case.compile_group, []).append(case)
    loads = [[0, []] for _ in range(workers)]

    def cost(group):
        return sum(2 if c.pass_name == "fwd_bwd" else 1 for c in group)
    for group in sorted(groups.values(), key=cost, reverse=True):
        lightest = min(loads, key=lambda load: load[0])
        lightest[0] += cost(group)
        lightest[1].extend(group)
    return [cases for _, cases in loads if cases]


def compile_groups(cases):
    return len({case.compile_group for case in cases})


def _worker(cases, messages):
    """Run one step of each compiled implementation on each case; report every case done."""
    try:
        import torch._inductor.config as inductor_config
        # The workers together use the cores: each compiles in its own process, without a
        # pool of compile subprocesses of its own.
        inductor_config.compile_threads = 1
        bench.configure_compiler()
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        impls = [(name, fn) for name, fn in bench.implementations(device) if name in COMPILED]
        for case in cases:
            tensors, activation, with_residual, backward = bench.case_inputs(case, device)
            for _name, fn in bench.case_implementations(case, impls):  # + its static check
                bench.make_step(fn, tensors, activation, with_residual, backward)()
            del tensors
            messages.put(("case", case.label))
    except BaseException:  # noqa: BLE001 - reported to the parent, which compiles instead
        messages.put(("error", traceback.format_exc()))
    finally:
        messages.put(("exit", None))


@dataclass
class WarmUp:
    """Worker processes warming the caches (``start``); ``wait`` joins them."""
    processes: list
    messages: object
    total: int
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    errors: list = field(default_factory=list)

    @classmethod
    def start(cls, cases, workers):
        """Start ``workers`` processes over ``cases``; None when there is nothing to do."""
        shares = share_out(cases, workers) if workers > 0 else []
        if not shares:
            return None
        context = multiprocessing.get_context("spawn")  # CUDA does not survive a fork
        messages = context.Queue()
        # Not daemonic: a daemonic process may not start the subprocesses compilers use.
        processes = [context.Process(target=_worker, args=(share, messages)) for share in shares]
        for process in processes:
            process.start()
        return cls(processes, messages, sum(len(s) for s in shares))

    def wait(self, progress=True, timeout=120):
        """Wait for the workers (a progress bar per finished case); ``timeout`` seconds after
        their start, stop those still running (the timed run compiles what they did not: a
        slow warm-up costs time, never the run). Returns a summary dict for the results."""
        bar = bench.progress_bar(self.total, progress, "warming compiler caches")
        bar.update(self.done)
        running = len(self.processes)  # workers that have not said they exit
        deadline = self.started + timeout
        while running and time.perf_counter() < deadline:
            try:
                kind, text = self.messages.get(
                    timeout=max(0.1, min(5.0, deadline - time.perf_counter())))
            except queue_module.Empty:
                if not any(p.is_alive() for p in self.processes):
                    break
                continue
            if kind == "case":
                self.done += 1
                bar.update(1)
                bar.set_postfix_str(text)
            elif kind == "error":
                self.errors.append(text)
            else:
                running -= 1
        bar.close()
        timed_out = running > 0 and time.perf_counter() >= deadline
        if running and not timed_out:
            self.errors.append(f"{running} worker(s) ended without a word (crashed?)")
        for process in self.processes:
            # a worker that said it is done only has to exit; one still working is stopped
            process.join(timeout=1 if timed_out else 60)
            if process.is_alive():
                process.terminate()
                process.join()
        return {"workers": len(self.processes), "cases": self.total, "cases_done": self.done,
                "seconds": time.perf_counter() - self.started, "timed_out": timed_out,
                "errors": [e.strip().splitlines()[-1] for e in self.errors]}
