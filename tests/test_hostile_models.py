"""Hostile input models (issue 28): float16/float64/bfloat16 models (class 1), secondary outputs
that are graph outputs or read (class 3), NaN/Inf in weights, data and statistics (class 5),
models the full ONNX checker rejects (class 6), inputs of every element type (class 7).

Each case is pruned right (checked against onnxruntime or the float32 model), written with a
clear exit 4 where onnxruntime cannot run it, or refused with one line and nothing written;
never an internal error or a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner, Result
from models import GraphBuilder, conv_net, dense_net
from onnx import TensorProto, helper, numpy_helper

import lbyl_onnx.graph.io
from lbyl_onnx import prune
from lbyl_onnx.cli import main
from lbyl_onnx.errors import UsageError
from lbyl_onnx.methods.base import NonFiniteStatistics
from lbyl_onnx.methods.calibrated import ActivationStats, solve_calibrated
from lbyl_onnx.runtime.sessions import random_inputs

BFLOAT16 = helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16)
NUMPY = {TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}


def run(*args) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(result: Result, code: int, text: str, out: Path) -> None:
    """Exit ``code``, one line on stderr holding ``text``, no traceback, OUT not written."""
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()


def save(model: onnx.ModelProto, folder: Path, name: str = "in.onnx") -> Path:
    path = folder / name
    onnx.save(model, str(path))
    return path


def outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def initializer_dims(path: Path) -> dict[str, tuple[int, list[int]]]:
    return {t.name: (t.data_type, list(t.dims)) for t in onnx.load(str(path)).graph.initializer}


def structure(path: Path) -> tuple[list[str], list[list[int]]]:
    """The node types and the weights' shapes (their names aside)."""
    model = onnx.load(str(path))
    return [n.op_type for n in model.graph.node], sorted(
        list(t.dims) for t in model.graph.initializer
    )


# --------------------------------------------------------------------------- class 1: dtypes


def cast_model(model: onnx.ModelProto, elem: int) -> onnx.ModelProto:
    """``model`` (float32) in ``elem``: every float initializer, input, output, value_info."""
    dtype = BFLOAT16 if elem == TensorProto.BFLOAT16 else NUMPY[elem]
    cast = onnx.ModelProto()
    cast.CopyFrom(model)
    for init in cast.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(dtype), init.name)
            )
    for info in [*cast.graph.input, *cast.graph.output, *cast.graph.value_info]:
        if info.type.tensor_type.elem_type == TensorProto.FLOAT:
            info.type.tensor_type.elem_type = elem
    return cast


def conv_bn() -> onnx.ModelProto:
    """Conv -> BN -> Relu -> Conv -> BN -> Relu -> Conv, opset 22 (Conv takes bfloat16)."""
    return conv_net((3, 8, 8), bn="kept", hw=8, opset=22)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_float16_conv_prunes_in_the_default_mode_like_float32(tmp_path: Path) -> None:
    f32, f16 = save(conv_bn(), tmp_path, "f32.onnx"), save(cast_model(conv_bn(), 10), tmp_path)
    result = run(f16, tmp_path / "out.onnx")
    assert result.exit_code == 0, result.output
    assert "calibrated on 256 synthetic inputs" in result.output
    assert run(f32, tmp_path / "out32.onnx").exit_code == 0
    pruned = initializer_dims(tmp_path / "out.onnx")
    assert {k: d for k, (_, d) in pruned.items()} == {
        k: d for k, (_, d) in initializer_dims(tmp_path / "out32.onnx").items()
    }
    assert {t for t, _ in pruned.values()} == {TensorProto.FLOAT16}  # written back in float16
    x = np.random.default_rng(3).uniform(0, 1, (16, 3, 8, 8))
    y16 = outputs(tmp_path / "out.onnx", {"x": x.astype(np.float16)})[0]
    assert y16.dtype == np.float16  # the output's dtype is unchanged
    y32 = outputs(tmp_path / "out32.onnx", {"x": x.astype(np.float32)})[0]
    original = outputs(f32, {"x": x.astype(np.float32)})[0]
    # as close to the original as the float32 pruning, up to float16's rounding
    assert relative(y16, original) < 1.5 * relative(y32, original) + 0.05
    closed = run(f16, tmp_path / "closed.onnx", "--closed-form")
    assert closed.exit_code == 0, closed.output
    assert structure(tmp_path / "closed.onnx") == structure(tmp_path / "out.onnx")


