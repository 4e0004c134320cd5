"""Small vision nets in plain torch: a MobileNetV2 / MCUNet-style inverted-residual net and a LeNet.

``MobileNet`` is a stem convolution, a ``ModuleList`` of inverted-residual blocks (1x1 expansion,
depthwise kxk, 1x1 projection, batch norm, ReLU6 or h-swish, a shortcut when shape allows), a 1x1
head convolution, global average pooling and a linear classifier. Its shape is a list of stages
``(expand_ratio, channels, blocks, stride)`` as in MobileNetV2's table, scaled by ``width``.
``blocks`` is the repeated-block list the shared selection code looks for.

``LeNet`` is the sigmoid LeNet of the deep-leakage-from-gradients papers (three 5x5 convolutions and
one linear layer): smooth activations make the gradient-matching attack well posed.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from analysis.edge.layers import ConvBN, avg_pool, relu6
from analysis.io import atomic_path

DEFAULT_STAGES = ((1, 8, 1, 1), (4, 12, 2, 2), (4, 16, 2, 2), (4, 24, 2, 1))


def _channels(c: int, width: float) -> int:
    return max(4, int(round(c * width / 4)) * 4)


def make_activation(name: str, frugal: bool) -> nn.Module:
    if name == "relu6":
        return relu6(frugal)
    if name == "hswish":
        return nn.Hardswish()
    raise ValueError(f"unknown activation {name!r}; expected relu6 or hswish")


class LiteResidual(nn.Module):
    """TinyTL's lite residual branch: downsample, grouped 3x3 conv, 1x1 conv, upsample; starts as zero.

    The branch reads the block input at half the block's output resolution and keeps the channel
    count (no inverted bottleneck), so what it saves for backward is a small fraction of the block's
    own activations. The 1x1 convolution is zero-initialised: the adapted net starts as the source net.
    """

    def __init__(self, cin: int, cout: int, stride: int, group_size: int, act: str, frugal: bool):
        super().__init__()
        self.pool = 2 * stride
        self.frugal = frugal
        groups = max(1, cin // group_size)
        while cin % groups:
            groups -= 1
        self.conv = ConvBN(cin, cin, 3, groups=groups, bn=False, frugal=frugal)
        self.act = make_activation(act, frugal)
        self.project = ConvBN(cin, cout, 1, bn=False, frugal=frugal)
        nn.init.zeros_(self.project.conv.weight)
        nn.init.zeros_(self.project.conv.bias)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        y = self.project(self.act(self.conv(avg_pool(x, self.pool, self.frugal))))
        return F.interpolate(y, size=tuple(size), mode="nearest")


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, kernel: int, act: str, frugal: bool):
        super().__init__()
        hidden = cin * expand
        self.cin, self.cout, self.stride = cin, cout, stride
        self.expand = ConvBN(cin, hidden, 1, frugal=frugal) if expand != 1 else None
        self.expand_act = make_activation(act, frugal) if expand != 1 else None
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden, frugal=frugal)
        self.depthwise_act = make_activation(act, frugal)
        self.project = ConvBN(hidden, cout, 1, frugal=frugal)
        self.use_residual = stride == 1 and cin == cout
        self.lite: LiteResidual | None = None
        self._act, self._frugal = act, frugal

    @property
    def holds_input(self) -> bool:
        """The block input stays alive until the shortcut (or the lite branch) reads it."""
        return self.use_residual or self.lite is not None

    def add_lite_residual(self, group_size: int = 8) -> LiteResidual:
        self.lite = LiteResidual(self.cin, self.cout, self.stride, group_size, self._act, self._frugal)
        return self.lite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand is not None:
            y = self.expand_act(self.expand(y))
        y = self.project(self.depthwise_act(self.depthwise(y)))
        if self.use_residual:
            y = y + x
        if self.lite is not None:  # after the main path: its activations are not upstream of the branch
            y = y + self.lite(x, y.shape[-2:])
        return y


class MobileNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, stages: Sequence[Sequence[int]] = DEFAULT_STAGES,
                 width: float = 1.0, stem_channels: int = 8, head_channels: int = 64, kernel: int = 3,
                 stem_stride: int = 1, activation: str = "relu6", frugal: bool = True):
        super().__init__()
        self.config = dict(in_channels=in_channels, num_classes=num_classes, stages=[list(s) for s in stages],
                           width=width, stem_channels=stem_channels, head_channels=head_channels,
                           kernel=kernel, stem_stride=stem_stride, activation=activation, frugal=frugal)
        act = activation
        cin = _channels(stem_channels, width)
        self.stem = ConvBN(in_channels, cin, 3, stem_stride, frugal=frugal)
        self.stem_act = make_activation(act, frugal)
        blocks = []
        for expand, channels, repeats, stride in stages:
            cout = _channels(channels, width)
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand, kernel, act, frugal))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvBN(cin, head_channels, 1, frugal=frugal)
        self.head_act = make_activation(act, frugal)
        self.classifier = nn.Linear(head_channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head_act(self.head(x)).mean((2, 3))  # mean's backward needs only the shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def new_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Linear(self.classifier.in_features, num_classes)
        self.config["num_classes"] = num_classes


class LeNet(nn.Module):
    """LeNet of Zhu et al. (DLG): 3 x (5x5 conv, activation), linear; 12 channels.

    ``activation="sigmoid"`` is the attacked net of the leakage papers (twice differentiable
    everywhere); ``"relu"`` trains faster and is the federated stage's default.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 32, channels: int = 12,
                 activation: str = "sigmoid"):
        super().__init__()
        if activation not in ("sigmoid", "relu"):
            raise ValueError(f"unknown LeNet activation {activation!r}; expected sigmoid or relu")
        self.config = dict(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                           channels=channels, activation=activation)
        act = nn.Sigmoid if activation == "sigmoid" else nn.ReLU
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 5, 2, 2), act(),
            nn.Conv2d(channels, channels, 5, 2, 2), act(),
            nn.Conv2d(channels, channels, 5, 1, 2), act(),
        )
        side = math.ceil(math.ceil(image_size / 2) / 2)
        self.classifier = nn.Linear(channels * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x).flatten(1))


def build(kind: str, **kwargs) -> nn.Module:
    if kind == "mobilenet":
        return MobileNet(**kwargs)
    if kind == "lenet":
        return LeNet(**kwargs)
    raise ValueError(f"unknown net {kind!r}; expected mobilenet or lenet")


def save(net: nn.Module, path) -> None:
    with atomic_path(path) as tmp:
        torch.save({"kind": "lenet" if isinstance(net, LeNet) else "mobilenet", "config": net.config,
                    "state_dict": net.state_dict()}, tmp)


def load(path, **overrides) -> nn.Module:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = build(blob["kind"], **{**blob["config"], **overrides})
    net.load_state_dict(blob["state_dict"])
    return net
