"""The Triton backend of the SE op: shapes the launches of forward.py and backward.py.

Forward: 2 launches (squeeze+excite, scale). Backward: 3 launches (gs reduction + excitation
backward, grad_x pass, weight gradients). Nothing else runs on the device: buffers are
``torch.empty``, and the per-sample arrival counters live in a cached zeroed workspace that
the kernels reset themselves (one per device and stream).
"""

import torch
import triton.language as tl

from ..backends import interpreting
from ..layout import is_channels_last, to_layout
from ..ops import allocate_backward_outputs, allocate_forward_outputs
from ..spec import ACTIVATION_CODE, GATE_CODE
from . import configs
from .backward import se_scale_bwd, se_squeeze_excite_bwd, se_weight_grads
from .forward import se_scale_fwd, se_squeeze_excite_fwd
from .launcher import is_recording_only, launch

#: Grid axis 1 is the sample index; CUDA bounds it.
MAX_BATCH = 65535
# What the splits are sized for when recording launches without a GPU (an H100 has 132 SMs).
_RECORDING_SMS = 132
_counters = {}


def check_device(x):
    if x.is_cuda or is_recording_only():
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


def _counter_key(device):
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    return device, stream


def _arrival_counters(device, n):
    """Zeroed int32 [>= n] counters; every kernel that uses them leaves them zeroed."""
    key = _counter_key(device)
    counters = _counters.get(key)
    if counters is None or counters.numel() < n:
        counters = torch.zeros(max(n, 256), dtype=torch.int32, device=device)
        _counters[key] = counters
    return counters


def _launch_with_counters(device, kernel, grid, args, constexprs):
    try:
        launch(kernel, grid, args, constexprs, configs.NUM_WARPS)
    except BaseException:
        _counters.pop(_counter_key(device), None)  # a failed launch may leave them dirty
        raise


def _acc_constexpr(acc_dtype):
    return tl.float64 if acc_dtype == torch.float64 else tl.float32


def _check_batch(n):
    if n > MAX_BATCH:
        raise ValueError(f"the triton backend supports N <= {MAX_BATCH}, got N = {n}")


def se_forward(x, w1, b1, w2, b2, residual, activation, gate, post_relu):
    check_device(x)
    out, pooled, hidden, scale = allocate_forward_outputs(x, w1)
    n, c, h, w = x.shape
    if n == 0:
        return out, pooled, hidden, scale
    _check_batch(n)
    channels_last = is_channels_last(x)
    x = to_layout(x, channels_last)
    w1, w2 = w1.contiguous(), w2.contiguous()
    cr, hw = w1.shape[0], h * w
    tile = configs.reduce_tile(channels_last, hw)
    per_split, splits = configs.hw_split(n, c, hw, tile, _num_sms(x.device))
    partials = torch.empty((n, splits, c), dtype=pooled.dtype, device=x.device)
    counters = _arrival_counters(x.device, n)
    _launch_with_counters(
        x.device, se_squeeze_excite_fwd, (configs.cdiv(c, tile.block_c) * splits, n),
        dict(x_ptr=x, w1_ptr=w1, b1_ptr=w1 if b1 is None else b1, w2_ptr=w2,
             b2_ptr=w2 if b2 is None else b2, partial_ptr=partials, counter_ptr=counters,
             pooled_ptr=pooled, hidden_ptr=hidden, scale_ptr=scale, C=c, HW=hw, CR=cr,
             HW_PER_SPLIT=per_split, NUM_SPLITS=splits, has_b1=int(b1 is not None),
             has_b2=int(b2 is not None), act=ACTIVATION_CODE[activation], gate=GATE_CODE[gate]),
        dict(CHANNELS_LAST=channels_last, BLOCK_C=tile.block_c, BLOCK_HW=tile.block_hw,
             FC_BLOCK_C=configs.FC_BLOCK_C, FC_BLOCK_R=configs.FC_BLOCK_R,
             ACC=_acc_constexpr(pooled.dtype)))
    if residual is not None:
        residual = to_layout(residual, channels_last)
    launch(se_scale_fwd, (configs.cdiv(c * hw, configs.SCALE_BLOCK), n),
           dict(x_ptr=x, res_ptr=x if residual is None else residual, scale_ptr=scale,
                out_ptr=out, C=c, HW=hw, SAMPLE_NUMEL=c * hw),
           dict(HAS_RESIDUAL=residual is not None, POST_RELU=post_relu,
                CHANNELS_LAST=channels_last, BLOCK=configs.SCALE_BLOCK),
           configs.NUM_WARPS)
    return out, pooled, hidden, scale