def test_float64_dense_model_prunes_in_the_default_mode_as_float32_does(tmp_path: Path) -> None:
    model = dense_net((12, 16, 16))
    f32, f64 = save(model, tmp_path, "f32.onnx"), save(cast_model(model, 11), tmp_path)
    assert run(f32, tmp_path / "out32.onnx").exit_code == 0
    result = run(f64, tmp_path / "out.onnx")
    assert result.exit_code == 0, result.output
    assert "calibrated on 256 synthetic inputs" in result.output
    assert {t for t, _ in initializer_dims(tmp_path / "out.onnx").values()} == {11}
    x = np.random.default_rng(4).standard_normal((20, 12))
    y64 = outputs(tmp_path / "out.onnx", {"x": x})[0]
    y32 = outputs(tmp_path / "out32.onnx", {"x": x.astype(np.float32)})[0]
    assert y64.dtype == np.float64
    assert relative(y64, y32) < 1e-4  # the same pruning, float32's rounding apart


@pytest.mark.parametrize("elem", [TensorProto.DOUBLE, TensorProto.BFLOAT16], ids=["f64", "bf16"])
def test_conv_that_onnxruntime_cannot_run_is_pruned_from_the_weights_with_exit_4(
    tmp_path: Path, elem: int
) -> None:
    """onnxruntime's CPU provider has no float64 or bfloat16 Conv: synthetic calibration and
    validation cannot run, the closed form can (weights solved in float64, written back)."""
    path = save(cast_model(conv_bn(), elem), tmp_path)
    f32 = save(conv_bn(), tmp_path, "f32.onnx")
    result = run(path, tmp_path / "out.onnx")
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output
    assert "closed-form LBYL, not synthetic calibration: the model does not run on synthetic " in (
        result.stdout  # the report's warnings
    )
    assert "validation could not run: the original model does not load" in result.stderr
    assert run(f32, tmp_path / "closed32.onnx", "--closed-form").exit_code == 0
    pruned, closed = (
        onnx.load(str(tmp_path / "out.onnx")),
        onnx.load(str(tmp_path / "closed32.onnx")),
    )
    assert [n.op_type for n in pruned.graph.node] == [n.op_type for n in closed.graph.node]
    expected = {t.name: numpy_helper.to_array(t) for t in closed.graph.initializer}
    for tensor in pruned.graph.initializer:
        assert tensor.data_type == elem
        value = numpy_helper.to_array(tensor).astype(np.float64)
        tolerance = 0.05 if elem == TensorProto.BFLOAT16 else 1e-5  # float32's or bf16's rounding
        assert value.shape == expected[tensor.name].shape
        if elem == TensorProto.DOUBLE:
            np.testing.assert_allclose(value, expected[tensor.name], rtol=tolerance, atol=1e-5)


def test_float64_conv_refuses_calibration_data_and_latency_it_cannot_run(tmp_path: Path) -> None:
    path = save(cast_model(conv_bn(), TensorProto.DOUBLE), tmp_path)
    data = tmp_path / "cal.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((16, 3, 8, 8)))
    out = tmp_path / "out.onnx"
    refused(
        run(path, out, "--calibration-data", data),
        2,
        "--calibration-data: the model does not run on it in onnxruntime: ",
        out,
    )
    refused(run(path, out, "--target-latency", 0.8), 2, "--target-latency: the model does not", out)


def test_float16_budget_and_auto_measure_in_float16(tmp_path: Path) -> None:
    path = save(cast_model(conv_bn(), TensorProto.FLOAT16), tmp_path)
    result = run(path, tmp_path / "out.onnx", "--method", "auto", "--target-macs", 0.6)
    assert result.exit_code == 0, result.output
    assert "the outputs' relative error on 16" in result.output


# --------------------------------------------------------------------- class 3: extra outputs


