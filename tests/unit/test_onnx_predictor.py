"""OnnxPredictor on a CPU: a run that starts while another is in flight takes the second session,
with the same numbers; alone, runs take the main session. Batches joined into one run are split
back only when every output has a row per image."""

from __future__ import annotations

import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from core.errors import ModelNotReady
from core.imaging import decode_image, preprocess
from core.models.catalog import load_builtin
from core.models.onnx_export import ensure_onnx
from core.runtime import onnx_predictor
from core.runtime.onnx_predictor import OnnxPredictor, node_failure
from support import foolbox_imagenet_photos


@pytest.fixture(scope="module")
def predictor_and_batch(tmp_path_factory):
    spec, network = load_builtin("efficientnet_lite0")
    predictor = OnnxPredictor(ensure_onnx(network, spec, tmp_path_factory.mktemp("onnx")))
    photos = [decode_image(path.read_bytes(), 10**8) for path, _ in foolbox_imagenet_photos()[:3]]
    return predictor, preprocess(photos, spec)[0]


class HeldSession:
    """Stands in for the main session: a run waits until released, then runs on the real one."""

    def __init__(self, session) -> None:
        self.session, self.running, self.release = session, threading.Event(), threading.Event()
        self.calls = 0

    def run(self, outputs, feeds):
        self.calls += 1
        self.running.set()
        assert self.release.wait(30)
        return self.session.run(outputs, feeds)


def test_a_run_beside_another_takes_the_second_session_with_the_same_numbers(predictor_and_batch, monkeypatch):
    predictor, batch = predictor_and_batch
    if predictor.concurrent_runs < 2:
        pytest.skip("one core: one run at a time")
    alone = predictor.run(["logits", "features"], batch)
    assert predictor._shared_session is None  # alone, nothing beside it: the main session only
    held = HeldSession(predictor.session)
    monkeypatch.setattr(predictor, "session", held)
    first: list = []
    thread = threading.Thread(target=lambda: first.append(predictor.run(["logits", "features"], batch)))
    thread.start()
    assert held.running.wait(30)
    beside = predictor.run(["logits", "features"], batch)  # the main session is held: this one runs beside it
    assert predictor._shared_session is not None
    held.release.set()
    thread.join(30)
    for outputs in (beside, first[0]):
        for got, expected in zip(outputs, alone):
            np.testing.assert_array_equal(got, expected)
    assert predictor._in_flight == 0


def test_a_run_beside_another_after_the_models_file_is_gone_takes_the_main_session(predictor_and_batch, tmp_path,
                                                                                   monkeypatch):
    """A version deleted while its requests ran: the second session, made from the file on first
    need, was a 500 (NoSuchFile)."""
    predictor, batch = predictor_and_batch
    copy = tmp_path / "model.onnx"
    copy.write_bytes(predictor.path.read_bytes())
    deleted = OnnxPredictor(copy)
    if deleted.concurrent_runs < 2:
        pytest.skip("one core: one run at a time")
    alone = deleted.run(["logits"], batch)
    copy.unlink()
    results, held = two_runs_on_a_held_main_session(deleted, batch, monkeypatch)  # no second session can be made
    assert held.calls == 2 and len(results) == 2, results
    for result in results:
        np.testing.assert_array_equal(result[0], alone[0])


def two_runs_on_a_held_main_session(predictor, batch, monkeypatch) -> tuple[list, HeldSession]:
    """Two runs of `batch`, the second started while the first holds the main session: their
    results, and the main session (released once both have asked it, or after 30 s)."""
    held = HeldSession(predictor.session)
    monkeypatch.setattr(predictor, "session", held)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(predictor.run(["logits"], batch))) for _ in range(2)]
    threads[0].start()
    assert held.running.wait(30)
    threads[1].start()
    deadline = time.monotonic() + 30
    while held.calls < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    held.release.set()
    for thread in threads:
        thread.join(30)
    return results, held


def test_a_model_over_the_size_cap_keeps_one_session_when_runs_overlap(predictor_and_batch, monkeypatch):
    predictor, batch = predictor_and_batch
    monkeypatch.setattr(onnx_predictor, "SECOND_SESSION_MAX_BYTES", predictor.path.stat().st_size - 1)
    large = OnnxPredictor(predictor.path)
    assert large.concurrent_runs == 1
    results, held = two_runs_on_a_held_main_session(large, batch, monkeypatch)  # the second waits on the same one
    assert held.calls == 2 and len(results) == 2 and large._shared_session is None
    np.testing.assert_array_equal(results[0][0], results[1][0])


