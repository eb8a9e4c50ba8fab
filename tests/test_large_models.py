"""Models over the protobuf limit (2 GiB), tested in miniature.

Building a real 2 GB model takes too long for the suite (``scripts/large_model_check.py``
does it). Here :func:`simulate_limit` moves the limit down to :data:`LIMIT` bytes:
``LARGE_MODEL_BYTES`` is lowered, and ``ModelProto.SerializeToString``/``ByteSize`` fail from
that size on with the ``EncodeError`` protobuf raises over 2 GiB. Everything that would
serialize a large model (the in-memory checker, onnxruntime from bytes, an inline save,
``ByteSize``) then fails as it would on a real one, and the large-model path must avoid it:
load with external data and check from the file, run onnxruntime from files, save with
external data automatically, never write over the input's data file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from google.protobuf.message import EncodeError
from models import conv_net, dense_net, weights_of
from onnx import TensorProto, helper, numpy_helper

import lbyl_onnx
from lbyl_onnx.cli import main
from lbyl_onnx.errors import UsageError
from lbyl_onnx.graph import io
from lbyl_onnx.graph.shapes import infer_shapes
from lbyl_onnx.runtime import sessions
from lbyl_onnx.runtime.validate import validate

LIMIT = 16_000
"""The simulated protobuf limit, in bytes: the test model's weights (46 KB) are over it, its
skeleton without them (about 1 KB) under it."""

REAL_SERIALIZE = onnx.ModelProto.SerializeToString
REAL_BYTE_SIZE = onnx.ModelProto.ByteSize


def simulate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    def serialize(self, **kwargs):
        data = REAL_SERIALIZE(self, **kwargs)
        if len(data) >= LIMIT:
            raise EncodeError("Failed to serialize proto")
        return data

    def byte_size(self):
        size = REAL_BYTE_SIZE(self)
        if size >= LIMIT:
            raise EncodeError("Failed to serialize proto")
        return size

    monkeypatch.setattr(io, "LARGE_MODEL_BYTES", LIMIT)
    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", serialize)
    monkeypatch.setattr(onnx.ModelProto, "ByteSize", byte_size)


def big_model() -> onnx.ModelProto:
    """Conv(3->32) -> Relu -> Conv(32->32) -> Relu -> Conv head: 46 KB of weights."""
    model = conv_net(channels=(3, 32, 32), heads=("conv",))
    assert len(REAL_SERIALIZE(model)) > 2 * LIMIT
    return model


def save_external(model: onnx.ModelProto, path: Path, location: str | None = None) -> Path:
    """``model`` saved with its weights in ``location`` (default ``PATH.data``), by onnx."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(
        copy, str(path), save_as_external_data=True, location=location or f"{path.name}.data"
    )
    return path


def outputs(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    return sessions.session(model).run(None, {"x": x})[0]


def feeds(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 3, 6, 6)).astype(np.float32)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- size


def _if_model() -> onnx.ModelProto:
    """``y = If(cond, then: x + c, else: x)`` with ``c`` (1200 bytes) inside the branch."""
    c = numpy_helper.from_array(np.linspace(-1, 1, 300, dtype=np.float32), "c")
    out = helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 300])
    then = helper.make_graph([helper.make_node("Add", ["x", "c"], ["t"])], "then", [], [out], [c])
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["t"])],
        "else",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 300])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], "branch", then_branch=then, else_branch=other)],
        "if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 300])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 300])],
        [numpy_helper.from_array(np.array(True), "cond")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="source", value="tests")
    onnx.checker.check_model(model, full_check=True)
    return model


def _external_reference() -> onnx.ModelProto:
    model = conv_net(channels=(3, 8))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="weights.bin")
    return model


SIZED = {
    "conv": lambda: conv_net(channels=(3, 32, 32), bn="kept", heads=("flatten_gemm",)),
    "constants": lambda: conv_net(channels=(3, 8, 6), storage="constant_identity"),
    "ir3_listed": lambda: conv_net(channels=(3, 8), opset=8, ir_version=3),
    "matmul_fp64_bias": lambda: dense_net(features=(300, 40), kind="matmul"),
    "subgraph": _if_model,
    "external_reference": _external_reference,
    "empty": onnx.ModelProto,
}


