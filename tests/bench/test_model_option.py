"""Benchmark options: `--model resnet50` (what the benchmarks of a digits group serve instead, for a
GPU machine) and `--param` (protocol parameters for every group they start)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from certs.config import load_group_config
from marketplace.local import LocalGroup
from marketplace.models import constant_model_package, digits_task
from marketplace.resnet import IMAGE_SHAPE, imagenet_task
from tests.bench.common import add_options, model_inputs, options_from


def _options(*argv: str) -> object:
    parser = argparse.ArgumentParser()
    add_options(parser)
    return options_from(parser.parse_args(list(argv)))


def test_the_load_generators_send_images_for_resnet50_and_digits_otherwise() -> None:
    images = model_inputs(_options("--model", "resnet50"))  # type: ignore[arg-type]
    assert images.shape[1:] == IMAGE_SHAPE and images.dtype == np.float32
    digits = model_inputs(_options())  # type: ignore[arg-type]
    assert digits.shape[1:] == digits_task().input_shape


def test_a_local_group_is_made_for_the_task_it_is_given(tmp_path: Path) -> None:
    # any four packages: the group's config is what is checked here, not the models
    packages = [Path(constant_model_package(tmp_path / f"m{i}", "3").directory) for i in range(4)]
    images = LocalGroup(tmp_path / "images", model_packages=packages, task=imagenet_task()).prepare()
    assert load_group_config(tmp_path / "images" / "group.json").task == images.task == imagenet_task()
    default = LocalGroup(tmp_path / "digits", model_packages=packages).prepare()
    assert default.task == digits_task()


def test_protocol_parameters_for_the_benchmark_groups_are_checked_and_reported() -> None:
    from certs.config import ProtocolParams

    defaults = _options()
    assert defaults.protocol_params() is None and defaults.describe_params() == "defaults"  # type: ignore[attr-defined]
    chosen = _options("--param", "vote_timeout_ticks=1", "--param", "vote_wait_max_ticks=2")
    params = chosen.protocol_params()  # type: ignore[attr-defined]
    assert params == dataclasses.replace(ProtocolParams(), vote_timeout_ticks=1, vote_wait_max_ticks=2)
    assert chosen.describe_params() == "vote_timeout_ticks=1, vote_wait_max_ticks=2"  # type: ignore[attr-defined]
    for bad in ("no_such_param=3", "vote_timeout_ticks", "vote_timeout_ticks=soon", "vote_timeout_ticks=0"):
        with pytest.raises(SystemExit):
            _options("--param", bad)


def test_a_local_group_takes_the_chosen_protocol_parameters(tmp_path: Path) -> None:
    packages = [Path(constant_model_package(tmp_path / f"m{i}", "3").directory) for i in range(4)]
    params = _options("--param", "vote_wait_max_ticks=6").protocol_params()  # type: ignore[attr-defined]
    group = LocalGroup(tmp_path / "g", model_packages=packages)
    group.params = params
    group.prepare()
    assert load_group_config(tmp_path / "g" / "group.json").params.vote_wait_max_ticks == 6
