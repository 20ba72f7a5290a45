"""Classifiers split as the paper does (§3): a feature extractor f_theta that
maps an image to a d-dimensional feature, and a linear classifier g_rho.

Every model here exposes ``features(x) -> [B, d]``, ``classifier`` (an
``nn.Linear(d, C)``) and ``forward(x) = classifier(features(x))``.

- ``resnet34``: the CIFAR ResNet-34 used by CIFAR-N and TSCSI (3x3 stem, no
  max-pool), the paper's model for CIFAR; d = 512.
- ``preact_resnet18``: DivideMix's PreActResNet-18, a faster option; d = 512.
- ``resnet50``: torchvision's ResNet-50 for Clothing1M-style data, ImageNet
  weights loaded from a local file when given; d = 2048.
- ``small_cnn``: a small CNN for the embedded digits default; d = 128.

``width`` (the config field of that name) sets the base number of channels:
0 keeps each model's own (64 for the CIFAR ResNets, so d = 512; 32 for
``small_cnn``); a CIFAR ResNet of width w has stages of w, 2w, 4w, 8w
channels and d = 8w. Narrow widths make the CPU-scale fidelity check
(``hallnll fidelity``) affordable; torchvision's ResNet-50 has no width.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if len(self.shortcut) else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem, no max-pool, four stages, global pooling."""

    def __init__(self, block, num_blocks, num_classes, in_channels=3, preact=False, width=64):
        super().__init__()
        self.in_planes = width
        self.preact = preact
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.Identity() if preact else nn.BatchNorm2d(width)
        stages = []
        for planes, n, stride in zip((width, 2 * width, 4 * width, 8 * width), num_blocks, (1, 2, 2, 2)):
            layers = []
            for s in [stride] + [1] * (n - 1):
                layers.append(block(self.in_planes, planes, s))
                self.in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.bn_final = nn.BatchNorm2d(8 * width) if preact else nn.Identity()
        self.feature_dim = 8 * width
        self.classifier = nn.Linear(8 * width, num_classes)

    def features(self, x):
        out = self.conv1(x)
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layers(out)
        if self.preact:
            out = F.relu(self.bn_final(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x):
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """Three conv layers and global pooling: enough for 8x8 digits on a CPU."""

    def __init__(self, num_classes, in_channels=1, width=32):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.body = nn.Sequential(block(in_channels, width), block(width, 2 * width), nn.MaxPool2d(2),
                                  block(2 * width, 4 * width))
        self.feature_dim = 4 * width
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def features(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1)

    def forward(self, x):
        return self.classifier(self.features(x))


class TorchvisionResNet50(nn.Module):
    def __init__(self, num_classes, in_channels=3, pretrained=""):
        super().__init__()
        import torchvision

        net = torchvision.models.resnet50(weights=None)
        if pretrained:
            net.load_state_dict(imagenet_state_dict(pretrained))
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone = net
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def features(self, x):
        return self.backbone(x)

    def forward(self, x):
        return self.classifier(self.features(x))


def imagenet_state_dict(spec: str) -> dict:
    """ResNet-50's ImageNet weights named by ``Config.pretrained``: a local state-dict
    file, or torchvision's published weights by name (``IMAGENET1K_V1``, DivideMix's
    ``pretrained=True``; ``IMAGENET1K_V2``; ``DEFAULT``; also ``ResNet50_Weights.X``),
    fetched into torch's hub cache when online and read from there when not. Anything
    else, or a name that cannot be fetched, raises one ConfigError that says where to
    put the file."""
    from pathlib import Path

    from .config import ConfigError

    if Path(spec).expanduser().is_file():
        return torch.load(Path(spec).expanduser(), map_location="cpu", weights_only=True)
    from torchvision.models import ResNet50_Weights

    name = spec.split(".", 1)[1] if spec.startswith("ResNet50_Weights.") else spec
    if name not in ResNet50_Weights.__members__:
        raise ConfigError(f"config: pretrained={spec!r} is neither a file nor a torchvision weights name; give the "
                          f"path of a ResNet-50 ImageNet state dict or one of "
                          f"{', '.join(ResNet50_Weights.__members__)}")
    weights = ResNet50_Weights[name]
    import contextlib
    import io

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # torch.hub's "Downloading: ..." line
            return weights.get_state_dict(progress=False)
    except Exception as e:  # offline: URLError, DNS, ...
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise ConfigError(f"config: pretrained={spec!r}: cannot download {weights.url} ({type(e).__name__}); put "
                          f"that file at {str(cache)!r} (torch's hub cache, read without network), or set "
                          f"pretrained to the path of a local ResNet-50 state dict") from None


def build_model(arch: str, num_classes: int, in_channels: int = 3, pretrained: str = "", width: int = 0) -> nn.Module:
    """The classifier f_theta o g_rho named by ``arch`` (see the module docstring);
    ``width`` 0 is the model's own base width."""
    if arch == "resnet34":
        return CifarResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels, width=width or 64)
    if arch == "preact_resnet18":
        return CifarResNet(PreActBlock, (2, 2, 2, 2), num_classes, in_channels, preact=True, width=width or 64)
    if arch == "resnet50":
        if width:
            raise ValueError("arch=resnet50 has no width option; leave width at 0")
        return TorchvisionResNet50(num_classes, in_channels, pretrained)
    if arch == "small_cnn":
        return SmallCNN(num_classes, in_channels, width=width or 32)
    raise ValueError(f"unknown arch {arch!r}; use resnet34, preact_resnet18, resnet50 or small_cnn")
