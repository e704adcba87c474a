"""The Triton backend against a real tritonserver, and the model packages it loads.

Tests marked `processes` share one session backend (see conftest.py); the package tests need no
server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from certs.config import TaskSchema
from marketplace.models import digits_task, held_out_digits, predict
from replica.model_spec import (
    MODEL_FILE_NAME,
    SPEC_FILE_NAME,
    ModelPackage,
    ModelPackageError,
    ModelSpec,
    check_against_task,
    load_model_package,
    save_model_package,
    weights_digest,
)
from replica.triton_backend import (
    INLINE_INPUT_BYTES_MAX,
    BackendError,
    BackendNotRunningError,
    BackendStartError,
    BatchShapeError,
    ModelLoadError,
    TritonBackend,
    VersionNotLoadedError,
    WeightsDigestMismatchError,
    triton_processes,
)

PortAllocator = Callable[[int], list[int]]
LABELS = tuple(str(d) for d in range(10))


def _spec(**changes: object) -> ModelSpec:
    base = ModelSpec(
        name="probe", input_name="pixels", input_datatype="FP32", input_shape=(64,),
        output_kind="logits", class_labels=LABELS, max_batch_size=64,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _requests_of(backend: TritonBackend, version: int) -> int:
    return backend.statistics().get(version, 0)


async def _requests_reaching(backend: TritonBackend, version: int, expected: int) -> int:
    """Triton's count once it reaches `expected`: Triton counts a request after answering it."""
    count = _requests_of(backend, version)
    for _ in range(500):
        if count >= expected:
            break
        await asyncio.sleep(0.01)
        count = _requests_of(backend, version)
    return count


# -- serving through Triton ------------------------------------------------------------------------


@pytest.mark.processes
async def test_five_digits_get_probabilities_that_sum_to_one(
    triton_backend: TritonBackend, serving_version: int, digits_models: dict[str, ModelPackage]
) -> None:
    features, _ = held_out_digits(0)
    probabilities = await triton_backend.infer(serving_version, features[:5])
    assert probabilities.shape == (5, 10)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()
    assert probabilities.argmax(axis=1).tolist() == predict(digits_models["mlp"], features[:5]).tolist()