@pytest.mark.parametrize("name", list(SIZED))
def test_serialized_size_is_the_serialized_length(name: str) -> None:
    model = SIZED[name]()
    assert io.serialized_size(model) == len(model.SerializeToString())


def test_serialized_size_counts_typed_and_float16_tensors() -> None:
    model = conv_net(channels=(3, 8))
    model.graph.initializer.append(
        helper.make_tensor("typed", TensorProto.FLOAT, [400], [1.5] * 400)
    )
    model.graph.initializer.append(numpy_helper.from_array(np.ones(700, np.float16), "half"))
    model.graph.initializer.append(
        helper.make_tensor("words", TensorProto.STRING, [2], [b"a", b"bc"])
    )
    assert io.serialized_size(model) == len(model.SerializeToString())


# --------------------------------------------------------------------------- load


def test_large_model_is_checked_from_its_file_and_loaded_with_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = big_model()
    path = save_external(model, tmp_path / "in.onnx")
    checked = []
    real_check = onnx.checker.check_model
    monkeypatch.setattr(
        onnx.checker, "check_model", lambda m, *a, **k: checked.append(m) or real_check(m, *a, **k)
    )
    simulate_limit(monkeypatch)
    loaded = io.load_model(path)
    assert checked == [str(path)]  # by path: the in-memory checker would serialize it
    assert all(t.data_location == TensorProto.DEFAULT for t in loaded.graph.initializer)
    assert not any(t.external_data for t in loaded.graph.initializer)
    expected = weights_of(model)
    assert weights_of(loaded).keys() == expected.keys()
    for name, value in weights_of(loaded).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)


def test_large_model_failing_the_checker_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = big_model()
    model.graph.node[1].input[0] = "no_such_tensor"
    path = save_external(model, tmp_path / "in.onnx")
    simulate_limit(monkeypatch)
    with pytest.raises(UsageError, match="fails the ONNX checker"):
        io.load_model(path)


def test_missing_external_data_is_a_usage_error(tmp_path: Path) -> None:
    path = save_external(big_model(), tmp_path / "in.onnx")
    (tmp_path / "in.onnx.data").unlink()
    with pytest.raises(UsageError, match="external data"):
        io.load_model(path)


# --------------------------------------------------------------------------- check and run


