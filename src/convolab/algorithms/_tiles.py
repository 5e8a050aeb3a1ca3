"""Work splitting shared by the fast paths: batch chunks and first-dimension row tiles.

A *tile* is ``(batch slice, output-row slice)``, the row slice running over the first
output spatial dimension.  Tiles are sized so that one tile's scratch memory stays
under ``min(workspace_bytes / workers, cache_bytes)`` (every worker thread holds one
tile's scratch): the workspace option bounds peak memory,
and the cache target keeps the column buffer and its GEMM in the last-level cache
(measured: im2col + GEMM of the 3x3 C64 56x56 layer runs ~1.8x faster in 7 MB chunks
than in one 110 MB buffer).  A single output row is the smallest tile.
"""

from __future__ import annotations

import math

import numpy as np

from ..options import get_options
from ._threads import workers

CACHE_BYTES = 8 * 2**20  # about a quarter of the 32 MB L3 of the machines we measured on
# Weight-gradient tiles of the Winograd paths, larger than the forward's: each tile ends in
# a product added to the sum, so fewer, longer tiles mean fewer products and longer GEMM
# inner dimensions (measured 1.3x faster than at CACHE_BYTES on the 3x3 C64 and C128).
WG_CACHE_BYTES = 2 * CACHE_BYTES


def _balanced(total: int, most: int) -> int:
    """The chunk size that splits ``total`` into as few chunks of at most ``most`` as
    possible, all of nearly equal size (28 rows at most 27: 14 + 14, not 27 + 1)."""
    return -(-total // -(-total // max(1, most)))


def tiles(N: int, out_spatial, bytes_per_position: int, *, cache: int | None = CACHE_BYTES,
          split_lone: int = 0):
    """Tiles covering ``N`` samples x ``out_spatial`` positions, and the largest tile's size.

    ``bytes_per_position``: scratch bytes needed per output position of one sample.
    ``split_lone``: when not 0, one sample that fits one tile is cut into a tile of
    rows per worker, a multiple of ``split_lone`` rows each (else it is one tile, on
    one core).
    Returns ``(list of (slice, slice), positions in the largest tile)``.
    """
    O = tuple(out_spatial)
    nw = workers()
    budget = get_options().workspace_bytes // nw  # each worker holds one tile
    limit = min(budget, cache) if cache else budget
    per_row = max(1, bytes_per_position * math.prod(O[1:]))
    per_sample = max(1, per_row * O[0])  # an empty output (explain's stride phases) too
    if per_sample <= limit:
        step = max(1, min(N, limit // per_sample))
        if N > 1:  # every worker gets a tile; 16 samples in 8 + 8, not 11 + 5
            step = _balanced(N, min(step, -(-N // nw)))
        if N == 1 and nw > 1 and O[0] > split_lone > 0:
            rows = -(-O[0] // (nw * split_lone)) * split_lone
            return [(slice(0, 1), slice(a, min(O[0], a + rows)))
                    for a in range(0, O[0], rows)], rows * math.prod(O[1:])
        out = [(slice(i, min(N, i + step)), slice(0, O[0])) for i in range(0, N, step)]
        return out, step * math.prod(O)
    rows = _balanced(O[0], min(O[0], limit // per_row))
    out = [
        (slice(n, n + 1), slice(a, min(O[0], a + rows)))
        for n in range(N)  # one sample per tile: the batch is a loop over chunks here
        for a in range(0, O[0], rows)
    ]
    return out, rows * math.prod(O[1:])


# Tile target for small groups (see :func:`group_tiles`).  It was 2 MiB until the tile
# threads were pinned; then 4 MiB measured (float32 medians, 11 interleaved reps, fwd /
# fwd+bwd ms): depthwise 8.3 -> 7.2 / 23.6 -> 21.6, 32 groups 9.3 -> 8.6 / 26.5 -> 26.0
# (8 MiB: the same as 4).
GROUP_CACHE_BYTES = 4 * 2**20
# Groups with fewer output channels than this are tiled by groups.
SMALL_GROUP = 16


def group_tiles(N: int, out_spatial, groups: int, bytes_per_group_position: int):
    """Tiles ``(batch slice, row slice, group slice)`` for a grouped convolution, the
    positions in the largest tile, and the groups per tile.

    With few output channels per group every group is its own small GEMM, so splitting
    a sample's groups over tiles keeps the GEMMs as they are while the tile's columns
    stay within ~:data:`GROUP_CACHE_BYTES`.  Measured (3x3 C256 28x28 N16, float32
    forward, two workers, medians): 32 groups 13.2 ms in half-sample row tiles -> 7.8 ms
    in tiles of 16 groups; depthwise 10.5 -> 8.2 ms in tiles of 64 channels.
    """
    O = tuple(out_spatial)
    per_sample = max(1, bytes_per_group_position * math.prod(O))
    G = _balanced(groups, min(groups, GROUP_CACHE_BYTES // per_sample))  # 16 + 16, not 24 + 8
    plan, most = tiles(N, O, bytes_per_group_position * G, cache=GROUP_CACHE_BYTES)
    out = [(bs, rows, slice(a, min(groups, a + G)))
           for bs, rows in plan for a in range(0, groups, G)]
    return out, most, G


def input_rows(rows: slice, spec, dim: int = 0) -> slice:
    """Rows of the padded input read by the output rows ``rows`` along spatial ``dim``."""
    s, d, k = spec.stride[dim], spec.dilation[dim], spec.kernel_size[dim]
    return slice(rows.start * s, (rows.stop - 1) * s + d * (k - 1) + 1)


def grad_buffer_shape(spec, in_spatial, out_spatial) -> tuple[int, ...]:
    """Spatial shape of a padded input-gradient buffer: the padded input.  (Defensive:
    for every ``out_spatial`` that conv and conv_transpose produce, the windows end
    within it; a transposed conv's are ``output_padding`` short of its end.)"""
    need = (d * (k - 1) + s * (o - 1) + 1 for k, d, s, o in
            zip(spec.kernel_size, spec.dilation, spec.stride, out_spatial))
    return tuple(max(p, n) for p, n in zip(spec.padded_shape(in_spatial), need))


def scratch(size: int, dtype) -> np.ndarray:
    """A flat scratch buffer, reused for every tile of one call."""
    return np.empty(max(1, size), dtype=dtype)


def put(dst: np.ndarray, src: np.ndarray, bias: np.ndarray | None = None) -> None:
    """``dst[...] = src``, plus ``bias`` (broadcast) in the same pass if given: how a
    forward adds the bias while a tile's result is in the cache, instead of a pass of
    its own over the whole output afterwards."""
    if bias is None:
        dst[...] = src
    else:
        np.add(src, bias, out=dst)


def add_bias(block: np.ndarray, bias: np.ndarray | None) -> None:
    """``block += bias`` in place (nothing without a bias)."""
    if bias is not None:
        block += bias
