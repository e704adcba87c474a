"""A ResNet-50-class image classifier with random weights, for benchmarks on a GPU.

The group task is ImageNet-shaped: one 3x224x224 FP32 image a request, 1000 classes ("class-0"
.. "class-999"), the top 5 kept per vote. The network is ResNet-50 (He et al. 2015: bottleneck
blocks of 3, 4, 6 and 3, 25.6 M parameters) written here in plain torch, since torchvision is
not a dependency; its weights are random (seeded, so a seed always yields the same weights
digest) with each block's last batch norm zeroed, so that activations stay finite through the
fifty layers without training. Nothing is downloaded. Each replica gets its own seed: four
owners, four different models, as in the marketplace.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from certs.config import TaskSchema
from replica.model_spec import ModelPackage, ModelSpec, save_model_package

INPUT_NAME = "pixels"  # as the digits task names it, so clients and tools need no other name
IMAGE_SHAPE = (3, 224, 224)
CLASS_LABELS: tuple[str, ...] = tuple(f"class-{i}" for i in range(1000))
TOP_K = 5
MAX_BATCH_SIZE = 64
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, first stride)
EXPANSION = 4  # a bottleneck's output channels per width


def imagenet_task() -> TaskSchema:
    """The task every model of this module fits."""
    return TaskSchema(input_name=INPUT_NAME, input_shape=IMAGE_SHAPE, input_datatype="FP32", class_labels=CLASS_LABELS, top_k=TOP_K)


def resnet50_package(out_dir: str | os.PathLike[str], seed: int = 0) -> ModelPackage:
    """ResNet-50 with random weights from `seed`, saved as a model package (about 100 MB)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = ResNet50(len(CLASS_LABELS))
    spec = ModelSpec(
        name=f"resnet50-random-{seed}", input_name=INPUT_NAME, input_datatype="FP32", input_shape=IMAGE_SHAPE,
        output_kind="logits", class_labels=CLASS_LABELS, max_batch_size=MAX_BATCH_SIZE, device="auto",
    )
    return save_model_package(out_dir, module, spec)


def random_images(count: int, seed: int = 0) -> np.ndarray:
    """`count` images of the task's shape, ImageNet-normalised noise."""
    return np.random.default_rng(seed).standard_normal((count, *IMAGE_SHAPE), dtype=np.float32)


class _Bottleneck(nn.Module):
    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        nn.init.zeros_(self.bn3.weight)  # the block starts as its shortcut: finite without training
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet50(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        blocks: list[nn.Module] = []
        channels = 64
        for width, count, stride in STAGES:
            for i in range(count):
                blocks.append(_Bottleneck(channels, width, stride if i == 0 else 1))
                channels = width * EXPANSION
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))