def extra_output_model(kind: str, symbolic: bool = False) -> onnx.ModelProto:
    """``x -> Conv -> [BN] -> Relu -> OP -> Conv -> y``, OP's second output (or BN's running
    statistics in training mode) a graph output, or read (``kind`` ending in ``_read``);
    ``symbolic``: the extra outputs declared with symbolic dimensions only, which the checker
    cannot compare with what the graph computes."""
    rng = np.random.default_rng(0)
    g = GraphBuilder(opset=18)
    g.input("x", ["N", 3, 8, 8])
    g.const("w0", (0.3 * rng.standard_normal((8, 3, 3, 3))).astype(np.float32))
    g.op("Conv", ["x", "w0"], "c0", name="conv0", pads=[1, 1, 1, 1])
    tensor, extra, size, channels = "c0", [], 8, 8
    if kind == "bn_training":
        for name, value in (("scale", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0)):
            g.const(f"bn.{name}", np.full(8, value, np.float32))
        node = helper.make_node(
            "BatchNormalization",
            ["c0", "bn.scale", "bn.bias", "bn.mean", "bn.var"],
            ["b0", "running_mean", "running_var"],
            name="bn",
            training_mode=1,
        )
        g.nodes.append(node)
        tensor, extra = "b0", [("running_mean", TensorProto.FLOAT, [8])]
    tensor = g.op("Relu", [tensor], "r0")
    op = kind.removesuffix("_read")
    if op == "maxpool":
        second, elem, size = "indices", TensorProto.INT64, 4
        node = helper.make_node("MaxPool", [tensor], ["p0", second], name=op, kernel_shape=[2, 2])
        node.attribute.append(helper.make_attribute("strides", [2, 2]))
    elif op == "dropout":
        second, elem = "mask", TensorProto.BOOL
        node = helper.make_node("Dropout", [tensor], ["p0", second], name=op)
    if op in ("maxpool", "dropout"):
        g.nodes.append(node)
        tensor, extra = "p0", [(second, elem, ["N", 8, size, size])]
        if kind.endswith("_read"):
            g.op("Cast", [second], "read", to=TensorProto.FLOAT)
            extra = [("read", TensorProto.FLOAT, ["N", 8, size, size])]
    elif op in ("split", "topk"):
        channels = 4
        if op == "split":
            node = helper.make_node(
                "Split", [tensor], ["p0", "rest"], name="split", axis=1, num_outputs=2
            )
        else:
            g.const("k", np.array([4], np.int64))
            node = helper.make_node("TopK", [tensor, "k"], ["p0", "rest"], name="topk", axis=1)
        g.nodes.append(node)
        rest = TensorProto.INT64 if op == "topk" else TensorProto.FLOAT
        tensor, extra = "p0", [("rest", rest, ["N", 4, 8, 8])]
    g.const("w1", (0.3 * rng.standard_normal((5, channels, 3, 3))).astype(np.float32))
    g.op("Conv", [tensor, "w1"], "y", name="head", pads=[1, 1, 1, 1])
    g.output("y", ["N", 5, size, size])
    for name, elem, shape in extra:
        g.output(name, [f"{name}_{i}" for i in range(len(shape))] if symbolic else shape, elem)
    return g.build()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("maxpool", "output 1 'indices' of MaxPool 'maxpool' is a graph output"),
        ("dropout", "output 1 'mask' of Dropout 'dropout' is a graph output"),
        ("dropout_read", "output 1 'mask' of Dropout 'dropout' is read"),
        ("bn_training", "BatchNormalization in training mode: output 1 'running_mean'"),
        ("split", "'r0' is read by Split 'split'"),
        ("topk", "'r0' is read by TopK 'topk'"),
    ],
)
@pytest.mark.parametrize("symbolic", [False, True], ids=["fixed", "symbolic"])
def test_unit_whose_chain_has_a_used_extra_output_is_declined(
    tmp_path: Path, kind: str, reason: str, symbolic: bool
) -> None:
    """With --no-check (validation would not catch it), every graph output keeps its declared
    and actual shape: the unit is declined with the reason."""
    path = save(extra_output_model(kind, symbolic), tmp_path)
    listed = run(path, "--list")
    assert f"conv0 (Conv): {reason}" in listed.output, listed.output
    out = tmp_path / "out.onnx"
    result = run(path, out, "--no-check", "--closed-form")
    assert result.exit_code == 0, result.output
    before, after = onnx.load(str(path)), onnx.load(str(out))
    assert list(before.graph.output) == list(after.graph.output)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    if kind != "bn_training":  # onnxruntime runs no BatchNormalization in training mode
        shapes = [o.shape for o in outputs(path, feeds)]
        assert [o.shape for o in outputs(out, feeds)] == shapes


