"""Data-free bias correction: channel means from BatchNormalization statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from lbyl_onnx import prune
from lbyl_onnx.cli import main
from lbyl_onnx.methods.moments import Activation, activation_means
from lbyl_onnx.runtime.sessions import session

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "activation",
    [
        Activation("identity"),
        Activation("relu"),
        Activation("leaky", slope=np.array([0.1, 0.3, 2.0])),
        Activation("clip", high=1.5),
    ],
    ids=lambda a: a.kind,
)
def test_activation_means_match_monte_carlo(activation: Activation) -> None:
    beta, gamma = np.array([-1.0, 0.3, 2.0]), np.array([0.5, -1.2, 0.8])
    z = beta + gamma * np.random.default_rng(0).standard_normal((2_000_000, 3))
    if activation.kind == "identity":
        r = z
    elif activation.kind == "relu":
        r = np.maximum(z, 0)
    elif activation.kind == "leaky":
        r = np.where(z > 0, z, activation.slope * z)
    else:
        r = np.clip(z, 0, activation.high)
    np.testing.assert_allclose(activation_means(beta, gamma, activation), r.mean(0), atol=3e-3)


def _dead_channel_model(between: str | None = None) -> onnx.ModelProto:
    """x -> Conv(4 ch, 1x1) -> BN (channel 0 dead: gamma 0, beta 0.7) -> Relu -> [op] ->
    Conv(1x1) -> y. Channel 0 outputs the constant relu(0.7) whatever the input, and its
    raw filter is the smallest, so it is the one removed."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    w[0] *= 0.01
    params = {
        "W": w,
        "g": np.array([0.0, 1.0, 0.8, 1.2], np.float32),
        "b": np.array([0.7, 0.1, -0.2, 0.3], np.float32),
        "m": rng.standard_normal(4).astype(np.float32),
        "v": rng.uniform(0.5, 2, 4).astype(np.float32),
        "V": rng.standard_normal((5, 4, 1, 1)).astype(np.float32),
        "c": rng.standard_normal(5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["z"], "conv0"),
        helper.make_node("BatchNormalization", ["z", "g", "b", "m", "v"], ["zb"], "bn0"),
        helper.make_node("Relu", ["zb"], ["r"], "relu0"),
    ]
    tensor = "r"
    if between:
        nodes.append(helper.make_node(between, ["r"], ["p"], "pool", kernel_shape=[1, 1]))
        tensor = "p"
    nodes.append(helper.make_node("Conv", [tensor, "V", "c"], ["y"], "head"))
    graph = helper.make_graph(
        nodes,
        "dead",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 4, 4])],
        [numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_dead_channel_is_removed_exactly_with_bias_correction() -> None:
    """LBYL.md 4.5: a dead channel's constant act(beta) folds exactly into the consumer."""
    model = _dead_channel_model()
    x = {"x": np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)}
    reference = session(model).run(None, x)[0]
    corrected, report = prune(model, ratio=0.25, method="prune", bias_correction=True, check=False)
    assert report.units[0].channels_after == 3
    np.testing.assert_allclose(session(corrected).run(None, x)[0], reference, atol=1e-5)
    plain, _ = prune(model, ratio=0.25, method="prune", check=False)
    assert np.abs(session(plain).run(None, x)[0] - reference).max() > 0.05


def test_no_correction_where_means_are_not_trusted() -> None:
    """Behind a MaxPool the means are not preserved: the trust rule leaves the bias alone."""
    model = _dead_channel_model(between="MaxPool")
    pruned, report = prune(model, ratio=0.25, method="prune", bias_correction=True, check=False)
    plain, _ = prune(model, ratio=0.25, method="prune", check=False)
    assert pruned.SerializeToString() == plain.SerializeToString()
    assert not any("bias correction" in n for n in report.units[0].notes)


def test_cli_flag_reaches_the_pipeline(tmp_path: Path) -> None:
    path, out = tmp_path / "dead.onnx", tmp_path / "out.onnx"
    onnx.save(_dead_channel_model(), str(path))
    args = [str(path), str(out), "--method", "prune", "--ratio", "0.25", "--bias-correction", "-v"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "bias correction from BatchNormalization statistics" in result.output
