"""The input gradient (and so the transposed convolution) as forward convolutions; and
a strided forward with few output channels as one stride-1 forward (space to depth,
:func:`forward`, see the comment above it).

Shapes as in :mod:`convolab.algorithms.direct`.  The input gradient of a
convolution is ``gxpad[i] = sum_{o, t : o*s + t*d = i} w[t] gy[o]``.  Split the
padded input positions by their *phase* ``phi = i mod s`` (per spatial dimension):
the taps that reach phase ``phi`` are those with ``t*d = phi (mod s)``, an
arithmetic progression ``t0, t0 + s', t0 + 2 s', ...`` with ``s' = s / gcd(s, d)``,
and tap ``t0 + j s'`` reads ``gy[q - m0 - j d']`` for ``i = q s + phi``, with
``m0 = (t0 d - phi) / s`` and ``d' = d / gcd(s, d)``.  So every phase is an ordinary
stride-1 convolution of ``gy`` (dilation ``d'``) with the flipped sub-kernel
``w[t0::s']`` whose in/out channels are swapped (per group)::

    gxpad[..., phi::s] = conv(pad(gy, (m0 + (J-1) d', ...)), flip(w[t0::s'])^T)

With stride 1 there is one phase and this is the textbook "the input gradient is
a full correlation with the flipped kernel".  Each phase runs through the forward
algorithm the automatic choice picks for it (:func:`convolab.select.choose`; GEMM:
an im2col *copy* plus a GEMM, instead of the GEMM input gradient's ``w^T @ gy``
followed by a col2im of ``prod(k)`` read-modify-write adds; FFT for a large kernel:
overlap-save blocks instead of one transform of the whole signal).  Only the
output positions that survive the crop of the padding are computed.  A phase that
no tap reaches is zero.

When every kernel size is a multiple of its stride (dilation 1: the 4x4 and 2x2
stride-2 transposed convolutions of decoders), all phases read the same window
``gy[q - j]``, ``j < k/s``, and become the output channels of *one* forward convolution,
followed by one strided copy that interleaves them (:func:`_input_grad_unified`).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .. import select
from ..options import get_options
from . import gemm
from ._finite import falls_back_to_gemm
from ._tiles import put
from ..spec import ConvSpec


# input_grad takes ``bias=`` and adds it while writing the phases (a transposed
# convolution's forward); see :func:`convolab.ops.conv._input_grad`
INPUT_GRAD_ADDS_BIAS = True


# forward takes ``bias=`` (handed to the stride-1 forward it runs where that one takes it)
FORWARD_ADDS_BIAS = True


def applicable(role: str, spec: ConvSpec, x_shape, w_shape, dtype) -> bool:
    """Every input gradient; forwards with a stride, undilated, with padding >= 0 (no
    crop), a kernel longer than its stride somewhere, at most :data:`S2D_OUT` output
    channels per group and more than one input channel per group (not depthwise), whose
    space-to-depth copy (:func:`_s2d_input`) fits the workspace budget."""
    if role == "forward":
        g = spec.groups
        return (any(s > 1 for s in spec.stride) and all(d == 1 for d in spec.dilation)
                and w_shape[0] // g <= S2D_OUT and w_shape[1] > 1
                and all(lo >= 0 and hi >= 0 for lo, hi in spec.padding)
                and any(k > s for k, s in zip(spec.kernel_size, spec.stride))
                and len(x_shape) == spec.rank + 2
                and _s2d_bytes(spec, x_shape, np.dtype(dtype).itemsize)
                <= get_options().workspace_bytes)
    return role == "input_grad"


# -- the strided forward as one stride-1 forward (space to depth) ------------------------
#
# y[o] = sum_t w[t] xp[o s + t] (xp: the padded input).  With t = u s + a (phase
# a < s, u < ku = ceil(k / s)) that is sum_a sum_u w[u s + a] xa[o + u], xa[j] =
# xp[j s + a]: a stride-1 correlation whose input channels are (channel, phase) pairs
# and whose kernel has ku taps, the taps u s + a >= k zero.  The ku-tap layer then runs
# on whatever stride-1 forward the automatic choice picks for it (Winograd F(4x4, 4x4)
# for a 7x7 stride-2 kernel, products first for few output channels), instead of GEMM's
# column copy of k taps at stride s: 7x7 stride 2 C256 -> K8 on 64x64 25 -> 11 ms.  The
# zero taps meet real inputs (inf * 0 = NaN where torch's result is finite): a result
# with a NaN or inf in it is recomputed by GEMM (_finite.falls_back_to_gemm); a finite
# one holds every product torch's does, plus exact zeros.


# The most output channels per group of the space-to-depth forward.  Measured forced
# against GEMM (.dev/s2dfit.py, float32, 120 random strided layers in three sets): with
# 1-8 output channels it ran up to 5x faster on 2-D and 3-D layers of 16 or more input
# channels (7x7 stride 2 C128 -> K3 on 112x112: 15.8 -> 3.7 ms), and slower with 3 input
# channels, on some 1-D signals and on 8^3 volumes, where the estimates keep GEMM (on the
# 80 layers of the last two sets the automatic choice lost 2-3 % against the faster of
# the two on each); with 16-256 output channels it ran 1.2-2x slower, and its stride-1
# layer's estimates (F(4x4, 4x4) Winograd on C*4 channels) were up to 3.5x low
S2D_OUT = 8


def _s2d_geometry(spec: ConvSpec, O):
    """Per dimension, the stride-1 layer's taps ``ku`` and input length ``O + ku - 1``."""
    ku = tuple(-(-k // s) for k, s in zip(spec.kernel_size, spec.stride))
    return ku, tuple(o + u - 1 for o, u in zip(O, ku))


def _s2d_bytes(spec: ConvSpec, x_shape, itemsize: int) -> int:
    """Bytes of the space-to-depth input of a forward on ``x_shape``."""
    O = spec.conv_out_shape(x_shape[2:])
    if any(o < 1 for o in O):
        return 0
    _, J = _s2d_geometry(spec, O)
    return x_shape[0] * x_shape[1] * math.prod(spec.stride) * math.prod(J) * itemsize


def _s2d_input(x: np.ndarray, spec: ConvSpec, J) -> np.ndarray:
    """``(N, C * prod(s), *J)``: channel ``(c, a..)``, position ``j`` holds the padded
    input at ``j s + a`` (zero past the input)."""
    N, C = x.shape[:2]
    s = tuple(spec.stride)
    out = np.zeros((N, C) + s + tuple(J), dtype=x.dtype)
    for phase in itertools.product(*(range(ss) for ss in s)):
        src, dst = [], []
        for a, ss, (lo, _), n, jn in zip(phase, s, spec.padding, x.shape[2:], J):
            j0 = max(0, -(-(lo - a) // ss))  # first j with j s + a - lo >= 0
            j1 = min(jn, (n - 1 + lo - a) // ss + 1)  # past the last one inside x
            if j1 <= j0:
                break
            dst.append(slice(j0, j1))
            first = j0 * ss + a - lo
            src.append(slice(first, first + (j1 - j0 - 1) * ss + 1, ss))
        else:
            out[(slice(None), slice(None)) + phase + tuple(dst)] = x[
                (slice(None), slice(None)) + tuple(src)]
    return out.reshape((N, C * math.prod(s)) + tuple(J))


def _s2d_weight(w: np.ndarray, spec: ConvSpec, ku) -> np.ndarray:
    """``(K, C/g * prod(s), *ku)``: tap ``u`` of in channel ``(c, a..)`` is ``w``'s tap
    ``u s + a`` (zero past the kernel)."""
    K, Cg = w.shape[:2]
    s = tuple(spec.stride)
    out = np.zeros((K, Cg) + s + tuple(ku), dtype=w.dtype)
    for phase in itertools.product(*(range(ss) for ss in s)):
        sub = w[(slice(None), slice(None)) + tuple(slice(a, None, ss) for a, ss in zip(phase, s))]
        out[(slice(None), slice(None)) + phase + tuple(slice(0, n) for n in sub.shape[2:])] = sub
    return out.reshape((K, Cg * math.prod(s)) + tuple(ku))


def _s2d_spec(spec: ConvSpec, ku) -> ConvSpec:
    return ConvSpec(tuple(ku), (1,) * spec.rank, ((0, 0),) * spec.rank, (1,) * spec.rank,
                    spec.groups)


@falls_back_to_gemm("forward")
def forward(x: np.ndarray, w: np.ndarray, spec: ConvSpec, out_spatial=None, *,
            bias=None) -> np.ndarray:
    """The strided forward as one stride-1 forward of the space-to-depth input (see
    above), plus ``bias`` per channel if given."""
    O = spec.conv_out_shape(x.shape[2:]) if out_spatial is None else tuple(out_spatial)
    ku, J = _s2d_geometry(spec, O)
    xs, ws, sub = _s2d_input(x, spec, J), _s2d_weight(w, spec, ku), _s2d_spec(spec, ku)
    dtype = np.result_type(x, w)
    algo = select.choose("forward", sub, xs.shape, ws.shape, dtype).module
    if bias is not None and getattr(algo, "FORWARD_ADDS_BIAS", False):
        return algo.forward(xs, ws, sub, O, bias=bias)
    y = algo.forward(xs, ws, sub, O)
    if bias is not None:
        y += bias.reshape((-1,) + (1,) * spec.rank)
    return y


def _s2d_problem(spec: ConvSpec, p: dict, itemsize: int):
    """The stride-1 layer of a forward: its algorithm (the automatic choice), spec and
    problem sizes."""
    ku, J = _s2d_geometry(spec, p["O"])
    sub = _s2d_spec(spec, ku)
    P = math.prod(spec.stride)
    x_shape = (p["N"], p["C"] * P) + J
    w_shape = (p["K"], p["C"] // p["g"] * P) + ku
    dtype = np.float32 if itemsize == 4 else np.float64
    mod = select.choose("forward", sub, x_shape, w_shape, dtype).module
    return mod, sub, dict(p, C=p["C"] * P, S=J)


def _s2d_copies(sub: ConvSpec, q: dict) -> int:
    """Elements of the space-to-depth input and weight of the stride-1 layer ``q``."""
    return (q["N"] * q["C"] * math.prod(q["S"])
            + q["K"] * q["C"] // q["g"] * math.prod(sub.kernel_size))


def _s2d_cost(spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """The stride-1 layer's cost, plus the space-to-depth input and weight (zeroed,
    then written; the input read)."""
    mod, sub, q = _s2d_problem(spec, p, itemsize)
    flops, nbytes = mod.cost("forward", sub, q, itemsize)
    return flops, nbytes + 3 * _s2d_copies(sub, q) * itemsize


def _phase_plan(spec: ConvSpec, in_spatial):
    """Per dimension, per phase: ``(t0, step, taps, dil, first q, count, first gx index,
    left pad of gy)`` or None when no tap reaches the phase (or no position survives)."""
    plans = []
    for n, k, s, d, (lo, _) in zip(in_spatial, spec.kernel_size, spec.stride,
                                    spec.dilation, spec.padding):
        gcd = math.gcd(s, d)
        step, dil = s // gcd, d // gcd
        dim = []
        for phi in range(s):
            t0 = next((t for t in range(min(k, step)) if (t * d) % s == phi), None)
            qa = max(0, -(-(lo - phi) // s))  # first phase position inside the crop
            qb = -(-(lo + n - phi) // s)
            if t0 is None or qb <= qa:
                dim.append(None if qb > qa else "empty")
                continue
            J = len(range(t0, k, step))
            m0 = (t0 * d - phi) // s
            dim.append((t0, step, J, dil, qa, qb - qa, qa * s + phi - lo, m0 + (J - 1) * dil - qa))
        plans.append(dim)
    return plans


def _unified(spec: ConvSpec) -> bool:
    """Stride > 1, dilation 1 and every kernel size a multiple of its stride (the 4x4
    stride-2 and 2x2 stride-2 transposed convolutions of decoders): every phase then
    has ``k/s`` taps reading the same window ``gy[q - j]``, so all phases are *one*
    forward convolution whose output channels are (phase, channel) pairs."""
    return (any(s > 1 for s in spec.stride) and all(d == 1 for d in spec.dilation)
            and all(k % s == 0 for k, s in zip(spec.kernel_size, spec.stride)))


def _unified_plan(spec: ConvSpec, in_spatial, O):
    """Window ``J = k/s``, phase rows ``[qa, qa + Q)`` covering the crop, and the pad
    (negative: crop) of ``gy`` on each side, per dimension."""
    J, qa, Q, lows, highs = [], [], [], [], []
    for k, s, (lo, _), n, o in zip(spec.kernel_size, spec.stride, spec.padding,
                                   in_spatial, O):
        j = k // s
        a, b = lo // s, -(-(lo + n) // s)
        left = j - 1 - a
        J.append(j)
        qa.append(a)
        Q.append(b - a)
        lows.append(left)
        highs.append((b - a) + j - 1 - o - left)
    return tuple(J), tuple(qa), tuple(Q), lows, highs


def _unified_weight(w: np.ndarray, g: int, J, s) -> np.ndarray:
    """``(g*prod(s)*Cg, Kg, *J)``: tap ``t = j*s + phi`` of ``w`` at out channel ``(g, phi,
    Cg)``, window index ``J - 1 - j`` (flipped), in channels ``Kg`` swapped in.  (A gather
    by cached indices measured 0.09 instead of 0.24 ms for the suite's 128 -> 64 4x4
    kernel, but the index arrays would stay in memory, 4-8 bytes per weight, for every
    shape seen: not kept.)"""
    K, Cg = w.shape[:2]
    r = len(J)
    wv = w.reshape((g, K // g, Cg) + tuple(v for jj, ss in zip(J, s) for v in (jj, ss)))
    wv = wv[(slice(None),) * 3 + tuple(v for _ in range(r) for v in (slice(None, None, -1),
                                                                     slice(None)))]
    order = (0,) + tuple(4 + 2 * i for i in range(r)) + (2, 1) + tuple(3 + 2 * i for i in range(r))
    return np.ascontiguousarray(wv.transpose(order)).reshape(
        (g * math.prod(s) * Cg, K // g) + tuple(J))


def _phase_slices(spec: ConvSpec, in_spatial, qa, Q):
    """Per phase ``phi``: ``(phi, src, dst)``, ``src`` the slices of the phase's positions
    ``q < Q`` that survive the crop and ``dst`` where they go in ``gx`` (stride ``s``).
    Full position ``q*s + phi`` is ``gx[q*s + phi - c0]``, ``c0 = lo - qa*s``."""
    s = tuple(spec.stride)
    c0 = [lo - a * ss for (lo, _), a, ss in zip(spec.padding, qa, s)]
    out = []
    for phi in itertools.product(*(range(ss) for ss in s)):
        src, dst = [], []
        for p, ss, c, q, n in zip(phi, s, c0, Q, in_spatial):
            q0 = max(0, -(-(c - p) // ss))  # first q with q*s + p - c >= 0
            q1 = min(q, -(-(n + c - p) // ss))  # past the last q with q*s + p - c < n
            src.append(slice(q0, max(q0, q1)))
            dst.append(q0 * ss + p - c)
        if all(sl.stop > sl.start for sl in src):
            out.append((phi, src, dst))
    return out


def _input_grad_unified(gy, w, spec: ConvSpec, in_spatial, bias=None) -> np.ndarray:
    """``gxpad[q s + phi] = sum_j w[phi + j s] gy[q - j]`` for every phase ``phi`` at once:
    one forward convolution of ``gy`` (window ``J = k/s``) with ``prod(s) * C`` output
    channels, whose blocks are written straight into their strided places in ``gx``
    (cropping the padding, adding ``bias`` if given).

    The GEMM's stride-1 flat lowering hands each tile's block over while it is in the
    cache (:func:`convolab.algorithms.gemm.forward`'s ``store``), on the tile workers;
    before, the interleave was a pass of its own after the GEMM, in the calling thread:
    0.5-1.8 ms of a 7.5-10 ms 4x4 s2 forward (C128 -> 64 on 14x14, N16), by the state of
    the machine."""
    g, r = spec.groups, spec.rank
    N = gy.shape[0]
    K, Cg = w.shape[:2]
    s = tuple(spec.stride)
    P = math.prod(s)
    O = tuple(gy.shape[2:])
    dtype = np.result_type(gy, w)
    J, qa, Q, lows, highs = _unified_plan(spec, in_spatial, O)
    wall = _unified_weight(w, g, J, s)
    gx = np.empty((N, g, Cg) + in_spatial, dtype=dtype)
    phases = _phase_slices(spec, in_spatial, qa, Q)
    bv = None if bias is None else bias.reshape((g, Cg) + (1,) * r)

    def store(bs, ks, rows, block):
        # ks: whole groups of (phi, Cg) channels; rows: positions along the first dimension
        g0, g1 = ks.start // (P * Cg), ks.stop // (P * Cg)
        blk = block.reshape((block.shape[0], g1 - g0) + s + (Cg,) + block.shape[2:])
        for phi, src, dst in phases:
            a, b = max(src[0].start, rows.start), min(src[0].stop, rows.stop)
            if b <= a:
                continue
            sl = [slice(a - rows.start, b - rows.start)] + src[1:]
            starts = [dst[0] + (a - src[0].start) * s[0]] + dst[1:]
            d = tuple(slice(st, st + (x.stop - x.start - 1) * ss + 1, ss)
                      for st, x, ss in zip(starts, sl, s))
            part = blk[(slice(None), slice(None)) + phi + (slice(None),) + tuple(sl)]
            put(gx[(bs, slice(g0, g1), slice(None)) + d], part,
                None if bv is None else bv[g0:g1])

    with gemm._beside(wall.nbytes):  # the forward's tiles plan beside the phase weights
        ran = _forward_padded(gy, wall, list(zip(lows, highs)), (1,) * r, g, Q, store=store)
    if not ran:
        gx[...] = 0 if bv is None else bv
    return gx.reshape((N, g * Cg) + in_spatial)


def _forward_padded(gy, wsub, pads, dilation, g, counts, store=None):
    """The stride-1 correlation of ``gy``, padded by the signed ``(lo, hi)`` of ``pads``
    (negative: cropped), with ``wsub``, giving ``counts`` positions, on the forward the
    automatic choice picks; None when the crop leaves nothing of ``gy``.  With ``store``
    (see :func:`convolab.algorithms.gemm.forward`) the result goes there and True is
    returned instead."""
    r = len(pads)
    cut = tuple(slice(max(0, -lo), o - max(0, -hi)) for (lo, hi), o in zip(pads, gy.shape[2:]))
    if any(c.stop <= c.start for c in cut):
        return None
    src = gy[(slice(None), slice(None)) + cut]
    sub = ConvSpec(tuple(wsub.shape[2:]), (1,) * r,
                   tuple((max(0, lo), max(0, hi)) for lo, hi in pads), tuple(dilation), g)
    dtype = np.result_type(gy, wsub)
    algo = select.choose("forward", sub, src.shape, wsub.shape, dtype).module
    if store is None:
        return algo.forward(src, wsub, sub, counts)
    if algo is gemm:
        gemm.forward(src, wsub, sub, counts, store=store)
    else:
        y = algo.forward(src, wsub, sub, counts)
        store(slice(0, y.shape[0]), slice(0, y.shape[1]), slice(0, counts[0]), y)
    return True


def _flipped_transposed(w: np.ndarray, g: int) -> np.ndarray:
    """(K, C/g, *k) -> (C, K/g, *k): in and out channels swapped within each group."""
    K, Cg = w.shape[:2]
    k = w.shape[2:]
    wt = w.reshape((g, K // g, Cg) + k).swapaxes(1, 2).reshape((g * Cg, K // g) + k)
    return wt


def input_grad(gy: np.ndarray, w: np.ndarray, spec: ConvSpec, in_spatial,
               bias=None) -> np.ndarray:
    """gx = conv_transpose(gy, w): gy (N, K, *O), w (K, C/g, *k) -> (N, C, *in_spatial),
    plus ``bias`` ``(C,)`` per channel if given (as a transposed convolution's forward)."""
    if _unified(spec):
        return _input_grad_unified(gy, w, spec, tuple(in_spatial), bias)
    gx = _input_grad_phases(gy, w, spec, tuple(in_spatial))
    if bias is not None:
        gx += bias.reshape((-1,) + (1,) * spec.rank)
    return gx


def _phase_kernel(w: np.ndarray, wt: np.ndarray, g: int, starts, steps) -> np.ndarray:
    """A phase's kernel ``(C, K/g, *J)``, contiguous: taps ``starts[i]::steps[i]`` of
    ``wt`` (:func:`_flipped_transposed` of ``w``), flipped.  With many channel pairs it is
    written tap by tap, one transposed ``(K/g, C/g)`` block each: the strided gather of
    the whole slice walks 1-2 element runs (the four phases of a 3x3 stride-2 C256 -> 256
    kernel, 3.96 ms per call against 0.96)."""
    K, Cg = w.shape[:2]
    k = w.shape[2:]
    if K * Cg < 4096:
        cut = tuple(slice(a, None, b) for a, b in zip(starts, steps))
        sub = wt[(slice(None), slice(None)) + cut]
        return np.ascontiguousarray(sub[(Ellipsis,) + (slice(None, None, -1),) * len(k)])
    taps = [range(a, n, b) for a, n, b in zip(starts, k, steps)]
    J = tuple(len(t) for t in taps)
    out = np.empty((g, Cg, K // g) + J, dtype=w.dtype)
    wg = w.reshape((g, K // g, Cg) + tuple(k))
    for j in itertools.product(*(range(n) for n in J)):
        t = tuple(tp[n - 1 - i] for tp, n, i in zip(taps, J, j))
        out[(slice(None),) * 3 + j] = wg[(slice(None),) * 3 + t].swapaxes(1, 2)
    return out.reshape((g * Cg, K // g) + J)


def _input_grad_phases(gy: np.ndarray, w: np.ndarray, spec: ConvSpec, in_spatial) -> np.ndarray:
    """The phases one by one, each a forward convolution written into its strided place."""
    g = spec.groups
    N = gy.shape[0]
    C = w.shape[1] * g
    O = tuple(gy.shape[2:])
    in_spatial = tuple(in_spatial)
    dtype = np.result_type(gy, w)
    wt = _flipped_transposed(w, g)
    plans = _phase_plan(spec, in_spatial)
    full = all(p is not None for dim in plans for p in dim)
    # allocated once a phase needs it: the stride-1 shortcut below returns the phase's
    # own result, and a result-sized array made before it was scratch beside it
    gx = None
    for combo in itertools.product(*plans):
        if any(p is None or p == "empty" for p in combo):
            continue  # zeros (or nothing of this phase survives the crop)
        sub = _phase_kernel(w, wt, g, tuple(p[0] for p in combo), tuple(p[1] for p in combo))
        # gy padded by `left` on the low side and cropped/padded on the high side so that
        # the stride-1 correlation yields exactly `count` positions.
        pads = [(p[7], p[5] + p[3] * (p[2] - 1) - o - p[7]) for p, o in zip(combo, O)]
        counts = tuple(p[5] for p in combo)
        dil = tuple(p[3] for p in combo)
        if full and all(s == 1 for s in spec.stride):
            y = _forward_padded(gy, sub, pads, dil, g, counts)
            if y is not None:
                return y
        if gx is None:
            gx = (np.empty if full else np.zeros)((N, C) + in_spatial, dtype=dtype)
        dst = gx[(slice(None), slice(None)) + tuple(slice(p[6], None, s)
                                                     for p, s in zip(combo, spec.stride))]

        def store(bs, ks, rows, block, dst=dst):
            # each tile's block straight into its strided place: a whole phase held
            # before the copy was scratch outside the workspace budget (two of them, the
            # last one's and the next, at once)
            dst[bs, ks, rows] = block

        if not _forward_padded(gy, sub, pads, dil, g, counts, store=store):
            dst[...] = 0
    return np.zeros((N, C) + in_spatial, dtype=dtype) if gx is None else gx


def _inner(spec: ConvSpec, p: dict, itemsize: int):
    """The forward algorithm (by the cost model) for the phases, with the stride-1 spec
    and problem sizes standing for them (their FLOPs add up to the input gradient's;
    the unified case is exactly one forward convolution)."""
    if _unified(spec):
        # gy (O positions) padded (or cropped) to give the Q phase positions that cover
        # the crop, as _input_grad_unified runs it
        J, _, Q, lows, highs = _unified_plan(spec, p["S"], p["O"])
        sub = ConvSpec(J, (1,) * spec.rank, tuple((max(0, lo), max(0, hi)) for lo, hi in
                                                  zip(lows, highs)),
                       (1,) * spec.rank, spec.groups)
        out = p["C"] * math.prod(spec.stride)
        swapped = dict(p, C=p["K"], K=out, S=tuple(p["O"]), O=Q)
        w_shape = (out, p["K"] // p["g"]) + J
    else:
        full = tuple(max(0, d * (k - 1) - lo) for d, k, (lo, _) in
                     zip(spec.dilation, spec.kernel_size, spec.padding))
        sub = ConvSpec(spec.kernel_size, (1,) * spec.rank, tuple((f, f) for f in full),
                       spec.dilation, spec.groups)
        swapped = dict(p, C=p["K"], K=p["C"], S=p["O"])
        w_shape = (p["C"], p["K"] // p["g"]) + tuple(spec.kernel_size)
    dtype = np.float32 if itemsize == 4 else np.float64
    x_shape = (p["N"], p["K"]) + tuple(p["O"])
    names = [n for n in select.candidates("forward", sub, x_shape, w_shape, dtype)
             if n != "winograd" or all(s == 1 for s in spec.stride)] or ["gemm"]

    def seconds(name):
        flops, nbytes = _forward_cost(select._module(name), sub, swapped, itemsize)
        return select.seconds(flops, nbytes)

    return select._module(min(names, key=seconds)), sub, swapped


def _products(spec: ConvSpec, in_spatial) -> int:
    """Positions times taps the phases compute (per sample and channel pair): per
    dimension, each phase's positions in the crop times its taps."""
    done = 1
    for dim in _phase_plan(spec, in_spatial):
        done *= sum(p[5] * p[2] for p in dim if p is not None and p != "empty")
    return done


def _forward_cost(mod, sub: ConvSpec, swapped: dict, itemsize: int):
    """The phases' forward cost by ``mod``: GEMM's general estimate, not its refitted
    2-D forward one (``gemm.cost(..., phases=True)``, which see)."""
    if mod is gemm:
        return gemm.cost("forward", sub, swapped, itemsize, phases=True)
    return mod.cost("forward", sub, swapped, itemsize)


def cost(role: str, spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """The cheapest forward's cost on the swapped problem (``K`` gradient channels in,
    ``C`` out; the same FLOPs; for GEMM im2col copies of ``K*prod(k)`` rows instead of
    a col2im of ``C*prod(k)``), plus the strided write of each phase for stride > 1.
    The forward: :func:`_s2d_cost`."""
    if role == "forward":
        return _s2d_cost(spec, p, itemsize)
    mod, sub, swapped = _inner(spec, p, itemsize)
    flops, nbytes = _forward_cost(mod, sub, swapped, itemsize)
    if _unified(spec) and math.prod(swapped["O"]) < 128:
        # few positions per sample make the unified GEMM short and wide: measured 1.3x
        # slower than GEMM's col2im on an 8x8 -> 16x16, C 256 -> 128 transposed conv,
        # 1.3-1.5x faster from 14x14 up
        flops *= 2
    if not _unified(spec):
        # the phases compute every position of the crop, each with its phase's taps: as
        # many products as the layer's own only where the input is about ``s`` times the
        # output (``same`` padding); a ``valid`` layer's zeros around gy are multiplied
        # too (7x7 dilation 2, 14x14 -> 2x2: 49 times as many; estimated 1.1 ms, ran 44,
        # where GEMM's col2im ran 22)
        done = _products(spec, p["S"]) / (math.prod(p["O"]) * math.prod(spec.kernel_size))
        flops, nbytes = flops * done, nbytes * done
    strided = any(s != 1 for s in spec.stride)
    extra = p["N"] * p["C"] * math.prod(p["S"]) * itemsize if strided else 0
    # the phases' kernels: the weight flipped with its channel axes swapped; written tap
    # by tap when wide (:func:`_phase_kernel`), which reads the weight once per tap, from
    # memory once it is past the per-core cache: 0.96 ms for a 3x3 C256 -> 256 weight
    # (2.4 MB), 6.6 ms for a 7x7 C256 -> 128 one (6.4 MB), more than the rest of that
    # layer's input gradient on 7x7 planes (estimated 0.66 ms, ran 9.1; GEMM 3.3)
    kk = math.prod(spec.kernel_size)
    wbytes = p["K"] * (p["C"] // p["g"]) * kk * itemsize
    wide = p["K"] * (p["C"] // p["g"]) >= 4096 and wbytes > 2 * 2**20
    extra += wbytes * (2 + (kk / 8 if wide else 0))
    if strided and not _unified(spec) and spec.rank > 1:
        # the phases' GEMMs are a share of the outputs each, with a kernel of a share of
        # the taps: a 3x3 stride-2 C256 -> 256 input gradient on 28x28 planes ran 12.9 ms
        # on its four phases, 10.5 on GEMM's col2im, where the two were estimated alike
        # (over the 64 recorded check layers the choice's loss 5.3 -> 4.7 %; the 120
        # others unchanged)
        flops *= 1.3
    if spec.rank == 1:
        # fitted with GEMM's 1-D input gradient (gemm._cost_1d): the phases' forward
        # runs about 6 % slower than the forward it is estimated as; on short strided
        # signals (<= 64 inputs) their fixed costs weigh more: 12 layers of N16-256,
        # C16-256, k3-7, stride 2-4 measured polyphase / GEMM at 0.88-1.53 (10 above
        # 1.05; the demo's stride-2 layer 2.64 / 1.79 ms) where the estimates said
        # 0.85-1.13, and 0.84-1.03 at 96-128 inputs
        k = 1.06 * (1.4 if strided and p["S"][0] <= 64 else 1.0)
        return flops * k, (nbytes + extra) * k
    return flops, nbytes + extra


def call_seconds(role: str, spec: ConvSpec, p: dict, itemsize: int) -> float:
    """Fixed seconds per call beyond :func:`cost`, for :func:`convolab.select.
    call_seconds`: the phases' own steps (tiny layers measured 80-180 us in all, one
    worker, medians, where GEMM's lane forward took 35-90) plus those of the forward
    they run (Winograd's, where it runs that)."""
    if role == "forward":
        mod, sub, q = _s2d_problem(spec, p, itemsize)
        return 30e-6 + select.call_seconds(mod, "forward", sub, q, itemsize)
    mod, sub, swapped = _inner(spec, p, itemsize)
    # in 2-D and 3-D, each phase's forward has its own (a 3x3 stride-2 input gradient of
    # N4 C16 28x28 ran 0.9 ms on four phases, 0.3 on GEMM's col2im); long 1-D signals
    # (a stride-4 upsampler on 2**15 samples: polyphase 7.5 ms, GEMM 13.4) keep one
    phases = _forwards(spec, p["S"]) if spec.rank > 1 else 1
    return 50e-6 + phases * select.call_seconds(mod, "forward", sub, swapped, itemsize)


def _forwards(spec: ConvSpec, in_spatial) -> int:
    """How many forward convolutions the input gradient runs: one when unified (or
    stride 1), else one per phase that a tap reaches (four for a 3x3 stride-2 layer)."""
    if _unified(spec):
        return 1
    n = 1
    for dim in _phase_plan(spec, in_spatial):
        n *= sum(1 for p in dim if p is not None and p != "empty")
    return max(1, n)


def workspace(role: str, spec: ConvSpec, p: dict, dtype) -> int:
    """The phases' forward scratch (the swapped problem), plus, for stride > 1 where that
    forward does not hand over its tiles, its whole result before it is written into
    place.  GEMM's 1-D lowerings write each tile there as it goes; in 2-D and 3-D a
    phase may run on the MEC or slab lowering, which hands over the whole result (a
    k5 stride-2 ConvTranspose2d, 64x160 planes: 2.7 MiB measured under a 1 MiB budget,
    where 1.0 was estimated).  The forward: the space-to-depth input and weight and
    the stride-1 forward's own."""
    if role == "forward":
        item = np.dtype(dtype).itemsize
        mod, sub, q = _s2d_problem(spec, p, item)
        est = getattr(mod, "workspace", None)
        own = _s2d_copies(sub, q) * item
        return own + (int(est("forward", sub, q, dtype)) if est else 0)
    mod, sub, swapped = _inner(spec, p, np.dtype(dtype).itemsize)
    est = getattr(mod, "workspace", None)
    own = 0 if all(s == 1 for s in spec.stride) or (mod is gemm and spec.rank == 1) else (
        p["N"] * p["C"] * math.prod(p["S"]) * np.dtype(dtype).itemsize)
    return (int(est("forward", sub, swapped, dtype)) if est else 0) + own