def test_extra_output_that_nothing_uses_does_not_stop_pruning(tmp_path: Path) -> None:
    model = extra_output_model("maxpool")
    del model.graph.output[1:]  # the indices are computed, but neither read nor an output
    path, out = save(model, tmp_path), tmp_path / "out.onnx"
    result = run(path, out, "--closed-form")
    assert result.exit_code == 0, result.output
    assert initializer_dims(out)["w0_pruned"][1][0] == 5


def test_residual_group_with_an_extra_output_inside_is_declined(tmp_path: Path) -> None:
    """conv_a + conv_b -> MaxPool (indices a graph output) -> Conv: the group is declined."""
    rng = np.random.default_rng(2)
    g = GraphBuilder()
    g.input("x", ["N", 4, 8, 8])
    for name in ("a", "b"):
        g.const(f"w{name}", rng.standard_normal((4, 4, 1, 1)).astype(np.float32))
        g.op("Conv", ["x", f"w{name}"], f"c{name}", name=f"conv_{name}")
    g.op("Add", ["ca", "cb"], "s", name="sum")
    g.nodes.append(
        helper.make_node(
            "MaxPool", ["s"], ["p", "idx"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
        )
    )
    g.const("wh", rng.standard_normal((3, 4, 1, 1)).astype(np.float32))
    g.op("Conv", ["p", "wh"], "y", name="head")
    g.output("y", ["N", 3, 4, 4])
    g.output("idx", ["N", "c", "h", "w"], TensorProto.INT64)
    path = save(g.build(), tmp_path)
    listed = run(path, "--list", "--prune-residual")
    assert "residual group: output 1 'idx' of MaxPool 'pool' is a graph output" in listed.output


# ------------------------------------------------------------------ class 5: NaN, Inf, variance


def with_value(name: str, index: int, value: float, epsilon: float | None = None):
    model = conv_net((3, 8, 8), bn="kept", hw=8)
    for init in model.graph.initializer:
        if init.name == name:
            array = numpy_helper.to_array(init).copy()
            array.reshape(-1)[index] = value
            init.CopyFrom(numpy_helper.from_array(array, name))
    for node in model.graph.node:
        if node.op_type == "BatchNormalization" and epsilon is not None:
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("epsilon", epsilon))
    return model


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            with_value("bn0.var", 2, -1.0),
            "BatchNormalization 'bn0': variance 'bn0.var' + epsilon is negative at channel 2",
        ),
        (
            with_value("bn1.var", 0, 0.0, 0.0),
            "BatchNormalization 'bn1': variance 'bn1.var' + epsilon is zero at channel 0",
        ),
        (with_value("conv0.W", 5, np.nan), "weight 'conv0.W' of Conv 'conv0' holds 1 NaN value"),
        (with_value("conv1.W", 1, -np.inf), "weight 'conv1.W' of Conv 'conv1' holds 1 Inf value"),
        (with_value("head.b", 0, np.nan), "weight 'head.b' of Conv 'head' holds 1 NaN value"),
    ],
    ids=["negative variance", "zero variance, epsilon 0", "NaN weight", "Inf consumer", "NaN head"],
)
def test_weights_that_compute_nan_are_refused_up_front(
    tmp_path: Path, model: onnx.ModelProto, message: str
) -> None:
    path, out = save(model, tmp_path), tmp_path / "out.onnx"
    refused(run(path, out), 2, f"error: {path}: {message}", out)
    with pytest.raises(UsageError, match="the model: "):
        prune(model)


def test_inf_outside_the_layers_is_allowed(tmp_path: Path) -> None:
    """A Clip bound of +Inf (a ReLU) is meant: the model prunes."""
    path = save(conv_net((3, 8, 8), act="Clip", clip_max=np.inf, hw=8), tmp_path)
    result = run(path, tmp_path / "out.onnx", "--closed-form")
    assert result.exit_code == 0, result.output
    assert "validation: passed" in result.output


