"""Synthetic inputs (lbyl_onnx.inputs): spectrum, range, determinism, normalisation."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lbyl_onnx.inputs.images import convention, spectral_noise, synthetic_images
from lbyl_onnx.inputs.normalisation import FALLBACK, fit_normalisation, input_normalisation
from lbyl_onnx.inputs.synthetic import synthetic_inputs


def radial_power_slope(fields: np.ndarray) -> float:
    """Slope of log mean power against log radial frequency, over 0.03-0.35 cycles/pixel."""
    h, w = fields.shape[-2:]
    power = np.mean(np.abs(np.fft.fft2(fields - fields.mean((-2, -1), keepdims=True))) ** 2, 0)
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    f = np.sqrt(fx**2 + fy**2)
    edges = np.geomspace(0.03, 0.35, 16)
    centres, means = [], []
    for lo, hi in itertools.pairwise(edges):
        ring = (f >= lo) & (f < hi)
        centres.append(np.sqrt(lo * hi))
        means.append(power[ring].mean())
    slope, _ = np.polyfit(np.log(centres), np.log(means), 1)
    return float(slope)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 2.5])
def test_noise_spectrum_has_the_requested_slope(alpha):
    rng = np.random.default_rng(0)
    fields = np.stack([spectral_noise(rng, 128, 128, alpha) for _ in range(16)])
    assert abs(radial_power_slope(fields) + alpha) < 0.1


def test_noise_is_standardised():
    field = spectral_noise(np.random.default_rng(1), 64, 48, 2.0)
    assert field.shape == (64, 48)
    assert abs(field.mean()) < 1e-9 and abs(field.std() - 1) < 1e-9


def test_images_have_a_natural_spectrum_and_correlated_colours():
    images = synthetic_images(32, 3, 96, 96, seed=0)
    slope = radial_power_slope(images.reshape(-1, 96, 96))
    assert -3.2 < slope < -1.5  # natural images: about -2
    channels = images.transpose(1, 0, 2, 3).reshape(3, -1)
    corr = np.corrcoef(channels)
    assert np.all(corr[~np.eye(3, dtype=bool)] > 0.6)
    assert np.all(corr[~np.eye(3, dtype=bool)] < 0.99)


def test_images_are_in_range_and_shaped():
    images = synthetic_images(5, 2, 17, 23, seed=3)
    assert images.shape == (5, 2, 17, 23) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.std() > 0.05  # not constant


def test_images_are_deterministic_by_seed():
    a = synthetic_images(4, 3, 32, 32, seed=7)
    b = synthetic_images(4, 3, 32, 32, seed=7)
    c = synthetic_images(4, 3, 32, 32, seed=8)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


# ------------------------------------------------------------------------------ toy models


def conv_model(
    weight: np.ndarray,
    bias: np.ndarray | None,
    bn: tuple[np.ndarray, np.ndarray] | None,
    nhwc: bool = False,
    size: tuple[int | str, int | str] = ("H", "W"),
) -> onnx.ModelProto:
    """input -> [Transpose] -> Conv(pad 1) -> [BN(mean, var)] -> Relu -> Conv(1x1)."""
    o, c = weight.shape[:2]
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w1")]
    nodes = []
    x = "input"
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["input"], ["x_nchw"], perm=[0, 3, 1, 2]))
        x = "x_nchw"
    conv_inputs = [x, "w1"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), "b1"))
        conv_inputs.append("b1")
    nodes.append(helper.make_node("Conv", conv_inputs, ["z"], pads=[1, 1, 1, 1], name="conv1"))
    act_in = "z"
    if bn is not None:
        mean, var = bn
        for name, value in (
            ("gamma", np.ones(o)),
            ("beta", np.zeros(o)),
            ("mean", mean),
            ("var", var),
        ):
            inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        nodes.append(
            helper.make_node(
                "BatchNormalization", ["z", "gamma", "beta", "mean", "var"], ["y"], epsilon=1e-5
            )
        )
        act_in = "y"
    nodes.append(helper.make_node("Relu", [act_in], ["r"]))
    w2 = rng.standard_normal((4, o, 1, 1)).astype(np.float32)
    inits.append(numpy_helper.from_array(w2, "w2"))
    nodes.append(helper.make_node("Conv", ["r", "w2"], ["out"], name="conv2"))
    shape = ["N", *size, c] if nhwc else ["N", c, *size]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, "h", "w"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def conv_outputs(weight: np.ndarray, bias: np.ndarray | None, images: np.ndarray) -> np.ndarray:
    """The first conv's output on NCHW ``images``, per channel as rows (``O x samples``)."""
    probe = conv_model(weight, bias, None)
    probe.graph.output.append(helper.make_empty_tensor_value_info("z"))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    z = sess.run(["z"], {"input": images.astype(np.float32)})[0]
    return z.transpose(1, 0, 2, 3).reshape(z.shape[1], -1).astype(np.float64)


