"""The Triton backend of the SE op: picks a path per shape and launches its kernels.

Two paths; ``configs.excitation_path`` picks one per shape from the traffic model (a third,
squeeze_fc1, runs where forced or where the GPU's measured tuning takes it, see below and
tuning.py):

- per-sample (forward.py, backward.py): the last program of each sample runs that sample's
  excitation. Forward 2 launches (squeeze + excite, scale), backward 3 (gs reduction +
  excitation backward, grad_x pass, weight gradients). Right where activations outweigh the
  weights, which it reads once per sample.
- batched (batched.py): the FC layers run as small GEMMs over tiles of samples. Forward 4
  launches (squeeze, FC1, FC2 + gate, scale), backward 5. The [N, C] -> [N, Cr] GEMM splits
  its channels over several programs where its tiles alone would leave SMs idle
  (``configs.gemm_k_splits``).
- single FC (w2 None, Effective SE): the per-sample path without its FC2 step, or the batched
  path with the c_to_r GEMM alone (its epilogue applies the gate; backward: through W1 to gp),
  forward 3 launches, backward 4; squeeze_fc1 is never taken (configs.excitation_path).
- squeeze_fc1 (squeeze_fc1.py): the batched path with FC1 folded into the squeeze (and, in
  the backward, the gradient through FC2 into the backward's reduction), each program
  reading a channel block of a tile of samples. Forward 3 launches (squeeze + FC1, FC2 +
  gate, scale), backward 4 (reduction + through FC2, through FC1, grad_x pass, weight
  gradients). A candidate for the weight-heavy shapes: the default tuning never picks it; a
  GPU's tuning may, on maps up to Tuning.squeeze_fc1_max_pixels, where a GPU run timed it
  faster than the batched path (benchmarks/tune.py).

Nothing else runs on the device. Outputs are ``torch.empty``. The scratch buffers (split
partial sums, the backward's [N, C] vectors, the arrival counters (per sample on the per-sample
path, per GEMM tile where the batched path splits its c_to_r GEMM over channels), and in
inference the saved-for-backward vectors nobody will read) are reused call after call only on
the eager fast path (``reuse_scratch=True``): there they belong to the plan, one set per host
thread and CUDA stream. Stream order keeps one thread's calls on one stream apart (two threads
on one stream interleave their launches, hence per thread). The arrival counters start zeroed
and every kernel that uses them leaves them zeroed.

Calls through the custom ops (torch.compile, export, dispatch modes) and calls made while a
CUDA graph is being captured allocate their scratch per call instead, as Inductor does for its
own kernels, and free it when the call returns. Memory kept past the call would be wrong
there: torch.compile(mode="reduce-overhead") runs a compiled graph's first calls (cudagraph
trees' warm-up) with every allocation of the thread routed to the graph's private memory pool,
and fails on pool memory that outlives the call untracked (the H200 run of
test_torch_compile_reduce_overhead did); and two graphs captured on one stream may be replayed
concurrently, so they must not share buffers.

Host time: everything that depends only on the arguments' metadata (shapes, strides, dtypes,
flags, 16-byte alignment, device) is worked out once per signature into a plan: the path,
grids, scalar arguments, constexprs and the launch sites (``launcher.KernelLaunch``) with their
compiled kernels. A call looks its plan up, allocates its outputs and launches.
"""

import functools
import threading
from dataclasses import dataclass, field

import torch
import triton.language as tl

from ..dtypes import compute_dtype
from ..interpreter import interpreting
from ..layout import is_channels_last, to_layout
from ..ops import allocate_backward_outputs, allocate_forward_outputs
from ..spec import ACTIVATION_CODE, GATE_CODE
from . import configs, tuning
from .backward import se_scale_bwd, se_squeeze_excite_bwd, se_weight_grads
from .batched import se_excite_gemm_c_to_r, se_excite_gemm_r_to_c
from .forward import se_scale_fwd, se_squeeze_excite_fwd
from .launcher import KernelLaunch, is_recording_only
from .squeeze_fc1 import se_squeeze_fc1_fwd, se_squeeze_fc2_bwd

#: Grid axis 1 is the sample index (or sample tile); CUDA bounds it.
MAX_BATCH = 65535
# What the splits are sized for when recording launches without a GPU (an H100 has 132 SMs).
_RECORDING_SMS = 132
#: Plans kept per direction before the cache is cleared (each distinct signature adds one).
MAX_PLANS = 4096
_forward_plans = {}
_backward_plans = {}


