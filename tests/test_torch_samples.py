"""PyTorch's own sample inputs and invalid-argument cases (the OpInfo database torch
tests itself with): same outputs and gradients in float64, same rejections."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
oi = pytest.importorskip("torch.testing._internal.common_methods_invocations")

import convolab as cl  # noqa: E402

OPS = {
    "nn.functional.conv1d": cl.conv1d,
    "nn.functional.conv2d": cl.conv2d,
    "nn.functional.conv3d": cl.conv3d,
    "nn.functional.conv_transpose1d": cl.conv_transpose1d,
    "nn.functional.conv_transpose2d": cl.conv_transpose2d,
    "nn.functional.conv_transpose3d": cl.conv_transpose3d,
    "nn.functional.unfold": cl.unfold,
    "nn.functional.pad": cl.pad,
}
OPINFOS = [op for op in oi.op_db if op.name in OPS]
IDS = [f"{op.name.split('.')[-1]}-{op.variant_test_name or 'default'}" for op in OPINFOS]


def _np(a):
    return a.detach().numpy().copy() if isinstance(a, torch.Tensor) else a


def _samples(op):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(op.sample_inputs("cpu", torch.float64, requires_grad=True))


@pytest.mark.parametrize("algorithm", ["direct", "gemm", "auto"])
@pytest.mark.parametrize("op", OPINFOS, ids=IDS)
def test_torch_sample_inputs_forward_and_grads(op, algorithm):
    fn = OPS[op.name]
    samples = _samples(op)
    assert samples
    rng = np.random.default_rng(0)
    for s in samples:
        args = [_np(a) for a in s.args]
        kwargs = {k: _np(v) for k, v in s.kwargs.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yt = op(s.input, *s.args, **s.kwargs)
        with cl.options(algorithm=algorithm):
            out, pullback = cl.vjp(fn, _np(s.input), *args, **kwargs)
        np.testing.assert_allclose(out, yt.detach().numpy(), rtol=1e-9, atol=1e-12)
        g = rng.standard_normal(out.shape)
        leaves = [s.input] + list(s.args)
        needs = [isinstance(t, torch.Tensor) and t.requires_grad for t in leaves]
        if not any(needs) or out.size == 0:
            continue
        tgrads = torch.autograd.grad(
            yt, [t for t, n in zip(leaves, needs) if n], torch.from_numpy(g), allow_unused=True
        )
        with cl.options(algorithm=algorithm):
            grads = pullback(g)
        it = iter(tgrads)
        for mine, need in zip(grads, needs):
            if need:
                ref = next(it)
                ref = np.zeros_like(mine) if ref is None else ref.numpy()
                np.testing.assert_allclose(mine, ref, rtol=1e-9, atol=1e-12)


ERROR_OPS = [op for op in OPINFOS if op.error_inputs_func is not None]


@pytest.mark.parametrize("op", ERROR_OPS, ids=[o.name.split(".")[-1] for o in ERROR_OPS])
def test_torch_error_inputs_rejected(op):
    fn = OPS[op.name]
    cases = list(op.error_inputs("cpu"))
    assert cases
    for e in cases:
        s = e.sample_input
        args = [_np(a) for a in s.args]
        kwargs = {k: _np(v) for k, v in s.kwargs.items()}
        with pytest.raises((ValueError, TypeError)):
            fn(_np(s.input), *args, **kwargs)
