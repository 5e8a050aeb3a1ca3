"""Conv1d/2d/3d and ConvTranspose1d/2d/3d layers with torch's constructor signatures."""

from __future__ import annotations

import math

import numpy as np

from ..autodiff import vjp
from ..dtypes import SUPPORTED, SUPPORTED_NAMES, as_array
from ..ops import conv as F
from ..ops.pad import pad, pad_vjp
from ..spec import as_tuple, make_spec
from .._limits import check_arrays
from .module import Module, Parameter, check_device, check_flag

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def make_rng(rng=None, seed=None, name: str = "layer") -> np.random.Generator:
    """``rng`` (a Generator) wins; else a Generator seeded with ``seed`` (None = fresh):
    an int >= 0, a sequence of them, or what ``np.random.default_rng`` takes besides
    (a SeedSequence, a BitGenerator); errors name ``name`` and the argument."""
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"{name}: rng={rng!r} must be a numpy.random.Generator, got "
                f"{type(rng).__name__}"
            )
        return rng
    rule = "must be None, an int >= 0 or a sequence of them"
    if isinstance(seed, (bool, np.bool_, float, np.floating, complex, str, bytes)):
        raise TypeError(f"{name}: seed={seed!r} {rule}")  # SeedSequence's error says neither
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        cls = ValueError if isinstance(exc, ValueError) else TypeError
        raise cls(f"{name}: seed={seed!r} {rule} ({exc})") from exc


def layer_dtype(name: str, dtype) -> np.dtype:
    """A layer's ``dtype=`` argument as a NumPy dtype: None is float32; NumPy dtypes,
    their names and torch dtypes (``torch.float64``) are accepted."""
    if dtype is None:
        return np.dtype(np.float32)
    if type(dtype).__module__ == "torch":  # torch.float64 -> 'float64', without importing torch
        dtype = str(dtype).rpartition(".")[2]
    try:
        return np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{name}: dtype={dtype!r} is not a dtype") from exc


