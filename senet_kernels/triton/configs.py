"""Block sizes and work splits of the Triton kernels: the only tuning knobs, in one table.

Everything the dispatcher can pick is listed here, so the ahead-of-time compile test can
check that every configuration compiles for real GPU targets (tests/test_triton_dispatch.py, the ahead-of-time compile test).
"""

from contextlib import contextmanager
from dataclasses import dataclass, replace

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
# Programs per SM the squeeze aims for, splitting H*W when N * channel blocks is too few:
# each program keeps one tile load in flight, so it takes ~16 per SM to cover HBM latency
# (at 4, EfficientNet-B0's 96x56x56 and 240x28x28 reductions ran at ~60% of the copy
# bandwidth on an H200).
PROGRAMS_PER_SM = 16

# Batched excitation (batched.py), for weight-heavy shapes. Each weight element is read
# once per tile of BATCH_BLOCK_N samples (tl.dot needs >= 16 along every dimension).
BATCH_BLOCK_N = 32
# [N, C] -> [N, Cr] GEMM (c_to_r): tiles of BATCH_BLOCK_R hidden units, BATCH_BLOCK_K channels
# per step of the reduction. (At 128 channels per step the sm_90 compile needed 255 registers
# and spilled 96-200 bytes, with 80-115 KB of pipelined shared memory; 64: ~148, no spills.)
BATCH_BLOCK_R = 16
BATCH_BLOCK_K = 64
# [N, Cr] -> [N, C] GEMM (r_to_c): tiles of EXPAND_BLOCK_C channels, EXPAND_BLOCK_R hidden
# units per step.
EXPAND_BLOCK_C = 64
EXPAND_BLOCK_R = 32
# Split-K of the c_to_r GEMM: its grid is only (N / BATCH_BLOCK_N) x (Cr / BATCH_BLOCK_R)
# programs (64 at SE-ResNet-50's 256x2048x7x7, on a GPU of 132 SMs), each walking all C
# channels in a serial chain of BATCH_BLOCK_K steps (32 there), so the GEMM is bound by load
# latency, not bandwidth. Splitting C over up to MAX_K_SPLITS programs aims for
# GEMM_PROGRAMS_PER_SM programs per SM; the last program of each tile to finish sums the
# splits' partial products in split order (deterministic) and runs the epilogue.
GEMM_PROGRAMS_PER_SM = 2
MAX_K_SPLITS = 8
#: The most splits any call may ask for (force_k_splits, the GPU sweep's 16 included): the
#: tile's last program reads every split's product in one unrolled step of this many masked
#: loads (batched.py), one L2 round trip instead of one per split.
K_SPLIT_LIMIT = 16
#: tl.dot input precision of the excitation GEMMs (see dot_precision): float32-level
#: accuracy on tensor cores. Plain TF32 put float16 weight gradients at 2.7e-3 relative
#: error on an H200, over float16's 2e-3.
DOT_PRECISION = "tf32x3"
#: The same accuracy in two TF32 products instead of three where the GEMM's B operand, a
#: weight matrix in every excitation GEMM, is exact in TF32 (common.dot_acc).
DOT_PRECISION_EXACT_WEIGHTS = "tf32_split_a"
# Where the per-sample path reads more weight bytes than this fraction of the activation
# bytes of the same pass, the batched path is faster (measured on an H200, see
# use_batched_excitation). The per-sample path reads W1 and W2 once per sample.
WEIGHT_TRAFFIC_LIMIT = 0.1


def dot_precision(half_precision_weights):
    """PRECISION of the excitation GEMMs: float16 / bfloat16 weights are exact in TF32 (their
    mantissas have at most TF32's 10 bits), so only the other operand needs splitting."""
    return DOT_PRECISION_EXACT_WEIGHTS if half_precision_weights else DOT_PRECISION


