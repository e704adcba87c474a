"""The ResNet-50-class model the GPU benchmark serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from marketplace.resnet import CLASS_LABELS, IMAGE_SHAPE, ResNet50, imagenet_task, random_images, resnet50_package
from replica.model_spec import check_against_task, load_model_package

RESNET50_PARAMETERS = 25_557_032  # torchvision's resnet50(num_classes=1000)


def test_it_has_resnet50s_parameter_count() -> None:
    assert sum(p.numel() for p in ResNet50(len(CLASS_LABELS)).parameters()) == RESNET50_PARAMETERS


def test_a_seed_fixes_the_weights_and_another_seed_gives_another_model(tmp_path: Path) -> None:
    package = resnet50_package(tmp_path / "a", seed=0)
    again = resnet50_package(tmp_path / "b", seed=0)
    other = resnet50_package(tmp_path / "c", seed=1)
    assert package.weights_digest == again.weights_digest != other.weights_digest
    check_against_task(load_model_package(package.directory).spec, imagenet_task())


def test_random_weights_give_finite_logits_that_differ_between_images(tmp_path: Path) -> None:
    module = resnet50_package(tmp_path / "m", seed=0).load_module("cpu")
    images = random_images(2)
    assert images.shape == (2, *IMAGE_SHAPE) and images.dtype == np.float32
    with torch.inference_mode():
        logits = module(torch.from_numpy(images)).numpy()
    assert logits.shape == (2, len(CLASS_LABELS))
    assert np.isfinite(logits).all()
    assert not np.allclose(logits[0], logits[1])
