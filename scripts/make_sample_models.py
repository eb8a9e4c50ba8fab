"""Train small classifiers on scikit-learn's digits and write them as hand-built ONNX models.

This script regenerates the files in ``sample_models/``:

* ``digits_vgg_bn.onnx``: a small VGG-style CNN, Conv (no bias) -> BatchNormalization -> Relu.
* ``digits_vgg_fused.onnx``: the same trained CNN with every BatchNormalization folded into
  the preceding Conv (Conv with bias, no BatchNormalization nodes).
* ``digits_mlp.onnx``: a three-layer MLP (Flatten -> Gemm -> Relu -> Gemm -> Relu -> Gemm).
* ``digits_test.npz``: the held-out test split, arrays ``input`` (float32 [n, 1, 8, 8]) and
  ``label`` (int64 [n]).
* ``digits_calibration.npz``: 256 unlabelled samples of the training split, array ``input``,
  for ``lbyl-onnx --calibration-data`` (disjoint from the test split).

The ONNX graphs are written node by node with ``onnx.helper`` (not ``torch.onnx.export``) so
that the graph layout, node names and initializer names are exactly controlled.

Requirements: this script needs ``pip install torch==2.13.0 scikit-learn`` in addition to the
tool's own dependencies (onnx, onnxruntime, numpy). PyTorch is used only here, to train the
sample models; it is NOT a dependency of lbyl-onnx.

Usage::

    python scripts/make_sample_models.py [--out-dir sample_models]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = 0
OPSET = 13
IR_VERSION = 8
PRODUCER = "lbyl-onnx sample_models"
BN_EPS = 1e-5
MAX_ABS_DIFF = 1e-4
NUM_CLASSES = 10


@dataclass
class Split:
    """Train/test split of the digits data set."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass
class Result:
    """Outcome of exporting and verifying one ONNX model."""

    path: Path
    size: int
    torch_acc: float
    onnx_acc: float
    max_diff: float


def set_determinism(seed: int = SEED) -> None:
    """Seed every RNG in use and make PyTorch deterministic and single-threaded."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def load_split() -> Split:
    """Load digits as float32 [n, 1, 8, 8] in [0, 1] and split 70/30, stratified."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=0, stratify=y
    )
    return Split(x_train, y_train, x_test, y_test)


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    """A 3x3 bias-free convolution followed by BatchNorm and ReLU."""
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out, eps=BN_EPS),
        nn.ReLU(),
    ]


def make_vgg() -> nn.Sequential:
    """The small VGG-style CNN: 4 conv blocks, 2 max pools, 2 linear layers."""
    return nn.Sequential(
        *conv_bn_relu(1, 16),
        *conv_bn_relu(16, 32),
        nn.MaxPool2d(2),
        *conv_bn_relu(32, 32),
        *conv_bn_relu(32, 64),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 2 * 2, 64),
        nn.ReLU(),
        nn.Linear(64, NUM_CLASSES),
    )


def make_mlp() -> nn.Sequential:
    """The MLP: 64 -> 128 -> 64 -> 10 with ReLU activations."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, NUM_CLASSES),
    )


def train(
    model: nn.Module,
    split: Split,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
) -> nn.Module:
    """Train with Adam and cross-entropy in train mode; return the model in eval mode."""
    x = torch.from_numpy(split.x_train)
    y = torch.from_numpy(split.y_train)
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = perm[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Eval-mode logits of a PyTorch model as a numpy array."""
    return model.eval()(torch.from_numpy(x)).numpy()


def to_np(t: torch.Tensor) -> np.ndarray:
    """Detach a tensor to a contiguous float32 numpy array."""
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))


class GraphBuilder:
    """Accumulates nodes and initializers of a sequential ONNX graph."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.current = "input"

    def init(self, name: str, array: np.ndarray) -> str:
        """Add an initializer and return its name."""
        self.inits.append(numpy_helper.from_array(array, name=name))
        return name

    def add(self, op: str, name: str, extra_inputs: list[str] | None = None, **attrs) -> None:
        """Append a node consuming the current tensor; its output becomes the current tensor."""
        out = f"{name}_out"
        inputs = [self.current, *(extra_inputs or [])]
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        self.current = out

    def conv(self, name: str, weight: np.ndarray, bias: np.ndarray | None) -> None:
        """Append a 3x3, stride 1, pad 1 Conv node."""
        inputs = [self.init(f"{name}.weight", weight)]
        if bias is not None:
            inputs.append(self.init(f"{name}.bias", bias))
        self.add(
            "Conv",
            name,
            inputs,
            kernel_shape=list(weight.shape[2:]),
            pads=[1, 1, 1, 1],
            strides=[1, 1],
            dilations=[1, 1],
            group=1,
        )

    def batchnorm(self, name: str, bn: nn.BatchNorm2d) -> None:
        """Append an inference-mode BatchNormalization node from a torch BatchNorm2d."""
        params = [
            self.init(f"{name}.{key}", to_np(value))
            for key, value in (
                ("scale", bn.weight),
                ("bias", bn.bias),
                ("mean", bn.running_mean),
                ("var", bn.running_var),
            )
        ]
        self.add("BatchNormalization", name, params, epsilon=float(bn.eps))

    def gemm(self, name: str, linear: nn.Linear) -> None:
        """Append Gemm(transB=1) with W stored as torch does, [out, in]."""
        w = self.init(f"{name}.weight", to_np(linear.weight))
        b = self.init(f"{name}.bias", to_np(linear.bias))
        self.add("Gemm", name, [w, b], transB=1)

    def model(self, graph_name: str) -> onnx.ModelProto:
        """Finish the graph: rename the last output to ``logits`` and wrap it in a model."""
        self.nodes[-1].output[0] = "logits"
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES])],
            initializer=self.inits,
            doc_string=PRODUCER,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name=PRODUCER,
            doc_string=PRODUCER,
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Fold an eval-mode BatchNorm into the preceding bias-free Conv; return (W', b')."""
    w = conv.weight.detach().double()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w_fused = w * scale[:, None, None, None]
    b_fused = bn.bias.detach().double() - bn.running_mean.double() * scale
    return to_np(w_fused), to_np(b_fused)