@dataclass(frozen=True)
class ReduceTile:
    """[block_c, block_hw] tile of the per-channel reductions (kernels A and A'), the warps of
    a program, and the software-pipeline stages of its loop over H*W (1: none, one tile load
    in flight per program; 3: two more tiles' loads in flight, through shared memory)."""
    block_c: int
    block_hw: int
    num_warps: int = NUM_WARPS
    num_stages: int = 1


#: NHWC: channels are contiguous, so a wide channel block gives full 128-byte rows.
CHANNELS_LAST_TILE = ReduceTile(block_c=64, block_hw=32)
#: NCHW: H*W is contiguous; small maps (<= 16 pixels, e.g. 4x4 or 1x1) take more channels.
NCHW_TILE = ReduceTile(block_c=32, block_hw=64)
NCHW_SMALL_MAP_TILE = ReduceTile(block_c=128, block_hw=16)
REDUCE_TILES = (CHANNELS_LAST_TILE, NCHW_TILE, NCHW_SMALL_MAP_TILE)


#: Tiles a GPU run of benchmarks/kernel_breakdown.py --sweep-reduce-tiles times in place of
#: reduce_tile's pick (forced with force_reduce_tile; compiled ahead of time for bf16
#: channels_last, the sweep's case, by aot.py). On an H200 the squeeze (kernel A, one tensor
#: read) ran at 35-55% of the streaming bandwidth on the weight-heavy channels_last shapes
#: (a third at 2048x7x7) while kernel A', which loads three tensors per step of the same loop,
#: reached 80-90% on the SE-ResNet ones: a program has too few bytes in flight. Hence wider
#: tiles, and the same tiles with the loop software-pipelined (num_stages).
SWEEP_REDUCE_TILES = (ReduceTile(64, 32), ReduceTile(32, 64), ReduceTile(64, 64),
                      ReduceTile(128, 16), ReduceTile(128, 32), ReduceTile(128, 64),
                      ReduceTile(256, 16), ReduceTile(128, 64, 8), ReduceTile(256, 32, 8),
                      ReduceTile(64, 32, num_stages=3), ReduceTile(128, 32, num_stages=3),
                      ReduceTile(64, 64, num_stages=3))
#: SE-ResNet-50's first stage (256x56x56 at batch 256, the per-sample path: most of a training
#: step's SE time, kernel A at ~80% of the streaming bandwidth there and A' at ~87%): the tile
#: reduce_tile picks, and the same with its loop over H*W software-pipelined.
SWEEP_FIRST_STAGE_TILES = (CHANNELS_LAST_TILE, ReduceTile(64, 32, num_stages=2),
                           ReduceTile(64, 32, num_stages=3))
#: None: reduce_tile decides; a ReduceTile: every reduction uses it (the sweeps above).
forced_reduce_tile = None


@contextmanager
def _forced(name, value):
    """The module's global ``name`` set to ``value`` inside the block (the force_* helpers:
    tests and benchmarks forcing what the dispatcher would decide)."""
    previous = globals()[name]
    globals()[name] = value
    try:
        yield
    finally:
        globals()[name] = previous


def force_reduce_tile(tile):
    """Make every reduction (kernels A and A') inside the block use ``tile``."""
    if not isinstance(tile, ReduceTile):
        raise ValueError(f"tile must be a ReduceTile, got {tile!r}")
    return _forced("forced_reduce_tile", tile)


def reduce_tile(channels_last, hw, tuning=None):
    """The tile of kernels A / A' on maps of hw pixels: a forced one, else in channels_last
    the ``tuning``'s (a GPU's measured choice, see Tuning; None: the defaults), else by map."""
    if forced_reduce_tile is not None:
        return forced_reduce_tile
    if channels_last:
        tuning = tuning or DEFAULT_TUNING
        return (tuning.channels_last_small_map_tile if hw <= TUNED_SMALL_MAP_PIXELS
                else tuning.channels_last_tile)
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


# ---------------------------------------------------------------------------------------
# Traffic model: which excitation path a shape takes.

