"""Layers that keep for backward only what back-propagation needs (TinyTL's memory rules).

Stock PyTorch keeps more than training needs, which hides the savings the lecture is about: a
convolution saves its input even when its weight is frozen (the input gradient needs only the
weight), ReLU6 saves its float input where a 1-bit mask is enough, batch norm saves its input even
with frozen statistics, and average pooling saves its input although its gradient needs only the
shape. The ``frugal`` layers here keep exactly:

* convolution: its input when its weight is trained; the first ``k`` input channels when only a
  partial update (``delta`` on those channels) is trained; nothing otherwise. With frozen batch
  norm the statistics are folded into the convolution (``w * gamma / sigma``, ``beta - mu * gamma
  / sigma``), so a trained BN bias is a convolution bias and costs no activation;
* ReLU6: a bit-packed mask, 1 bit per element, when a gradient flows through it;
* average pooling and nearest upsampling: nothing.

``frugal=False`` builds the stock layers instead (nn.Conv2d + nn.BatchNorm2d, nn.ReLU6,
nn.AvgPool2d), so the two can be measured side by side.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# Bit gathering with one multiplication per 8 elements: with bytes b_i in {0, 1} read as one
# little-endian int64, the product with GATHER has b_i at bit 56 + i and no carries (the partial
# products 8i + 7j + 7 are distinct powers of two); SPREAD / SELECT undo it.
_GATHER = 0x0102040810204080
_SPREAD = 0x0101010101010101
_SELECT = 0x8040201008040201 - 2**64  # as a signed int64


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> uint8 tensor of ceil(numel / 8) bytes (element 8k + i is bit i of byte k)."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = F.pad(flat, (0, (-flat.numel()) % 8))
    return ((flat.view(torch.int64) * _GATHER) >> 56).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    return ((packed.to(torch.int64) * _SPREAD) & _SELECT).view(torch.uint8).reshape(-1)[:numel] != 0


class _ReLU6Mask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        if ctx.needs_input_grad[0]:
            ctx.shape = x.shape
            ctx.save_for_backward(pack_bits((x > 0) & (x < 6)))
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx, grad):
        (packed,) = ctx.saved_tensors
        return grad * unpack_bits(packed, grad.numel()).view(ctx.shape)


class ReLU6(nn.Module):
    """ReLU6 that keeps a 1-bit mask for backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReLU6Mask.apply(x)

    def analytic_saved_bytes(self, x: torch.Tensor, y: torch.Tensor) -> int:
        return math.ceil(x.numel() / 8) if x.requires_grad else 0


class _ShapeOnlyAvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel):
        ctx.kernel, ctx.shape = kernel, x.shape
        return F.avg_pool2d(x, kernel, kernel, ceil_mode=True, count_include_pad=False)

    @staticmethod
    def backward(ctx, grad):
        # The gradient of a mean is the output gradient spread over its window: only the shape is needed.
        placeholder = grad.new_zeros(()).expand(ctx.shape)
        return torch.ops.aten.avg_pool2d_backward(grad, placeholder, [ctx.kernel] * 2, [ctx.kernel] * 2,
                                                  [0, 0], True, False, None), None


def avg_pool(x: torch.Tensor, kernel: int, frugal: bool = True) -> torch.Tensor:
    if frugal:
        return _ShapeOnlyAvgPool.apply(x, kernel)
    return F.avg_pool2d(x, kernel, kernel, ceil_mode=True, count_include_pad=False)


def _embed_delta(delta: torch.Tensor, weight_shape: torch.Size, depthwise: bool) -> torch.Tensor:
    """A partial update ``delta`` padded with zeros to the weight's shape (channels ``[:k]``)."""
    if depthwise:  # (k, 1, kh, kw) -> (C, 1, kh, kw): the first k channels
        return F.pad(delta, (0, 0, 0, 0, 0, 0, 0, weight_shape[0] - delta.shape[0]))
    return F.pad(delta, (0, 0, 0, 0, 0, weight_shape[1] - delta.shape[1]))  # input channels [:k]


class _FrugalConv(torch.autograd.Function):
    """``conv(x, (weight + delta) * scale) + bias``, saving the input only as far as a trained weight needs it.

    ``scale`` (per output channel, frozen BN folded in) and the conv settings travel on ``ctx``, not
    through ``save_for_backward``: they are not activations.
    """

    @staticmethod
    def forward(ctx, x, weight, delta, bias, scale, stride, padding, groups):
        ctx.conf = (stride, padding, groups)
        ctx.scale, ctx.x_shape = scale, x.shape
        ctx.depthwise = groups > 1
        w = weight if delta is None else weight + _embed_delta(delta, weight.shape, ctx.depthwise)
        w = w if scale is None else w * scale.view(-1, 1, 1, 1)
        if ctx.needs_input_grad[1]:
            saved = x
        elif delta is not None and ctx.needs_input_grad[2]:
            # A copy: at batch size 1 the channel slice is already contiguous, and a view would keep
            # the whole input alive.
            saved = x[:, : delta.shape[0] if ctx.depthwise else delta.shape[1]].clone()
        else:
            saved = None
        ctx.save_for_backward(saved, weight, delta)
        return F.conv2d(x, w, bias, stride, padding, 1, groups)

    @staticmethod
    def backward(ctx, grad):
        saved, weight, delta = ctx.saved_tensors
        stride, padding, groups = ctx.conf
        scale = ctx.scale
        grad_x = grad_w = grad_delta = grad_b = None
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if need_x or need_w:
            w = weight if delta is None else weight + _embed_delta(delta, weight.shape, ctx.depthwise)
            w = w if scale is None else w * scale.view(-1, 1, 1, 1)
            # One call for both, as autograd's own convolution does; without a weight gradient the
            # input is not read, a zero-stride placeholder stands in for its shape.
            x = saved if need_w else grad.new_zeros(()).expand(ctx.x_shape)
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad, x, w, None, stride, padding, [1, 1], False, [0, 0], groups, [need_x, need_w, False])
            if need_w and scale is not None:
                grad_w = grad_w * scale.view(-1, 1, 1, 1)
        if ctx.needs_input_grad[2]:
            k = delta.shape[0] if ctx.depthwise else delta.shape[1]
            x_k = saved[:, :k] if saved.shape[1] != k else saved
            if ctx.depthwise:
                grad_delta = torch.nn.grad.conv2d_weight(x_k, delta.shape, grad[:, :k], stride, padding, 1, k)
                grad_delta = grad_delta if scale is None else grad_delta * scale[:k].view(-1, 1, 1, 1)
            else:
                grad_delta = torch.nn.grad.conv2d_weight(x_k, delta.shape, grad, stride, padding, 1, 1)
                grad_delta = grad_delta if scale is None else grad_delta * scale.view(-1, 1, 1, 1)
        if ctx.needs_input_grad[3]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_delta, grad_b, None, None, None, None


