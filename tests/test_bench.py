"""The benchmark's plain-NumPy im2col baseline computes the same convolution."""

from __future__ import annotations

import numpy as np
import pytest

from convolab.bench import Case, _fn, _naive_im2col


@pytest.mark.parametrize(
    "case",
    [
        Case("1-D dilated", (2, 4, 30), (6, 4, 3), dict(padding=4, dilation=4)),
        Case("2-D stride 2", (2, 3, 11, 9), (5, 3, 3, 3), dict(stride=2, padding=1)),
        Case("grouped", (2, 6, 8, 8), (9, 2, 3, 3), dict(padding=1, groups=3)),
        Case("depthwise", (2, 4, 7, 7), (4, 1, 3, 3), dict(padding=1, groups=4)),
        Case("transposed", (2, 4, 5, 6), (4, 3, 4, 4), dict(stride=2, padding=1),
             transposed=True),
        Case("transposed, grouped, output_padding", (2, 4, 5, 6), (4, 3, 3, 2),
             dict(stride=(2, 3), padding=(2, 0), output_padding=(1, 2), dilation=(1, 2),
                  groups=2), transposed=True),
        Case("conv3d", (1, 2, 5, 6, 4), (3, 2, 3, 3, 3), dict(padding=1)),
    ],
    ids=lambda c: c.name,
)
def test_naive_im2col_baseline_matches_the_library(case):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(case.x)
    w = rng.standard_normal(case.w)
    kw = dict(case.kw)
    y = _fn(case)(x, w, None, **kw)
    z = _naive_im2col(case, x, w)()
    assert z.shape == y.shape
    np.testing.assert_allclose(z, y, rtol=1e-10, atol=1e-10)
