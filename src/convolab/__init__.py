"""convolab: N-dimensional convolutions and their gradients in NumPy, with PyTorch's semantics."""

from . import grad
from .algorithms._threads import threading_info
from .autodiff import Grads, vjp
from .draw import draw
from .explain import explain
from .gradcheck import gradcheck
from .ops.conv import (
    conv,
    conv1d,
    conv2d,
    conv3d,
    conv_transpose,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
)
from .ops.pad import pad
from .ops.unfold import fold, unfold
from .options import Options, get_options, options, set_options
from .spec import ConvSpec, conv_output_size, conv_transpose_output_size, make_spec

from . import nn  # noqa: E402  (layers build on the ops above; convolab.nn as torch.nn)

__version__ = "0.1.0"

__all__ = [
    "ConvSpec",
    "draw",
    "explain",
    "Grads",
    "Options",
    "conv",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_output_size",
    "conv_transpose",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "conv_transpose_output_size",
    "threading_info",
    "fold",
    "get_options",
    "grad",
    "gradcheck",
    "make_spec",
    "nn",
    "options",
    "pad",
    "set_options",
    "unfold",
    "vjp",
]
