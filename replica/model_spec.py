"""An owner's model package: a TorchScript file plus a JSON spec of its inputs and outputs.

A package is a directory holding `model.pt` (TorchScript, saved with `torch.jit.save`) and
`spec.json` (a `ModelSpec`). The weights digest is the SHA-256 of the model file's bytes; it is
what an owner signs in a model update and what the group config records, so a replica hashes
exactly the bytes it hands to torch (`ModelPackage.read_weights`) rather than the file twice.

The spec is strict: unknown keys, wrong types and values outside the allowed sets are rejected
with a `ModelPackageError` that names the file and the field, because an owner reads it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from certs.config import TaskSchema
from certs.request import DATATYPE_SIZES

MODEL_FILE_NAME = "model.pt"
SPEC_FILE_NAME = "spec.json"
SPEC_FORMAT = 1

OutputKind = Literal["logits", "probabilities"]
Device = Literal["cpu", "cuda", "auto"]
OUTPUT_KINDS: tuple[str, ...] = ("logits", "probabilities")
DEVICES: tuple[str, ...] = ("cpu", "cuda", "auto")

# A model name: characters Triton allows in model names, short enough for logs and file names.
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
NAME_LENGTH_MAX = 40

# KServe datatypes a torch model can take as input, with their numpy and torch types. BF16 has no
# numpy type, so tritonclient cannot send it from an array.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}


class ModelPackageError(ValueError):
    """A model package is missing, corrupt, or does not fit the group's task."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the backend needs to serve a model; the batch dimension is implicit everywhere."""

    name: str
    input_name: str
    input_datatype: str  # KServe v2 datatype, e.g. "FP32"
    input_shape: tuple[int, ...]  # per request, without the batch dimension
    output_kind: OutputKind  # "logits" get a softmax in the backend
    class_labels: tuple[str, ...]
    max_batch_size: int = 64
    device: Device = "cpu"

    def __post_init__(self) -> None:
        _check_spec(self)

    @property
    def num_classes(self) -> int:
        return len(self.class_labels)

    @property
    def input_dtype(self) -> np.dtype[Any]:
        return NUMPY_DTYPES[self.input_datatype]

    def resolved_device(self) -> str:
        """The torch device this spec runs on here: "auto" means cuda when torch can use it."""
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "name": self.name,
            "input_name": self.input_name,
            "input_datatype": self.input_datatype,
            "input_shape": list(self.input_shape),
            "output_kind": self.output_kind,
            "class_labels": list(self.class_labels),
            "max_batch_size": self.max_batch_size,
            "device": self.device,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelSpec:
        if not isinstance(data, Mapping):
            raise ModelPackageError("a model spec is a JSON object")
        known = set(cls.__dataclass_fields__) | {"format"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelPackageError(f"unknown model spec fields: {', '.join(unknown)}")
        if data.get("format", SPEC_FORMAT) != SPEC_FORMAT:
            raise ModelPackageError(f"unsupported model spec format {data.get('format')!r}, expected {SPEC_FORMAT}")
        missing = sorted({"name", "input_name", "input_datatype", "input_shape", "output_kind", "class_labels"} - set(data))
        if missing:
            raise ModelPackageError(f"model spec lacks {', '.join(missing)}")
        shape = data["input_shape"]
        labels = data["class_labels"]
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise ModelPackageError("input_shape must be a list of integers")
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ModelPackageError("class_labels must be a list of strings")
        max_batch_size = data.get("max_batch_size", 64)
        if not _is_int(max_batch_size):
            raise ModelPackageError("max_batch_size must be an integer")
        return cls(
            name=_text(data, "name"),
            input_name=_text(data, "input_name"),
            input_datatype=_text(data, "input_datatype"),
            input_shape=tuple(shape),
            output_kind=_text(data, "output_kind"),  # type: ignore[arg-type]  # checked in __post_init__
            class_labels=tuple(labels),
            max_batch_size=max_batch_size,
            device=_text(data, "device") if "device" in data else "cpu",  # type: ignore[arg-type]
        )


@dataclass(frozen=True, slots=True)
class ModelPackage:
    """A package on disk whose spec parsed and whose model file existed when it was opened."""

    directory: Path
    spec: ModelSpec
    weights_digest: bytes  # SHA-256 of the model file when the package was opened

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE_NAME

    @property
    def spec_path(self) -> Path:
        return self.directory / SPEC_FILE_NAME

    def read_weights(self) -> bytes:
        """The model file's bytes; raises if they changed since the package was opened."""
        data = _read_model_file(self.model_path)
        if hashlib.sha256(data).digest() != self.weights_digest:
            raise ModelPackageError(f"{self.model_path}: the model file changed after its package was opened")
        return data

    def load_module(self, device: str | None = None) -> torch.jit.ScriptModule:
        """Load the TorchScript module onto `device` (default: the spec's resolved device)."""
        return load_torchscript(self.read_weights(), device or self.spec.resolved_device(), str(self.model_path))


def load_torchscript(weights: bytes, device: str, source: str = "model") -> torch.jit.ScriptModule:
    """Deserialize TorchScript bytes, in eval mode, raising ModelPackageError when they are not."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelPackageError(f"{source}: the spec asks for device cuda, but torch sees no CUDA device here")
    try:
        with _torchscript_quietly():
            module = torch.jit.load(io.BytesIO(weights), map_location=device)
    except (RuntimeError, ValueError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelPackageError(f"{source}: not a loadable TorchScript model ({first_line})") from exc
    module.eval()
    return module


def weights_digest(path: str | os.PathLike[str]) -> bytes:
    """SHA-256 of a model file (or of the model file inside a package directory)."""
    target = Path(path)
    if target.is_dir():
        target = target / MODEL_FILE_NAME
    return hashlib.sha256(_read_model_file(target)).digest()


def load_model_package(path: str | os.PathLike[str]) -> ModelPackage:
    """Open a package directory (or its spec.json): parse the spec and hash the model file."""
    directory = Path(path)
    if directory.is_file() and directory.name == SPEC_FILE_NAME:
        directory = directory.parent
    if not directory.is_dir():
        raise ModelPackageError(f"{directory}: no such model package directory")
    spec_path = directory / SPEC_FILE_NAME
    try:
        text = spec_path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ModelPackageError(f"{spec_path}: the package has no model spec") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelPackageError(f"{spec_path}: unreadable model spec ({exc})") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ModelPackageError(f"{spec_path}: not valid JSON ({exc})") from exc
    try:
        spec = ModelSpec.from_json(data)
    except ModelPackageError as exc:
        raise ModelPackageError(f"{spec_path}: {exc}") from exc
    return ModelPackage(directory=directory, spec=spec, weights_digest=weights_digest(directory / MODEL_FILE_NAME))


def save_model_package(
    out_dir: str | os.PathLike[str], module: torch.nn.Module, spec: ModelSpec
) -> ModelPackage:
    """Script `module` (unless it already is TorchScript), save it with its spec, return the package.

    Files are written to temporary names and renamed, so a reader never sees half a package file.
    Saving the same module twice gives the same bytes, hence the same digest.
    """
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    try:
        with _torchscript_quietly():
            scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
            buffer = io.BytesIO()
            torch.jit.save(scripted, buffer)
    except (RuntimeError, TypeError) as exc:
        raise ModelPackageError(f"cannot save {spec.name!r} as TorchScript: {exc}") from exc
    finally:
        module.train(was_training)
    _write_atomically(directory / MODEL_FILE_NAME, buffer.getvalue())
    _write_atomically(directory / SPEC_FILE_NAME, (json.dumps(spec.to_json(), indent=2) + "\n").encode())
    return ModelPackage(directory=directory, spec=spec, weights_digest=hashlib.sha256(buffer.getvalue()).digest())


def check_against_task(spec: ModelSpec, task: TaskSchema) -> None:
    """Raise ModelPackageError unless the model takes the task's input and emits its label space.

    Labels must match in order: votes name classes by index, so a model whose labels are permuted
    would vote for the wrong classes.
    """
    problems: list[str] = []
    if spec.input_name != task.input_name:
        problems.append(f"input name {spec.input_name!r} is not the task's {task.input_name!r}")
    if spec.input_datatype != task.input_datatype:
        problems.append(f"input datatype {spec.input_datatype} is not the task's {task.input_datatype}")
    if tuple(spec.input_shape) != tuple(task.input_shape):
        problems.append(f"input shape {list(spec.input_shape)} is not the task's {list(task.input_shape)}")
    if tuple(spec.class_labels) != tuple(task.class_labels):
        if sorted(spec.class_labels) == sorted(task.class_labels):
            problems.append("class labels are the task's but in a different order")
        else:
            problems.append(f"{len(spec.class_labels)} class labels do not match the task's {len(task.class_labels)}")
    if problems:
        raise ModelPackageError(f"model {spec.name!r} does not fit the task: " + "; ".join(problems))


# -- helpers --------------------------------------------------------------------------------------


def _check_spec(spec: ModelSpec) -> None:
    if not isinstance(spec.name, str) or not _NAME_PATTERN.match(spec.name) or len(spec.name) > NAME_LENGTH_MAX:
        raise ModelPackageError(
            f"model name {spec.name!r} must be 1..{NAME_LENGTH_MAX} characters of letters, digits, '.', '_', '-'"
        )
    if not isinstance(spec.input_name, str) or not _NAME_PATTERN.match(spec.input_name):
        raise ModelPackageError(f"input name {spec.input_name!r} must be letters, digits, '.', '_', '-'")
    if spec.input_datatype not in NUMPY_DTYPES:
        allowed = ", ".join(sorted(NUMPY_DTYPES))
        hint = " (known to KServe, but not servable from numpy)" if spec.input_datatype in DATATYPE_SIZES else ""
        raise ModelPackageError(f"input datatype {spec.input_datatype!r}{hint}: expected one of {allowed}")
    if not isinstance(spec.input_shape, tuple) or not spec.input_shape:
        raise ModelPackageError("input_shape must list at least one dimension (without the batch dimension)")
    if not all(_is_int(d) and d > 0 for d in spec.input_shape):
        raise ModelPackageError(f"input dimensions must be positive integers, are {list(spec.input_shape)}")
    if spec.output_kind not in OUTPUT_KINDS:
        raise ModelPackageError(f"output_kind {spec.output_kind!r}: expected one of {', '.join(OUTPUT_KINDS)}")
    labels = spec.class_labels
    if not isinstance(labels, tuple) or len(labels) < 2 or len(set(labels)) != len(labels):
        raise ModelPackageError("class_labels must name at least two distinct classes")
    if not all(isinstance(label, str) and label for label in labels):
        raise ModelPackageError("class labels must be non-empty strings")
    if not _is_int(spec.max_batch_size) or spec.max_batch_size < 1:
        raise ModelPackageError(f"max_batch_size must be a positive integer, is {spec.max_batch_size!r}")
    if spec.device not in DEVICES:
        raise ModelPackageError(f"device {spec.device!r}: expected one of {', '.join(DEVICES)}")


@contextmanager
def _torchscript_quietly() -> Iterator[None]:
    # torch 2.13 marks TorchScript deprecated; it is still the package format (one file, no Python
    # code needed to load it), so the warning is noise for owners and replicas
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=DeprecationWarning)
        yield


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise ModelPackageError(f"{key} must be a string")
    return value


def _read_model_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelPackageError(f"{path}: the package has no model file") from exc
    except OSError as exc:
        raise ModelPackageError(f"{path}: unreadable model file ({exc})") from exc


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)

