"""Both gradients of a convolution from one column copy of the output gradient ``gy``:
for a stride-1 convolution (:func:`backward`) and for a transposed convolution
(:func:`forward_and_weight_grad`, at the end of the module).

Shapes as in :mod:`convolab.algorithms.direct`: x ``(N, C, *S)``, w ``(K, C/g, *k)``,
gy ``(N, K, *O)``.  On the flattened padded input plane (strides ``pst``), output ``o``
sits at ``l(o) = sum(o_i * pst_i)`` and reads input ``i = l(o) + off_t`` through tap
``t``.  Put ``gy`` on that grid (zeros between its rows and around it) and take, for a
run of input positions ``i``, the columns ``G[t, i] = gy_grid[i - off_t]``: one
contiguous run of the grid per tap, as in GEMM's flat forward.  Then both gradients
are products with the same columns::

    gx[c, i] = sum_(k, t) w[k, c, t] * G[(k, t), i]     (g, C/g, K/g*kk) @ (g, K/g*kk, run)
    gw[k, c, t] = sum_i G[(k, t), i] * xpad[c, i]       (g, K/g*kk, run) @ (g, run, C/g)

where ``xpad`` is the zero-padded input on the same grid (its padding adds nothing).
Computed separately, the input gradient (GEMM's col2im, or ``polyphase``: a forward of
``gy`` with the flipped kernel) and the weight gradient (GEMM: columns of ``x``) each
copy ``prod(k)`` times the data; here one copy serves both.  Measured (float32, medians
of interleaved calls after 0.15 s sleeps, two workers): depthwise 3x3 C256 28x28 N16
22.7 -> 12.0 ms, 32 groups 17.9 -> 13.7 ms.  It loses to Winograd, whose transforms cut
the FLOPs (3x3 C64 56x56: 35.7 separately, 51.4 fused), so :func:`convolab.select.
choose_backward` keeps layers whose weight gradient takes Winograd separate (where they
have at least as many output as input channels per group), and weighs the rest by the
cost model.

When the layer keeps its size after the first dimension (``O[1:] == S[1:]``, the usual
"same" padding), input and output share one unpadded grid and :func:`_backward_same`
takes the columns straight from ``gy``'s planes (:mod:`convolab.algorithms._samegrid`),
multiplies ``x`` as it is and writes ``gx`` in place: depthwise 3x3 C256 9.5 -> 8.7 ms,
2 groups C64 56x56 34.9 -> 26.5, depthwise 3x3 C32 112x112 19.8 -> 14.7.

Tiles: (samples, rows of the first input dimension, groups), each with its own slice
of the gy grid (the tile's rows plus the kernel's reach), so nothing of the size of the
data is allocated besides the two results.  NaN and inf: the products above multiply
``x`` by the zeros around ``gy`` (and ``w`` by them), where the separate paths never
pair them, so ``inf * 0`` would make NaNs PyTorch does not make; a non-finite ``w`` or
weight gradient (which any non-finite ``x`` or ``gy`` makes non-finite, but for a ``gy``
value whose window reads only padding: checked on its own) sends the call to the
separate paths (for a non-finite ``w``, the input gradient to ``direct``).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..options import get_options
from ..spec import ConvSpec
from . import _samegrid as samegrid
from ._finite import all_finite
from ._threads import Scratch, run_tiles_sum, workers

# Fixed seconds per call (beyond :func:`cost`): tiny layers measured 150-250 us (one
# worker, medians), against 80-180 for GEMM's two plain-lane gradients.
CALL_SECONDS = 180e-6


def applicable(spec: ConvSpec, x_shape, w_shape) -> bool:
    """A stride-1, non-transposed convolution with padding >= 0, a kernel of more than one
    tap, and something to compute."""
    return (
        not spec.transposed
        and all(s == 1 for s in spec.stride)
        and all(lo >= 0 and hi >= 0 for lo, hi in spec.padding)
        and math.prod(spec.kernel_size) > 1
        and math.prod(x_shape) > 0
        and all(o > 0 for o in spec.conv_out_shape(x_shape[2:]))
        and w_shape[0] > 0
    )


def cost(spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """(FLOPs at GEMM speed, bytes copied): GEMM's weight-gradient product twice, and one
    column copy of ``gy`` (``K*prod(k)`` rows, where GEMM's weight gradient copies
    ``C*prod(k)`` of ``x``: more when ``K > C``) plus the gy grid and the x and gx runs.
    For depthwise layers, whose 1 x kk products GEMM's model prices as memory traffic,
    one GEMM weight gradient's traffic.  Measured (float32, ms): depthwise 3x3 C256 28x28
    9.5 (GEMM's weight gradient alone 10.7), 7x7 C32 56x56 40.8 (FFT's two gradients
    81.9, GEMM's 52.6)."""
    from . import gemm

    flops, moved = gemm.cost("weight_grad", spec, p, itemsize)
    if flops == 0:
        return 0.0, moved
    N, C, K = p["N"], p["C"], p["K"]
    S = tuple(p["S"])
    grid = math.prod(spec.padded_shape(S)[1:]) * S[0]  # the grid positions of the input rows
    moved = N * grid * (K * math.prod(spec.kernel_size) + K + 2 * C) * itemsize
    # both products run over the grid, not just the outputs: about the same for
    # ``same`` padding (a grid up to 1.25x the outputs, its padded rows, is left as
    # fitted), but a ``valid`` layer's border multiplies too (7x7 dilation 2, 14x14 ->
    # 2x2: 196 grid positions for 4 outputs; fused ran 87 ms, the separate pair 33)
    flops *= max(1.0, grid / (math.prod(p["O"]) * 1.25))
    if spec.rank == 1:
        # fitted with GEMM's 1-D weight gradient (gemm._cost_1d) to the backward plans'
        # times on 184 1-D layers
        return 0.85 * 2 * flops, 0.85 * moved
    return 2 * flops, moved


def _grid_view(a: np.ndarray, plane, shape, start: int) -> np.ndarray:
    """View of the positions ``shape`` of a grid with the flattened strides of ``plane``,
    starting at element ``start`` of ``a``'s last axis."""
    item = a.strides[-1]
    pst = [math.prod(plane[i + 1:]) * item for i in range(len(plane))]
    return as_strided(a[..., start:], a.shape[:-1] + tuple(shape),
                      a.strides[:-1] + tuple(pst), writeable=a.flags.writeable)


def _geometry(spec: ConvSpec, S, O):
    """Flat-grid numbers: plane strides, the largest tap offset, where the interior run
    starts, one first-dimension row's run length, and one output row's run length."""
    Pd = spec.padded_shape(S)
    pst = [math.prod(Pd[i + 1:]) for i in range(len(Pd))]
    offmax = sum((k - 1) * d * p for k, d, p in zip(spec.kernel_size, spec.dilation, pst))
    i_lo = sum(lo * p for (lo, _), p in zip(spec.padding, pst))
    rest = sum((s - 1) * p for s, p in zip(S[1:], pst[1:])) + 1
    orow = sum((o - 1) * p for o, p in zip(O[1:], pst[1:])) + 1
    return Pd, pst, offmax, i_lo, rest, orow


def _gy_rows(J0: int, J1: int, pst0: int, orow: int, O0: int) -> tuple[int, int]:
    """Output rows ``[a, b)`` whose grid runs meet the grid range ``[J0, J1)``."""
    a = max(0, -(-(J0 - orow + 1) // pst0))
    b = min(O0, (J1 - 1) // pst0 + 1)
    return a, max(a, b)


def workspace(spec: ConvSpec, p: dict, dtype) -> int:
    """Scratch of every worker's tile: the gy grid slice, the columns, x and gx runs."""
    item = np.dtype(dtype).itemsize
    S, O = tuple(p["S"]), tuple(p["O"])
    if samegrid.applicable(spec, S, O):
        plan, per_tile = _plan_same(spec, p["N"], S, p["K"], p["g"], item,
                                    samegrid.Grid(spec, S, sign=-1))
    else:
        plan, per_tile = _plan(spec, p["N"], S, O, p["C"], p["K"], p["g"], item)
    return min(workers(), len(plan)) * per_tile * item


def _fitted(N: int, S, g: int, Kg: int, per_group_position: int, item: int, scratch):
    """Tiles ``(batch slice, input-row slice, group slice)`` as GEMM plans them for
    ``per_group_position`` bytes, and the scratch elements of the biggest
    (``scratch(plan, groups per tile)``), re-planned smaller while the part of a tile's
    scratch that does not grow with its positions (its halo or margins) takes it past a
    worker's share of the workspace."""
    from .gemm import _plan as gemm_plan

    budget = get_options().workspace_bytes // workers()
    for _ in range(8):
        plan, _, G = gemm_plan(N, S, g, Kg, per_group_position)
        per_tile = scratch(plan, G)
        one_row = all(r.stop - r.start == 1 and b.stop - b.start == 1 for b, r, _ in plan)
        if per_tile * item <= budget or one_row:
            break
        per_group_position = int(per_group_position * per_tile * item / budget * 1.1) + 1
    return plan, per_tile


def _plan(spec: ConvSpec, N: int, S, O, C: int, K: int, g: int, item: int):
    """Tiles of :func:`_backward` and their scratch: the columns, the gy grid slice (the
    tile's rows plus the kernel's reach), and the x and gx runs."""
    Cg, Kg = C // g, K // g
    kk = math.prod(spec.kernel_size)
    _, pst, offmax, _, rest, _ = _geometry(spec, S, O)
    extra = pst[0] / max(1, math.prod(S[1:]))  # grid positions per input position
    per_group_position = int((Kg * kk + Kg + 2 * Cg) * item * extra) + 1

    def scratch(plan, G):
        most = 0
        for bs, rows, _ in plan:
            n, L = bs.stop - bs.start, (rows.stop - rows.start - 1) * pst[0] + rest
            # the grid slice spans at most the columns' reach plus a row on either side
            most = max(most, n * G * (Kg * (offmax + L + 3 * pst[0]) + Kg * kk * L + 2 * Cg * L))
        return most

    return _fitted(N, S, g, Kg, per_group_position, item, scratch)


def backward(x: np.ndarray, gy: np.ndarray, w: np.ndarray, spec: ConvSpec):
    """``(grad_input, grad_weight)`` of ``conv(x, w)`` for the output gradient ``gy``."""
    w_finite = all_finite(w)
    if w_finite and _reads_of_padding_finite(gy, spec, x.shape[2:]):
        with np.errstate(invalid="ignore", over="ignore"):
            if samegrid.applicable(spec, x.shape[2:], gy.shape[2:]):
                gx, gw = _backward_same(x, gy, w, spec)
            else:
                gx, gw = _backward(x, gy, w, spec)
        if all_finite(gw):
            return gx, gw
    # the separate paths pair non-finite values as PyTorch does (a non-finite weight's
    # input gradient only ``direct``: see convolab.ops.conv._input_grad)
    from . import direct, gemm

    ig = gemm if w_finite else direct
    return ig.input_grad(gy, w, spec, x.shape[2:]), gemm.weight_grad(x, gy, spec)


def _reads_of_padding_finite(gy: np.ndarray, spec: ConvSpec, S) -> bool:
    """Whether ``gy`` is finite where an output's window reads nothing but the zero
    padding in some dimension (a big padding, or a dilation that steps over a short
    input).  The products here run over the input's positions only, so such an inf or
    NaN would meet no value at all and leave the weight gradient finite, where torch
    multiplies it by the padding's zeros (NaN).  Usual layers have no such outputs."""
    for i, (n, k, d, (lo, hi)) in enumerate(zip(S, spec.kernel_size, spec.dilation,
                                               spec.padding)):
        if lo <= d * (k - 1) and hi <= d * (k - 1) and n >= d:
            continue  # no window lies wholly in a padding, nor steps over the input
        o = np.arange(gy.shape[2 + i])
        hit = np.zeros(o.shape, dtype=bool)
        for t in range(k):
            hit |= (o + t * d >= lo) & (o + t * d < lo + n)
        if not hit.all() and not all_finite(np.take(gy, np.flatnonzero(~hit), axis=2 + i)):
            return False
    return True


def _sizes(x, gy, w, spec):
    """``N, C, S, O, K, g, C/g, K/g, k, prod(k)`` and the result dtype of a backward."""
    N, C = x.shape[:2]
    K, g = w.shape[0], spec.groups
    k = tuple(spec.kernel_size)
    return (N, C, tuple(x.shape[2:]), tuple(gy.shape[2:]), K, g, C // g, K // g, k,
            math.prod(k), np.result_type(x, gy, w))


def _backward(x, gy, w, spec):
    N, C, S, O, K, g, Cg, Kg, k, kk, dtype = _sizes(x, gy, w, spec)
    item = dtype.itemsize
    Pd, pst, offmax, i_lo, rest, orow = _geometry(spec, S, O)
    # w as (g, C/g, K/g*kk), the taps flipped: the columns below run the taps backwards
    wr = np.ascontiguousarray(
        w.reshape(g, Kg, Cg, kk)[..., ::-1].transpose(0, 2, 1, 3).reshape(g, Cg, Kg * kk))
    gx = np.empty((N, C) + S, dtype=dtype)
    plan, per_tile = _plan(spec, N, S, O, C, K, g, item)
    G = max(gs.stop - gs.start for _, _, gs in plan)
    # beside its buffer, each worker holds its tile's partial sum of the weight gradient
    bufs = Scratch(per_tile, dtype, held=G * Kg * kk * Cg * item)
    tap_strides = tuple(d * p * item for d, p in zip(spec.dilation, pst))

    def run(tile):
        bs, rows, gs = tile
        n, ng, nr = bs.stop - bs.start, gs.stop - gs.start, rows.stop - rows.start
        L = (nr - 1) * pst[0] + rest  # the tile's run of input positions on the grid
        J0 = i_lo + rows.start * pst[0] - offmax  # gy-grid positions the columns read
        J1 = J0 + offmax + L
        a, b = _gy_rows(J0, J1, pst[0], orow, O[0])
        B0 = min(J0, a * pst[0])
        B1 = max(J1, (b - 1) * pst[0] + orow) if b > a else J1
        buf = bufs.get()
        used = n * ng * Kg * (B1 - B0)
        grid = buf[:used].reshape(n, ng * Kg, B1 - B0)
        grid[...] = 0
        if b > a:
            _grid_view(grid, Pd, (b - a,) + O[1:], a * pst[0] - B0)[...] = (
                gy[bs, gs.start * Kg:gs.stop * Kg, a:b])
        # columns (g, K/g, *k, n, L): tap t' (flipped order) reads grid[J0 + off_t' + i]
        cols = buf[used:used + n * ng * Kg * kk * L].reshape((ng, Kg) + k + (n, L))
        used += cols.size
        sg = grid.strides
        np.copyto(cols, as_strided(grid[..., J0 - B0:], cols.shape,
                                   (Kg * sg[1], sg[1]) + tap_strides + (sg[0], item),
                                   writeable=False))
        cols = cols.reshape(ng, Kg * kk, n * L)
        xr = buf[used:used + n * ng * Cg * L].reshape(ng, Cg, n, L)
        used += xr.size
        xr[...] = 0
        St = (nr,) + S[1:]
        _grid_view(xr.transpose(2, 0, 1, 3), Pd, St, 0)[...] = (
            x[bs, gs.start * Cg:gs.stop * Cg, rows].reshape((n, ng, Cg) + St))
        gxr = buf[used:used + n * ng * Cg * L].reshape(ng, Cg, n * L)
        np.matmul(wr[gs], cols, out=gxr)
        gx[bs, gs.start * Cg:gs.stop * Cg, rows] = _grid_view(
            gxr.reshape(ng * Cg, n, L).transpose(1, 0, 2), Pd, St, 0)
        return [(gs, np.matmul(cols, xr.reshape(ng, Cg, n * L).transpose(0, 2, 1)))]

    gw = run_tiles_sum(run, plan, np.zeros((g, Kg * kk, Cg), dtype=dtype), bufs)
    gw = gw.reshape(g, Kg, kk, Cg)[:, :, ::-1].transpose(0, 1, 3, 2)
    return gx, np.ascontiguousarray(gw).reshape((K, Cg) + k)


def _plan_same(spec: ConvSpec, N: int, S, K: int, g: int, item: int, grid):
    """Tiles of :func:`_backward_same` and their scratch: the columns, and the tile's run
    of gy with its margins."""
    Kg = K // g
    kk = math.prod(spec.kernel_size)

    def scratch(plan, G):
        n = max((bs.stop - bs.start for bs, _, _ in plan), default=1)
        rows = max((r.stop - r.start for _, r, _ in plan), default=1)
        return grid.scratch_size(n, G * Kg, rows)

    return _fitted(N, S, g, Kg, Kg * (kk + 1) * item, item, scratch)


def _backward_same(x, gy, w, spec):
    """:func:`_backward` for a layer that keeps its size after the first dimension: the
    columns of ``gy`` are runs of its unpadded planes read backwards
    (:mod:`convolab.algorithms._samegrid`), ``x`` multiplies them as it is, and ``gx``
    is written in place, so neither the gy grid, nor the x runs, nor the gx scatter of
    the padded-grid version are needed."""
    N, C, S, O, K, g, Cg, Kg, k, kk, dtype = _sizes(x, gy, w, spec)
    item = dtype.itemsize
    grid = samegrid.Grid(spec, S, sign=-1)
    row, Sf, Of = grid.row, math.prod(S), math.prod(O)
    wr = np.ascontiguousarray(w.reshape(g, Kg, Cg, kk).transpose(0, 2, 1, 3)).reshape(
        g, Cg, Kg * kk)
    xf = x.reshape(N, C, Sf)
    gyf = gy.reshape(N, K, Of)
    gx = np.empty((N, C, Sf), dtype=dtype)
    plan, per_tile = _plan_same(spec, N, S, K, g, item, grid)
    G = max(gs.stop - gs.start for _, _, gs in plan)
    nmax = max(bs.stop - bs.start for bs, _, _ in plan)
    # beside its buffer, each worker holds its tile's products of the weight gradient
    # (one per sample) and their sum
    bufs = Scratch(per_tile, dtype, held=(nmax + (nmax > 1)) * G * Kg * kk * Cg * item)

    def run(tile):
        bs, rows, gs = tile
        n, ng = bs.stop - bs.start, gs.stop - gs.start
        L = (rows.stop - rows.start) * row
        cols = grid.tile_columns(gyf[bs, gs.start * Kg:gs.stop * Kg], Of, rows, bufs.get())
        cols = cols.reshape(n, ng, Kg * kk, L)
        ps = slice(rows.start * row, rows.stop * row)
        out = gx[bs, gs.start * Cg:gs.stop * Cg, ps].reshape(n, ng, Cg, L)
        np.matmul(wr[gs], cols, out=out)
        xt = xf[bs, gs.start * Cg:gs.stop * Cg, ps].reshape(n, ng, Cg, L)
        prod = np.matmul(cols, xt.transpose(0, 1, 3, 2))  # (n, ng, Kg*kk, Cg)
        return [(gs, prod.sum(axis=0) if n > 1 else prod[0])]

    gw = run_tiles_sum(run, plan, np.zeros((g, Kg * kk, Cg), dtype=dtype), bufs)
    gw = gw.reshape(g, Kg, kk, Cg).transpose(0, 1, 3, 2)
    return gx.reshape((N, C) + S), np.ascontiguousarray(gw).reshape((K, Cg) + k)


# ---------------------------------------------------------------------------
# The transposed convolution's backward: one im2col of gy for both gradients.
#
# y = conv_transpose(x, w) has gx = conv(gy, w) and gw = corr(gy, x): both read the
# columns of gy (GEMM's forward and its weight gradient each copy them), so the
# columns are copied once and multiplied twice.


def applicable_transposed(spec: ConvSpec, gy_shape, w_shape, out_spatial) -> bool:
    """GEMM's general im2col path would run both gradients: not a 1x1 layer, not the
    flat (stride 1) or MEC lowerings of the forward (faster than plain columns there),
    not 3-D planes too big for one tile."""
    from . import gemm

    O = tuple(out_spatial)
    C = gy_shape[1]
    kk = math.prod(spec.kernel_size)
    return (spec.transposed and math.prod(gy_shape) > 0 and math.prod(O) > 0
            and w_shape[0] > 0
            and not gemm._is_pointwise(spec, gy_shape[2:], O)
            and not gemm._mec(spec, O) and not gemm._flat(spec, gy_shape[2:], O)
            and not gemm._plane_slabs(spec, O, (C * kk + w_shape[1] * spec.groups) * 8))


def forward_and_weight_grad(a: np.ndarray, w: np.ndarray, b: np.ndarray, spec: ConvSpec,
                            out_spatial):
    """``(conv(a, w), corr(a, b))`` with ``out_spatial`` outputs, from one copy of ``a``'s
    columns per tile: for a transposed convolution's backward, ``a = gy`` and ``b = x``.
    Tiles as GEMM's (samples, output rows, groups)."""
    from . import gemm

    g = spec.groups
    N, C = a.shape[:2]
    K = w.shape[0]
    O = tuple(out_spatial)
    P = math.prod(O)
    dtype = np.result_type(a, w, b)
    item = dtype.itemsize
    kk = math.prod(spec.kernel_size)
    Cg, Kg = C // g, K // g
    Ckg = Cg * kk
    wm = gemm._wmat(w, g)
    bg = b.reshape(N, g, Kg, P)
    y = np.empty((N, K, P), dtype=dtype)
    plan, most, G = gemm._plan(N, O, g, Kg, (Ckg + Kg) * item)
    # beside its buffer, each worker holds its tile's partial sum of the weight gradient
    bufs = Scratch(most * G * (Ckg + Kg) + gemm._input_tile_size(plan, spec, a.shape[2:], G * Cg),
                   dtype, held=G * Ckg * Kg * item)

    def run(tile):
        bs, rows, gs = tile
        ng = gs.stop - gs.start
        # the tile pads its own rows of ``a`` (on the worker, in cache), as GEMM's forward
        # does, instead of the whole of ``a`` padded in the calling thread first
        at, buf = gemm._input_tile(a, spec, bs, slice(gs.start * Cg, gs.stop * Cg), rows,
                                   bufs.get())
        cols = gemm._tile_cols(at, spec, slice(None), slice(0, rows.stop - rows.start), O,
                               buf, batch_inner=True)  # (ng*Ckg, n, Pt)
        n, Pt = cols.shape[1:]
        cols = cols.reshape(ng, Ckg, n * Pt)
        ps = gemm._row_positions(rows, O)
        yt = buf[ng * Ckg * n * Pt: ng * (Ckg + Kg) * n * Pt].reshape(ng, Kg, n * Pt)
        np.matmul(wm[gs], cols, out=yt)
        y[bs, gs.start * Kg:gs.stop * Kg, ps] = yt.reshape(ng * Kg, n, Pt).transpose(1, 0, 2)
        bt = bg[bs, gs, :, ps].transpose(1, 2, 0, 3).reshape(ng, Kg, n * Pt)
        if Kg >= 16:  # the product order of GEMM's weight gradient (measured there)
            return [(gs, np.matmul(cols, bt.transpose(0, 2, 1)))]
        return [(gs, np.matmul(bt, cols.transpose(0, 2, 1)).transpose(0, 2, 1))]

    gw = run_tiles_sum(run, plan, np.zeros((g, Ckg, Kg), dtype=dtype), bufs)
    gw = np.ascontiguousarray(gw.transpose(0, 2, 1)).reshape((K, Cg) + tuple(spec.kernel_size))
    return y.reshape((N, K) + O), gw
