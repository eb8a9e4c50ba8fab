"""Train small classifiers on scikit-learn's digits and write them as hand-built ONNX models.

This script regenerates the files in ``sample_models/``:

* ``digits_vgg_bn.onnx``: a small VGG-style CNN, Conv (no bias) -> BatchNormalization -> Relu.
* ``digits_vgg_fused.onnx``: the same trained CNN with every BatchNormalization folded into
  the preceding Conv (Conv with bias, no BatchNormalization nodes).
* ``digits_mlp.onnx``: a three-layer MLP (Flatten -> Gemm -> Relu -> Gemm -> Relu -> Gemm).
* ``digits_resnet.onnx``: a small ResNet with BatchNormalization kept: stem Conv3x3 (1 -> 16)
  -> BN -> Relu; stage 1, two basic blocks at 16 channels with identity shortcuts; stage 2, a
  stride-2 block to 32 channels whose shortcut is Conv1x1 (stride 2) -> BN, then an identity
  block; GlobalAveragePool -> Flatten -> Gemm. A basic block is Conv3x3 -> BN -> Relu ->
  Conv3x3 -> BN -> Add(shortcut) -> Relu; nodes are named ``stage1.block0.conv1`` and so on.
* ``digits_mbv2.onnx``: a small MobileNetV2 with BatchNormalization kept and ReLU6 written as
  ``Clip`` (min and max as the scalar initializers ``relu6.min`` and ``relu6.max``): stem
  Conv3x3 (1 -> 16) -> BN -> Clip; three inverted residual blocks (16 -> 16, 16 -> 24 with
  stride 2, 24 -> 24; expansion 4), each expand 1x1 -> BN -> Clip -> depthwise 3x3 -> BN ->
  Clip -> project 1x1 -> BN, plus an Add of the block input where the stride is 1 and the
  channel count is kept (``block1.expand``, ``block1.dw``, ``block1.project``, ...); then
  Conv1x1 (24 -> 64) -> BN -> Clip, GlobalAveragePool -> Flatten -> Gemm.
* ``digits_test.npz``: the held-out test split, arrays ``input`` (float32 [n, 1, 8, 8]) and
  ``label`` (int64 [n]).
* ``digits_calibration.npz``: 256 unlabelled samples of the training split, array ``input``,
  for ``lbyl-onnx --calibration-data`` (disjoint from the test split).

The ONNX graphs are written node by node with ``onnx.helper`` (not ``torch.onnx.export``) so
that the graph layout, node names and initializer names are exactly controlled.

Requirements: this script needs ``pip install torch==2.13.0 scikit-learn`` in addition to the
tool's own dependencies (onnx, onnxruntime, numpy). PyTorch is used only here, to train the
sample models; it is NOT a dependency of lbyl-onnx.

All models share the same stratified 70/30 split of the digits and are trained with Adam,
deterministically (fixed seeds, one thread): with the same PyTorch, a rerun writes
byte-identical files.

Usage::

    python scripts/make_sample_models.py [--out-dir sample_models] [--only NAMES]

``--only`` takes a comma-separated subset of ``vgg`` (both VGG files), ``mlp``, ``resnet`` and
``mbv2``, e.g. ``--only resnet,mbv2`` to write the two residual CNNs without retraining the
others; the ``.npz`` split files are written only by a full run.
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
RESNET_EPOCHS = 40
MBV2_EPOCHS = 40


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


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, ReLU.

    The shortcut is the identity, or Conv1x1 (stride ``stride``) -> BN when the block changes
    the channel count or the resolution.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class ResNet(nn.Module):
    """The small ResNet: stem, stage 1 (2 blocks at 16 channels), stage 2 (stride-2 block to
    32 channels with a downsample shortcut, then an identity block), global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_relu(1, 16))
        self.stage1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.stage2 = nn.Sequential(BasicBlock(16, 32, stride=2), BasicBlock(32, 32))
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1 -> BN -> ReLU6 -> depthwise 3x3 -> BN -> ReLU6 ->
    project 1x1 -> BN, plus the input when the stride is 1 and the channel count is kept."""

    def __init__(self, c_in: int, c_out: int, expand: int, stride: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = nn.Conv2d(c_in, hidden, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self.dw = nn.Conv2d(hidden, hidden, 3, stride, padding=1, groups=hidden, bias=False)
        self.dw_bn = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self.project = nn.Conv2d(hidden, c_out, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.relu6(self.expand_bn(self.expand(x)))
        out = nn.functional.relu6(self.dw_bn(self.dw(out)))
        out = self.project_bn(self.project(out))
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """The small MobileNetV2: stem, three inverted residual blocks (16 -> 16, 16 -> 24 with
    stride 2, 24 -> 24), a 1x1 conv to 64 channels, global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16, eps=BN_EPS)
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, expand=4, stride=1),
            InvertedResidual(16, 24, expand=4, stride=2),
            InvertedResidual(24, 24, expand=4, stride=1),
        )
        self.head = nn.Conv2d(24, 64, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(64, eps=BN_EPS)
        self.fc = nn.Linear(64, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self.stem_bn(self.stem(x)))
        x = self.blocks(x)
        x = nn.functional.relu6(self.head_bn(self.head(x)))
        return self.fc(x.mean(dim=(2, 3)))


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
    """Accumulates nodes and initializers of an ONNX graph, node by node.

    Each node reads the current tensor (plus ``extra_inputs``) and its output becomes the
    current tensor; a residual block remembers its input in ``current`` and adds it back.
    """

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

    def conv(
        self,
        name: str,
        weight: np.ndarray,
        bias: np.ndarray | None,
        stride: int = 1,
        group: int = 1,
    ) -> None:
        """Append a square Conv node padded by ``k // 2`` on each side (3x3: pad 1, 1x1: 0)."""
        inputs = [self.init(f"{name}.weight", weight)]
        if bias is not None:
            inputs.append(self.init(f"{name}.bias", bias))
        pad = weight.shape[2] // 2
        self.add(
            "Conv",
            name,
            inputs,
            kernel_shape=list(weight.shape[2:]),
            pads=[pad] * 4,
            strides=[stride, stride],
            dilations=[1, 1],
            group=group,
        )

    def conv_bn(self, name: str, conv: nn.Conv2d, bn_name: str, bn: nn.BatchNorm2d) -> None:
        """Append a bias-free Conv (stride and groups from ``conv``) and its BatchNormalization."""
        assert conv.bias is None and conv.padding == (conv.kernel_size[0] // 2,) * 2
        self.conv(name, to_np(conv.weight), None, stride=conv.stride[0], group=conv.groups)
        self.batchnorm(bn_name, bn)

    def relu6(self, name: str) -> None:
        """Append ReLU6 as ``Clip`` (opset 13: min and max are inputs, shared scalar
        initializers ``relu6.min`` = 0 and ``relu6.max`` = 6)."""
        if not any(t.name == "relu6.min" for t in self.inits):
            self.init("relu6.min", np.array(0.0, dtype=np.float32))
            self.init("relu6.max", np.array(6.0, dtype=np.float32))
        self.add("Clip", name, ["relu6.min", "relu6.max"])

    def head(self, linear: nn.Linear) -> None:
        """Append GlobalAveragePool -> Flatten -> Gemm, the classifier of the residual CNNs."""
        self.add("GlobalAveragePool", "gap")
        self.add("Flatten", "flatten", axis=1)
        self.gemm("fc", linear)

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


def resnet_to_onnx(model: ResNet) -> onnx.ModelProto:
    """Build the ONNX graph of the trained ResNet, BatchNormalization kept."""
    g = GraphBuilder()
    stem_conv, stem_bn, _ = model.stem
    g.conv_bn("stem.conv", stem_conv, "stem.bn", stem_bn)
    g.add("Relu", "stem.relu")
    for stage_name, stage in (("stage1", model.stage1), ("stage2", model.stage2)):
        for i, block in enumerate(stage):
            name = f"{stage_name}.block{i}"
            block_in = g.current
            g.conv_bn(f"{name}.conv1", block.conv1, f"{name}.bn1", block.bn1)
            g.add("Relu", f"{name}.relu1")
            g.conv_bn(f"{name}.conv2", block.conv2, f"{name}.bn2", block.bn2)
            residual = g.current
            shortcut = block_in
            if block.downsample is not None:
                g.current = block_in
                ds_conv, ds_bn = block.downsample
                g.conv_bn(f"{name}.downsample.conv", ds_conv, f"{name}.downsample.bn", ds_bn)
                shortcut, g.current = g.current, residual
            g.add("Add", f"{name}.add", [shortcut])
            g.add("Relu", f"{name}.relu2")
    g.head(model.fc)
    return g.model("digits_resnet")


def mbv2_to_onnx(model: MobileNetV2) -> onnx.ModelProto:
    """Build the ONNX graph of the trained MobileNetV2, BatchNormalization kept, ReLU6 as Clip."""
    g = GraphBuilder()
    g.conv_bn("stem.conv", model.stem, "stem.bn", model.stem_bn)
    g.relu6("stem.clip")
    for i, block in enumerate(model.blocks, start=1):
        name = f"block{i}"
        block_in = g.current
        g.conv_bn(f"{name}.expand", block.expand, f"{name}.expand_bn", block.expand_bn)
        g.relu6(f"{name}.expand_clip")
        g.conv_bn(f"{name}.dw", block.dw, f"{name}.dw_bn", block.dw_bn)
        g.relu6(f"{name}.dw_clip")
        g.conv_bn(f"{name}.project", block.project, f"{name}.project_bn", block.project_bn)
        if block.residual:
            g.add("Add", f"{name}.add", [block_in])
    g.conv_bn("head.conv", model.head, "head.bn", model.head_bn)
    g.relu6("head.clip")
    g.head(model.fc)
    return g.model("digits_mbv2")


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
    if test_path.exists():
        print(f"{test_path.name:<24} {test_path.stat().st_size:>8}")


def timed_train(name: str, model: nn.Module, split: Split, **kwargs) -> nn.Module:
    """``train`` and print how long it took."""
    start = time.perf_counter()
    model = train(model, split, **kwargs)
    print(f"trained {name} in {time.perf_counter() - start:.1f} s")
    return model


MODELS = ("vgg", "mlp", "resnet", "mbv2")
"""Names accepted by ``--only``; ``vgg`` writes both ``digits_vgg_bn`` and ``digits_vgg_fused``."""


def parse_only(value: str) -> set[str]:
    """The comma-separated model names of ``--only``."""
    names = {v.strip() for v in value.split(",") if v.strip()}
    unknown = names - set(MODELS)
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(MODELS)}, got {value!r}"
        )
    return names