def weight_bytes(c, cr, param_size):
    """Bytes of W1 [Cr, C] and W2 [C, Cr]."""
    return 2 * c * cr * param_size


def weight_reads(n, batched):
    """How often the excitation reads each weight element in one pass over n samples."""
    return cdiv(n, BATCH_BLOCK_N) if batched else n


def activation_bytes(n, c, hw, x_size):
    """Bytes of one activation tensor: the unit of the streaming passes' traffic."""
    return n * c * hw * x_size


#: None: the traffic model decides; a name of EXCITATION_PATHS: forced (tests, benchmarks).
forced_path = None
#: "squeeze_fc1" (squeeze_fc1.py) is the batched path with FC1 folded into the squeeze: a
#: candidate for the weight-heavy shapes, taken only where forced or where a GPU's measured
#: tuning takes it (Tuning.squeeze_fc1_max_pixels, 0 by default; benchmarks/tune.py times it
#: against "batched").
EXCITATION_PATHS = ("per_sample", "batched", "squeeze_fc1")
#: Paths the default tuning never picks, only runs where forced or where a shipped tuning
#: takes them (their configurations are compiled ahead of time for sm_90, the lent machines'
#: target, and what a shipped tuning picks for every target, see aot.py).
CANDIDATE_PATHS = ("squeeze_fc1",)
#: None: gemm_k_splits decides; an int: the split count asked for (tests, benchmarks).
forced_k_splits = None


def force_excitation_path(path):
    """Make every call inside the block take ``path`` (one of EXCITATION_PATHS)."""
    if path not in EXCITATION_PATHS:
        raise ValueError(f"path must be one of {EXCITATION_PATHS}, got {path!r}")
    return _forced("forced_path", path)


def force_k_splits(splits):
    """Make every batched call inside the block ask for ``splits`` K-splits of its c_to_r GEMM
    (at most one per BATCH_BLOCK_K channels, see gemm_k_splits); 1 turns split-K off."""
    if not isinstance(splits, int) or not 1 <= splits <= K_SPLIT_LIMIT:
        raise ValueError(f"splits must be an int in [1, {K_SPLIT_LIMIT}], got {splits!r}")
    return _forced("forced_k_splits", splits)


def gemm_k_splits(n, c, cr, num_sms):
    """(channels per split, number of splits) of the batched c_to_r GEMM over C channels.

    Enough splits for GEMM_PROGRAMS_PER_SM programs per SM, at most MAX_K_SPLITS and at most
    one per BATCH_BLOCK_K channels; channels per split is a multiple of BATCH_BLOCK_K, so
    the splits tile C exactly (the last one may be short)."""
    tiles = cdiv(n, BATCH_BLOCK_N) * cdiv(cr, BATCH_BLOCK_R)
    k_blocks = cdiv(c, BATCH_BLOCK_K)
    wanted = forced_k_splits or min(MAX_K_SPLITS, cdiv(GEMM_PROGRAMS_PER_SM * num_sms, tiles))
    splits = max(1, min(wanted, k_blocks))
    per_split = cdiv(k_blocks, splits) * BATCH_BLOCK_K
    return per_split, cdiv(c, per_split)


