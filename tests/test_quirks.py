"""Exporter quirks: each reproduced by a small model, checked against a NumPy-built oracle."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lbyl_onnx import MethodOptions, list_units, prune
from lbyl_onnx.check import session

C0, N, OUT, HW = 3, 8, 5, 6


def _conv_chain(
    middle: str, arrays: dict[str, np.ndarray], opset: int = 17, spatial: int | None = None
) -> onnx.ModelProto:
    """x -> Conv(W) -> <middle> -> Relu -> consumer, where middle is one of
    ``add_bias`` (Add of [1,N,1,1]), ``mul_add`` (Mul then Add of [1,N,1,1]),
    ``bn`` (BatchNormalization, optionally with the old ``spatial`` attribute),
    and the consumer is a 1x1 Conv, or GlobalAveragePool -> Squeeze -> Gemm for ``gap``."""
    inits = [numpy_helper.from_array(v, k) for k, v in arrays.items()]
    nodes = [helper.make_node("Conv", ["x", "W"], ["z"], "conv0", pads=[1, 1, 1, 1])]
    tensor = "z"
    if middle in ("add_bias", "gap"):
        nodes.append(helper.make_node("Add", [tensor, "b"], ["zb"], "bias_add"))
        tensor = "zb"
    elif middle == "mul_add":
        nodes.append(helper.make_node("Mul", [tensor, "scale"], ["zs"], "bn_mul"))
        nodes.append(helper.make_node("Add", ["zs", "shift"], ["zb"], "bn_add"))
        tensor = "zb"
    elif middle == "bn":
        attrs = {"epsilon": 1e-5} if spatial is None else {"epsilon": 1e-5, "spatial": spatial}
        nodes.append(
            helper.make_node(
                "BatchNormalization", [tensor, "g", "beta", "m", "v"], ["zb"], "bn", **attrs
            )
        )
        tensor = "zb"
    nodes.append(helper.make_node("Relu", [tensor], ["r"], "relu"))
    if middle == "gap":
        nodes.append(helper.make_node("GlobalAveragePool", ["r"], ["p"], "gap"))
        if opset >= 13:
            inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
            nodes.append(helper.make_node("Squeeze", ["p", "axes"], ["s"], "squeeze"))
        else:
            nodes.append(helper.make_node("Squeeze", ["p"], ["s"], "squeeze", axes=[2, 3]))
        nodes.append(helper.make_node("Gemm", ["s", "V", "c"], ["y"], "head", transB=1))
        out_shape = ["N", OUT]
    else:
        nodes.append(helper.make_node("Conv", ["r", "V"], ["y"], "head"))
        out_shape = ["N", OUT, HW, HW]
    graph = helper.make_graph(
        nodes,
        "quirk",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C0, HW, HW])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset <= 12 else 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _arrays(middle: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = {"W": rng.standard_normal((N, C0, 3, 3)).astype(np.float32)}
    a["W"] *= np.linspace(0.2, 2.0, N, dtype=np.float32)[:, None, None, None]  # distinct norms
    if middle in ("add_bias", "gap"):
        a["b"] = rng.standard_normal((1, N, 1, 1)).astype(np.float32)
    if middle == "mul_add":
        a["scale"] = rng.uniform(0.5, 1.5, (1, N, 1, 1)).astype(np.float32)
        a["shift"] = rng.standard_normal((1, N, 1, 1)).astype(np.float32)
    if middle == "bn":
        a["g"] = rng.uniform(0.5, 1.5, N).astype(np.float32)
        a["beta"] = rng.standard_normal(N).astype(np.float32)
        a["m"] = rng.standard_normal(N).astype(np.float32)
        a["v"] = rng.uniform(0.5, 2, N).astype(np.float32)
    if middle == "gap":
        a["V"] = rng.standard_normal((OUT, N)).astype(np.float32)
        a["c"] = rng.standard_normal(OUT).astype(np.float32)
    else:
        a["V"] = rng.standard_normal((OUT, N, 1, 1)).astype(np.float32)
    return a


def _delete(arrays: dict[str, np.ndarray], kept: np.ndarray) -> dict[str, np.ndarray]:
    """The hand-pruned arrays: producer rows, per-channel vectors on their channel axis,
    the consumer's input channels."""
    out = {}
    for name, value in arrays.items():
        if name == "W":
            out[name] = value[kept]
        elif name in ("b", "scale", "shift"):
            out[name] = value[:, kept]
        elif name in ("g", "beta", "m", "v"):
            out[name] = value[kept]
        elif name == "V":
            out[name] = value[:, kept]
        else:
            out[name] = value
    return out


