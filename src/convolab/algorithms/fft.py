"""FFT convolution for large kernels, with overlap-save blocks along the first dimension.

Shapes as in :mod:`convolab.algorithms.direct`; ``kd`` is the dilated kernel (zeros
between taps), ``e = d*(k-1)+1`` its extent.  A correlation is a product of spectra::

    corr(a, b)[o] = sum_t b[t] a[o+t]   <->   A(f) * conj(FFT(conj(b)))(f)

and the channel sum at every frequency is a batched matrix product:

* forward:     ``Y[n,k] = sum_c X[n,c] conj(W[k,c])``, then keep every ``s``-th position;
* input_grad:  ``GX[n,c] = sum_k GYu[n,k] W[k,c]`` (``GYu``: gy upsampled by the stride;
  a true convolution, full length);
* weight_grad: ``GW[k,c] = sum_n conj(GYu[n,k]) X[n,c]``, read at the taps ``t*d``.

The forward cuts a long first dimension into overlapping blocks of about ``8 e``
positions (overlap-save) viewed with strides, so one batched FFT covers every block
with no loop.  FFTs use :mod:`scipy.fft` on as many threads as there are tile workers
(``options(workers=)``) when SciPy is installed (imported lazily), else
:mod:`numpy.fft`.  Work is chunked over the batch to stay within the workspace budget.
Real and complex dtypes are both handled.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..padding import crop_spatial, pad_spatial
from ..spec import ConvSpec
from ._finite import falls_back_to_gemm
from ._threads import workers
from ._tiles import tiles


def _fft():
    try:
        import scipy.fft as sf

        return sf, dict(workers=workers()), sf.next_fast_len
    except ImportError:  # pragma: no cover - SciPy is optional
        return np.fft, {}, _next_smooth


def _next_smooth(n: int) -> int:
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


# Fixed seconds per call beyond :func:`cost` (plans, spectra, blocks), for
# :func:`convolab.select.call_seconds`: tiny layers measured 160-410 us in every role
# (one worker, medians).
CALL_SECONDS = {"forward": 280e-6, "input_grad": 280e-6, "weight_grad": 280e-6}


def applicable(role: str, spec: ConvSpec, x_shape, w_shape, dtype) -> bool:
    """Real and complex dtypes; a non-empty batch (an empty one is GEMM's); and the
    memory it needs (:func:`workspace`) within the budget: the weight's spectra at the
    transform size and a padded copy of the input are held whole, whatever the budget."""
    if not (np.dtype(dtype).kind in "fc" and x_shape[0] > 0):
        return False
    from .. import select  # select imports this module

    p = select.problem(role, spec, x_shape, w_shape)
    return workspace(role, spec, p, dtype) <= _budget()


def cost(role: str, spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """FFTs, the spectral products as complex GEMM work, the copies.

    Fitted to interleaved medians against GEMM after the products became one GEMM
    per frequency (float32 forward: conv1d k7 C64 FFT 30 vs GEMM 19 ms, dilated k3
    34 vs 13, conv3d 3x3x3 C32 49 vs 19, k63 C16 11 vs 32):

    * FFTs: ``2.5 L log2 L`` FLOPs per real transform, charged 12x the GEMM rate
      (pocketfft ran the k7 blocks at 7-11 GFLOP/s);
    * products: ``4 L N C K / g`` real FLOPs (half spectrum, 8 FLOPs per complex
      multiply-add), charged 4x for the frequency-major copies around them;
    * every frequency is one BLAS call (~2 us each, charged as 16 KB of copying).
    """
    if role == "input_grad" and (fwd := _as_forward(spec, p["S"], p["O"])) is not None:
        # what input_grad runs; polyphase runs the same blocked forward and measured a
        # little faster (k63 C16 L16384: 25.1 against 26.5 ms), so a tie goes to it
        flops, moved = cost("forward", fwd, _swapped(p), itemsize)
        return flops * 1.05, moved * 1.05
    if spec.rank == 1 and role == "forward":
        return _cost_1d(spec, p, itemsize)
    N, C, K, g = p["N"], p["C"], p["K"], p["g"]
    ext = [s * (o - 1) + d * (k - 1) + 1 for s, o, d, k in
           zip(spec.stride, p["O"], spec.dilation, spec.kernel_size)]
    L = math.prod(ext) * 1.3
    ffts = 2.5 * L * math.log2(max(L, 2)) * (N * C + N * K + K * C // g)
    moved = L * itemsize * 2 * (N * C + N * K) * 3
    Cg, Kg = C // g, K // g
    if ({"forward": Cg, "input_grad": Kg}.get(role) == 1
            or (role == "weight_grad" and Cg == Kg == 1)):
        # nothing to contract (depthwise): one broadcast product, no GEMMs, no copies
        return 12 * ffts + 4 * L * N * C * K / g, moved
    prods = 4 * L * N * C * K / g * 4
    e0, o0, s0 = spec.dilation[0] * (spec.kernel_size[0] - 1) + 1, p["O"][0], spec.stride[0]
    first = 8 * e0 if role != "input_grad" and _blocked(o0, s0, e0) else ext[0]
    freqs = (first // 2 + 1) * math.prod(ext[1:]) * g
    return 12 * ffts + prods, moved + freqs * 16e3


def _cost_1d(spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """The 1-D forward's cost from the transforms it really runs (:func:`_sizes`: on a
    long signal, blocks of about 8 kernel extents).  The general formula takes one
    transform of the whole signal, whose ``log2`` (14 at 16384 positions, against 6-9
    for the blocks) overcharged long signals up to 15x and so kept FFT from them.  The
    same rates as the general formula (FFTs at 1/12 of the GEMM rate, the products 4x),
    each frequency's BLAS call charged as 8 KB rather than 16: chosen together with
    GEMM's 1-D estimate (:func:`convolab.algorithms.gemm._cost_1d`, where the fit is
    described).  The stride-1 input gradient runs this forward (:func:`_as_forward`)
    and is charged by it."""
    N, C, K, g = p["N"], p["C"], p["K"], p["g"]
    Ls, _, nb = _sizes("forward", spec, p["O"])
    Lt = math.prod(Ls)
    ffts = 2.5 * Lt * math.log2(max(Lt, 2)) * (nb * (N * C + N * K) + K * C // g)
    moved = Lt * nb * itemsize * 2 * (N * C + N * K) * 3
    prods = 4 * Lt * nb * N * C * K / g
    if C // g == 1:  # depthwise: one broadcast product, no GEMM per frequency
        return 12 * ffts + prods, moved
    freqs = (Ls[0] // 2 + 1) * g
    return 12 * ffts + 4 * prods, moved + freqs * 8e3


def _sizes(role: str, spec: ConvSpec, O) -> tuple[tuple[int, ...], int, int]:
    """``(L, B, nb)``: the transform sizes, block length and block count the role's
    function plans (the input gradient transforms whole signals: one block)."""
    _, _, fast = _fft()
    s, e = spec.stride, spec.effective_kernel
    if role == "input_grad":
        return tuple(fast(si * (o - 1) + ei) for si, o, ei in zip(s, O, e)), O[0], 1
    B, nb = _blocks(O[0], s[0], e[0], fast)
    ext = ((B - 1) * s[0] + e[0],) + tuple(si * (o - 1) + ei for si, o, ei in
                                          zip(s[1:], O[1:], e[1:]))
    return tuple(fast(n) for n in ext), B, nb


def _swapped(p: dict) -> dict:
    """The problem of :func:`_as_forward`'s correlation: gy in, the input gradient out."""
    return dict(p, C=p["K"], K=p["C"], S=p["O"], O=p["S"])