def excitation_path(n, c, cr, hw, x_size, param_size, tuning=None, single_fc=False):
    """The path of EXCITATION_PATHS a shape takes: a weight-heavy one ("batched", or
    "squeeze_fc1" on maps of at most the ``tuning``'s squeeze_fc1_max_pixels, none by default)
    when the per-sample excitation's weight traffic outweighs WEIGHT_TRAFFIC_LIMIT of one
    activation tensor, i.e.
    2 * Cr * param_size > WEIGHT_TRAFFIC_LIMIT * HW * x_size (independent of n: both sides
    grow with it), else "per_sample"; the forced path if one is. SE-ResNet-50 (Cr = C / 16),
    bf16: C = 2048 at 7x7 reads 5.2x its activations in weights per sample, C = 1024 at 14x14
    0.65x, C = 512 at 28x28 0.08x; EfficientNet-B0's late SE (C = 1152, Cr = 48, 7x7) 2.0x.

    ``single_fc``: the single-FC form (Effective SE: one [C, C] weight, cr == c), whose weight
    bytes are C * C, half of weight_bytes(c, c). It has no squeeze_fc1 kernels (that path
    folds FC1 into the squeeze and FC2 into a GEMM of its own; with one C x C layer there is
    nothing left for the second, and its K-split GEMM is the batched path's c_to_r anyway):
    "batched" replaces it, forced or picked."""
    path = forced_path
    if path is None:
        weights = weight_bytes(c, cr, param_size) // (2 if single_fc else 1)
        heavy = weights * weight_reads(n, False) > (
            WEIGHT_TRAFFIC_LIMIT * activation_bytes(n, c, hw, x_size))
        if not heavy:
            path = "per_sample"
        elif hw <= (tuning or DEFAULT_TUNING).squeeze_fc1_max_pixels:
            path = "squeeze_fc1"
        else:
            path = "batched"
    if single_fc and path == "squeeze_fc1":
        return "batched"
    return path


def use_batched_excitation(n, c, cr, hw, x_size, param_size):
    """True where the excitation runs as GEMMs over tiles of samples (the "batched" and
    "squeeze_fc1" paths), see excitation_path."""
    return excitation_path(n, c, cr, hw, x_size, param_size) != "per_sample"


@dataclass(frozen=True)
class SqueezeFc1Tile:
    """Blocks of the squeeze_fc1 kernel: samples per tile (block_n, >= 16 for tl.dot), channels
    (block_c) and H*W (block_hw) per load, hidden units per FC1 product (block_r), the
    software-pipeline stages of its loop over (sample, H*W block) pairs, warps, and how many
    channel blocks' products the tile's last program reads per step (sum_chunk)."""
    block_n: int = 16
    block_c: int = 64
    block_hw: int = 64
    block_r: int = 32
    num_stages: int = 3
    num_warps: int = NUM_WARPS
    sum_chunk: int = 8


#: The default tile; maps of <= 32 or <= 16 pixels take block_hw 32 / 16 (squeeze_fc1_tile).
SQUEEZE_FC1_TILE = SqueezeFc1Tile()
#: The most bytes one [block_c, block_hw] load of one tensor may span (squeeze_fc1_tile): the
#: default tile's in 16-bit types. The backward with the ReLU tail loads three tensors per
#: step; in float32 at 64 x 64 (16 KB each) the sm_90 compile needed 255 registers and spilled
#: 520 bytes (892 in float64), so 4- and 8-byte types take narrower H*W blocks.
SQUEEZE_FC1_LOAD_BYTES = 8192
#: Tiles a GPU run of benchmarks/kernel_breakdown.py --sweep-squeeze-fc1 times on the
#: weight-heavy shapes (compiled ahead of time for them by aot.py): pipeline depth, wider and
#: narrower channel blocks (fewer / more programs, fewer / more products to add), 8 warps,
#: 32-sample tiles, and H*W blocks of 32 (at 7x7: 2 steps a sample, less of each load masked).
SWEEP_SQUEEZE_FC1_TILES = (
    SQUEEZE_FC1_TILE, SqueezeFc1Tile(num_stages=2), SqueezeFc1Tile(num_stages=4),
    SqueezeFc1Tile(block_c=128), SqueezeFc1Tile(block_c=128, num_warps=8),
    SqueezeFc1Tile(block_n=32), SqueezeFc1Tile(block_c=32), SqueezeFc1Tile(block_hw=32))
#: None: squeeze_fc1_tile decides; a SqueezeFc1Tile: every squeeze_fc1 call uses it (the sweep).
forced_squeeze_fc1_tile = None


def force_squeeze_fc1_tile(tile):
    """Make every squeeze_fc1 launch inside the block use ``tile``."""
    if not isinstance(tile, SqueezeFc1Tile):
        raise ValueError(f"tile must be a SqueezeFc1Tile, got {tile!r}")
    return _forced("forced_squeeze_fc1_tile", tile)