IMAGENET = (
    1 / np.array([0.229, 0.224, 0.225]),
    -np.array([0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
)


@pytest.mark.parametrize(
    ("channels", "scale", "shift", "per_channel"),
    [
        (3, *IMAGENET, True),
        (3, np.array([2.0, 2.0, 2.0]), np.array([-1.0, -1.0, -1.0]), False),
        (3, np.array([2.0, 2.0, 2.0]), np.array([-1.0, -1.0, -1.0]), True),
        (1, np.array([255.0]), np.array([0.0]), False),
    ],
)
def test_normalisation_recovers_the_map_behind_batchnorm_statistics(
    channels, scale, shift, per_channel
):
    rng = np.random.default_rng(11)
    weight = rng.standard_normal((24, channels, 3, 3))
    bias = rng.standard_normal(24) * 0.1
    images = synthetic_images(96, channels, 48, 48, seed=123)  # not the fit's images
    mapped = images * scale[None, :, None, None] + shift[None, :, None, None]
    z = conv_outputs(weight, bias, mapped)
    model = conv_model(weight, bias, (z.mean(1), z.var(1)))
    shapes = {"input": [1, channels, 48, 48]}
    norm = fit_normalisation(model, input_shapes=shapes, per_channel=per_channel)
    assert norm.source == "batchnorm"
    np.testing.assert_allclose(norm.scale, scale, rtol=0.08)
    # the shift is judged in the map's own units: the level it gives a mid-grey pixel
    level, expected = norm.shift + 0.5 * norm.scale, shift + 0.5 * scale
    assert np.all(np.abs(level - expected) <= 0.05 * scale), (level, expected)


def test_normalisation_reads_nhwc_inputs_through_the_transpose():
    rng = np.random.default_rng(12)
    weight = rng.standard_normal((16, 3, 3, 3))
    scale, shift = convention("[-1,1]", 3)
    images = synthetic_images(64, 3, 40, 40, seed=99)
    z = conv_outputs(weight, None, images * scale[None, :, None, None] + shift[None, :, None, None])
    model = conv_model(weight, None, (z.mean(1), z.var(1)), nhwc=True)
    a, b = input_normalisation(model, {"input": [1, 40, 40, 3]})
    np.testing.assert_allclose(a, scale, rtol=0.08)
    level, expected = b + 0.5 * a, shift + 0.5 * scale
    assert np.all(np.abs(level - expected) <= 0.05 * scale), (level, expected)


@pytest.mark.parametrize("name", ["[0,1]", "[0,255]"])
def test_without_batchnorm_the_convention_that_suits_the_bias_is_chosen(name):
    """A trained layer's bias is on the scale of its responses: given biases of exactly the
    spread of the responses under one convention, that convention is chosen."""
    rng = np.random.default_rng(13)
    weight = rng.standard_normal((16, 3, 3, 3))
    scale, shift = convention(name, 3)
    images = synthetic_images(32, 3, 32, 32, seed=5)
    z = conv_outputs(weight, None, images * scale[None, :, None, None] + shift[None, :, None, None])
    bias = z.std(1) * rng.choice([-1.0, 1.0], 16)
    norm = fit_normalisation(conv_model(weight, bias, None), input_shapes={"input": [1, 3, 32, 32]})
    assert norm.source == "bias"
    np.testing.assert_allclose(norm.scale, scale)
    np.testing.assert_allclose(norm.shift, shift)


def test_without_batchnorm_or_bias_the_fallback_is_used():
    weight = np.random.default_rng(14).standard_normal((8, 3, 3, 3))
    norm = fit_normalisation(conv_model(weight, None, None), input_shapes={"input": [1, 3, 8, 8]})
    assert norm.source == "fallback"
    expected = convention(FALLBACK, 3)
    np.testing.assert_allclose(norm.scale, expected[0])
    np.testing.assert_allclose(norm.shift, expected[1])


# ------------------------------------------------------------------------------ input shapes


def test_nchw_inputs_take_the_model_shape_and_a_default_side():
    weight = np.random.default_rng(15).standard_normal((8, 3, 3, 3))
    model = conv_model(weight, np.zeros(8), None)
    unit = (np.ones(3), np.zeros(3))  # a given map: no fit at 224 x 224
    x = synthetic_inputs(model, 3, seed=0, normalisation={"input": unit})["input"]
    assert x.shape == (3, 3, 224, 224) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 1
    fixed = conv_model(weight, np.zeros(8), None, size=(20, 30))
    assert synthetic_inputs(fixed, 2)["input"].shape == (2, 3, 20, 30)
    given = synthetic_inputs(model, 2, input_shapes={"input": [1, 3, 16, 24]})["input"]
    assert given.shape == (2, 3, 16, 24)


def test_nhwc_inputs_are_channels_last_and_run():
    weight = np.random.default_rng(16).standard_normal((8, 3, 3, 3))
    model = conv_model(weight, np.zeros(8), None, nhwc=True, size=(24, 20))
    x = synthetic_inputs(model, 4, seed=1)["input"]
    assert x.shape == (4, 24, 20, 3)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": x})[0].shape == (4, 4, 24, 20)


def test_rank_two_inputs_are_standard_normal():
    w = numpy_helper.from_array(np.ones((10, 5), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w"], ["out"])],
        "dense",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 5])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = synthetic_inputs(model, 2000, seed=2)["input"]
    assert x.shape == (2000, 10) and x.dtype == np.float32
    assert abs(x.mean()) < 0.05 and abs(x.std() - 1) < 0.05


def test_inputs_are_deterministic_by_seed():
    weight = np.random.default_rng(17).standard_normal((8, 1, 3, 3))
    model = conv_model(weight, np.ones(8), None, size=(8, 8))
    a, b = synthetic_inputs(model, 6, seed=4), synthetic_inputs(model, 6, seed=4)
    assert np.array_equal(a["input"], b["input"])