@pytest.mark.parametrize(
    ("middle", "opset"),
    [("add_bias", 17), ("mul_add", 17), ("gap", 11), ("gap", 13), ("bn", 7)],
)
def test_quirk_is_a_unit_and_prune_matches_numpy_deletion(middle: str, opset: int) -> None:
    arrays = _arrays(middle)
    model = _conv_chain(middle, arrays, opset, spatial=1 if middle == "bn" else None)
    units, declined = list_units(model)
    assert [u.name for u in units] == ["conv0"], declined
    pruned, _ = prune(model, ratio=0.5, method="prune", check=False)
    onnx.checker.check_model(pruned, full_check=True)
    kept = np.sort(np.argsort(-np.linalg.norm(arrays["W"].reshape(N, -1), axis=1))[: N // 2])
    expected = _conv_chain(middle, _delete(arrays, kept), opset, 1 if middle == "bn" else None)
    x = np.random.default_rng(1).standard_normal((2, C0, HW, HW)).astype(np.float32)
    np.testing.assert_allclose(
        session(pruned).run(None, {"x": x})[0],
        session(expected).run(None, {"x": x})[0],
        rtol=1e-5,
        atol=1e-5,
    )


def test_mul_add_scale_shift_is_folded_like_batchnorm() -> None:
    """A removed filter that is, after the Mul/Add scale and shift, an exact positive multiple
    of a kept one is restored exactly by Neuron Merging (the scale is folded into wt)."""
    arrays = _arrays("mul_add")
    scale, shift = arrays["scale"].reshape(-1), arrays["shift"].reshape(-1)
    # folded filter of channel 0 = 0.05 * folded filter of channel 7 (weights and biases)
    arrays["W"][0] = 0.05 * scale[7] * arrays["W"][7] / scale[0]
    arrays["shift"][0, 0, 0, 0] = 0.05 * shift[7]
    norms = np.linalg.norm(arrays["W"].reshape(N, -1), axis=1)
    assert norms.argmin() == 0  # the L2 criterion removes channel 0
    model = _conv_chain("mul_add", arrays)
    x = np.random.default_rng(2).standard_normal((2, C0, HW, HW)).astype(np.float32)
    reference = session(model).run(None, {"x": x})[0]
    pruned, _ = prune(model, ratio=1 / N, method="nm", check=False)
    assert [i.dims for i in pruned.graph.initializer if i.name.startswith("W")] == [
        [N - 1, C0, 3, 3]
    ]
    np.testing.assert_allclose(
        session(pruned).run(None, {"x": x})[0], reference, rtol=1e-4, atol=1e-4
    )


def test_batchnorm_with_per_element_statistics_is_declined() -> None:
    model = _conv_chain("bn", _arrays("bn"), opset=7, spatial=0)
    units, declined = list_units(model)
    assert units == []
    assert any("spatial=0" in d.reason for d in declined)


def _nhwc_head(arrays: dict[str, np.ndarray], computed: bool, act: str | None = "Relu"):
    """tf2onnx's flatten: x -> Conv(N) -> [Relu] -> Transpose(0,2,3,1) -> Reshape -> MatMul,
    the Reshape target either constant ``[-1, h*w*N]`` or computed as
    ``Cast(Concat(Slice(Cast(Gather(Shape(t), [0,3,1,2])), 0:1), [h*w*N]))``."""
    n = arrays["W"].shape[0]
    inits = {k: v for k, v in arrays.items()}
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["z"], "conv0", pads=[1, 1, 1, 1])]
    tensor = "z"
    if act:
        nodes.append(helper.make_node(act, ["z"], ["r"], "act0"))
        tensor = "r"
    nodes.append(helper.make_node("Transpose", [tensor], ["t"], "to_nhwc", perm=[0, 2, 3, 1]))
    if computed:
        inits["perm"] = np.array([0, 3, 1, 2], np.int64)
        inits["starts"], inits["ends"] = np.array([0], np.int64), np.array([1], np.int64)
        inits["columns"] = np.array([HW * HW * n], np.int32)
        nodes += [
            helper.make_node("Shape", ["t"], ["shape"], "shape"),
            helper.make_node("Gather", ["shape", "perm"], ["nchw"], "gather"),
            helper.make_node("Cast", ["nchw"], ["nchw32"], "cast32", to=TensorProto.INT32),
            helper.make_node("Slice", ["nchw32", "starts", "ends"], ["batch"], "batch"),
            helper.make_node("Concat", ["batch", "columns"], ["target32"], "concat", axis=0),
            helper.make_node("Cast", ["target32"], ["target"], "cast64", to=TensorProto.INT64),
        ]
    else:
        inits["target"] = np.array([-1, HW * HW * n], np.int64)
    nodes.append(helper.make_node("Reshape", ["t", "target"], ["flat"], "flatten"))
    nodes.append(helper.make_node("MatMul", ["flat", "V"], ["y"], "head"))
    graph = helper.make_graph(
        nodes,
        "nhwc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C0, HW, HW])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", OUT])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _nhwc_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, C0, 3, 3)).astype(np.float32)
    w *= np.linspace(0.2, 2.0, N, dtype=np.float32)[:, None, None, None]
    return {
        "W": w,
        "b": rng.standard_normal(N).astype(np.float32),
        "V": rng.standard_normal((HW * HW * N, OUT)).astype(np.float32),
    }