def test_shapes_and_units_of_a_large_model_with_integer_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shape inference runs on a copy without the weights: integer ones too (quantized
    models), else that copy is itself over the limit."""
    model = big_model()
    table = np.arange(70_000, dtype=np.int8)  # 70 KB, over LIMIT by itself
    model.graph.initializer.append(numpy_helper.from_array(table, "table"))
    model.graph.node.append(helper.make_node("Identity", ["table"], ["codes"], "codes"))
    model.graph.output.append(helper.make_tensor_value_info("codes", TensorProto.INT8, [70_000]))
    expected_shapes = infer_shapes(model)
    expected_units = [u.name for u in lbyl_onnx.list_units(model)[0]]
    simulate_limit(monkeypatch)
    assert infer_shapes(model) == expected_shapes
    assert expected_shapes["codes"] == [70_000]
    assert [u.name for u in lbyl_onnx.list_units(model)[0]] == expected_units == ["conv0", "conv1"]
    io.check_model(model)


def test_checker_of_large_model_skips_only_the_weights_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = big_model()
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    next(n for n in broken.graph.node if n.name == "conv1").attribute.append(
        helper.make_attribute("kernel_shape", [5, 5])  # contradicts its 3x3 weight
    )
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(broken, full_check=True)  # the premise
    simulate_limit(monkeypatch)
    with pytest.raises(EncodeError):
        onnx.checker.check_model(model, full_check=True)  # what the simulation stands for
    io.check_model(model)
    with pytest.raises((onnx.checker.ValidationError, onnx.shape_inference.InferenceError)):
        io.check_model(broken)


def test_validation_runs_large_models_from_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = big_model()
    pruned, _ = lbyl_onnx.prune(model, ratio=0.3, check=False)
    expected = validate(model, pruned)
    assert expected.status == "passed"
    before = (REAL_SERIALIZE(model), REAL_SERIALIZE(pruned))
    path = save_external(model, tmp_path / "in.onnx")

    opened, staged = [], []
    real_session, real_write = sessions.ort.InferenceSession, io.write_external

    def spy_session(source, *args, **kwargs):
        opened.append(source)
        return real_session(source, *args, **kwargs)

    def spy_write(model, target, *args, **kwargs):
        staged.append(Path(target).parent)
        return real_write(model, target, *args, **kwargs)

    monkeypatch.setattr(sessions.ort, "InferenceSession", spy_session)
    monkeypatch.setattr(io, "write_external", spy_write)
    simulate_limit(monkeypatch)

    result = validate(model, pruned)
    assert result.status == "passed", result.message
    assert all(isinstance(source, str) for source in opened) and len(opened) == 2
    assert len(staged) == 2 and not any(folder.exists() for folder in staged)  # cleaned up
    assert [vars(m) for m in result.outputs] == [vars(m) for m in expected.outputs]
    assert result.inputs == expected.inputs

    opened.clear()
    staged.clear()
    from_file = validate(path, pruned)  # the original from its own file: not staged
    assert from_file.status == "passed", from_file.message
    assert opened[0] == str(path) and len(staged) == 1
    assert [vars(m) for m in from_file.outputs] == [vars(m) for m in expected.outputs]
    assert (REAL_SERIALIZE(model), REAL_SERIALIZE(pruned)) == before  # neither was changed


# --------------------------------------------------------------------------- save


def test_large_output_is_saved_with_external_data_and_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = big_model()
    x = feeds()
    reference = outputs(model, x)
    before = REAL_SERIALIZE(model)
    simulate_limit(monkeypatch)
    out = tmp_path / "out.onnx"
    with caplog.at_level(logging.INFO, logger="lbyl_onnx"):
        io.save_model(model, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert "over 2 GB" in messages[0] and "out.onnx.data" in messages[0]
    skeleton = onnx.load(str(out), load_external_data=False)
    external = {
        t.name: {e.key: e.value for e in t.external_data}["location"]
        for t in skeleton.graph.initializer
        if t.data_location == TensorProto.EXTERNAL
    }
    assert external == {
        "conv0.W": "out.onnx.data",
        "conv1.W": "out.onnx.data",
        "head.W": "out.onnx.data",
    }
    np.testing.assert_array_equal(outputs(out, x), reference)
    assert REAL_SERIALIZE(model) == before  # the model in memory keeps its weights


def test_small_output_is_saved_inline_without_a_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out.onnx"
    with caplog.at_level(logging.INFO, logger="lbyl_onnx"):
        io.save_model(big_model(), out)
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]
    assert caplog.records == []


def test_external_write_handles_subgraph_weights_and_changes_nothing(tmp_path: Path) -> None:
    model = _if_model()
    before = model.SerializeToString()
    assert io.write_external(model, tmp_path / "m.onnx")
    assert model.SerializeToString() == before
    skeleton = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    branch = next(a.g for a in skeleton.graph.node[0].attribute if a.name == "then_branch")
    assert branch.initializer[0].data_location == TensorProto.EXTERNAL
    x = np.random.default_rng(1).standard_normal((2, 300)).astype(np.float32)
    got = sessions.session(tmp_path / "m.onnx").run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, sessions.session(model).run(None, {"x": x})[0])
    assert skeleton.metadata_props == model.metadata_props


def test_external_write_without_large_tensors_writes_no_data_file(tmp_path: Path) -> None:
    model = conv_net(channels=(3, 4))  # every tensor under 1024 bytes
    assert not io.write_external(model, tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    assert onnx.load(str(tmp_path / "m.onnx")) == model


# --------------------------------------------------------------------------- input's data


def test_output_never_overwrites_the_inputs_external_data(tmp_path: Path) -> None:
    """An input whose data file is named like OUT's (``out.onnx.data``): saving OUT with
    external data would replace it, and the input would then read the output's weights."""
    path = save_external(big_model(), tmp_path / "in.onnx", location="out.onnx.data")
    data = tmp_path / "out.onnx.data"
    before = digest(data)
    with pytest.raises(UsageError, match="input's external data"):
        io.check_output_path(path, tmp_path / "out.onnx")
    with pytest.raises(UsageError, match="input's external data"):
        io.check_output_path(path, data)  # OUT is the data file itself
    for out in ("out.onnx", "out.onnx.data"):
        result = CliRunner().invoke(
            main, [str(path), str(tmp_path / out), "--save-as-external-data"]
        )
        assert result.exit_code == 2, result.output
        assert "input's external data" in result.output
    assert digest(data) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx.data"]
    io.check_output_path(path, tmp_path / "other.onnx")  # any other name is fine