def se_backward(grad_out, x, out, w1, w2, pooled, hidden, scale, has_residual, activation, gate):
    check_device(x)
    post_relu = out is not None
    grads = allocate_backward_outputs(x, w1, w2, post_relu, has_residual)
    grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_res = grads
    n, c, h, w = x.shape
    cr, hw = w1.shape[0], h * w
    if n == 0:
        for g in (grad_w1, grad_b1, grad_w2, grad_b2):
            g.zero_()
        return grads
    _check_batch(n)
    channels_last = is_channels_last(x)
    x = to_layout(x, channels_last)
    grad_out = to_layout(grad_out, channels_last)
    if post_relu:
        out = to_layout(out, channels_last)
    w1, w2 = w1.contiguous(), w2.contiguous()
    acc = pooled.dtype
    tile = configs.reduce_tile(channels_last, hw)
    per_split, splits = configs.hw_split(n, c, hw, tile, _num_sms(x.device))
    partials = torch.empty((n, splits, c), dtype=acc, device=x.device)
    gz = torch.empty((n, c), dtype=acc, device=x.device)
    gh = torch.empty((n, cr), dtype=acc, device=x.device)
    gp = torch.empty((n, c), dtype=acc, device=x.device)
    counters = _arrival_counters(x.device, n)
    act = ACTIVATION_CODE[activation]
    _launch_with_counters(
        x.device, se_squeeze_excite_bwd, (configs.cdiv(c, tile.block_c) * splits, n),
        dict(grad_ptr=grad_out, x_ptr=x, out_ptr=out if post_relu else x, w1_ptr=w1, w2_ptr=w2,
             hidden_ptr=hidden, scale_ptr=scale, partial_ptr=partials, counter_ptr=counters,
             gz_ptr=gz, gh_ptr=gh, gp_ptr=gp, C=c, HW=hw, CR=cr, HW_PER_SPLIT=per_split,
             NUM_SPLITS=splits, act=act, gate=GATE_CODE[gate]),
        dict(POST_RELU=post_relu, CHANNELS_LAST=channels_last, BLOCK_C=tile.block_c,
             BLOCK_HW=tile.block_hw, FC_BLOCK_C=configs.FC_BLOCK_C, FC_BLOCK_R=configs.FC_BLOCK_R,
             ACC=_acc_constexpr(acc)))
    write_grad_res = post_relu and has_residual
    launch(se_scale_bwd, (configs.cdiv(c * hw, configs.SCALE_BLOCK), n),
           dict(grad_ptr=grad_out, out_ptr=out if post_relu else grad_out, scale_ptr=scale,
                gp_ptr=gp, grad_x_ptr=grad_x, grad_res_ptr=grad_res if write_grad_res else grad_x,
                C=c, HW=hw, SAMPLE_NUMEL=c * hw),
           dict(POST_RELU=post_relu, WRITE_GRAD_RESIDUAL=write_grad_res,
                CHANNELS_LAST=channels_last, BLOCK=configs.SCALE_BLOCK),
           configs.NUM_WARPS)
    m, k = configs.WGRAD_BLOCK_M, configs.WGRAD_BLOCK_K
    tiles = configs.cdiv(c, m) * configs.cdiv(cr, k) + configs.cdiv(cr, m) * configs.cdiv(c, k)
    launch(se_weight_grads, (tiles,),
           dict(gz_ptr=gz, hidden_ptr=hidden, gh_ptr=gh, pooled_ptr=pooled, gw2_ptr=grad_w2,
                gb2_ptr=grad_b2, gw1_ptr=grad_w1, gb1_ptr=grad_b1, N=n, C=c, CR=cr, act=act),
           dict(BLOCK_M=m, BLOCK_K=k, BLOCK_N=configs.WGRAD_BLOCK_N),
           configs.NUM_WARPS)
    return grads