def direct_launch_report():
    """{"sites", "compiled", "hooks_installed"}: how many launch sites the plans made so far
    have, how many of them launch their compiled kernel directly, and whether a launch hook
    (which sends every launch through ``kernel[grid]``) is set. A diagnostic of the host path
    (benchmarks/model_host_profile.py)."""
    from .launcher import hooks_installed
    sites = [site for plans in (_forward_plans, _backward_plans) for plan in plans.values()
             for site in plan.sites]
    return {"sites": len(sites), "compiled": sum(site.compiled for site in sites),
            "hooks_installed": hooks_installed()}


def check_device(x):
    if x.is_cuda or is_recording_only():  # the hot path returns at the first test
        return
    if x.device.type == "cpu" and interpreting():
        return
    raise RuntimeError(
        f"the triton backend runs on CUDA tensors (or on CPU tensors under TRITON_INTERPRET=1); "
        f"x is on {x.device}")


def _num_sms(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    # The interpreter runs programs one after another: fewer, larger programs are faster.
    return _RECORDING_SMS if is_recording_only() else 1


def _stream(device):
    return torch._C._cuda_getCurrentRawStream(device.index) if device.type == "cuda" else 0


def _scratch(plan, device, make, reuse):
    """The scratch buffers of a call: the plan's own for the current stream and host thread
    (``make()`` once per (thread, stream)) when ``reuse``, else a fresh ``make()``; fresh too
    while a CUDA graph is captured (see the module docstring).

    Per thread as well as per stream: two host threads issuing calls onto one stream interleave
    their launches (A's squeeze, B's squeeze, A's FC1 reading B's partial sums), so stream order
    alone does not keep their calls apart. ``plan.scratch`` is a ``threading.local``: a thread's
    buffers go when the thread does."""
    if not reuse or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return make()
    mine = plan.scratch.__dict__  # this thread's own dict
    stream = _stream(device)
    buffers = mine.get(stream)
    if buffers is None:
        buffers = mine[stream] = make()
    return buffers


def _launch_with_counters(plan, site, device, *tensors):
    try:
        site(*tensors)
    except BaseException:
        # a failed launch may leave the counters dirty
        plan.scratch.__dict__.pop(_stream(device), None)
        raise


def _acc_constexpr(acc_dtype):
    return tl.float64 if acc_dtype == torch.float64 else tl.float32


def _check_batch(n):
    if n > MAX_BATCH:
        raise ValueError(f"the triton backend supports N <= {MAX_BATCH}, got N = {n}")


def _offset16(t):
    """The tensor's address modulo 16 (0 for None): Triton specializes on 16-byte alignment."""
    return 0 if t is None else t.data_ptr() % 16


def _on_current_device(device):
    return device.type != "cuda" or device.index == torch.cuda.current_device()


def _remember(plans, key, plan):
    if len(plans) >= MAX_PLANS:
        plans.clear()
    plans[key] = plan
    return plan


def _site(kernel, grid, tensor_names, scalars, constexprs, device, num_warps=configs.NUM_WARPS):
    return KernelLaunch(kernel, grid, tensor_names.split(), scalars, constexprs, num_warps,
                        device)


@dataclass(frozen=True)
class _Shape:
    """What the plans are computed from (besides flags)."""
    n: int
    c: int
    cr: int
    hw: int
    channels_last: bool
    acc_dtype: object    # torch.float32 / torch.float64 (reference.compute_dtype)
    path: str            # configs.excitation_path
    num_sms: int
    dot_precision: str   # of the excitation GEMMs (configs.dot_precision)
    x_size: int          # bytes per element of x
    tuning: configs.Tuning  # the device's (tuning.for_device)
    has_fc2: int = 1     # 0: the single-FC form (w2 None), CR == C

    @staticmethod
    def of(x, w1, single_fc=False):
        """``single_fc``: the single-FC form (w2 None, w1 [C, C])."""
        n, c, h, w = x.shape
        cr, hw = w1.shape[0], h * w
        device_tuning = tuning.for_device(x.device)
        return _Shape(n, c, cr, hw, is_channels_last(x),
                      compute_dtype(x.dtype),
                      configs.excitation_path(n, c, cr, hw, x.element_size(),
                                              w1.element_size(), device_tuning,
                                              single_fc=single_fc),
                      _num_sms(x.device),
                      configs.dot_precision(w1.dtype in (torch.float16, torch.bfloat16)),
                      x.element_size(), device_tuning, int(not single_fc))

    @property
    def batched(self):
        """Whether the excitation runs as GEMMs over sample tiles: the batched path, and the
        squeeze_fc1 path (its products per channel block)."""
        return self.path != "per_sample"

    @property
    def acc(self):
        """The compute dtype as the kernels' ACC constexpr."""
        return _acc_constexpr(self.acc_dtype)

    def reduce_grid(self):
        """(tile, hw_per_split, splits, grid) of kernels A / A'."""
        tile = configs.reduce_tile(self.channels_last, self.hw, self.tuning)
        per_split, splits = configs.hw_split(self.n, self.c, self.hw, tile, self.num_sms)
        return tile, per_split, splits, (configs.cdiv(self.c, tile.block_c) * splits, self.n)

    def streaming_grid(self):
        """Grid of the per-element passes se_scale_fwd / se_scale_bwd."""
        return configs.cdiv(self.c * self.hw, configs.SCALE_BLOCK), self.n

    def k_split(self):
        """(channels per split, splits) of the c_to_r GEMM (configs.gemm_k_splits)."""
        return configs.gemm_k_splits(self.n, self.c, self.cr, self.num_sms)

    def gemm_tiles(self):
        """Number of [BATCH_BLOCK_N, BATCH_BLOCK_R] tiles of the c_to_r GEMM (one arrival
        counter each when it splits K)."""
        return configs.cdiv(self.n, configs.BATCH_BLOCK_N) * configs.cdiv(self.cr, configs.BATCH_BLOCK_R)

    def c_to_r_site(self, num_splits, w_strides, has_bias, *, act, gate, backward, device):
        """The [N, C] -> [N, Cr] GEMM: forward FC1 (V = W1^T), backward through FC2 (V = W2);
        single FC: forward FC1 + gate, backward through FC1 (V = W1, same strides as W2)."""
        per_split, k_splits = self.k_split()
        assert k_splits <= configs.K_SPLIT_LIMIT  # the epilogue reads at most that many
        grid = (configs.cdiv(self.n, configs.BATCH_BLOCK_N),
                configs.cdiv(self.cr, configs.BATCH_BLOCK_R), k_splits)
        return _site(se_excite_gemm_c_to_r, grid,
                     "partial_ptr scale_ptr w_ptr b_ptr hidden_ptr vec_ptr ksum_ptr counter_ptr "
                     "out_ptr",
                     dict(N=self.n, C=self.c, CR=self.cr, HW=self.hw, NUM_SPLITS=num_splits,
                          K_PER_SPLIT=per_split, K_SPLITS=k_splits,
                          w_stride_c=w_strides[0], w_stride_r=w_strides[1],
                          has_bias=has_bias, has_fc2=self.has_fc2, act=act, gate=gate),
                     dict(BACKWARD=backward, BLOCK_N=configs.BATCH_BLOCK_N,
                          BLOCK_R=configs.BATCH_BLOCK_R, BLOCK_K=configs.BATCH_BLOCK_K,
                          SPLIT_LIMIT=configs.K_SPLIT_LIMIT, PRECISION=self.dot_precision,
                          ACC=self.acc), device)

    def weight_grads_site(self, act, device):
        """The weight and bias gradients (``se_weight_grads``): gW2's tiles (not in the
        single-FC form), then gW1's."""
        m, k = configs.WGRAD_BLOCK_M, configs.WGRAD_BLOCK_K
        tiles = configs.cdiv(self.c, m) * configs.cdiv(self.cr, k) * self.has_fc2 + (
            configs.cdiv(self.cr, m) * configs.cdiv(self.c, k))
        return _site(se_weight_grads, (tiles,),
                     "gz_ptr hidden_ptr gh_ptr pooled_ptr gw2_ptr gb2_ptr gw1_ptr gb1_ptr",
                     dict(N=self.n, C=self.c, CR=self.cr, has_fc2=self.has_fc2, act=act),
                     dict(BLOCK_M=m, BLOCK_K=k, BLOCK_N=configs.WGRAD_BLOCK_N), device)

    def _squeeze_fc_constexprs(self):
        tile = configs.squeeze_fc1_tile(self.hw, self.x_size, self.tuning)
        return tile, dict(CHANNELS_LAST=self.channels_last, BLOCK_N=tile.block_n,
                          BLOCK_C=tile.block_c, BLOCK_HW=tile.block_hw, BLOCK_R=tile.block_r,
                          STAGES=tile.num_stages, SUM_CHUNK=tile.sum_chunk,
                          PRECISION=self.dot_precision, ACC=self.acc)

    def squeeze_fc1_site(self, has_b1, device):
        """The squeeze with FC1 folded in (squeeze_fc1.py): pooled, hidden."""
        tile, constexprs = self._squeeze_fc_constexprs()
        return _site(se_squeeze_fc1_fwd, self.squeeze_fc1_grid(),
                     "x_ptr w1_ptr b1_ptr pooled_ptr ksum_ptr counter_ptr hidden_ptr",
                     dict(N=self.n, C=self.c, CR=self.cr, HW=self.hw, has_b1=has_b1),
                     constexprs, device, tile.num_warps)

    def squeeze_fc2_site(self, post_relu, write_grad_res, *, act, gate, device):
        """The backward's reduction with the gradient through FC2 folded in (squeeze_fc1.py):
        gz, gh (and grad_residual with write_grad_res)."""
        tile, constexprs = self._squeeze_fc_constexprs()
        return _site(se_squeeze_fc2_bwd, self.squeeze_fc1_grid(),
                     "grad_ptr x_ptr out_ptr grad_res_ptr w2_ptr hidden_ptr scale_ptr gz_ptr "
                     "ksum_ptr counter_ptr gh_ptr",
                     dict(N=self.n, C=self.c, CR=self.cr, HW=self.hw, act=act, gate=gate),
                     dict(POST_RELU=post_relu, WRITE_GRAD_RESIDUAL=write_grad_res, **constexprs),
                     device, tile.num_warps)

    def squeeze_fc1_grid(self):
        """(channel blocks, sample tiles) of the squeeze_fc1 kernel."""
        tile = configs.squeeze_fc1_tile(self.hw, self.x_size, self.tuning)
        return configs.cdiv(self.c, tile.block_c), configs.cdiv(self.n, tile.block_n)

    def r_to_c_site(self, w_strides, has_bias, *, act, gate, backward, device):
        """The [N, Cr] -> [N, C] GEMM: forward FC2 + gate (V = W2^T), backward through FC1
        (V = W1)."""
        grid = (configs.cdiv(self.n, configs.BATCH_BLOCK_N),
                configs.cdiv(self.c, configs.EXPAND_BLOCK_C))
        return _site(se_excite_gemm_r_to_c, grid, "u_ptr w_ptr b_ptr out_ptr",
                     dict(N=self.n, C=self.c, CR=self.cr, HW=self.hw, v_stride_r=w_strides[0],
                          v_stride_c=w_strides[1], has_bias=has_bias, act=act, gate=gate),
                     dict(BACKWARD=backward, BLOCK_N=configs.BATCH_BLOCK_N,
                          BLOCK_C=configs.EXPAND_BLOCK_C, BLOCK_R=configs.EXPAND_BLOCK_R,
                          PRECISION=self.dot_precision, ACC=self.acc), device)


@dataclass
class _Plan:
    """The launches of one signature: path and sizes (shape), H*W splits of the reduction,
    launch sites in order, whether the arguments are already dense as the kernels need, and
    the scratch buffers per host thread and stream (see _scratch)."""
    shape: _Shape
    splits: int
    sites: tuple
    dense: bool
    scratch: threading.local = field(default_factory=threading.local)


def _forward_key(x, w1, b1, w2, b2, residual, activation, gate, post_relu):
    return (x.shape, x.stride(), x.dtype, x.device, w1.shape, w1.stride(), w1.dtype,
            None if w2 is None else w2.stride(),
            None if b1 is None else b1.stride(), None if b2 is None else b2.stride(),
            None if residual is None else residual.stride(), activation, gate, post_relu,
            x.data_ptr() % 16, w1.data_ptr() % 16, _offset16(w2), _offset16(b1), _offset16(b2),
            _offset16(residual), configs.forced_path, configs.forced_k_splits,
            configs.forced_reduce_tile, configs.forced_squeeze_fc1_tile, configs.forced_tuning)


def _forward_plan(x, w1, b1, w2, b2, residual, activation, gate, post_relu):
    s = _Shape.of(x, w1, single_fc=w2 is None)
    device = x.device
    flags = dict(act=ACTIVATION_CODE[activation], gate=GATE_CODE[gate])
    has_b1, has_b2 = int(b1 is not None), int(b2 is not None)
    tile, per_split, splits, grid = s.reduce_grid()

    def squeeze():  # kernel A (not on the squeeze_fc1 path)
        return _site(
            se_squeeze_excite_fwd, grid,
            "x_ptr w1_ptr b1_ptr w2_ptr b2_ptr partial_ptr counter_ptr pooled_ptr hidden_ptr "
            "scale_ptr",
            dict(C=s.c, HW=s.hw, CR=s.cr, HW_PER_SPLIT=per_split, NUM_SPLITS=splits,
                 has_b1=has_b1, has_b2=has_b2, has_fc2=s.has_fc2, **flags),
            dict(EXCITE=not s.batched, CHANNELS_LAST=s.channels_last, BLOCK_C=tile.block_c,
                 BLOCK_HW=tile.block_hw, REDUCE_STAGES=tile.num_stages,
                 FC_BLOCK_C=configs.FC_BLOCK_C, FC_BLOCK_R=configs.FC_BLOCK_R, ACC=s.acc),
            device, tile.num_warps)
    scale = _site(se_scale_fwd, s.streaming_grid(), "x_ptr res_ptr scale_ptr out_ptr",
                  dict(C=s.c, HW=s.hw, SAMPLE_NUMEL=s.c * s.hw),
                  dict(HAS_RESIDUAL=residual is not None, POST_RELU=post_relu,
                       CHANNELS_LAST=s.channels_last, BLOCK=configs.SCALE_BLOCK), device)
    if s.path == "squeeze_fc1":
        fc2 = s.r_to_c_site((1, s.cr), has_b2, backward=False, device=device, **flags)
        sites = (s.squeeze_fc1_site(has_b1, device), fc2, scale)
    elif s.batched:
        fc1 = s.c_to_r_site(splits, (1, s.c), has_b1, backward=False, device=device, **flags)
        if s.has_fc2:
            fc2 = s.r_to_c_site((1, s.cr), has_b2, backward=False, device=device, **flags)
            sites = (squeeze(), fc1, fc2, scale)
        else:  # single FC: fc1's epilogue writes the scale
            sites = (squeeze(), fc1, scale)
    else:
        sites = (squeeze(), scale)
    dense = (_is_dense(x, s.channels_last) and (residual is None or _is_dense(residual, s.channels_last))
             and all(t is None or t.is_contiguous() for t in (w1, b1, w2, b2)))
    return _Plan(s, splits, sites, dense)


def _is_dense(t, channels_last):
    return t.is_contiguous(memory_format=torch.channels_last if channels_last
                           else torch.contiguous_format)


def _scratch_buffers(shape, splits, device, squeeze_fc1=False):
    """A plan's scratch: partial sums [N, S, C]; int32 arrival counters, zeroed (per sample
    on the per-sample path, per c_to_r tile on the batched path when it splits K, else one
    unused element); three vectors [N, C], [N, Cr], [N, C]: in the forward pooled / hidden /
    scale of inference calls, in the backward gz / gh / gp; the c_to_r GEMM's K-split
    products [K_SPLITS, N, Cr] (the [N, Cr] vector when it does not split).

    ``squeeze_fc1`` (that path): no partial sums, a counter per sample tile, and the channel
    blocks' products [channel blocks, N, Cr] in place of the K-split products."""
    acc, n, c = shape.acc_dtype, shape.n, shape.c
    vectors = [torch.empty((n, c), dtype=acc, device=device),
               torch.empty((n, shape.cr), dtype=acc, device=device),
               torch.empty((n, c), dtype=acc, device=device)]
    if squeeze_fc1:
        c_blocks, tiles = shape.squeeze_fc1_grid()
        return (torch.empty(1, dtype=acc, device=device),
                torch.zeros(tiles, dtype=torch.int32, device=device), *vectors,
                torch.empty((c_blocks, n, shape.cr), dtype=acc, device=device))
    k_splits = shape.k_split()[1] if shape.batched else 1
    if not shape.batched:
        counters = torch.zeros(n, dtype=torch.int32, device=device)
    elif k_splits > 1:
        counters = torch.zeros(shape.gemm_tiles(), dtype=torch.int32, device=device)
    else:
        counters = torch.empty(1, dtype=torch.int32, device=device)
    k_products = (torch.empty((k_splits, n, shape.cr), dtype=acc, device=device) if k_splits > 1
                  else vectors[1])
    return (torch.empty((n, splits, c), dtype=acc, device=device), counters, *vectors,
            k_products)


_INTERPRETER_LOCK = threading.Lock()


def _serialized_when_interpreting(op):
    """Under the Triton interpreter, one call at a time, whatever the thread.

    On a GPU, stream order keeps the calls on one stream apart, and each stream has its own
    scratch buffers. The interpreter runs the kernels in the calling thread, on CPU tensors,
    all calls on the same "stream": two threads would share the plans' scratch buffers and
    arrival counters (and the interpreter's own state), and race.
    """
    if not interpreting():
        return op

    @functools.wraps(op)
    def serialized(*args, **kwargs):
        with _INTERPRETER_LOCK:
            return op(*args, **kwargs)
    return serialized


@_serialized_when_interpreting
def se_forward(x, w1, b1, w2, b2, residual, activation, gate, post_relu, reuse_scratch=False):
    """The forward op: (out, pooled, hidden, scale), see ops.py. ``reuse_scratch``: use the
    plan's scratch buffers (the eager fast path), not fresh ones (see the module docstring)."""
    return _forward(x, w1, b1, w2, b2, residual, activation, gate, post_relu, True,
                    reuse_scratch)


@_serialized_when_interpreting
def se_inference(x, w1, b1, w2, b2, residual, activation, gate, post_relu):
    """``out`` alone, for eager calls no backward will follow: pooled, hidden and scale go to
    the plan's scratch buffers instead of fresh allocations."""
    return _forward(x, w1, b1, w2, b2, residual, activation, gate, post_relu, False, True)[0]


def _forward(x, w1, b1, w2, b2, residual, activation, gate, post_relu, keep_vectors,
             reuse_scratch):
    check_device(x)
    if x.shape[0] == 0:
        return allocate_forward_outputs(x, w1)
    if not _on_current_device(x.device):
        with torch.cuda.device(x.device):
            return _forward(x, w1, b1, w2, b2, residual, activation, gate, post_relu,
                            keep_vectors, reuse_scratch)
    key = _forward_key(x, w1, b1, w2, b2, residual, activation, gate, post_relu)
    plan = _forward_plans.get(key)
    if plan is None:
        _check_batch(x.shape[0])
        plan = _remember(_forward_plans, key, _forward_plan(x, w1, b1, w2, b2, residual,
                                                            activation, gate, post_relu))
    shape, device = plan.shape, x.device
    if not plan.dense:
        x = to_layout(x, shape.channels_last)
        if residual is not None:
            residual = to_layout(residual, shape.channels_last)
        w1 = w1.contiguous()
        w2 = None if w2 is None else w2.contiguous()
        b1 = None if b1 is None else b1.contiguous()
        b2 = None if b2 is None else b2.contiguous()
    partials, counters, pooled, hidden, scale, k_products = _scratch(
        plan, device, lambda: _scratch_buffers(shape, plan.splits, device,
                                               squeeze_fc1=shape.path == "squeeze_fc1"),
        reuse_scratch)
    if keep_vectors:
        out, pooled, hidden, scale = allocate_forward_outputs(x, w1, shape.channels_last)
    else:
        out = torch.empty_like(x, memory_format=torch.channels_last if shape.channels_last
                               else torch.contiguous_format)
    w2_arg = w1 if w2 is None else w2  # an unused pointer still needs a tensor
    b1_arg = w1 if b1 is None else b1
    b2_arg = w2_arg if b2 is None else b2
    res_arg = x if residual is None else residual
    if shape.path == "squeeze_fc1":
        squeeze_fc1, fc2, scale_pass = plan.sites
        _launch_with_counters(plan, squeeze_fc1, device, x, w1, b1_arg, pooled, k_products,
                              counters, hidden)
        fc2(hidden, w2, b2_arg, scale)
    elif shape.batched and not shape.has_fc2:
        squeeze, fc1, scale_pass = plan.sites
        squeeze(x, w1, b1_arg, w2_arg, b2_arg, partials, counters, pooled, hidden, scale)
        _launch_with_counters(plan, fc1, device, partials, scale, w1, b1_arg, hidden, pooled,
                              k_products, counters, hidden)
    elif shape.batched:
        squeeze, fc1, fc2, scale_pass = plan.sites
        squeeze(x, w1, b1_arg, w2, b2_arg, partials, counters, pooled, hidden, scale)
        _launch_with_counters(plan, fc1, device, partials, partials, w1, b1_arg, hidden, pooled,
                              k_products, counters, hidden)
        fc2(hidden, w2, b2_arg, scale)
    else:
        squeeze, scale_pass = plan.sites
        _launch_with_counters(plan, squeeze, device, x, w1, b1_arg, w2_arg, b2_arg, partials,
                              counters, pooled, hidden, scale)
    scale_pass(x, res_arg, scale, out)
    return out, pooled, hidden, scale


def _backward_key(grad_out, x, out, w1, w2, pooled, hidden, scale, has_residual, activation, gate):
    return (x.shape, x.stride(), x.dtype, x.device, grad_out.stride(), grad_out.dtype,
            None if out is None else out.stride(), w1.shape, w1.stride(), w1.dtype,
            None if w2 is None else w2.stride(),
            pooled.stride(), hidden.stride(), scale.stride(), pooled.dtype, has_residual,
            activation, gate, grad_out.data_ptr() % 16, x.data_ptr() % 16, _offset16(out),
            w1.data_ptr() % 16, _offset16(w2), pooled.data_ptr() % 16,
            hidden.data_ptr() % 16, scale.data_ptr() % 16, configs.forced_path,
            configs.forced_k_splits, configs.forced_reduce_tile, configs.forced_squeeze_fc1_tile,
            configs.forced_tuning)


def _backward_plan(grad_out, x, out, w1, w2, pooled, hidden, scale, has_residual, activation,
                   gate):
    s = _Shape.of(x, w1, single_fc=w2 is None)
    device = x.device
    post_relu = out is not None
    write_grad_res = post_relu and has_residual
    # The reduction stores grad_residual (the masked gradient) and the grad_x pass reads it
    # back instead of grad_out and out; only where grad_residual, which has x's dtype, holds
    # grad_out's values exactly.
    grad_res_in_reduction = write_grad_res and grad_out.dtype == x.dtype
    flags = dict(act=ACTIVATION_CODE[activation], gate=GATE_CODE[gate])
    tile, per_split, splits, grid = s.reduce_grid()

    def squeeze():  # kernel A' (not on the squeeze_fc1 path)
        return _site(
            se_squeeze_excite_bwd, grid,
            "grad_ptr x_ptr out_ptr grad_res_ptr w1_ptr w2_ptr hidden_ptr scale_ptr partial_ptr "
            "counter_ptr gz_ptr gh_ptr gp_ptr",
            dict(C=s.c, HW=s.hw, CR=s.cr, HW_PER_SPLIT=per_split, NUM_SPLITS=splits,
                 has_fc2=s.has_fc2, **flags),
            dict(EXCITE=not s.batched, POST_RELU=post_relu,
                 WRITE_GRAD_RESIDUAL=grad_res_in_reduction, CHANNELS_LAST=s.channels_last,
                 BLOCK_C=tile.block_c, BLOCK_HW=tile.block_hw, REDUCE_STAGES=tile.num_stages,
                 FC_BLOCK_C=configs.FC_BLOCK_C, FC_BLOCK_R=configs.FC_BLOCK_R, ACC=s.acc),
            device, tile.num_warps)
    grad_pass = _site(se_scale_bwd, s.streaming_grid(),
                      "grad_ptr out_ptr scale_ptr gp_ptr grad_x_ptr grad_res_ptr",
                      dict(C=s.c, HW=s.hw, SAMPLE_NUMEL=s.c * s.hw),
                      dict(POST_RELU=post_relu,
                           WRITE_GRAD_RESIDUAL=write_grad_res and not grad_res_in_reduction,
                           GRAD_RESIDUAL_WRITTEN=grad_res_in_reduction,
                           CHANNELS_LAST=s.channels_last, BLOCK=configs.SCALE_BLOCK), device)
    if s.path == "squeeze_fc1":
        through_fc1 = s.r_to_c_site((s.c, 1), 0, backward=True, device=device, **flags)
        passes = (s.squeeze_fc2_site(post_relu, grad_res_in_reduction, device=device, **flags),
                  through_fc1, grad_pass)
    elif s.batched and not s.has_fc2:
        # single FC: c_to_r takes gz (from the partial sums) through W1 to gp; W1's strides
        # as W2's in the two-FC backward (both [C, CR] with CR == C)
        through_fc1 = s.c_to_r_site(splits, (s.cr, 1), 0, backward=True, device=device, **flags)
        passes = (squeeze(), through_fc1, grad_pass)
    elif s.batched:
        through_fc2 = s.c_to_r_site(splits, (s.cr, 1), 0, backward=True, device=device, **flags)
        through_fc1 = s.r_to_c_site((s.c, 1), 0, backward=True, device=device, **flags)
        passes = (squeeze(), through_fc2, through_fc1, grad_pass)
    else:
        passes = (squeeze(), grad_pass)
    weight_grads = s.weight_grads_site(flags["act"], device)
    dense = (all(_is_dense(t, s.channels_last) for t in (grad_out, x) + ((out,) if post_relu else ()))
             and all(t is None or t.is_contiguous() for t in (w1, w2, pooled, hidden, scale)))
    return _Plan(s, splits, passes + (weight_grads,), dense)


@_serialized_when_interpreting
def se_backward(grad_out, x, out, w1, w2, pooled, hidden, scale, has_residual, activation, gate,
                reuse_scratch=False):
    """The backward op: (grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_residual), see ops.py;
    ``reuse_scratch`` as in se_forward."""
    return _backward(grad_out, x, out, w1, w2, pooled, hidden, scale, has_residual, activation,
                     gate, reuse_scratch)


def _backward(grad_out, x, out, w1, w2, pooled, hidden, scale, has_residual, activation, gate,
              reuse_scratch):
    check_device(x)
    post_relu = out is not None
    if x.shape[0] == 0:
        grads = allocate_backward_outputs(x, w1, w2, post_relu, has_residual)
        for g in grads[1:5]:
            g.zero_()
        return grads
    if not _on_current_device(x.device):
        with torch.cuda.device(x.device):
            return _backward(grad_out, x, out, w1, w2, pooled, hidden, scale, has_residual,
                             activation, gate, reuse_scratch)
    key = _backward_key(grad_out, x, out, w1, w2, pooled, hidden, scale, has_residual,
                        activation, gate)
    plan = _backward_plans.get(key)
    if plan is None:
        _check_batch(x.shape[0])
        plan = _remember(_backward_plans, key, _backward_plan(
            grad_out, x, out, w1, w2, pooled, hidden, scale, has_residual, activation, gate))
    shape = plan.shape
    grads = allocate_backward_outputs(x, w1, w2, post_relu, has_residual, shape.channels_last)
    grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_res = grads
    if not plan.dense:
        x = to_layout(x, shape.channels_last)
        grad_out = to_layout(grad_out, shape.channels_last)
        if post_relu:
            out = to_layout(out, shape.channels_last)
        w1 = w1.contiguous()
        w2 = None if w2 is None else w2.contiguous()
        pooled, hidden, scale = pooled.contiguous(), hidden.contiguous(), scale.contiguous()
    device = x.device
    partials, counters, gz, gh, gp, k_products = _scratch(
        plan, device, lambda: _scratch_buffers(shape, plan.splits, device,
                                               squeeze_fc1=shape.path == "squeeze_fc1"),
        reuse_scratch)
    out_arg = out if post_relu else x
    grad_res_arg = grad_res if post_relu and has_residual else grad_x
    w2_arg = w1 if w2 is None else w2  # an unused pointer still needs a tensor
    gh_arg = gh if shape.has_fc2 else gz  # single FC: gW1 = gz^T pooled
    if shape.path == "squeeze_fc1":
        squeeze_fc2, through_fc1, grad_pass, weight_grads = plan.sites
        _launch_with_counters(plan, squeeze_fc2, device, grad_out, x, out_arg, grad_res_arg, w2,
                              hidden, scale, gz, k_products, counters, gh)
        through_fc1(gh, w1, w1, gp)
    elif shape.batched and not shape.has_fc2:
        squeeze, through_fc1, grad_pass, weight_grads = plan.sites
        squeeze(grad_out, x, out_arg, grad_res_arg, w1, w2_arg, hidden, scale, partials,
                counters, gz, gh, gp)
        _launch_with_counters(plan, through_fc1, device, partials, scale, w1, w1, hidden, gz,
                              k_products, counters, gp)
    elif shape.batched:
        squeeze, through_fc2, through_fc1, grad_pass, weight_grads = plan.sites
        squeeze(grad_out, x, out_arg, grad_res_arg, w1, w2, hidden, scale, partials, counters,
                gz, gh, gp)
        _launch_with_counters(plan, through_fc2, device, partials, scale, w2, w2, hidden, gz,
                              k_products, counters, gh)
        through_fc1(gh, w1, w1, gp)
    else:
        squeeze, grad_pass, weight_grads = plan.sites
        _launch_with_counters(plan, squeeze, device, grad_out, x, out_arg, grad_res_arg, w1,
                              w2_arg, hidden, scale, partials, counters, gz, gh, gp)
    grad_pass(grad_out, out if post_relu else grad_out, scale, gp, grad_x, grad_res_arg)
    weight_grads(gz, hidden, gh_arg, pooled, grad_w2, grad_b2, grad_w1, grad_b1)
    return grads
