"""The demo's models: small, heterogeneous torch classifiers for scikit-learn's digits.

Nothing is downloaded: `sklearn.datasets.load_digits` ships with scikit-learn (1797 8x8 images).
Each image is flattened to 64 float32 features scaled to [0, 1]; labels are "0".."9". One seed
fixes the held-out split (the same for every model) and every model's initialisation, data
subsample and shuffling, and training runs on one torch thread, so a seed always yields the same
weights, hence the same weights digests.

Besides the trained models, three packages for tests and demos: a constant ("lying") model whose
votes are easy to spot, a weak model an owner might cheaply swap in, and a null model with
trivial compute for benchmarks of ordering capacity.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from tqdm.auto import tqdm

from certs.config import TaskSchema
from replica.model_spec import ModelPackage, ModelSpec, save_model_package

INPUT_NAME = "pixels"
NUM_FEATURES = 64
CLASS_LABELS: tuple[str, ...] = tuple(str(d) for d in range(10))
HELD_OUT_FRACTION = 0.2
MAX_BATCH_SIZE = 256
NULL_MAX_BATCH_SIZE = 1024
ARCHITECTURES: tuple[str, ...] = ("logreg", "mlp", "wide-mlp", "cnn")


@dataclass(frozen=True, slots=True)
class TrainedModel:
    name: str
    architecture: str
    seed: int  # the model's own seed (initialisation, subsample, shuffling)
    package_dir: Path
    weights_digest: bytes
    accuracy: float  # on held_out_digits(split seed)


def digits_task() -> TaskSchema:
    """The group task every digits model fits."""
    return TaskSchema(
        input_name=INPUT_NAME,
        input_shape=(NUM_FEATURES,),
        input_datatype="FP32",
        class_labels=CLASS_LABELS,
        top_k=len(CLASS_LABELS),
    )


def held_out_digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The fixed held-out split for `seed`: (X_test float32 [N, 64] in [0, 1], y_test int64 [N])."""
    features, labels = _digits()
    _, test = _split(seed, len(labels))
    return features[test].copy(), labels[test].copy()


def train_digits_models(
    out_dir: str | os.PathLike[str], count: int = 4, seed: int = 0, progress: bool = True
) -> list[TrainedModel]:
    """Train `count` heterogeneous classifiers and save each as a model package under `out_dir`.

    Architectures cycle through logistic regression, a small MLP, a wider MLP with dropout and a
    small CNN over the 8x8 grid; each model has its own seed and its own 90 % subsample of the
    training split. The CNN emits probabilities, the others logits, so both output kinds serve.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    root = Path(out_dir)
    features, labels = _digits()
    train, test = _split(seed, len(labels))
    plans = [_Plan(i, ARCHITECTURES[i % len(ARCHITECTURES)], seed * 1000 + i) for i in range(count)]
    trained: list[TrainedModel] = []
    with _one_torch_thread(), tqdm(
        total=sum(plan.epochs for plan in plans), desc="training digits models", unit="epoch", disable=not progress
    ) as bar:
        for plan in plans:
            bar.set_postfix_str(plan.name)
            model = _build(plan.architecture, plan.seed)
            subsample = np.random.default_rng(plan.seed).permutation(train)[: int(0.9 * len(train))]
            _fit(model, features[subsample], labels[subsample], plan.seed, plan.epochs, plan.learning_rate, bar.update)
            accuracy = _accuracy(model, features[test], labels[test])
            served: nn.Module = _Softmax(model) if plan.architecture == "cnn" else model
            kind = "probabilities" if plan.architecture == "cnn" else "logits"
            package = save_model_package(root / plan.name, served, _spec(plan.name, kind))
            trained.append(
                TrainedModel(
                    name=plan.name,
                    architecture=plan.architecture,
                    seed=plan.seed,
                    package_dir=package.directory,
                    weights_digest=package.weights_digest,
                    accuracy=accuracy,
                )
            )
    return trained


def constant_model_package(out_dir: str | os.PathLike[str], label: str | int) -> ModelPackage:
    """A model that answers `label` with probability 1 whatever it sees: a lying replica's model."""
    text = str(label)
    if text not in CLASS_LABELS:
        raise ValueError(f"label {label!r} is not one of {', '.join(CLASS_LABELS)}")
    return save_model_package(
        out_dir, _Constant(CLASS_LABELS.index(text), len(CLASS_LABELS)), _spec(f"digits-constant-{text}", "probabilities")
    )


def weak_model_package(out_dir: str | os.PathLike[str], seed: int = 0) -> ModelPackage:
    """A deliberately poor model (about 65 % held-out accuracy): logistic regression on 5 % of the
    training split, briefly trained.

    `seed` picks the subsample; the held-out split is that of seed 0, as for the demo's models.
    """
    features, labels = _digits()
    train, _ = _split(0, len(labels))
    subsample = np.random.default_rng(10_000 + seed).permutation(train)[: max(10, int(0.05 * len(train)))]
    with _one_torch_thread():
        model = _build("logreg", 10_000 + seed)
        _fit(model, features[subsample], labels[subsample], 10_000 + seed, epochs=10, learning_rate=0.02)
    return save_model_package(out_dir, model, _spec(f"digits-weak-{seed}", "logits"))


