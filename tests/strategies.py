"""Shared hypothesis generators of valid convolution configurations, and the torch
reference for each (including convolab's extensions, expressed through torch ops)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from convolab.spec import make_spec


@dataclass
class ConvCase:
    transposed: bool
    rank: int
    x_shape: tuple
    w_shape: tuple
    bias: bool
    kwargs: dict = field(default_factory=dict)

    @property
    def unbatched(self) -> bool:
        return len(self.x_shape) == self.rank + 1

    def arrays(self, dtype=np.float64, seed=0):
        rng = np.random.default_rng(seed)

        def r(shape):
            a = rng.standard_normal(shape)
            if np.issubdtype(np.dtype(dtype), np.complexfloating):
                a = a + 1j * rng.standard_normal(shape)
            return a.astype(dtype)

        out_ch = (
            self.w_shape[1] * self.kwargs.get("groups", 1) if self.transposed else self.w_shape[0]
        )
        return r(self.x_shape), r(self.w_shape), (r((out_ch,)) if self.bias else None)


def _padding(draw, rank, transposed, stride):
    forms = ["int", "tuple", "pairs"]
    if not transposed:
        forms += ["valid", "causal"]
        if all(s == 1 for s in stride):
            forms += ["same"]
    form = draw(st.sampled_from(forms))
    if form == "int":
        return draw(st.integers(0, 2))
    if form == "tuple":
        return tuple(draw(st.integers(0, 2)) for _ in range(rank))
    if form == "pairs":
        return [(draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(rank)]
    return form


@st.composite
def conv_cases(draw, ranks=(1, 2, 3), transposed=None, batch=None, max_groups=3):
    rank = draw(st.sampled_from(ranks))
    tr = draw(st.booleans()) if transposed is None else transposed
    small = rank == 3
    g = draw(st.integers(1, max_groups))
    cin = g * draw(st.integers(1, 2 if small else 3))
    cout = g * draw(st.integers(1, 2 if small else 3))
    k = tuple(draw(st.integers(1, 2 if small else 4)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 2 if small else 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 2 if small else 3)) for _ in range(rank))
    padding = _padding(draw, rank, tr, stride)
    n = draw(st.sampled_from([None, 0, 1, 2])) if batch is None else batch
    size = tuple(draw(st.integers(1, 5 if small else 9)) for _ in range(rank))
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=g)
    if tr:
        op = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
        kwargs["output_padding"] = op
        w_shape = (cin, cout // g) + k
    else:
        w_shape = (cout, cin // g) + k
    spec = make_spec(k, stride, padding, dilation, g, kwargs.get("output_padding"), transposed=tr)
    assume(all(o >= 1 for o in spec.out_shape(size)))
    x_shape = ((cin,) if n is None else (n, cin)) + size
    return ConvCase(tr, rank, x_shape, w_shape, draw(st.booleans()), kwargs)


def torch_reference(case: ConvCase, x, w, b):
    """The same computation with torch ops (torch tensors in and out, autograd-able).

    convolab's extensions are rewritten in torch terms: per-side and 'causal' padding
    as an explicit F.pad (conv) or a crop of the unpadded result (conv_transpose)."""
    import torch.nn.functional as F

    kw = dict(case.kwargs)
    spec = make_spec(
        tuple(case.w_shape[2:]),
        kw["stride"],
        kw["padding"],
        kw["dilation"],
        kw["groups"],
        kw.get("output_padding"),
        transposed=case.transposed,
    )
    pairs = spec.padding
    r = case.rank
    if case.transposed:
        fn = getattr(F, f"conv_transpose{r}d")
        y = fn(
            x,
            w,
            b,
            stride=kw["stride"],
            padding=0,
            output_padding=kw["output_padding"],
            groups=kw["groups"],
            dilation=kw["dilation"],
        )
        lead = y.dim() - r
        idx = [slice(None)] * lead + [
            slice(lo, n - hi) for n, (lo, hi) in zip(y.shape[lead:], pairs)
        ]
        return y[tuple(idx)]
    fn = getattr(F, f"conv{r}d")
    flat = []
    for lo, hi in reversed(pairs):
        flat += [lo, hi]
    return fn(
        F.pad(x, flat),
        w,
        b,
        stride=kw["stride"],
        padding=0,
        dilation=kw["dilation"],
        groups=kw["groups"],
    )


def rel_err(a, b) -> float:
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(b))), 1e-300)
    return float(np.max(np.abs(a - b))) / scale