def kaiming_uniform(rng, shape, fan_in, dtype):
    """torch's default: kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class _ConvNd(Module):
    _rank = 0
    _transposed = False

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride,
        padding,
        dilation,
        groups,
        bias,
        padding_mode,
        output_padding=0,
        device=None,
        dtype=None,
        rng=None,
        seed=None,
    ):
        super().__init__()
        r = self._rank
        name = type(self).__name__
        for arg, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}: {arg}={v!r} must be a positive int")
        if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups <= 0:
            raise ValueError(f"{name}: groups={groups!r} must be a positive integer")
        if in_channels % groups:
            raise ValueError(f"{name}: groups={groups} must divide in_channels={in_channels}")
        if out_channels % groups:
            raise ValueError(f"{name}: groups={groups} must divide out_channels={out_channels}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(
                f"{name}: padding_mode={padding_mode!r} must be one of {PADDING_MODES}"
            )
        if self._transposed and padding_mode != "zeros":
            raise ValueError(
                f"{name}: only padding_mode='zeros' is supported, got {padding_mode!r}"
            )
        check_device(name, device)
        bias = check_flag(name, "bias", bias)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = as_tuple("kernel_size", kernel_size, r)
        self.stride = as_tuple("stride", stride, r)
        self.dilation = as_tuple("dilation", dilation, r)
        self.groups = int(groups)
        # torch keeps an int padding as a tuple, a list as a tuple, a string as given
        if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
            self.padding = (int(padding),) * r
        elif isinstance(padding, list):  # per-side pairs too: [(1, 2)] -> ((1, 2),)
            self.padding = tuple(tuple(p) if isinstance(p, list) else p for p in padding)
        else:
            self.padding = padding
        self.padding_mode = padding_mode
        self.output_padding = as_tuple("output_padding", output_padding, r)
        # Validates stride/dilation/padding/output_padding now rather than at the first call.
        self._spec = make_spec(
            self.kernel_size,
            stride,
            padding,
            dilation,
            self.groups,
            self.output_padding if self._transposed else None,
            transposed=self._transposed,
        )
        self.dtype = layer_dtype(name, dtype)
        if self.dtype.type not in SUPPORTED:
            raise TypeError(
                f"{name}: dtype={self.dtype.name} must be one of {SUPPORTED_NAMES}"
            )
        self._rng = make_rng(rng, seed, name)
        if self._transposed:
            wshape = (in_channels, out_channels // groups) + self.kernel_size
        else:
            wshape = (out_channels, in_channels // groups) + self.kernel_size
        shapes = {"weight": wshape, "bias": (out_channels,)} if bias else {"weight": wshape}
        check_arrays(
            name,
            shapes,
            self.dtype,
            f"in_channels={in_channels}, out_channels={out_channels}, kernel_size="
            f"{self.kernel_size}, groups={groups}",
        )
        self.weight = Parameter(np.empty(wshape, self.dtype))
        if bias:
            self.bias = Parameter(np.empty((out_channels,), self.dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        self._pullbacks = None

    def reset_parameters(self) -> None:
        """Draw the weight and bias again (in place), as torch's default initialisation,
        from the layer's generator (``rng``/``seed``): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        w = self.weight.data
        fan_in = w.shape[1] * math.prod(w.shape[2:])
        w[...] = kaiming_uniform(self._rng, w.shape, fan_in, w.dtype)
        if self.bias is not None:
            b = self.bias.data
            b[...] = kaiming_uniform(self._rng, b.shape, fan_in, b.dtype)

    def __getstate__(self):
        # the pullbacks of the last forward are closures (not picklable) and only
        # serve the next backward; a pickled or copied layer starts without them
        state = self.__dict__.copy()
        state["_pullbacks"] = None
        return state

    def extra_repr(self) -> str:
        # torch's format: defaults left out, strings unquoted
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        pad = self.padding
        if isinstance(pad, str) or any(p != 0 for p in (pad if isinstance(pad, tuple) else [1])):
            s += f", padding={pad}"
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self._transposed and any(p != 0 for p in self.output_padding):
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s

    def _bias_arr(self):
        return None if self.bias is None else self.bias.data

    def _accumulate(self, grads) -> np.ndarray:
        self.weight.accumulate(grads[1])
        if self.bias is not None:
            self.bias.accumulate(grads[2])
        return grads[0]

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Return grad_input; add grad_weight/grad_bias into ``.grad``."""
        if self._pullbacks is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        pad_pb, conv_pb = self._pullbacks
        gx = self._accumulate(conv_pb(grad_out))
        return gx if pad_pb is None else pad_pb(gx)["input"]


class _Conv(_ConvNd):
    _fn = None

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        device=None,
        dtype=None,
        *,
        rng=None,
        seed=None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
            rng=rng,
            seed=seed,
        )

    def _torch_pad(self) -> list[int]:
        """The spec's per-side padding as torch's flat pad list, last dimension first."""
        flat: list[int] = []
        for lo, hi in reversed(self._spec.padding):
            flat += [lo, hi]
        return flat

    def forward(self, input: np.ndarray) -> np.ndarray:
        fn = type(self)._fn
        x = as_array(f"{type(self).__name__}: input", input)
        pad_pb = None
        padding = self.padding
        if self.padding_mode != "zeros":
            x, pb = pad_vjp(x, self._torch_pad(), mode=self.padding_mode)
            pad_pb, padding = pb, 0
        y, conv_pb = vjp(
            fn,
            x,
            self.weight.data,
            self._bias_arr(),
            self.stride,
            padding,
            self.dilation,
            self.groups,
        )
        self._pullbacks = (pad_pb, conv_pb)
        return y

    def predict(self, input: np.ndarray) -> np.ndarray:
        """Forward without keeping anything for backward."""
        x = as_array(f"{type(self).__name__}: input", input)
        padding = self.padding
        if self.padding_mode != "zeros":
            x, padding = pad(x, self._torch_pad(), mode=self.padding_mode), 0
        return type(self)._fn(
            x, self.weight.data, self._bias_arr(), self.stride, padding, self.dilation, self.groups
        )


class _ConvT(_ConvNd):
    _transposed = True
    _fn = None

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        groups=1,
        bias=True,
        dilation=1,
        padding_mode="zeros",
        device=None,
        dtype=None,
        *,
        rng=None,
        seed=None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            output_padding,
            device=device,
            dtype=dtype,
            rng=rng,
            seed=seed,
        )

    def _output_padding(self, x: np.ndarray, output_size) -> tuple[int, ...]:
        """torch's rule: pick output_padding so the output has ``output_size``."""
        if output_size is None:
            return self.output_padding
        r, name = self._rank, type(self).__name__
        lead = x.ndim - r  # 2 batched, 1 unbatched: torch also accepts those leading sizes
        if isinstance(output_size, (str, bytes)) or not hasattr(output_size, "__len__"):
            raise TypeError(f"{name}: output_size={output_size!r} must be a sequence of ints")
        size = tuple(output_size)
        if len(size) == r + lead:
            size = size[lead:]
        if len(size) != r:
            raise ValueError(
                f"{name}: output_size={tuple(output_size)} must have {r} or {r + lead} entries"
            )
        for v in size:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name}: output_size={tuple(output_size)} must hold ints")
        size = tuple(int(v) for v in size)
        spatial = x.shape[-r:]
        zero = make_spec(
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            0,
            transposed=True,
        )
        smallest = zero.transpose_out_shape(spatial)
        op = []
        for i, (want, lo) in enumerate(zip(size, smallest)):
            hi = lo + self.stride[i] - 1  # torch's range (output_padding < stride)
            if not lo <= want <= hi:
                raise ValueError(
                    f"{name}: output_size={size} is not reachable: dimension {i} must be "
                    f"between {lo} and {hi} for input size {spatial[i]}"
                )
            op.append(want - lo)
        return tuple(op)

    def forward(self, input: np.ndarray, output_size=None) -> np.ndarray:
        x = as_array(f"{type(self).__name__}: input", input)
        op = self._output_padding(x, output_size)
        y, conv_pb = vjp(
            type(self)._fn,
            x,
            self.weight.data,
            self._bias_arr(),
            self.stride,
            self.padding,
            op,
            self.groups,
            self.dilation,
        )
        self._pullbacks = (None, conv_pb)
        return y

    def predict(self, input: np.ndarray, output_size=None) -> np.ndarray:
        x = as_array(f"{type(self).__name__}: input", input)
        return type(self)._fn(
            x,
            self.weight.data,
            self._bias_arr(),
            self.stride,
            self.padding,
            self._output_padding(x, output_size),
            self.groups,
            self.dilation,
        )


def _layer(base, rank, fn, name):
    cls = type(name, (base,), {"_rank": rank, "_fn": fn})
    cls.__module__ = "convolab.nn"
    call = "forward(input, output_size=None)" if base is _ConvT else "forward(input)"
    cls.__doc__ = (
        f"{name}: as torch.nn.{name}; ``rng``/``seed`` seed the default "
        f"initialisation (``reset_parameters()`` draws again); ``{call}``, then "
        "``backward(grad_out)`` returns the input's gradient and adds into "
        "``weight.grad`` / ``bias.grad``."
    )
    return cls


Conv1d = _layer(_Conv, 1, F.conv1d, "Conv1d")
Conv2d = _layer(_Conv, 2, F.conv2d, "Conv2d")
Conv3d = _layer(_Conv, 3, F.conv3d, "Conv3d")
ConvTranspose1d = _layer(_ConvT, 1, F.conv_transpose1d, "ConvTranspose1d")
ConvTranspose2d = _layer(_ConvT, 2, F.conv_transpose2d, "ConvTranspose2d")
ConvTranspose3d = _layer(_ConvT, 3, F.conv_transpose3d, "ConvTranspose3d")