def test_a_stale_output_data_file_may_be_replaced(tmp_path: Path) -> None:
    path = save_external(big_model(), tmp_path / "in.onnx")
    (tmp_path / "out.onnx.data").write_bytes(b"from an earlier run")
    io.check_output_path(path, tmp_path / "out.onnx")
    result = CliRunner().invoke(
        main, [str(path), str(tmp_path / "out.onnx"), "--save-as-external-data"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.onnx.data").read_bytes() != b"from an earlier run"


# --------------------------------------------------------------------------- the pipeline


def test_large_model_is_pruned_file_to_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = big_model()
    path = save_external(model, tmp_path / "in.onnx")
    x = feeds()
    simulate_limit(monkeypatch)
    out = tmp_path / "out.onnx"
    with caplog.at_level(logging.INFO, logger="lbyl_onnx"):
        report = lbyl_onnx.prune_file(path, out, lbyl_onnx.PruneConfig(ratio=0.3))
    assert report.validation.status == "passed", report.validation.message
    assert [(u.name, u.channels_after) for u in report.units] == [("conv0", 22), ("conv1", 22)]
    assert report.before.size_bytes == len(REAL_SERIALIZE(onnx.load(str(path))))
    assert (tmp_path / "out.onnx.data").is_file()
    assert any("over 2 GB" in r.getMessage() for r in caplog.records)
    assert outputs(out, x).shape == outputs(model, x).shape
    assert report.mode == "closed form"  # calibration would copy the model per layer
    assert report.warnings[0] == (
        "closed-form LBYL, not synthetic calibration: the model is over 2 GB, and calibration "
        "copies it per layer"
    )


def test_large_model_is_not_copied_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_external(big_model(), tmp_path / "in.onnx")
    copies = []
    real_copy = onnx.ModelProto.CopyFrom

    def copy_from(self, other):
        if io.serialized_size(other) >= LIMIT:
            copies.append(io.serialized_size(other))
        return real_copy(self, other)

    simulate_limit(monkeypatch)
    monkeypatch.setattr(onnx.ModelProto, "CopyFrom", copy_from)
    with contextlib.suppress(EncodeError):  # the serialization: the test above
        lbyl_onnx.prune_file(path, tmp_path / "out.onnx", lbyl_onnx.PruneConfig(ratio=0.3))
    assert copies == []


def test_large_model_is_calibrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = big_model()
    units, _ = lbyl_onnx.list_units(model)
    samples = {"x": np.random.default_rng(2).standard_normal((32, 3, 6, 6)).astype(np.float32)}
    from lbyl_onnx.runtime.record import record_statistics

    expected = record_statistics(model, units, samples)
    simulate_limit(monkeypatch)
    got = record_statistics(model, units, samples)
    for name, stats in expected.items():
        np.testing.assert_allclose(got[name].mean, stats.mean)