def _broadcast(role: str, C: int, K: int, g: int) -> bool:
    """The role's channel sum is a broadcast product (depthwise): no GEMM per frequency,
    so no frequency-major copies of the spectra."""
    return {"forward": g == C, "input_grad": g == K}.get(role, g == C == K)


def workspace(role: str, spec: ConvSpec, p: dict, dtype) -> int:
    """Peak extra bytes of a call: what it holds whole (the weight's spectrum, and its
    frequency-major copy unless the role is depthwise; a padded copy of the input, or
    for the input gradient the padded gradient buffer; for the weight gradient the
    summed spectra) plus its batch chunks, cut from what is left of the budget (at least
    one sample, or one block of the forward)."""
    if role == "input_grad" and (fwd := _as_forward(spec, p["S"], p["O"])) is not None:
        return workspace("forward", fwd, _swapped(p), dtype)
    N, C, K, g = p["N"], p["C"], p["K"], p["g"]
    dt = np.dtype(dtype)
    item, real = dt.itemsize, dt.kind == "f"
    L, _, nb = _sizes(role, spec, p["O"])
    Lp = math.prod(L)
    one = _spectrum_bytes(K * (C // g), L, dt)  # the weight's spectrum
    spectra = (1 if _broadcast(role, C, K, g) else 2) * one
    padded = N * C * math.prod(spec.padded_shape(p["S"])) * item
    budget = _budget()
    if role == "forward":
        fixed = spectra + padded
        per, units = int(Lp * 16 * (C + 2 * K) / (2 if real else 1)), N * nb
        room = min(budget // workers(), budget - fixed)  # one tile at a time, as tiles()
    else:
        if role == "input_grad":
            fixed = spectra + padded
            per = Lp * 8 * (K + 2 * C)
        else:
            # the sum and each chunk's part, and at the end the sum's inverse transform
            # (real, at the transform sizes), which had been left out: 16.3 MiB measured
            # against 12.3 estimated (C57 -> K44 4x6 on 10 x 11x37)
            inverse = K * (C // g) * Lp * (16 if not real else 8 if _fft()[0] is np.fft
                                           else item)
            fixed = padded + 2 * one + inverse
            per = Lp * nb * 8 * 2 * (C + K)
        units, room = N, budget - fixed
    chunk = max(1, min(units, max(room, 0) // max(per, 1))) * per
    return int(fixed + chunk)


def _spectrum_bytes(count: int, L, dtype) -> int:
    """Bytes of ``count`` spectra at transform sizes ``L`` (half spectra for real data;
    numpy.fft computes in complex128)."""
    dt = np.dtype(dtype)
    real = dt.kind == "f"
    F = math.prod(L[:-1]) * (L[-1] // 2 + 1) if real else math.prod(L)
    citem = 16 if _fft()[0] is np.fft else (2 * dt.itemsize if real else dt.itemsize)
    return count * F * citem


def _room(fixed: int) -> int:
    """What the budget leaves for the batch chunks beside ``fixed`` bytes held whole."""
    return max(1, _budget() - fixed)


def _budget() -> int:
    from ..options import get_options

    return get_options().workspace_bytes


def _blocked(o0: int, s0: int, e0: int) -> bool:
    """Overlap-save along the first dimension once it spans more than 16 kernel extents."""
    return o0 * s0 > 16 * e0


def _blocks(o0: int, s0: int, e0: int, fast) -> tuple[int, int]:
    """``(B, nb)``: blocks of ``B`` outputs (reading ``(B-1)*s0 + e0`` inputs, a
    transform of about ``8 e0``) and how many cover ``o0`` outputs; one block when the
    first dimension is short."""
    if not _blocked(o0, s0, e0):
        return o0, 1
    B = max(1, (fast(8 * e0) - e0) // s0 + 1)
    return B, -(-o0 // B)


def _dilate(w: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """(K, Cg, *k) -> (K, Cg, *e) with ``d - 1`` zeros between taps."""
    if all(d == 1 for d in spec.dilation):
        return w
    out = np.zeros(w.shape[:2] + spec.effective_kernel, dtype=w.dtype)
    out[(slice(None), slice(None)) + tuple(slice(None, None, d) for d in spec.dilation)] = w
    return out


def _spectrum(a: np.ndarray, L, r: int, real: bool, conj: bool = False) -> np.ndarray:
    """FFT over the last ``r`` axes at sizes ``L``; with ``conj`` the correlation
    partner ``conj(FFT(conj(a)))``."""
    mod, kw, _ = _fft()
    axes = tuple(range(-r, 0))
    if real:
        A = mod.rfftn(a, s=L, axes=axes, **kw)
        return np.conj(A) if conj else A
    if conj:
        return np.conj(mod.fftn(np.conj(a), s=L, axes=axes, **kw))
    return mod.fftn(a, s=L, axes=axes, **kw)


def _inverse(A: np.ndarray, L, r: int, real: bool) -> np.ndarray:
    mod, kw, _ = _fft()
    axes = tuple(range(-r, 0))
    return mod.irfftn(A, s=L, axes=axes, **kw) if real else mod.ifftn(A, s=L, axes=axes, **kw)


def _contract(A: np.ndarray, B: np.ndarray, r: int) -> np.ndarray:
    """Per frequency, ``A (g, i, j, *F) @ B (g, j, l, *F) -> (g, i, l, *F)``.

    Both operands are first copied frequency-major, so every frequency is one BLAS
    GEMM on contiguous matrices (``np.matmul`` on strided operands falls back to a
    loop without BLAS).  Callers fold samples and blocks into ``i``: one product per
    sample and frequency would be a matrix-vector product, ~40x below GEMM speed."""
    F = A.shape[3:]
    Fp = math.prod(F)
    At = np.ascontiguousarray(np.moveaxis(A.reshape(A.shape[:3] + (Fp,)), 3, 0))
    Bt = np.ascontiguousarray(np.moveaxis(B.reshape(B.shape[:3] + (Fp,)), 3, 0))
    Ct = np.matmul(At, Bt)  # (Fp, g, i, l)
    return np.moveaxis(Ct, 0, 3).reshape(Ct.shape[1:] + F)


@falls_back_to_gemm("forward")
def forward(x: np.ndarray, w: np.ndarray, spec: ConvSpec, out_spatial=None) -> np.ndarray:
    r, g = spec.rank, spec.groups
    N, C = x.shape[:2]
    K = w.shape[0]
    O = spec.conv_out_shape(x.shape[2:]) if out_spatial is None else tuple(out_spatial)
    dtype = np.result_type(x, w)
    real = dtype.kind == "f"
    _, _, fast = _fft()
    e = spec.effective_kernel
    s = spec.stride
    B, nb = _blocks(O[0], s[0], e[0], fast)
    ext = ((B - 1) * s[0] + e[0],) + tuple(
        si * (o - 1) + ei for si, o, ei in zip(s[1:], O[1:], e[1:]))
    L = tuple(fast(n) for n in ext)
    # padded input long enough for nb full blocks
    need0 = (nb * B - 1) * s[0] + e[0]
    pads = list(spec.padding)
    P0 = x.shape[2] + pads[0][0] + pads[0][1]
    pads[0] = (pads[0][0], pads[0][1] + max(0, need0 - P0))
    xp = pad_spatial(x, pads)
    Wc = _spectrum(_dilate(w, spec), L, r, real, conj=True)  # (K, Cg, *F)
    Wc = Wc.reshape((g, K // g) + Wc.shape[1:]).swapaxes(1, 2)  # (g, Cg, Kg, *F)
    y = np.empty((N, K) + O, dtype=dtype)
    per_block = int(math.prod(L) * 16 * (C + 2 * K) / (2 if real else 1))
    fixed = (0 if np.may_share_memory(xp, x) else xp.nbytes) + Wc.nbytes * (1 if g == C else 2)
    plan, _ = tiles(N, (nb,), per_block, cache=_room(fixed))
    keep = (slice(0, (B - 1) * s[0] + 1, s[0]),) + tuple(
        slice(0, si * (o - 1) + 1, si) for si, o in zip(s[1:], O[1:]))
    for bs, brows in plan:
        b0, nbt = brows.start, brows.stop - brows.start
        xb = xp[bs, :, b0 * B * s[0]:]
        n = xb.shape[0]
        st = xb.strides
        blocks = as_strided(
            xb, (n, C, nbt, ext[0]) + tuple(xb.shape[3:]),
            st[:2] + (st[2] * B * s[0], st[2]) + st[3:], writeable=False)
        blocks = blocks[(Ellipsis,) + tuple(slice(0, n_) for n_ in ext[1:])]
        X = _spectrum(blocks, L, r, real)  # (n, C, nbt, *F)
        F = X.shape[3:]
        if g == C:  # depthwise: a broadcast product in place, no transposed copies
            Y = (X.reshape((n, g, 1, nbt) + F) * Wc.reshape((1, g, K // g, 1) + F)
                 ).reshape((n, K, nbt) + F)
        else:  # samples and blocks are the rows of one GEMM per frequency and group
            X = X.reshape((n, g, C // g, nbt) + F).transpose(
                (1, 0, 3, 2) + tuple(range(4, 4 + r))).reshape((g, n * nbt, C // g) + F)
            Y = _contract(X, Wc, r)  # (g, n*nbt, Kg, *F)
            Y = Y.reshape((g, n, nbt, K // g) + F).transpose(
                (1, 0, 3, 2) + tuple(range(4, 4 + r))).reshape((n, K, nbt) + F)
        yb = _inverse(Y, L, r, real)[(Ellipsis,) + keep]  # (n, K, nbt, B, ...)
        yb = yb.reshape((n, K, nbt * yb.shape[3]) + yb.shape[4:])
        o0, o1 = b0 * B, min(O[0], (b0 + nbt) * B)
        y[bs, :, o0:o1] = yb[:, :, : o1 - o0]
    return y


def _as_forward(spec: ConvSpec, in_spatial, O) -> ConvSpec | None:
    """At stride 1 the input gradient is a forward correlation of ``gy`` padded by
    ``d (k - 1) - lo`` (and what makes the output ``in_spatial`` long) with the kernel
    flipped and its channel axes swapped: that spec, or None (strided, or a padding the
    flip would make negative).  Run so, it takes the forward's overlap-save blocks, whose
    spectra are a few kernel lengths long, not the whole signal's (for a 511-tap kernel on
    65536 positions: 540 MiB of weight spectra)."""
    if any(s != 1 for s in spec.stride):
        return None
    pairs = []
    for (lo, _), n, o, k, d in zip(spec.padding, in_spatial, O, spec.kernel_size,
                                   spec.dilation):
        a = d * (k - 1) - lo
        b = n - o - a + d * (k - 1)
        if a < 0 or b < 0:
            return None
        pairs.append((a, b))
    return dataclasses.replace(spec, padding=tuple(pairs), output_padding=(),
                               transposed=False)


def _flipped(w: np.ndarray, g: int) -> np.ndarray:
    """(K, C/g, *k) -> (C, K/g, *k): per group the channel axes swapped, the taps reversed."""
    K, Cg = w.shape[:2]
    k = w.shape[2:]
    wg = w.reshape((g, K // g, Cg) + k).swapaxes(1, 2).reshape((g * Cg, K // g) + k)
    return np.ascontiguousarray(wg[(slice(None), slice(None)) + (slice(None, None, -1),) * len(k)])


@falls_back_to_gemm("input_grad")
def input_grad(gy: np.ndarray, w: np.ndarray, spec: ConvSpec, in_spatial) -> np.ndarray:
    fwd = _as_forward(spec, tuple(in_spatial), gy.shape[2:])
    if fwd is not None:
        return forward.__wrapped__(gy, _flipped(w, spec.groups), fwd, tuple(in_spatial))
    r, g = spec.rank, spec.groups
    N, K = gy.shape[:2]
    Cg = w.shape[1]
    O = tuple(gy.shape[2:])
    dtype = np.result_type(gy, w)
    real = dtype.kind == "f"
    _, _, fast = _fft()
    s, e = spec.stride, spec.effective_kernel
    need = tuple(si * (o - 1) + ei for si, o, ei in zip(s, O, e))
    L = tuple(fast(n) for n in need)
    Wf = _spectrum(_dilate(w, spec), L, r, real)  # (K, Cg, *F)
    Wf = Wf.reshape((g, K // g) + Wf.shape[1:])  # (g, Kg, Cg, *F)
    padded = spec.padded_shape(in_spatial)
    buf = tuple(max(p, n) for p, n in zip(padded, need))
    gxp = np.zeros((N, g * Cg) + buf, dtype=dtype)
    per_sample = math.prod(L) * 8 * (K + 2 * g * Cg)
    fixed = Wf.nbytes * (1 if g == K else 2) + gxp.nbytes
    step = max(1, min(N, _room(fixed) // max(per_sample, 1)))
    for i in range(0, N, step):
        bs = slice(i, min(N, i + step))
        gb = gy[bs]
        n = gb.shape[0]
        up = np.zeros((n, K) + tuple(si * (o - 1) + 1 for si, o in zip(s, O)), dtype=dtype)
        up[(Ellipsis,) + tuple(slice(None, None, si) for si in s)] = gb
        G = _spectrum(up, L, r, real)
        F = G.shape[2:]
        if g == K:  # one gy channel per group: a broadcast product in place
            X = G.reshape((n, g, 1) + F) * Wf.reshape((1, g, Cg) + F)  # (n, g, Cg, *F)
        else:
            G = G.reshape((n, g, K // g) + F).swapaxes(0, 1)  # (g, n, Kg, *F)
            X = _contract(G, Wf, r).swapaxes(0, 1)  # (n, g, Cg, *F)
        full = _inverse(X.reshape((n, g * Cg) + F), L, r, real)
        gxp[(bs, slice(None)) + tuple(slice(0, m) for m in need)] = full[
            (Ellipsis,) + tuple(slice(0, m) for m in need)]
    gxp = gxp[(Ellipsis,) + tuple(slice(0, p) for p in padded)]
    return np.ascontiguousarray(crop_spatial(gxp, spec.padding))


@falls_back_to_gemm("weight_grad")
def weight_grad(x: np.ndarray, gy: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """``GW[k, c] = sum_n conj(GYu[n, k]) X[n, c]`` per frequency, read at the taps.

    A long first dimension is cut into blocks as in the forward: block ``b`` pairs
    ``B`` gradient positions with the ``(B-1)*s + e`` inputs they see, so the sum over
    samples *and* blocks is one GEMM per frequency on short transforms (the lags
    ``0 .. e-1`` of each block's circular correlation do not wrap)."""
    r, g = spec.rank, spec.groups
    N, C = x.shape[:2]
    K = gy.shape[1]
    O = tuple(gy.shape[2:])
    dtype = np.result_type(x, gy)
    real = dtype.kind == "f"
    _, _, fast = _fft()
    s, e = spec.stride, spec.effective_kernel
    B, nb = _blocks(O[0], s[0], e[0], fast)
    seg = ((B - 1) * s[0] + e[0],) + tuple(si * (o - 1) + ei for si, o, ei in
                                          zip(s[1:], O[1:], e[1:]))
    L = tuple(fast(n) for n in seg)
    # inputs: every block reads (B-1)*s + e positions, block b from b*B*s on
    ext = ((nb * B - 1) * s[0] + e[0],) + seg[1:]
    xp = pad_spatial(x, spec.padding)
    xp = xp[(Ellipsis,) + tuple(slice(0, n) for n in ext)]
    if xp.shape[2:] != ext:  # O larger than the padded input allows: zero-extend
        xp = pad_spatial(xp, [(0, n - m) for n, m in zip(ext, xp.shape[2:])])
    gwf = None
    per_sample = math.prod(L) * nb * 8 * 2 * (C + K)
    fixed = ((0 if np.may_share_memory(xp, x) else xp.nbytes)
             + 2 * _spectrum_bytes(K * (C // g), L, dtype))
    step = max(1, min(N, _room(fixed) // max(per_sample, 1)))
    for i in range(0, N, step):
        bs = slice(i, min(N, i + step))
        n = xp[bs].shape[0]
        # gy upsampled by the stride, zero-extended to nb full blocks
        up = np.zeros((n, K, nb * B * s[0]) + tuple(si * (o - 1) + 1 for si, o in
                                                    zip(s[1:], O[1:])), dtype=dtype)
        up[(Ellipsis,) + tuple(slice(0, si * (o - 1) + 1, si) for si, o in zip(s, O))] = gy[bs]
        xb, ub = xp[bs], up
        if nb > 1:
            st, su = xb.strides, ub.strides
            xb = as_strided(xb, (n, C, nb, seg[0]) + xb.shape[3:],
                            st[:2] + (st[2] * B * s[0], st[2]) + st[3:], writeable=False)
            ub = as_strided(ub, (n, K, nb, (B - 1) * s[0] + 1) + ub.shape[3:],
                            su[:2] + (su[2] * B * s[0], su[2]) + su[3:], writeable=False)
        else:
            xb, ub = xb[:, :, None], ub[:, :, None, : (B - 1) * s[0] + 1]
        Gc = _spectrum(ub, L, r, real, conj=True)  # (n, K, nb, *F)
        X = _spectrum(xb, L, r, real)  # (n, C, nb, *F)
        F = X.shape[3:]
        if g == C == K:  # depthwise: one dot product per channel and frequency, in place
            part = np.einsum("ngb...,ngb...->g...", Gc, X)[:, None, None]
        else:
            # GW[g, Kg, Cg] = sum_{n, b} Gc[n, g, Kg, b] X[n, g, Cg, b]: one GEMM per frequency
            Gt = Gc.reshape((n, g, K // g, nb) + F).transpose(
                (1, 2, 0, 3) + tuple(range(4, 4 + r))).reshape((g, K // g, n * nb) + F)
            Xt = X.reshape((n, g, C // g, nb) + F).transpose(
                (1, 0, 3, 2) + tuple(range(4, 4 + r))).reshape((g, n * nb, C // g) + F)
            part = _contract(Gt, Xt, r)  # (g, Kg, Cg, *F)
        if gwf is None:
            gwf = part
        else:  # in place: a new sum beside the old and the part was a third spectrum
            gwf += part
    full = _inverse(gwf, L, r, real)
    taps = tuple(slice(0, ei, d) for ei, d in zip(e, spec.dilation))
    return np.ascontiguousarray(full[(Ellipsis,) + taps]).reshape(
        (K, C // g) + tuple(spec.kernel_size))
