"""Conv2d on NCHW input with a (out, in/groups, kh, kw) weight, and Conv1d on (N, C, L); PyTorch's arguments and init."""
from __future__ import annotations

import math

from . import functional as F
from . import init
from ._factory import new_param
from .functional import ShapeError, _pair
from .module import Module


def _check_conv_args(in_channels, out_channels, groups, padding_mode):
    """PyTorch's constructor checks, shared by Conv1d and Conv2d."""
    if groups <= 0:
        raise ValueError("groups must be a positive integer")
    if in_channels % groups:
        raise ValueError("in_channels must be divisible by groups")
    if out_channels % groups:
        raise ValueError("out_channels must be divisible by groups")
    if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
        raise ValueError(f"padding_mode must be 'zeros', 'reflect', 'replicate' or 'circular', got "
                         f"{padding_mode!r}")


class Conv2d(Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__()
        _check_conv_args(in_channels, out_channels, groups, padding_mode)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"invalid padding string {padding!r}, use 'valid' or 'same'")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.groups = int(groups)
        self.padding_mode = padding_mode
        self.weight = new_param((out_channels, in_channels // groups) + self.kernel_size, device, dtype)
        if bias:
            self.bias = new_param((out_channels,), device, dtype)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            if fan_in != 0:
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(self.bias, -bound, bound)

    def _check_input(self, input):
        shape = tuple(input.shape)
        if len(shape) not in (3, 4) or shape[-3] != self.in_channels:
            hint = ""
            if len(shape) in (3, 4) and shape[-1] == self.in_channels:
                hint = " (channels-last input? convert with x.permute(0, 3, 1, 2))"
            raise ShapeError(f"{self!r}: expected input of shape (N, {self.in_channels}, H, W), "
                             f"got {shape}{hint}")

    def _pads(self):
        """F.pad amounts (left, right, top, bottom) for the non-zeros padding modes."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            t, b, l, r = F._conv_padding("same", self.kernel_size, self.dilation, (1, 1))
            return (l, r, t, b)
        ph, pw = self.padding
        return (pw, pw, ph, ph)

    def forward(self, input):
        self._check_input(input)
        if self.padding_mode != "zeros":         # pad explicitly, then convolve without padding
            input = F.pad(input, self._pads(), mode=self.padding_mode)
            return F.conv2d(input, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def forward_relu_max_pool2d(self, input):
        """max_pool2d(relu(self(input)), 2) in one fused op (used by nn.Sequential)."""
        self._check_input(input)
        return F.conv2d_relu_max_pool2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class Conv1d(Module):
    """1-D convolution on (N, C, L) input with a (out, in/groups, k) weight; PyTorch's arguments,
    parameter names and init.  Runs through conv2d's im2col path on an (N, C, 1, L) view."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__()
        _check_conv_args(in_channels, out_channels, groups, padding_mode)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = (F._single(kernel_size, "kernel_size"),)
        self.stride = (F._single(stride, "stride"),)
        self.dilation = (F._single(dilation, "dilation"),)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"invalid padding string {padding!r}, use 'valid' or 'same'")
            if padding == "same" and self.stride != (1,):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = (F._single(padding, "padding"),)
        self.groups = int(groups)
        self.padding_mode = padding_mode
        self.weight = new_param((out_channels, in_channels // groups) + self.kernel_size, device, dtype)
        if bias:
            self.bias = new_param((out_channels,), device, dtype)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    reset_parameters = Conv2d.reset_parameters

    def _pads(self):
        """(left, right) padding amounts, for the non-zeros padding modes (F.pad before the conv)."""
        if self.padding == "valid":
            return 0, 0
        if self.padding == "same":
            total = self.dilation[0] * (self.kernel_size[0] - 1)
            return total // 2, total - total // 2
        return self.padding[0], self.padding[0]

    def forward(self, input):
        shape = tuple(input.shape)
        if len(shape) not in (2, 3) or shape[-2] != self.in_channels:
            raise ShapeError(f"{self!r}: expected input of shape (N, {self.in_channels}, L), got {shape}")
        if self.padding_mode != "zeros":
            input = F.pad(input, self._pads(), mode=self.padding_mode)
            return F.conv1d(input, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv1d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,):
            s += f", padding={self.padding}"
        if self.dilation != (1,):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s