@pytest.mark.parametrize("flag", ["--calibration-data", "--input-data"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_data_holding_nan_or_inf_is_refused_up_front(tmp_path: Path, flag: str, value) -> None:
    path, out = save(conv_net((3, 8, 8), hw=8), tmp_path), tmp_path / "out.onnx"
    x = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    x[3, 1, 2, 2] = value
    if flag == "--input-data":
        np.save(tmp_path / "x.npy", x)
        argument = f"x:{tmp_path / 'x.npy'}"
    else:
        np.savez(tmp_path / "cal.npz", x=x)
        argument = tmp_path / "cal.npz"
    kind = "NaN" if np.isnan(value) else "Inf"
    refused(
        run(path, out, flag, argument),
        2,
        f"{flag} 'x' holds 1 {kind} (the first at index [3, 1, 2, 2])",
        out,
    )


def log_model() -> onnx.ModelProto:
    """``x -> Log -> conv_net``: NaN on negative inputs."""
    model = conv_net((3, 8, 8), bn="kept", hw=8)
    for node in model.graph.node:
        node.input[:] = ["logx" if n == "x" else n for n in node.input]
    model.graph.node.insert(0, helper.make_node("Log", ["x"], ["logx"], name="log"))
    return model


def test_original_computing_nan_on_the_probe_is_not_a_pass(tmp_path: Path) -> None:
    path, out = save(log_model(), tmp_path), tmp_path / "out.onnx"
    result = run(path, out)  # synthetic inputs and random ones are negative: Log gives NaN
    assert result.exit_code == 4, result.output
    assert (
        "closed-form LBYL, not synthetic calibration: the model computes NaN or Inf in "
        "output 'y' on synthetic inputs" in result.stdout
    )
    assert "validation could not run: the original model computes NaN or Inf in output 'y'" in (
        result.stderr
    )
    assert "validation: passed" not in result.output
    negative = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", negative)
    out.unlink()
    refused(
        run(path, out, "--input-data", f"x:{tmp_path / 'x.npy'}"),
        2,
        "--input-data: the original model computes NaN or Inf in output 'y'",
        out,
    )


def test_calibration_whose_activations_are_nan_names_the_unit(tmp_path: Path) -> None:
    path, out = save(log_model(), tmp_path), tmp_path / "out.onnx"
    data = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=data)
    refused(
        run(path, out, "--calibration-data", tmp_path / "cal.npz"),
        2,
        "calibration: unit 'conv0': the activations it reads hold NaN or Inf on the "
        "calibration data",
        out,
    )


def test_solvers_refuse_non_finite_statistics() -> None:
    stats = ActivationStats.empty(3)
    stats.add(np.array([[1.0, np.inf, 2.0], [0.5, 1.0, 1.0]]))
    with pytest.raises(NonFiniteStatistics):
        solve_calibrated(stats, np.array([0, 1]))


# --------------------------------------------------------------------- class 6: the checker


def checker_rejects(kind: str) -> onnx.ModelProto:
    model = conv_net((3, 8, 8), bn="kept", hw=8)
    graph = model.graph
    if kind == "output shape":
        graph.output[0].type.tensor_type.shape.dim[1].dim_value = 7
    elif kind == "output type":
        graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    elif kind == "value_info shape":
        graph.value_info.append(helper.make_tensor_value_info("z0", 1, ["N", 6, 8, 8]))
    elif kind == "value_info type":
        graph.value_info.append(helper.make_tensor_value_info("z0", 11, ["N", 8, 8, 8]))
    elif kind == "sparse initializer":
        bias = next(t for t in graph.initializer if t.name == "head.b")
        values = numpy_helper.to_array(bias)
        graph.initializer.remove(bias)
        indices = numpy_helper.from_array(np.arange(values.size, dtype=np.int64))
        graph.sparse_initializer.append(
            helper.make_sparse_tensor(numpy_helper.from_array(values, "head.b"), indices, [5])
        )
    return model


KINDS = ["output shape", "output type", "value_info shape", "value_info type", "sparse initializer"]


@pytest.mark.parametrize("kind", KINDS)
def test_model_the_full_checker_rejects_is_bad_input(tmp_path: Path, kind: str) -> None:
    model = checker_rejects(kind)
    onnx.checker.check_model(model)  # what the plain checker accepts ...
    with pytest.raises((onnx.checker.ValidationError, onnx.shape_inference.InferenceError)):
        onnx.checker.check_model(model, full_check=True)  # ... the full one does not
    path, out = save(model, tmp_path), tmp_path / "out.onnx"
    refused(run(path, out), 2, f"error: {path} fails the ONNX checker: [ShapeInferenceError]", out)
    with pytest.raises(UsageError, match=r"^the model fails the ONNX checker: "):
        prune(model)


def test_large_model_path_checks_the_file_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lbyl_onnx.graph.io, "LARGE_MODEL_BYTES", 1)
    path, out = save(checker_rejects("output shape"), tmp_path), tmp_path / "out.onnx"
    refused(run(path, out), 2, "fails the ONNX checker: [ShapeInferenceError]", out)


