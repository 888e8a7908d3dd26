"""Block sizes and work splits of the Triton kernels: the only tuning knobs, in one table.

Everything the dispatcher can pick is listed here, so the ahead-of-time compile test can
check that every configuration compiles for real GPU targets (tests/test_triton_aot.py).
"""

from dataclasses import dataclass

NUM_WARPS = 4
# The per-sample excitation tail walks W1 / W2 in [FC_BLOCK_R, FC_BLOCK_C] tiles.
FC_BLOCK_C = 128
FC_BLOCK_R = 32
# Elements of one sample per program in the streaming scale passes.
SCALE_BLOCK = 1024
# Weight-gradient GEMM tiles (tl.dot needs every dimension >= 16).
WGRAD_BLOCK_M = 32
WGRAD_BLOCK_K = 32
WGRAD_BLOCK_N = 16
# Programs per SM the squeeze aims for, splitting H*W when N * channel blocks is too few.
PROGRAMS_PER_SM = 4


@dataclass(frozen=True)
class ReduceTile:
    """[block_c, block_hw] tile of the per-channel reductions (kernels A and A')."""
    block_c: int
    block_hw: int


#: NHWC: channels are contiguous, so a wide channel block gives full 128-byte rows.
CHANNELS_LAST_TILE = ReduceTile(block_c=64, block_hw=32)
#: NCHW: H*W is contiguous; small maps (<= 16 pixels, e.g. 4x4 or 1x1) take more channels.
NCHW_TILE = ReduceTile(block_c=32, block_hw=64)
NCHW_SMALL_MAP_TILE = ReduceTile(block_c=128, block_hw=16)
REDUCE_TILES = (CHANNELS_LAST_TILE, NCHW_TILE, NCHW_SMALL_MAP_TILE)


def reduce_tile(channels_last, hw):
    if channels_last:
        return CHANNELS_LAST_TILE
    return NCHW_SMALL_MAP_TILE if hw <= NCHW_SMALL_MAP_TILE.block_hw else NCHW_TILE


def cdiv(a, b):
    return -(-a // b)


def hw_split(n, c, hw, tile, num_sms):
    """(hw_per_split, num_splits): split each channel's H*W range when the grid is too small.

    hw_per_split is a multiple of the tile's block_hw, so the splits tile H*W exactly.
    """
    programs = n * cdiv(c, tile.block_c)
    hw_blocks = cdiv(hw, tile.block_hw)
    wanted = cdiv(PROGRAMS_PER_SM * num_sms, programs)
    splits = max(1, min(wanted, hw_blocks))
    per_split = cdiv(hw_blocks, splits) * tile.block_hw
    return per_split, cdiv(hw, per_split)