class ConvBN(nn.Module):
    """Convolution + batch norm (or + bias when ``bn=False``), with an optional partial weight update.

    ``set_update_ratio(r)`` with 0 < r < 1 adds a trainable ``delta`` on the first ``ceil(r * C)``
    input channels (output channels for a depthwise convolution), tiny-training's sub-layer update;
    only those channels of the input are kept for backward. Batch norm runs with batch statistics
    when the module is in training mode and ``bn_frozen`` is False; otherwise its running statistics
    are folded into the convolution.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 bn: bool = True, frugal: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=not bn)
        self.bn = nn.BatchNorm2d(cout) if bn else None
        self.frugal = frugal
        self.bn_frozen = False
        self.delta: nn.Parameter | None = None
        self.update_ratio = 0.0

    @property
    def depthwise(self) -> bool:
        return self.conv.groups > 1 and self.conv.groups == self.conv.in_channels == self.conv.out_channels

    def set_update_ratio(self, ratio: float) -> None:
        """Train the weight on a fraction of its channels (0 < ratio < 1) or all of it (ratio = 1)."""
        if not 0 < ratio <= 1:
            raise ValueError(f"update ratio {ratio} is not in (0, 1]")
        self.update_ratio = ratio
        if ratio >= 1:
            self.delta = None
            self.conv.weight.requires_grad_(True)
            return
        if self.conv.groups > 1 and not self.depthwise:
            raise ValueError("a partial update needs a dense or a depthwise convolution, not a grouped one")
        weight = self.conv.weight
        channels = weight.shape[0] if self.depthwise else weight.shape[1]
        k = max(1, math.ceil(ratio * channels))
        shape = (k, *weight.shape[1:]) if self.depthwise else (weight.shape[0], k, *weight.shape[2:])
        self.delta = nn.Parameter(torch.zeros(shape, dtype=weight.dtype))

    def analytic_saved_bytes(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """TinyTL's rule: the input if the weight trains, its first k channels for a partial update."""
        saved = 0
        if self.conv.weight.requires_grad:
            saved = x.numel() * x.element_size()
        elif self.delta is not None and self.delta.requires_grad:
            k = self.delta.shape[0] if self.depthwise else self.delta.shape[1]
            saved = x.numel() // x.shape[1] * k * x.element_size()
        if self._bn_active():
            bn_trains = any(p.requires_grad for p in self.bn.parameters())
            if x.requires_grad or saved or bn_trains:  # batch statistics: the normalised input, mean, 1/std
                saved += y.numel() * y.element_size() + 2 * y.shape[1] * y.element_size()
        elif self.bn is not None and self.bn.weight.requires_grad:
            saved += y.numel() * y.element_size()  # running statistics, trained scale: the input to BN
        return saved

    def _bn_active(self) -> bool:
        return self.bn is not None and self.training and not self.bn_frozen

    def conv_weight(self) -> torch.Tensor:
        """The convolution's weight; under torch.nn.utils.prune, ``weight_orig * weight_mask``.

        torch's pruning recomputes ``weight`` in the convolution's own forward pre-hook, which never
        runs here (the convolution is applied functionally), so the product is taken here.
        """
        conv = self.conv
        return conv.weight_orig * conv.weight_mask if hasattr(conv, "weight_mask") else conv.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.conv, self.bn
        weight = self.conv_weight()
        if not self.frugal:
            if self.delta is not None:
                weight = weight + _embed_delta(self.delta, weight.shape, self.depthwise)
            y = F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, 1, conv.groups)
            return bn(y) if bn is not None else y
        if self._bn_active():
            y = _FrugalConv.apply(x, weight, self.delta, None, None, conv.stride, conv.padding, conv.groups)
            return bn(y)
        if bn is not None and bn.weight.requires_grad and torch.is_grad_enabled():
            # A trained scale with running statistics: its gradient needs the normalised input.
            y = _FrugalConv.apply(x, weight, self.delta, None, None, conv.stride, conv.padding, conv.groups)
            return bn(y)
        scale, bias = None, conv.bias
        if bn is not None:
            scale = (bn.weight * torch.rsqrt(bn.running_var + bn.eps)).detach()
            bias = bn.bias - bn.running_mean * scale
        return _FrugalConv.apply(x, weight, self.delta, bias, scale, conv.stride, conv.padding, conv.groups)


def relu6(frugal: bool) -> nn.Module:
    return ReLU6() if frugal else nn.ReLU6()