def null_model_package(out_dir: str | os.PathLike[str]) -> ModelPackage:
    """A model with trivial compute (its logits are the first ten pixels), for capacity benchmarks."""
    return save_model_package(out_dir, _FirstPixels(len(CLASS_LABELS)), _spec("digits-null", "logits", NULL_MAX_BATCH_SIZE))


def predict(package: ModelPackage, features: np.ndarray) -> np.ndarray:
    """Class indices a package's model predicts for [N, 64] features, run here in torch."""
    module = package.load_module("cpu")
    with torch.inference_mode():
        return module(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))).argmax(dim=1).numpy()


# -- architectures (TorchScript-compatible) -------------------------------------------------------


class _LogisticRegression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(NUM_FEATURES, len(CLASS_LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class _MLP(nn.Module):
    def __init__(self, hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = NUM_FEATURES
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, len(CLASS_LABELS)))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _SmallCNN(nn.Module):
    """Two 3x3 convolutions over the 8x8 grid, one 2x2 pooling, one linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(16 * 4 * 4, len(CLASS_LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = x.reshape(x.shape[0], 1, 8, 8)
        hidden = self.pool(torch.relu(self.conv2(torch.relu(self.conv1(grid)))))
        return self.head(hidden.flatten(1))


class _Softmax(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.inner(x), dim=1)


class _Constant(nn.Module):
    def __init__(self, index: int, num_classes: int) -> None:
        super().__init__()
        answer = torch.zeros(num_classes)
        answer[index] = 1.0
        self.answer = nn.Parameter(answer, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.answer.unsqueeze(0).expand(x.shape[0], -1).clone()


class _FirstPixels(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.num_classes]


# -- training -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    index: int
    architecture: str
    seed: int

    @property
    def name(self) -> str:
        base = f"digits-{self.architecture}"
        return base if self.index < len(ARCHITECTURES) else f"{base}-{self.index}"

    @property
    def epochs(self) -> int:
        return {"logreg": 60, "mlp": 40, "wide-mlp": 40, "cnn": 25}[self.architecture]

    @property
    def learning_rate(self) -> float:
        return {"logreg": 0.05, "mlp": 0.01, "wide-mlp": 0.005, "cnn": 0.01}[self.architecture]


def _build(architecture: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # initial weights
    if architecture == "logreg":
        return _LogisticRegression()
    if architecture == "mlp":
        return _MLP(hidden=(32,), dropout=0.0)
    if architecture == "wide-mlp":
        return _MLP(hidden=(128, 128), dropout=0.2)
    if architecture == "cnn":
        return _SmallCNN()
    raise ValueError(f"unknown architecture {architecture!r}")


def _fit(
    model: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    seed: int,
    epochs: int,
    learning_rate: float,
    on_epoch: Callable[[int], object] | None = None,
    batch_size: int = 64,
) -> None:
    torch.manual_seed(seed + 1)  # dropout masks
    x = torch.from_numpy(features)
    y = torch.from_numpy(labels)
    order = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        permutation = torch.randperm(len(y), generator=order)
        for start in range(0, len(y), batch_size):
            index = permutation[start : start + batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(x[index]), y[index])
            loss.backward()
            optimiser.step()
        if on_epoch is not None:
            on_epoch(1)
    model.eval()


def _accuracy(model: nn.Module, features: np.ndarray, labels: np.ndarray) -> float:
    with torch.inference_mode():
        predicted = model(torch.from_numpy(features)).argmax(dim=1).numpy()
    return float(np.mean(predicted == labels))


def _spec(name: str, output_kind: str, max_batch_size: int = MAX_BATCH_SIZE) -> ModelSpec:
    return ModelSpec(
        name=name,
        input_name=INPUT_NAME,
        input_datatype="FP32",
        input_shape=(NUM_FEATURES,),
        output_kind=output_kind,  # type: ignore[arg-type]  # "logits" or "probabilities", checked by ModelSpec
        class_labels=CLASS_LABELS,
        max_batch_size=max_batch_size,
        device="auto",
    )


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits: features scaled to [0, 1] (pixel values are 0..16), labels 0..9."""
    features, labels = load_digits(return_X_y=True)
    return (features / 16.0).astype(np.float32), labels.astype(np.int64)


def _split(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices), a fixed permutation of the data set per seed."""
    permutation = np.random.default_rng(seed).permutation(count)
    held_out = int(round(HELD_OUT_FRACTION * count))
    return np.sort(permutation[held_out:]), np.sort(permutation[:held_out])


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    # intra-op parallelism can change float summation order; one thread keeps training reproducible
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
