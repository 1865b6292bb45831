"""The CIFAR ResNets of He et al. 2016 (section 4.2) and the input normalisation of image nets.

ResNet-(6n+2): a 3x3 stem conv to 16 channels, three stages of n basic blocks with 16, 32
and 64 channels (the first block of stages 2 and 3 halves the resolution with stride 2),
global average pooling and a linear `head`. Shortcuts are the paper's option A (identity,
subsampled and zero-padded in channels where the shape changes), so the parameter counts
are the paper's: 0.27M (20), 0.46M (32), 0.66M (44), 0.85M (56), 1.7M (110).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RESNET_DEPTHS", "BasicBlock", "CifarResNet", "InputNorm", "kaiming_init"]

RESNET_DEPTHS = (20, 32, 44, 56, 110)
STAGE_WIDTHS = (16, 32, 64)


class InputNorm(nn.Module):
    """Raw batch (any dtype, e.g. uint8) -> float32, normalised per channel (no parameters).

    `mean`/`std` are per-channel statistics of the training split (None: cast only). The
    layout of the incoming view: image (N, C, H, W), flat (N, C*H*W) or sequence (N, H, C*W).
    Plain lists, not buffers, so stacked (torch.func) training sees a buffer-free model.
    """

    def __init__(self, mean: list[float] | None = None, std: list[float] | None = None,
                 view: str = "image") -> None:
        super().__init__()
        self.mean, self.std, self.view = mean, std, view
        self.channels_last = False  # set by prepare_model_for for conv nets

    def forward(self, x: Tensor) -> Tensor:
        """Float, per-channel normalised batch in the same shape."""
        x = x.float()
        if self.mean is not None and self.std is not None:
            c = len(self.mean)
            mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device)
            inv = 1.0 / torch.tensor(self.std, dtype=torch.float32, device=x.device)
            if c == 1:
                x = (x - mean) * inv
            elif self.view == "image":
                x = (x - mean.view(1, c, 1, 1)) * inv.view(1, c, 1, 1)
            elif self.view == "flat":
                n = x.shape[0]
                x = ((x.view(n, c, -1) - mean.view(1, c, 1)) * inv.view(1, c, 1)).view(n, -1)
            else:  # sequence (N, H, C*W)
                n, h = x.shape[0], x.shape[1]
                x = ((x.view(n, h, c, -1) - mean.view(1, 1, c, 1))
                     * inv.view(1, 1, c, 1)).view(n, h, -1)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def kaiming_init(module: nn.Module) -> None:
    """He (fan-out, ReLU) init of every conv; BatchNorm weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an option-A (parameter-free) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.extra = stride, c_out - c_in

    def forward(self, x: Tensor) -> Tensor:
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.stride != 1 or self.extra:
            short = x[:, :, ::self.stride, ::self.stride]
            half = self.extra // 2
            short = F.pad(short, (0, 0, 0, 0, half, self.extra - half))
        return F.relu(out + short)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images; features() = pooled 64-channel map, head = Linear."""

    input_view = "image"

    def __init__(self, depth: int, in_channels: int, n_out: int,
                 inorm: InputNorm | None = None) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"Expected argument `depth` to be one of {RESNET_DEPTHS}, "
                             f"but got {depth}")
        n = (depth - 2) // 6
        self.inorm = inorm or InputNorm()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = STAGE_WIDTHS[0]
        for stage, width in enumerate(STAGE_WIDTHS):
            for i in range(n):
                blocks.append(BasicBlock(c_in, width, 2 if stage > 0 and i == 0 else 1))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, n_out)
        kaiming_init(self)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: the globally average-pooled last stage."""
        return self.blocks(self.stem(self.inorm(x))).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.head(self.features(x))