def test_small_inputs_travel_inline_and_large_ones_through_shared_memory(tmp_path: Path) -> None:
    def transport(**kwargs: object) -> str:
        return TritonBackend(tmp_path / "ws", grpc_port=1, http_port=2, metrics_port=3, **kwargs).tensor_transport  # type: ignore[arg-type]

    digits = digits_task()  # 64 FP32 features: 256 bytes a request
    assert transport(task=digits) == "inline"
    assert transport(task=dataclasses.replace(digits, input_shape=(INLINE_INPUT_BYTES_MAX // 4,))) == "inline"
    assert transport(task=dataclasses.replace(digits, input_shape=(INLINE_INPUT_BYTES_MAX // 4 + 1,))) == "shared-memory"
    assert transport(task=dataclasses.replace(digits, input_shape=(3, 224, 224))) == "shared-memory"
    assert transport() == "shared-memory"
    assert transport(task=digits, tensor_transport="shared-memory") == "shared-memory"
    with pytest.raises(ValueError, match="tensor_transport"):
        transport(tensor_transport="carrier-pigeon")


@pytest.mark.processes
async def test_both_tensor_transports_give_the_same_probabilities(
    triton_backend: TritonBackend, serving_version: int, digits_models: dict[str, ModelPackage],
    tmp_path: Path, port_allocator: PortAllocator,
) -> None:
    assert triton_backend.tensor_transport == "inline"
    grpc_port, http_port, metrics_port = port_allocator(3)
    shared = TritonBackend(
        tmp_path / "ws", grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
        task=digits_task(), spare_models=0, tensor_transport="shared-memory",
    )
    await asyncio.to_thread(shared.start)
    try:
        model = digits_models["mlp"]
        await shared.load_async(1, model.directory, expected_digest=model.weights_digest)
        features, _ = held_out_digits(0)
        for size in (1, 17, 64):
            np.testing.assert_array_equal(
                await shared.infer(1, features[:size]), await triton_backend.infer(serving_version, features[:size])
            )
    finally:
        await asyncio.to_thread(shared.stop)
    # the choice was made for each bind alone: this process's environment is as it was
    assert "PYTRITON_NO_TENSORSTORE" not in os.environ


@pytest.mark.processes
async def test_triton_classifies_held_out_digits_as_the_model_does(
    triton_backend: TritonBackend, serving_version: int, digits_models: dict[str, ModelPackage]
) -> None:
    features, labels = held_out_digits(0)
    answers = np.concatenate(
        [await triton_backend.infer(serving_version, features[i : i + 64]) for i in range(0, len(labels), 64)]
    )
    accuracy = float(np.mean(answers.argmax(axis=1) == labels))
    local_accuracy = float(np.mean(predict(digits_models["mlp"], features) == labels))
    assert accuracy == pytest.approx(local_accuracy, abs=0.01)
    assert accuracy > 0.9


@pytest.mark.processes
async def test_each_infer_call_is_exactly_one_triton_request_whatever_the_batch_size(
    triton_backend: TritonBackend, serving_version: int
) -> None:
    features, _ = held_out_digits(0)
    first = await _requests_reaching(triton_backend, serving_version, 0)
    for batch_size in (1, 5, 64, 256):
        before = await _requests_reaching(triton_backend, serving_version, 0)
        await triton_backend.infer(serving_version, features[:batch_size])
        assert await _requests_reaching(triton_backend, serving_version, before + 1) == before + 1, batch_size
    await asyncio.sleep(0.2)  # nothing else trickles in: four calls, four requests
    assert _requests_of(triton_backend, serving_version) == first + 4


@pytest.mark.processes
async def test_constant_model_answers_its_label_with_certainty(
    triton_backend: TritonBackend, lying_package: ModelPackage, fresh_version: Callable[[], int]
) -> None:
    version = fresh_version()
    await triton_backend.load_async(version, lying_package.directory)
    try:
        probabilities = await triton_backend.infer(version, held_out_digits(0)[0][:5])
        # the model emits probabilities, so the backend must not soften them with a softmax
        assert probabilities.argmax(axis=1).tolist() == [3] * 5
        np.testing.assert_allclose(probabilities[:, 3], 1.0)
    finally:
        await triton_backend.unload_async(version)


@pytest.mark.processes
async def test_batch_above_max_batch_size_is_split_into_the_fewest_requests(
    triton_backend: TritonBackend, digits_models: dict[str, ModelPackage], tmp_path: Path,
    fresh_version: Callable[[], int],
) -> None:
    source = digits_models["logreg"]
    small = save_model_package(tmp_path / "small", source.load_module("cpu"), dataclasses.replace(source.spec, max_batch_size=8))
    version = fresh_version()
    await triton_backend.load_async(version, small.directory)
    try:
        features, _ = held_out_digits(0)
        before = await _requests_reaching(triton_backend, version, 1)  # the warm-up request
        whole = await triton_backend.infer(version, features[:20])
        assert await _requests_reaching(triton_backend, version, before + 3) == before + 3
        pieces = np.concatenate([await triton_backend.infer(version, features[:20][i : i + 8]) for i in (0, 8, 16)])
        np.testing.assert_allclose(whole, pieces, atol=1e-6)
    finally:
        await triton_backend.unload_async(version)


@pytest.mark.processes
async def test_new_version_loads_beside_the_old_one_which_serves_throughout(
    triton_backend: TritonBackend, digits_models: dict[str, ModelPackage], fresh_version: Callable[[], int]
) -> None:
    old, new = fresh_version(), fresh_version()
    features, _ = held_out_digits(0)
    await triton_backend.load_async(old, digits_models["logreg"].directory)
    loading = asyncio.Event()
    answered_during_load = 0

    async def keep_asking() -> None:
        nonlocal answered_during_load
        while True:
            await triton_backend.infer(old, features[:4])
            await asyncio.sleep(0.005)  # steady traffic, without starving the load of CPU
            if loading.is_set():
                answered_during_load += 1

    asker = asyncio.create_task(keep_asking())
    try:
        loading.set()
        digest = await triton_backend.load_async(
            new, digits_models["cnn"].directory, expected_digest=digits_models["cnn"].weights_digest
        )
        loading.clear()
        assert not asker.done(), "a call to the old version failed while the new one loaded"
    finally:
        asker.cancel()
        await asyncio.gather(asker, return_exceptions=True)
    assert digest == digits_models["cnn"].weights_digest
    assert answered_during_load > 0
    assert {old, new} <= set(triton_backend.loaded_versions())
    for version in (old, new):
        assert (await triton_backend.infer(version, features[:3])).shape == (3, 10)

    # the old version retires with calls in flight: unloading waits for them to be answered
    in_flight = [asyncio.create_task(triton_backend.infer(old, features[:64])) for _ in range(10)]
    await asyncio.sleep(0)  # the calls start before the version retires
    assert not any(call.done() for call in in_flight)
    await triton_backend.unload_async(old)
    assert all(answer.shape == (64, 10) for answer in await asyncio.gather(*in_flight))
    with pytest.raises(VersionNotLoadedError, match=f"version {old} is not loaded"):
        await triton_backend.infer(old, features[:3])
    assert (await triton_backend.infer(new, features[:3])).shape == (3, 10)
    assert old not in triton_backend.statistics()
    await triton_backend.unload_async(new)


@pytest.mark.processes
async def test_corrupt_model_file_fails_to_load_and_the_loaded_version_keeps_serving(
    triton_backend: TritonBackend, serving_version: int, digits_models: dict[str, ModelPackage],
    package_copy: Callable[[Path], Path], fresh_version: Callable[[], int],
) -> None:
    damaged = package_copy(digits_models["wide-mlp"].directory)
    data = (damaged / MODEL_FILE_NAME).read_bytes()
    (damaged / MODEL_FILE_NAME).write_bytes(data[: len(data) // 2])
    loaded_before = triton_backend.loaded_versions()
    version = fresh_version()
    with pytest.raises(ModelLoadError, match="not a loadable TorchScript model"):
        await triton_backend.load_async(version, damaged)
    assert triton_backend.loaded_versions() == loaded_before
    assert version not in triton_backend.statistics()
    features, _ = held_out_digits(0)
    assert (await triton_backend.infer(serving_version, features[:2])).shape == (2, 10)


@pytest.mark.processes
async def test_packages_that_cannot_serve_the_task_are_refused(
    triton_backend: TritonBackend, serving_version: int, digits_models: dict[str, ModelPackage],
    tmp_path: Path, fresh_version: Callable[[], int],
) -> None:
    mlp = digits_models["mlp"]
    with pytest.raises(WeightsDigestMismatchError, match="is not the expected"):
        await triton_backend.load_async(fresh_version(), mlp.directory, expected_digest=bytes(32))
    shuffled = save_model_package(
        tmp_path / "shuffled", torch.nn.Linear(64, 10), _spec(class_labels=tuple(reversed(LABELS)))
    )
    with pytest.raises(ModelLoadError, match="different order"):
        await triton_backend.load_async(fresh_version(), shuffled.directory)
    narrow = save_model_package(tmp_path / "narrow", torch.nn.Linear(64, 7), _spec())
    with pytest.raises(ModelLoadError, match=r"output has shape \(2, 7\), expected \(2, 10\)"):
        await triton_backend.load_async(fresh_version(), narrow.directory)
    with pytest.raises(ModelLoadError, match="no such model package"):
        await triton_backend.load_async(fresh_version(), tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="already loaded"):
        await triton_backend.load_async(serving_version, mlp.directory)
    assert triton_backend.loaded_versions() == (serving_version,)


class _FailsAlone(torch.nn.Module):
    """Answers batches of two or more, fails on a lone request, as Triton's warm-up sends."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            raise RuntimeError("this model cannot answer a lone request")
        return self.linear(x)


@pytest.mark.processes
async def test_model_failing_in_triton_is_rolled_back_and_its_version_can_load_later(
    triton_backend: TritonBackend, serving_version: int, lying_package: ModelPackage,
    tmp_path: Path, fresh_version: Callable[[], int],
) -> None:
    failing = save_model_package(tmp_path / "fails-alone", _FailsAlone(), _spec(name="fails-alone"))
    version = fresh_version()
    loaded_before = triton_backend.loaded_versions()
    with pytest.raises(ModelLoadError, match="cannot answer a lone request"):
        await triton_backend.load_async(version, failing.directory)
    assert triton_backend.loaded_versions() == loaded_before
    features, _ = held_out_digits(0)
    assert (await triton_backend.infer(serving_version, features[:2])).shape == (2, 10)
    # nothing of the failed load lingers: the same version number loads a good package
    await triton_backend.load_async(version, lying_package.directory)
    try:
        assert (await triton_backend.infer(version, features[:1])).argmax(axis=1).tolist() == [3]
    finally:
        await triton_backend.unload_async(version)


@pytest.mark.processes
async def test_bad_calls_fail_with_clear_errors(triton_backend: TritonBackend, serving_version: int) -> None:
    features, _ = held_out_digits(0)
    with pytest.raises(VersionNotLoadedError, match="version 999 is not loaded"):
        await triton_backend.infer(999, features[:1])
    with pytest.raises(BatchShapeError, match=r"needs shape \[B, 64\]"):
        await triton_backend.infer(serving_version, features[:2].reshape(2, 8, 8))
    with pytest.raises(BatchShapeError, match="is FP32"):
        await triton_backend.infer(serving_version, features[:2].astype(np.float64))
    with pytest.raises(BatchShapeError, match="empty batch"):
        await triton_backend.infer(serving_version, features[:0])
    # blocking lifecycle calls would stall this loop's serving: they point to the async variant
    with pytest.raises(BackendError, match="load_async"):
        triton_backend.load(998, "unused")
    with pytest.raises(BackendError, match="unload_async"):
        triton_backend.unload(serving_version)
    assert serving_version in triton_backend.loaded_versions()


# -- a backend of its own ---------------------------------------------------------------------------


@pytest.mark.processes
async def test_stop_leaves_no_tritonserver_process(
    tmp_path: Path, port_allocator: PortAllocator, lying_package: ModelPackage
) -> None:
    grpc_port, http_port, metrics_port = port_allocator(3)
    backend = TritonBackend(tmp_path / "ws", grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)
    # started from a worker thread that ends right after: the server must outlive that thread
    launcher = ThreadPoolExecutor(max_workers=1)
    launcher.submit(backend.start).result()
    launcher.shutdown(wait=True)
    try:
        await backend.load_async(1, lying_package.directory)
        triton_dir = backend.triton_dir
        assert triton_dir is not None
        running = triton_processes(triton_dir)
        assert backend.server_pid in running
        assert len(running) >= 2, "expected tritonserver and its Python-backend stub"
        assert (await backend.infer(1, np.zeros((2, 64), np.float32))).argmax(axis=1).tolist() == [3, 3]
    finally:
        await asyncio.to_thread(backend.stop)
    assert triton_processes(triton_dir) == []
    assert not backend.is_running()
    with pytest.raises(BackendNotRunningError):
        await backend.infer(1, np.zeros((1, 64), np.float32))
    # Triton wrote its chatter to the workspace, not to the console
    assert "successfully loaded" in backend.log_path.read_text()


@pytest.mark.processes
async def test_a_new_version_moves_into_a_warm_spare_and_a_retired_version_leaves_its_model_as_the_spare(
    tmp_path: Path, port_allocator: PortAllocator, digits_models: dict[str, ModelPackage],
    lying_package: ModelPackage,
) -> None:
    grpc_port, http_port, metrics_port = port_allocator(3)
    backend = TritonBackend(
        tmp_path / "ws", grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
        task=digits_task(), spare_models=1,
    )
    await asyncio.to_thread(backend.start)
    features, labels = held_out_digits(0)
    try:
        triton_dir = backend.triton_dir
        assert triton_dir is not None
        assert await backend.prepare_spares_async() == 0  # no version yet: no signature to fit
        await backend.load_async(1, digits_models["mlp"].directory)
        assert await backend.prepare_spares_async() == 1
        assert await backend.prepare_spares_async() == 0
        assert backend.spare_model_count() == 1
        processes = triton_processes(triton_dir)

        # the update: version 2 moves into the spare, and Triton starts no process for it
        await backend.load_async(2, lying_package.directory)
        assert triton_processes(triton_dir) == processes
        assert backend.spare_model_count() == 0
        models = backend.triton_models()
        assert models[1] != models[2]
        assert (await backend.infer(2, features[:5])).argmax(axis=1).tolist() == [3] * 5
        mlp_answers = (await backend.infer(1, features[:64])).argmax(axis=1)
        assert float(np.mean(mlp_answers == labels[:64])) > 0.85
        assert await _requests_reaching(backend, 2, 2) == 2  # its warm-up and one call, nothing of before

        # version 1 retires: its model stays bound as the spare, answering no version
        await backend.unload_async(1)
        assert backend.spare_model_count() == 1
        assert triton_processes(triton_dir) == processes
        with pytest.raises(VersionNotLoadedError):
            await backend.infer(1, features[:1])
        client = grpcclient.InferenceServerClient(backend.grpc_url)
        try:
            tensor = grpcclient.InferInput("pixels", [1, 64], "FP32")
            tensor.set_data_from_numpy(features[:1])
            with pytest.raises(InferenceServerException, match="hosts no model version"):
                client.infer(models[1][0], [tensor], model_version=models[1][1])
        finally:
            client.close()

        # the next version moves into version 1's old model and answers as its own model does
        await backend.load_async(3, digits_models["cnn"].directory)
        assert backend.triton_models()[3] == models[1]
        answers = np.concatenate([(await backend.infer(3, features[i:i + 64])).argmax(axis=1) for i in range(0, 256, 64)])
        assert float(np.mean(answers == predict(digits_models["cnn"], features[:256]))) > 0.99
        assert await _requests_reaching(backend, 3, 5) == 5

        # a version no spare fits (a larger max batch) gets a model of its own, and with the
        # spare already kept, retiring it unloads that model: its stub process ends
        wide = save_model_package(
            tmp_path / "wide", digits_models["logreg"].load_module("cpu"),
            dataclasses.replace(digits_models["logreg"].spec, max_batch_size=2 * digits_models["logreg"].spec.max_batch_size),
        )
        await backend.unload_async(2)
        assert backend.spare_model_count() == 1
        await backend.load_async(4, wide.directory)
        assert backend.spare_model_count() == 1
        assert len(triton_processes(triton_dir)) == len(processes) + 1
        assert backend.triton_models()[4] not in (models[1], models[2])
        await backend.unload_async(4)
        assert backend.spare_model_count() == 1
        for _ in range(200):
            if len(triton_processes(triton_dir)) == len(processes):
                break
            await asyncio.sleep(0.05)
        assert len(triton_processes(triton_dir)) == len(processes)
        assert (await backend.infer(3, features[:2])).shape == (2, 10)
    finally:
        await asyncio.to_thread(backend.stop)


def test_start_fails_fast_when_a_port_is_taken(tmp_path: Path, port_allocator: PortAllocator) -> None:
    grpc_port, http_port, metrics_port = port_allocator(3)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", http_port))
        squatter.listen()
        backend = TritonBackend(tmp_path / "ws", grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)
        with pytest.raises(BackendStartError, match=f"port {http_port} .* in use"):
            backend.start()
    assert not backend.is_running()


# -- model packages ---------------------------------------------------------------------------------


def test_package_round_trip_keeps_spec_and_digest(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = _spec(device="auto", max_batch_size=32)
    saved = save_model_package(tmp_path / "pkg", torch.nn.Linear(64, 10), spec)
    opened = load_model_package(tmp_path / "pkg")
    assert opened.spec == spec
    assert opened.weights_digest == saved.weights_digest == weights_digest(tmp_path / "pkg" / MODEL_FILE_NAME)
    assert load_model_package(tmp_path / "pkg" / SPEC_FILE_NAME).spec == spec
    module = opened.load_module("cpu")
    assert tuple(module(torch.zeros(3, 64)).shape) == (3, 10)
    assert spec.resolved_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_broken_packages_raise_package_errors(tmp_path: Path) -> None:
    saved = save_model_package(tmp_path / "pkg", torch.nn.Linear(64, 10), _spec())
    spec_path = saved.directory / SPEC_FILE_NAME
    original = spec_path.read_text()

    with pytest.raises(ModelPackageError, match="no such model package"):
        load_model_package(tmp_path / "nowhere")
    spec_path.write_text("{not json")
    with pytest.raises(ModelPackageError, match="not valid JSON"):
        load_model_package(saved.directory)
    spec_path.write_text(json.dumps({**json.loads(original), "colour": "blue"}))
    with pytest.raises(ModelPackageError, match="unknown model spec fields: colour"):
        load_model_package(saved.directory)
    spec_path.write_text(json.dumps({**json.loads(original), "output_kind": "scores"}))
    with pytest.raises(ModelPackageError, match="output_kind 'scores'"):
        load_model_package(saved.directory)
    spec_path.write_text(json.dumps({**json.loads(original), "input_datatype": "BF16"}))
    with pytest.raises(ModelPackageError, match="not servable from numpy"):
        load_model_package(saved.directory)
    spec_path.write_text(original)

    opened = load_model_package(saved.directory)
    saved.model_path.write_bytes(b"not a model")
    with pytest.raises(ModelPackageError, match="changed after its package was opened"):
        opened.load_module("cpu")
    with pytest.raises(ModelPackageError, match="not a loadable TorchScript model"):
        load_model_package(saved.directory).load_module("cpu")
    saved.model_path.unlink()
    with pytest.raises(ModelPackageError, match="has no model file"):
        load_model_package(saved.directory)
    spec_path.unlink()
    with pytest.raises(ModelPackageError, match="has no model spec"):
        load_model_package(saved.directory)


def test_spec_must_fit_the_group_task() -> None:
    task = digits_task()
    check_against_task(_spec(), task)
    wrong = TaskSchema(input_name="image", input_shape=(8, 8), input_datatype="UINT8", class_labels=LABELS, top_k=3)
    with pytest.raises(ModelPackageError) as caught:
        check_against_task(_spec(), wrong)
    message = str(caught.value)
    assert "input name 'pixels'" in message and "datatype FP32" in message and "shape [64]" in message
    with pytest.raises(ModelPackageError, match="2 class labels"):
        check_against_task(_spec(class_labels=("cat", "dog")), task)


def test_spec_rejects_bad_values() -> None:
    with pytest.raises(ModelPackageError, match="model name"):
        _spec(name="has space")
    with pytest.raises(ModelPackageError, match="model name"):
        _spec(name="x" * 41)
    with pytest.raises(ModelPackageError, match="max_batch_size"):
        _spec(max_batch_size=0)
    with pytest.raises(ModelPackageError, match="device 'tpu'"):
        _spec(device="tpu")
    with pytest.raises(ModelPackageError, match="distinct classes"):
        _spec(class_labels=("a", "a"))
    with pytest.raises(ModelPackageError, match="positive integers"):
        _spec(input_shape=(0,))
