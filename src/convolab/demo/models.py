"""The demo's networks, built only from convolab layers.

* MNIST-1D: a small temporal-convolution network.  Dilations 1, 2, 4 grow the
  receptive field to 17 samples at full resolution, a stride-2 convolution halves
  the length (19 samples), and one more dilated layer sees 27 of the 40 input
  samples (receptive fields 5 / 9 / 17 / 19 / 27, as ``convolab.explain`` reports).
  No single output sees the whole sequence: the linear read-out over all 20
  positions combines them and keeps the position information.
* digits: three 3x3 Conv2d layers with one 2x2 max pool.

Every convolution is followed by BatchNorm and ReLU (so it carries no bias).
"""

from __future__ import annotations

import numpy as np

from .. import nn


def _block(cls, bn, c_in, c_out, k, stride, dilation, dtype, rng):
    pad = dilation * (k - 1) // 2
    return [
        cls(
            c_in,
            c_out,
            k,
            stride=stride,
            padding=pad,
            dilation=dilation,
            bias=False,
            dtype=dtype,
            rng=rng,
        ),
        bn(c_out, dtype=dtype),
        nn.ReLU(),
    ]


def mnist1d_tcn(width: int = 64, dtype=np.float32, seed: int = 0) -> nn.Sequential:
    """(N, 1, 40) -> (N, 10) logits."""
    rng = np.random.default_rng(seed)
    c = width
    layers = []
    for c_in, c_out, k, s, d in [
        (1, c, 5, 1, 1),
        (c, c, 3, 1, 2),
        (c, c, 3, 1, 4),
        (c, c, 3, 2, 1),
        (c, c, 3, 1, 2),
    ]:
        layers += _block(nn.Conv1d, nn.BatchNorm1d, c_in, c_out, k, s, d, dtype, rng)
    layers += [nn.Flatten(), nn.Linear(c * 20, 10, dtype=dtype, rng=rng)]
    return nn.Sequential(*layers)


def digits_cnn(width: int = 16, dtype=np.float32, seed: int = 0) -> nn.Sequential:
    """(N, 1, 8, 8) -> (N, 10) logits."""
    rng = np.random.default_rng(seed)
    c = width
    layers = _block(nn.Conv2d, nn.BatchNorm2d, 1, c, 3, 1, 1, dtype, rng)
    layers += _block(nn.Conv2d, nn.BatchNorm2d, c, 2 * c, 3, 1, 1, dtype, rng)
    layers += [nn.MaxPool2d(2)]
    layers += _block(nn.Conv2d, nn.BatchNorm2d, 2 * c, 2 * c, 3, 1, 1, dtype, rng)
    layers += [nn.Flatten(), nn.Linear(2 * c * 16, 10, dtype=dtype, rng=rng)]
    return nn.Sequential(*layers)


MODELS = {"mnist1d": mnist1d_tcn, "digits": digits_cnn}
MODEL_NAMES = {"mnist1d": "convolab TCN (dilated Conv1d)", "digits": "convolab CNN (Conv2d)"}


def build(dataset: str, dtype=np.float32, seed: int = 0) -> nn.Sequential:
    return MODELS[dataset](dtype=dtype, seed=seed)


def to_torch(model: nn.Sequential):
    """The same network in PyTorch (float64) with the same weights and buffers."""
    import torch

    T = torch.nn
    out = []
    for m in model:
        name = type(m).__name__
        if name in ("Conv1d", "Conv2d", "Conv3d"):
            out.append(
                getattr(T, name)(
                    m.in_channels,
                    m.out_channels,
                    m.kernel_size,
                    m.stride,
                    m.padding,
                    m.dilation,
                    m.groups,
                    m.bias is not None,
                    m.padding_mode,
                )
            )
        elif name in ("BatchNorm1d", "BatchNorm2d"):
            out.append(
                getattr(T, name)(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            )
        elif name == "Linear":
            out.append(T.Linear(m.in_features, m.out_features, m.bias is not None))
        elif name in ("MaxPool1d", "MaxPool2d"):
            out.append(
                getattr(T, name)(
                    m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode
                )
            )
        elif name in ("AvgPool1d", "AvgPool2d"):
            out.append(
                getattr(T, name)(
                    m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad
                )
            )
        elif name in ("AdaptiveAvgPool1d", "AdaptiveAvgPool2d"):
            size = m.output_size[0] if len(m.output_size) == 1 else m.output_size
            out.append(getattr(T, name)(size))
        elif name == "Flatten":
            out.append(T.Flatten(m.start_dim, m.end_dim))
        elif name == "GELU":
            out.append(T.GELU(approximate=m.approximate))
        elif name in ("ReLU", "SiLU", "Identity"):
            out.append(getattr(T, name)())
        else:
            raise TypeError(f"to_torch: no PyTorch counterpart for {name}")
    tm = T.Sequential(*out).double()
    tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return tm