@pytest.mark.parametrize("computed", [False, True], ids=["constant_target", "computed_target"])
def test_channels_last_flatten_matches_numpy_deletion(computed: bool) -> None:
    arrays = _nhwc_arrays()
    model = _nhwc_head(arrays, computed)
    units, declined = list_units(model)
    assert [u.name for u in units] == ["conv0"], declined
    pruned, _ = prune(model, ratio=0.5, method="prune", check=False)
    kept = np.sort(np.argsort(-np.linalg.norm(arrays["W"].reshape(N, -1), axis=1))[: N // 2])
    # channels-last columns: column p * N + c belongs to channel c
    v = arrays["V"].reshape(HW * HW, N, OUT)[:, kept].reshape(-1, OUT)
    expected = _nhwc_head({"W": arrays["W"][kept], "b": arrays["b"][kept], "V": v}, computed)
    x = np.random.default_rng(3).standard_normal((2, C0, HW, HW)).astype(np.float32)
    got, want = session(pruned).run(None, {"x": x})[0], session(expected).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_channels_last_flatten_folds_compensation_exactly_in_a_linear_chain() -> None:
    """No activation, the two removed filters exact combinations of kept ones: LBYL restores
    the output through the interleaved columns."""
    arrays = _nhwc_arrays(seed=4)
    w, b = arrays["W"], arrays["b"]
    w[0] = 0.05 * (w[4] - 0.5 * w[6])
    b[0] = 0.05 * (b[4] - 0.5 * b[6])
    w[1] = 0.04 * (w[5] + w[7])
    b[1] = 0.04 * (b[5] + b[7])
    model = _nhwc_head(arrays, computed=True, act=None)
    x = np.random.default_rng(5).standard_normal((2, C0, HW, HW)).astype(np.float32)
    reference = session(model).run(None, {"x": x})[0]
    restored, _ = prune(model, ratio=0.25, options=MethodOptions(ridge=1e-9), check=False)
    np.testing.assert_allclose(
        session(restored).run(None, {"x": x})[0], reference, rtol=1e-3, atol=1e-3
    )
    plain, _ = prune(model, ratio=0.25, method="prune", check=False)
    assert np.abs(session(plain).run(None, {"x": x})[0] - reference).max() > 1e-2