def channel_means_onnx(path, batch_averaged: bool):
    """logits: each image's channel means; `batch_averaged`: one row, the mean over the batch."""
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat" if batch_averaged else "logits"])]
    if batch_averaged:
        nodes.append(helper.make_node("ReduceMean", ["flat"], ["logits"], axes=[0], keepdims=1))
    graph = helper.make_graph(nodes, "means", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_joined_batches_are_split_back_only_with_a_row_per_image(tmp_path):
    batches = [np.full((1, 3, 4, 4), 1.0, np.float32), np.full((2, 3, 4, 4), 5.0, np.float32)]
    faithful = OnnxPredictor(channel_means_onnx(tmp_path / "faithful.onnx", batch_averaged=False))
    split = faithful.run_batches(("logits",), batches)
    np.testing.assert_array_equal(split[0][0], np.full((1, 3), 1.0))
    np.testing.assert_array_equal(split[1][0], np.full((2, 3), 5.0))
    averaging = OnnxPredictor(channel_means_onnx(tmp_path / "averaging.onnx", batch_averaged=True))
    with pytest.raises(ModelNotReady, match=r"'logits' output has shape \(1, 3\) for a batch of 3 images"):
        averaging.run_batches(("logits",), batches)  # unchecked, the first request would get everyone's mean


def test_runs_hold_at_most_max_batch_images_with_the_same_results(tmp_path):
    """An uploaded model's memory is checked at max_batch images; serving never runs more at once."""
    path = channel_means_onnx(tmp_path / "means.onnx", batch_averaged=False)
    batches = [np.full((count, 3, 4, 4), float(value), np.float32) for value, count in ((1, 1), (2, 3), (3, 1))]
    whole = OnnxPredictor(path).run_batches(("logits",), batches)
    chunked = OnnxPredictor(path, max_batch=2)
    sizes = []
    plain_run = chunked.run
    chunked.run = lambda outputs, batch: sizes.append(len(batch)) or plain_run(outputs, batch)
    for expected, got in zip(whole, chunked.run_batches(("logits",), batches)):
        np.testing.assert_array_equal(expected[0], got[0])
    assert sizes == [2, 2, 1]


def test_an_uploaded_graph_runs_only_at_its_checked_batch_sizes_with_the_same_rows(tmp_path):
    path = channel_means_onnx(tmp_path / "means.onnx", batch_averaged=False)
    batches = [np.full((count, 3, 4, 4), float(value), np.float32) for value, count in ((1, 1), (2, 3), (3, 3))]
    whole = OnnxPredictor(path).run_batches(("logits",), batches)
    checked = OnnxPredictor(path, max_batch=32, batch_sizes=(1, 2, 4))
    sizes = []
    plain_run = checked.run
    checked.run = lambda outputs, batch: sizes.append(len(batch)) or plain_run(outputs, batch)
    for expected, got in zip(whole, checked.run_batches(("logits",), batches)):
        np.testing.assert_array_equal(expected[0], got[0])
    assert sizes == [4, 2, 1]  # 7 images
    assert checked.run_sizes(13) == [4, 4, 4, 1]
    assert OnnxPredictor(path, max_batch=3, batch_sizes=(1, 2, 4)).run_sizes(7) == [2, 2, 2, 1]
    assert OnnxPredictor(path, max_batch=4).run_sizes(13) == [4, 4, 4, 1]  # a graph of ours: any size


@pytest.mark.parametrize("message, the_models", [
    ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running Gather node. "
     "Name:'pick' Status Message: indices element out of data bounds, idx=2 must be within the inclusive range "
     "[-2,1]", True),
    ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Div node. Name:'' Status "
     "Message: element_wise_ops.cc:703 Compute Integer division by zero", True),
    ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node. Name:'c' Status "
     "Message: CUDNN failure 4: CUDNN_STATUS_INTERNAL_ERROR", False),
    ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running MatMul node. Name:'m' Status "
     "Message: Failed to allocate memory for requested buffer of size 1073741824", False),
    ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: pixels", False),
])
def test_a_node_that_fails_on_its_values_is_the_models_fault_and_the_machines_failures_are_not(message, the_models):
    """A 422 says "the model, not the image, is at fault": not for a GPU library's error or an
    allocation (the machine's), nor for an input the service shaped wrongly (its own bug, a 500)."""
    failed = node_failure(Exception(message))
    assert (failed is not None) == the_models
    if failed is not None:
        assert failed.status == 422 and "node" in failed.detail and failed.extra["why"] == failed.detail
