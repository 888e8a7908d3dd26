"""Calls from several threads at once give each thread its own correct result.

Under the Triton interpreter the kernels run in the calling thread on CPU tensors, sharing the
plans' scratch buffers: the Triton backend serializes interpreted calls. The C++ backend keeps
no state between calls.
"""

import threading

import pytest
import torch

from senet_kernels import squeeze_excite

from cases import assert_close, backend_device_params, make_inputs, reference64

THREADS = 4
CALLS_PER_THREAD = 3


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_concurrent_calls_from_threads(backend, device):
    # One shape for all threads, so that they share one plan (and its scratch buffers);
    # different inputs, so that a result computed from another thread's data shows.
    cases = [make_inputs(2, 24, 6, 6, 4, residual=True, device=device, seed=seed)
             for seed in range(THREADS * CALLS_PER_THREAD)]
    expected = [reference64(args, post_relu=True)[0] for args in cases]
    results, errors = [None] * len(cases), []
    start = threading.Barrier(THREADS)

    def worker(first):
        try:
            start.wait()
            for i in range(first, len(cases), THREADS):
                args = cases[i]
                out = squeeze_excite(*args.values(), post_relu=True, backend=backend)
                results[i] = out
        except Exception as e:  # noqa: BLE001 - reported below, with the thread's call
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, f"{len(errors)} calls raised: {errors[0]!r}"
    for i, (out, exp) in enumerate(zip(results, expected)):
        assert out is not None, f"call {i} returned nothing"
        assert_close(out, exp, torch.float32, f"call {i}")