def vgg_to_onnx(model: nn.Sequential, fuse_bn: bool) -> onnx.ModelProto:
    """Build the ONNX graph of the trained VGG, with BatchNormalization kept or folded."""
    g = GraphBuilder()
    layers = list(model)
    conv_idx = pool_idx = fc_idx = relu_idx = 0
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, nn.Conv2d):
            conv_idx += 1
            bn = layers[i + 1]
            assert isinstance(bn, nn.BatchNorm2d)
            if fuse_bn:
                w, b = fold_bn(layer, bn)
                g.conv(f"conv{conv_idx}", w, b)
            else:
                g.conv(f"conv{conv_idx}", to_np(layer.weight), None)
                g.batchnorm(f"bn{conv_idx}", bn)
            i += 2
            continue
        if isinstance(layer, nn.ReLU):
            relu_idx += 1
            g.add("Relu", f"relu{relu_idx}")
        elif isinstance(layer, nn.MaxPool2d):
            pool_idx += 1
            g.add("MaxPool", f"pool{pool_idx}", kernel_shape=[2, 2], strides=[2, 2])
        elif isinstance(layer, nn.Flatten):
            g.add("Flatten", "flatten", axis=1)
        elif isinstance(layer, nn.Linear):
            fc_idx += 1
            g.gemm(f"fc{fc_idx}", layer)
        else:
            raise TypeError(f"unsupported layer {layer!r}")
        i += 1
    return g.model("digits_vgg_fused" if fuse_bn else "digits_vgg_bn")


def mlp_to_onnx(model: nn.Sequential) -> onnx.ModelProto:
    """Build the ONNX graph of the trained MLP."""
    g = GraphBuilder()
    fc_idx = relu_idx = 0
    for layer in model:
        if isinstance(layer, nn.Flatten):
            g.add("Flatten", "flatten", axis=1)
        elif isinstance(layer, nn.Linear):
            fc_idx += 1
            g.gemm(f"fc{fc_idx}", layer)
        elif isinstance(layer, nn.ReLU):
            relu_idx += 1
            g.add("Relu", f"relu{relu_idx}")
        else:
            raise TypeError(f"unsupported layer {layer!r}")
    return g.model("digits_mlp")


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """Run an ONNX model with onnxruntime on the CPU."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy."""
    return float((logits.argmax(axis=1) == labels).mean())


def save_and_verify(
    model: onnx.ModelProto, path: Path, ref_logits: np.ndarray, split: Split
) -> Result:
    """Save an ONNX model, run it on the test split and compare with the torch logits."""
    onnx.save(model, str(path))
    out = onnx_logits(path, split.x_test)
    diff = float(np.abs(out - ref_logits).max())
    assert diff < MAX_ABS_DIFF, f"{path.name}: max abs diff {diff:.3g} >= {MAX_ABS_DIFF}"
    size = path.stat().st_size
    assert size < 1_000_000, f"{path.name} is {size} bytes"
    return Result(path, size, accuracy(ref_logits, split.y_test), accuracy(out, split.y_test), diff)


def print_summary(results: list[Result], test_path: Path) -> None:
    """Print one line per model file: size, torch and ONNX accuracy, max abs difference."""
    header = f"{'file':<24} {'bytes':>8} {'torch acc':>10} {'onnx acc':>9} {'max |diff|':>11}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.path.name:<24} {r.size:>8} {r.torch_acc:>10.4f} {r.onnx_acc:>9.4f}"
            f" {r.max_diff:>11.2e}"
        )
    print(f"{test_path.name:<24} {test_path.stat().st_size:>8}")


def main(argv: list[str] | None = None) -> None:
    """Train the models, write the ONNX files and the test split, verify and summarize."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO_ROOT / "sample_models",
        help="output directory (default: <repo>/sample_models)",
    )
    args = parser.parse_args(argv)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    set_determinism()
    split = load_split()
    test_path = out_dir / "digits_test.npz"
    np.savez(test_path, input=split.x_test, label=split.y_test)
    np.savez(out_dir / "digits_calibration.npz", input=split.x_train[:256])

    vgg = train(make_vgg(), split, epochs=30)
    mlp = train(make_mlp(), split, epochs=60)
    vgg_ref = torch_logits(vgg, split.x_test)
    mlp_ref = torch_logits(mlp, split.x_test)

    results = [
        save_and_verify(vgg_to_onnx(vgg, False), out_dir / "digits_vgg_bn.onnx", vgg_ref, split),
        save_and_verify(vgg_to_onnx(vgg, True), out_dir / "digits_vgg_fused.onnx", vgg_ref, split),
        save_and_verify(mlp_to_onnx(mlp), out_dir / "digits_mlp.onnx", mlp_ref, split),
    ]
    print_summary(results, test_path)
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