def squeeze_fc1_tile(hw, x_size=2, tuning=None):
    """The squeeze_fc1 tile for maps of hw pixels of x_size-byte elements: the ``tuning``'s
    (None: SQUEEZE_FC1_TILE) with block_hw no wider than the map needs, nor than
    SQUEEZE_FC1_LOAD_BYTES allows (at least 16, for tl.dot)."""
    if forced_squeeze_fc1_tile is not None:
        return forced_squeeze_fc1_tile
    tile = (tuning or DEFAULT_TUNING).squeeze_fc1_tile
    block_hw = tile.block_hw
    while block_hw > 16 and (block_hw // 2 >= hw
                             or tile.block_c * block_hw * x_size > SQUEEZE_FC1_LOAD_BYTES):
        block_hw //= 2
    return replace(tile, block_hw=block_hw)


# ---------------------------------------------------------------------------------------
# Per-GPU tuning: the few choices above that a GPU run measures (tuning.py loads them).

#: channels_last maps of at most this many pixels (14x14: the weight-heavy stages the reduce
#: tile sweep times) take Tuning.channels_last_small_map_tile; larger ones (the first stages,
#: swept with SWEEP_FIRST_STAGE_TILES) Tuning.channels_last_tile.
TUNED_SMALL_MAP_PIXELS = 196


@dataclass(frozen=True)
class Tuning:
    """What one GPU model's measurements chose (benchmarks/tune.py writes it from the sweeps
    of benchmarks/kernel_breakdown.py; tuning.py finds the one of the GPU in use). Every
    choice is one the sweeps time, so each is compiled ahead of time for sm_90 (aot.py) and
    covered by the tests that force it: where the weights are heavy, the maps of at most
    squeeze_fc1_max_pixels pixels take the squeeze_fc1 path and larger ones the batched path
    (excitation_path; 0: batched everywhere), the channels_last reduction tiles (reduce_tile)
    and the squeeze_fc1 tile (squeeze_fc1_tile). ``device``: the GPU name it was measured on
    ("" for the defaults); ``source``: how (commands, date)."""
    device: str = ""
    squeeze_fc1_max_pixels: int = 0
    channels_last_tile: ReduceTile = CHANNELS_LAST_TILE
    channels_last_small_map_tile: ReduceTile = CHANNELS_LAST_TILE
    squeeze_fc1_tile: SqueezeFc1Tile = SQUEEZE_FC1_TILE
    source: str = ""

    def __post_init__(self):
        if not isinstance(self.squeeze_fc1_max_pixels, int) or self.squeeze_fc1_max_pixels < 0:
            raise ValueError(f"squeeze_fc1_max_pixels must be an int >= 0, got "
                             f"{self.squeeze_fc1_max_pixels!r}")
        allowed = {"channels_last_tile": SWEEP_FIRST_STAGE_TILES,
                   "channels_last_small_map_tile": SWEEP_REDUCE_TILES,
                   "squeeze_fc1_tile": SWEEP_SQUEEZE_FC1_TILES}
        for name, tiles in allowed.items():
            if getattr(self, name) not in tiles:
                raise ValueError(f"{name} {getattr(self, name)} is not one of the tiles the GPU "
                                 f"sweeps time (and aot.py compiles): {tiles}")


#: The choices of a GPU with no tuning of its own (and of the interpreter).
DEFAULT_TUNING = Tuning()
#: None: each device's own tuning (tuning.for_device); a Tuning: every device uses it (tests,
#: benchmarks, aot.py).
forced_tuning = None


def force_tuning(tuning):
    """Make every device use ``tuning`` (a Tuning) inside the block."""
    if not isinstance(tuning, Tuning):
        raise ValueError(f"tuning must be a configs.Tuning, got {tuning!r}")
    return _forced("forced_tuning", tuning)
