"""The squeeze_fc1 path (senet_kernels/triton/squeeze_fc1.py): the squeeze with FC1 folded in,
and the backward's reduction with the gradient through FC2 folded in, over tiles of samples.
Forced here (``path`` parameter, see conftest's excitation_path fixture), as the dispatcher
does not pick it yet."""

import functools

import pytest
import torch

from cases import assert_close, make_inputs, reference64
from senet_kernels import squeeze_excite
from senet_kernels.testing import forward_backward_vs_reference
from senet_kernels.triton import configs
from senet_kernels.triton.launcher import recording_launches

pytestmark = pytest.mark.parametrize("path", ["squeeze_fc1"])
TRITON = functools.partial(squeeze_excite, backend="triton")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(args, dtype, **options):
    for result in forward_backward_vs_reference(TRITON, args, **options):
        assert_close(result.actual, result.expected, dtype, result.name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_forward_backward_match_the_reference(device, path, dtype, channels_last, bias, poison):
    """19 samples (a full tile of 16 and a partial one), 72 channels (a full channel block and
    a partial one), 9x9 = 81 pixels (two H*W blocks), Cr = 12 (part of one block of hidden
    units): every mask of the kernel."""
    args = make_inputs(19, 72, 9, 9, 12, dtype=dtype, channels_last=channels_last, bias=bias,
                       residual=True, device=device, seed=3)
    _check(args, dtype, post_relu=True)


SHAPES = [  # (N, C, H, W, Cr)
    (1, 1, 1, 1, 1),
    (2, 3, 1, 1, 5),
    (33, 20, 3, 3, 2),      # three sample tiles, the last of one sample
    (3, 576, 2, 2, 40),     # 9 channel blocks (more than a sum step's 8), 2 blocks of Cr
    (2, 24, 19, 23, 6),     # H*W over several blocks, prime sizes
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_odd_sizes(device, path, shape, channels_last, poison):
    args = make_inputs(*shape, channels_last=channels_last, residual=True, device=device, seed=1)
    _check(args, torch.float32, activation="silu", post_relu=True)


def test_half_input_with_float32_parameters(device, path, poison):
    args = make_inputs(18, 40, 4, 4, 6, dtype=torch.bfloat16, param_dtype=torch.float32,
                       device=device, seed=4)
    _check(args, torch.bfloat16)


def test_non_contiguous_input(device, path, poison):
    args = make_inputs(17, 30, 6, 6, 5, device=device, seed=5)
    args["x"] = args["x"][:, :, ::2, 1::2]  # a strided view, neither layout's dense form
    _check(args, torch.float32)


def test_gradcheck_float64(device, path):
    args = make_inputs(17, 5, 3, 2, 3, dtype=torch.float64, channels_last=True, residual=True,
                       device=device, seed=7)
    leaves = [args[k].requires_grad_() for k in ("x", "w1", "b1", "w2", "b2", "residual")]

    def fn(x, w1, b1, w2, b2, res):
        return TRITON(x, w1, b1, w2, b2, res, post_relu=True)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_opcheck(device, path):
    from senet_kernels.backends import backend_ops
    args = make_inputs(17, 12, 3, 4, 3, device=device, seed=9)
    fwd_args = (*(args[k] for k in ("x", "w1", "b1", "w2", "b2", "residual")), "relu",
                "sigmoid", False)
    torch.library.opcheck(backend_ops("triton").forward, fwd_args)


def test_repeated_calls_are_identical_and_reset_the_counters(device, path):
    """The tile's last program adds the channel blocks' products in channel order whichever
    program finished last, and zeroes its counter: calls repeat bit for bit."""
    args = make_inputs(40, 200, 5, 5, 10, device=device, seed=6)
    expected, _ = reference64(args)
    with recording_launches() as launches:
        outs = [TRITON(*args.values()) for _ in range(3)]
    for out in outs:
        assert_close(out, expected, torch.float32, "out")
        assert torch.equal(out, outs[0])
    counters = [l.args["counter_ptr"] for l in launches if l.kernel.__name__ == "se_squeeze_fc1_fwd"]
    assert len(counters) == 3 and counters[0].numel() == 3  # sample tiles of 16
    assert not counters[-1].any()


def test_repeated_backward_calls_are_identical(device, path):
    """The same for the backward's products (gh) and its counters."""
    args = make_inputs(40, 200, 5, 5, 10, residual=True, device=device, seed=10)
    leaves = [args[k].requires_grad_() for k in ("x", "w1", "b1", "w2", "b2", "residual")]
    out = TRITON(*leaves, post_relu=True)
    grad = torch.randn_like(out)
    with recording_launches() as launches:
        grads = [torch.autograd.grad(out, leaves, grad, retain_graph=True) for _ in range(3)]
    for g in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(g, grads[0]))
    counters = [l.args["counter_ptr"] for l in launches if l.kernel.__name__ == "se_squeeze_fc2_bwd"]
    assert len(counters) == 3 and not counters[-1].any()


def test_nan_stays_in_its_sample(device, path):
    """A NaN in one sample's input reaches that sample's output only (the kernel sums a tile
    of samples side by side, and multiplies them with W1 in one product)."""
    args = make_inputs(20, 24, 3, 3, 4, device=device, seed=8)
    args["x"][5, 3, 1, 1] = float("nan")
    out = TRITON(*args.values())
    assert out[5].isnan().any()
    others = torch.cat([out[:5], out[6:]])
    assert not others.isnan().any()
    expected, _ = reference64({**args, "x": torch.cat([args["x"][:5], args["x"][6:]])})
    assert_close(others, expected, torch.float32, "out")


def test_tile_narrows_for_small_maps(path):
    assert configs.squeeze_fc1_tile(49).block_hw == 64
    assert configs.squeeze_fc1_tile(32).block_hw == 32
    assert configs.squeeze_fc1_tile(9).block_hw == 16
    assert configs.squeeze_fc1_tile(1).block_hw == 16
    assert configs.squeeze_fc1_tile(196).block_hw == 64


def test_tile_narrows_for_wide_elements(path):
    """A [block_c, block_hw] load spans at most SQUEEZE_FC1_LOAD_BYTES per tensor (float32 at
    64 x 64 spilled in the backward with the ReLU tail), never under 16 pixels."""
    assert configs.squeeze_fc1_tile(49, 2).block_hw == 64
    assert configs.squeeze_fc1_tile(49, 4).block_hw == 32
    assert configs.squeeze_fc1_tile(49, 8).block_hw == 16
    assert configs.squeeze_fc1_tile(9, 4).block_hw == 16
    for x_size in (2, 4, 8):
        tile = configs.squeeze_fc1_tile(196, x_size)
        assert tile.block_c * tile.block_hw * x_size <= configs.SQUEEZE_FC1_LOAD_BYTES


@pytest.mark.parametrize("tile", configs.SWEEP_SQUEEZE_FC1_TILES,
                         ids=lambda t: (f"n{t.block_n}c{t.block_c}hw{t.block_hw}r{t.block_r}"
                                        f"s{t.num_stages}w{t.num_warps}"))
def test_every_swept_tile_computes_the_op(device, path, tile, poison):
    """Each tile the GPU sweep times (kernel_breakdown.py --sweep-squeeze-fc1) gives the right
    forward on a 7x7 map (the late stages'), with partial sample tiles and channel blocks and
    Cr over one block of hidden units; the plan follows the forced tile."""
    args = make_inputs(35, 150, 7, 7, 40, channels_last=True, residual=True, device=device,
                       seed=tile.block_c + tile.num_stages)
    expected, _ = reference64(args, post_relu=True)
    with configs.force_squeeze_fc1_tile(tile), recording_launches() as launches:
        out = TRITON(*args.values(), post_relu=True)
    assert_close(out, expected, torch.float32, "out")
    launch = next(l for l in launches if l.kernel.__name__ == "se_squeeze_fc1_fwd")
    assert (launch.constexprs["BLOCK_N"], launch.constexprs["BLOCK_C"],
            launch.constexprs["BLOCK_HW"], launch.constexprs["STAGES"], launch.num_warps) == (
        tile.block_n, tile.block_c, tile.block_hw, tile.num_stages, tile.num_warps)
    with pytest.raises(ValueError, match="SqueezeFc1Tile"):
        with configs.force_squeeze_fc1_tile((16, 64)):
            pass
