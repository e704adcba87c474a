"""The demo's digits models: accurate, heterogeneous, reproducible, and packaged for replicas."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch

from marketplace.models import (
    TrainedModel,
    constant_model_package,
    digits_task,
    held_out_digits,
    null_model_package,
    predict,
    train_digits_models,
    weak_model_package,
)
from replica.model_spec import check_against_task, load_model_package, weights_digest


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TrainedModel]]:
    yield train_digits_models(tmp_path_factory.mktemp("models"), count=4, seed=0, progress=False)


def test_four_models_each_beat_80_percent_on_held_out_digits(trained: list[TrainedModel]) -> None:
    features, labels = held_out_digits(0)
    assert len(trained) == 4
    for model in trained:
        measured = float(np.mean(predict(load_model_package(model.package_dir), features) == labels))
        assert measured == pytest.approx(model.accuracy)
        assert model.accuracy > 0.8, model.name


def test_models_are_heterogeneous(trained: list[TrainedModel]) -> None:
    assert len({model.architecture for model in trained}) == 4
    assert len({model.weights_digest for model in trained}) == 4
    features, _ = held_out_digits(0)
    predictions = [predict(load_model_package(model.package_dir), features) for model in trained]
    for (a, pa), (b, pb) in combinations(zip(trained, predictions), 2):
        assert (pa != pb).any(), f"{a.name} and {b.name} answer identically"
    kinds = {load_model_package(model.package_dir).spec.output_kind for model in trained}
    assert kinds == {"logits", "probabilities"}


def test_training_is_reproducible_from_the_seed(
    trained: list[TrainedModel], digits_packages: list[Path], tmp_path: Path
) -> None:
    # digits_packages: the session's own training run with the same seed (tests/conftest.py)
    assert [weights_digest(path) for path in digits_packages] == [m.weights_digest for m in trained]
    other = train_digits_models(tmp_path / "seed1", count=1, seed=1, progress=False)
    assert other[0].weights_digest != trained[0].weights_digest


def test_held_out_split_is_fixed_by_the_seed() -> None:
    features, labels = held_out_digits(0)
    assert features.dtype == np.float32 and features.shape == (359, 64)
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    assert 0.0 <= features.min() and features.max() <= 1.0
    again, _ = held_out_digits(0)
    np.testing.assert_array_equal(features, again)
    assert not np.array_equal(features, held_out_digits(1)[0])


def test_packages_load_fit_the_task_and_keep_their_digests(trained: list[TrainedModel]) -> None:
    task = digits_task()
    for model in trained:
        package = load_model_package(model.package_dir)
        check_against_task(package.spec, task)
        assert package.weights_digest == model.weights_digest == weights_digest(package.model_path)
        assert load_model_package(model.package_dir).weights_digest == model.weights_digest


def test_constant_model_always_answers_its_label(tmp_path: Path) -> None:
    package = constant_model_package(tmp_path / "seven", "7")
    features, _ = held_out_digits(0)
    assert set(predict(package, features).tolist()) == {7}
    with torch.inference_mode():
        probabilities = package.load_module("cpu")(torch.from_numpy(features[:3]))
    assert package.spec.output_kind == "probabilities"
    np.testing.assert_array_equal(probabilities.numpy()[:, 7], 1.0)
    assert constant_model_package(tmp_path / "seven-again", 7).weights_digest == package.weights_digest
    with pytest.raises(ValueError, match="not one of"):
        constant_model_package(tmp_path / "bad", "cat")


def test_weak_model_is_clearly_worse_but_better_than_chance(trained: list[TrainedModel], tmp_path: Path) -> None:
    features, labels = held_out_digits(0)
    package = weak_model_package(tmp_path / "weak", seed=0)
    accuracy = float(np.mean(predict(package, features) == labels))
    assert 0.3 < accuracy < min(model.accuracy for model in trained) - 0.15
    check_against_task(package.spec, digits_task())
    assert weak_model_package(tmp_path / "weak-again", seed=0).weights_digest == package.weights_digest


def test_null_model_fits_the_task_and_takes_big_batches(tmp_path: Path) -> None:
    package = null_model_package(tmp_path / "null")
    check_against_task(package.spec, digits_task())
    assert package.spec.max_batch_size >= 1024
    features, _ = held_out_digits(0)
    assert predict(package, features).shape == (len(features),)
