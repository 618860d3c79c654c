"""An AlexNet-shaped network in torch (Krizhevsky et al. 2012, the one-tower
variant that torchvision ships), so that no torchvision is needed.

Layer names conv1..conv5 (outputs before their ReLU) and fc6..fc8.
"""

from __future__ import annotations

import torch
from torch import nn

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class AlexNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 11, stride=4, padding=2)
        self.conv2 = nn.Conv2d(64, 192, 5, padding=2)
        self.conv3 = nn.Conv2d(192, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 256, 3, padding=1)
        self.conv5 = nn.Conv2d(256, 256, 3, padding=1)
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, 1000)
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor, until: str = "fc8") -> torch.Tensor:
        """Run up to layer `until` and return its output (pre-ReLU)."""
        if until not in LAYERS:
            raise ValueError(f"unknown layer {until!r}; layers: {LAYERS}")
        steps = [
            ("conv1", lambda x: self.conv1(x), lambda x: self.pool(torch.relu(x))),
            ("conv2", lambda x: self.conv2(x), lambda x: self.pool(torch.relu(x))),
            ("conv3", lambda x: self.conv3(x), torch.relu),
            ("conv4", lambda x: self.conv4(x), torch.relu),
            ("conv5", lambda x: self.conv5(x),
             lambda x: torch.flatten(nn.functional.adaptive_avg_pool2d(self.pool(torch.relu(x)), 6), 1)),
            ("fc6", lambda x: self.fc6(x), torch.relu),
            ("fc7", lambda x: self.fc7(x), torch.relu),
            ("fc8", lambda x: self.fc8(x), None),
        ]
        for name, layer, after in steps:
            x = layer(x)
            if name == until:
                return x
            x = after(x)
        raise AssertionError("unreachable")


def seeded_alexnet(seed: int) -> AlexNet:
    """Random weights from a fixed seed (trained weights cannot be downloaded here)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AlexNet().eval()


def preprocess(images_uint8: torch.Tensor) -> torch.Tensor:
    """(n, H, W, 3) uint8 RGB -> (n, 3, 224, 224) ImageNet-normalised float."""
    x = images_uint8.permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (224, 224):
        x = nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