# -------------------------------------------------------------- class 7: input element types


def typed_input(elem: int, cast: bool) -> onnx.ModelProto:
    """``conv_net`` with an input of ``elem``: ``x`` itself, cast to float inside (``cast``),
    or a second input ``aux`` passed through Identity to a second output."""
    model = conv_net((3, 8, 8), bn="kept", hw=8, opset=21)
    if cast:
        model.graph.input[0].type.tensor_type.elem_type = elem
        for node in model.graph.node:
            node.input[:] = ["xf" if n == "x" else n for n in node.input]
        model.graph.node.insert(0, helper.make_node("Cast", ["x"], ["xf"], name="cast", to=1))
    else:
        model.graph.input.append(helper.make_tensor_value_info("aux", elem, ["N", 2]))
        model.graph.node.append(helper.make_node("Identity", ["aux"], ["aux_out"], name="aux"))
        model.graph.output.append(helper.make_tensor_value_info("aux_out", elem, ["N", 2]))
    return model


FED = ["INT16", "UINT16", "UINT32", "UINT64", "INT8", "BOOL", "STRING"]


@pytest.mark.parametrize("cast", [True, False], ids=["cast", "passed through"])
@pytest.mark.parametrize("name", FED)
def test_inputs_of_integer_bool_and_string_types_are_fed_and_validated(
    tmp_path: Path, name: str, cast: bool
) -> None:
    path = save(typed_input(getattr(TensorProto, name), cast), tmp_path)
    result = run(path, tmp_path / "out.onnx")
    assert result.exit_code == 0, result.output
    assert "validation: passed" in result.output


@pytest.mark.parametrize(
    ("name", "cast", "message"),
    [
        (
            "INT4",
            True,
            "input 'x' has element type INT4, which onnxruntime cannot take from "
            "Python (NumPy): no input can be made for it",
        ),
        ("FLOAT8E4M3FN", True, "input 'x' has element type FLOAT8E4M3FN, which"),
        ("FLOAT8E5M2", False, "input 'aux' has element type FLOAT8E5M2, which"),
        ("COMPLEX64", False, "the original model does not load"),
    ],
)
def test_inputs_no_feed_can_be_made_for_say_so_with_exit_4(
    tmp_path: Path, name: str, cast: bool, message: str
) -> None:
    path, out = save(typed_input(getattr(TensorProto, name), cast), tmp_path), tmp_path / "o.onnx"
    result = run(path, out)
    assert result.exit_code == 4, result.output
    assert f"warning: validation could not run: {message}" in result.stderr
    assert "Traceback" not in result.output and out.exists()
    refused(
        run(path, tmp_path / "x.onnx", "--target-latency", 0.9),
        2,
        "--target-latency: ",
        tmp_path / "x.onnx",
    )


def test_random_inputs_of_each_type() -> None:
    model = typed_input(TensorProto.STRING, False)
    feeds = random_inputs(model, 3)
    assert feeds["x"].dtype == np.float32 and feeds["x"].shape == (3, 3, 8, 8)
    assert feeds["aux"].dtype == object and feeds["aux"].tolist() == [["0", "0"]] * 3
    model.graph.input[1].type.CopyFrom(
        helper.make_sequence_type_proto(helper.make_tensor_type_proto(1, None))
    )
    with pytest.raises(ValueError, match="input 'aux' is a sequence, not a tensor"):
        random_inputs(model, 3)


def test_user_data_must_have_the_input_element_type(tmp_path: Path) -> None:
    path, out = save(typed_input(TensorProto.INT16, True), tmp_path), tmp_path / "out.onnx"
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 8, 8), np.float32))
    refused(
        run(path, out, "--input-data", f"x:{tmp_path / 'x.npy'}"),
        2,
        "--input-data 'x' is float32, the model expects int16",
        out,
    )
    np.save(tmp_path / "x.npy", np.ones((2, 3, 8, 8), np.int16))
    result = run(path, out, "--input-data", f"x:{tmp_path / 'x.npy'}", "--closed-form")
    assert result.exit_code == 0, result.output
    assert "validation: passed on user data" in result.output