def main(argv: list[str] | None = None) -> None:
    """Train the models, write the ONNX files and the test split, verify and summarize."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO_ROOT / "sample_models",
        help="output directory (default: <repo>/sample_models)",
    )
    parser.add_argument(
        "--only",
        type=parse_only,
        default=None,
        metavar="NAMES",
        help=f"comma-separated subset of {','.join(MODELS)} to train and write (default: all,"
        " plus the .npz split files, which only a full run writes)",
    )
    args = parser.parse_args(argv)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    selected: set[str] = set(MODELS) if args.only is None else args.only

    start = time.perf_counter()
    set_determinism()
    split = load_split()
    test_path = out_dir / "digits_test.npz"
    if args.only is None:
        np.savez(test_path, input=split.x_test, label=split.y_test)
        np.savez(out_dir / "digits_calibration.npz", input=split.x_train[:256])

    results = []
    # The VGG and the MLP draw their initial weights from the global RNG in this order (training
    # draws from its own generator), so both are built even when only one is trained.
    vgg, mlp = make_vgg(), make_mlp()
    if "vgg" in selected:
        vgg = timed_train("vgg", vgg, split, epochs=30)
        vgg_ref = torch_logits(vgg, split.x_test)
        results += [
            save_and_verify(
                vgg_to_onnx(vgg, False), out_dir / "digits_vgg_bn.onnx", vgg_ref, split
            ),
            save_and_verify(
                vgg_to_onnx(vgg, True), out_dir / "digits_vgg_fused.onnx", vgg_ref, split
            ),
        ]
    if "mlp" in selected:
        mlp = timed_train("mlp", mlp, split, epochs=60)
        mlp_ref = torch_logits(mlp, split.x_test)
        results.append(
            save_and_verify(mlp_to_onnx(mlp), out_dir / "digits_mlp.onnx", mlp_ref, split)
        )
    # The residual CNNs reseed first, so each is the same whichever models are selected.
    residual = [
        ("resnet", ResNet, resnet_to_onnx, RESNET_EPOCHS),
        ("mbv2", MobileNetV2, mbv2_to_onnx, MBV2_EPOCHS),
    ]
    for name, make, to_onnx, epochs in residual:
        if name in selected:
            set_determinism()
            net = timed_train(name, make(), split, epochs=epochs)
            ref = torch_logits(net, split.x_test)
            path = out_dir / f"digits_{name}.onnx"
            results.append(save_and_verify(to_onnx(net), path, ref, split))
    print_summary(results, test_path)
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
