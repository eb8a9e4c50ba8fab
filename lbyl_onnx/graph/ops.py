"""The op table: every op the tool understands, as one entry that says its roles.

A unit (LBYL.md section 1) is a producer, per-channel affine ops, an activation, channel-wise
ops and layout steps, and consumers; a residual group couples producers through sums. Each
op's part in that is its :class:`OpSpec` in :data:`OPS`:

- ``producer``: a matrix op whose output channels may be removed (its kind, the layout of
  its output, the matcher of its weight and bias);
- ``consumer``: a matrix op that absorbs ``S`` on its input channels (the layouts it reads);
- ``affine``: a per-channel affine map (bias ``Add``, ``BatchNormalization``, ``Mul``) that
  chains fold into the producer's filters (LBYL.md section 2);
- ``activation``: an element-wise activation, the kind its mean and values are modelled as
  (:data:`~lbyl_onnx.methods.moments.ACTIVATION_FUNCTIONS`) and the check of its
  parameters;
- ``passes``: the layouts in which it passes every channel through on its own;
- ``step``: a change of the channels' layout on the way to the consumers (a flatten);
- ``coupling``: a sum of tensors that share their channels (a residual group);
- ``group_internal``: an op a residual group's channels may pass through between its sums;
- ``approximate``: the compensation folded through it is approximate;
- ``fused_into_conv``: onnxruntime fuses it into the convolution or matrix product it
  follows; ``keeps_channels``: its output keeps its first input's channels though it has
  no other role (``Div``, ``Sub``, ``Pad``). :attr:`OpSpec.channelwise` gathers every op
  whose output keeps its input's channels: the latency model walks back through them
  (:mod:`lbyl_onnx.runtime.timing`).

Exact or approximate: ``S`` is fitted on the channels ``r`` after the activation and folded
into the readers. Folding it through an op ``f`` between ``r`` and a reader is exact when
``f`` commutes with combinations of channels, ``f(sum_i S_it r_i) = sum_i S_it f(r_i)``:
channel-wise linear ops do (average pools, ``Identity``, ``Dropout`` at inference, a
flatten); a max does not (``MaxPool``, ``GlobalMaxPool``: LBYL.md section 4, item 6), so the
unit is flagged approximate. An activation sits before ``r``: it is modelled by the methods
(whose error through any non-linearity LBYL.md section 3.3 describes), not folded through,
so no activation is flagged.

An op not in the table, or in it without the role a position needs, declines the unit with
its name; it is never modelled as another op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import onnx

from ..methods.moments import ACTIVATION_FUNCTIONS, Activation
from .index import GraphIndex, attribute
from .layers import (
    Produced,
    bias_add,
    bias_input,
    conv_consumer,
    conv_producer,
    dense_consumer,
    gemm_producer,
    matmul_producer,
)
from .layouts import (
    Position,
    Shapes,
    Step,
    flatten_step,
    reshape_step,
    shape_step,
    squeeze_step,
    transpose_step,
)
from .matching import Decline, constant, is_standard
from .records import Consumer, Layout, MatrixKind, Operand

ActivationCheck = Callable[[GraphIndex, onnx.NodeProto, int, int], tuple[dict, Operand | None]]
"""``(index, node, n, channel_axis) -> (parameters of the Activation, slope to slice)``;
declines parameters the model cannot represent. ``channel_axis`` is the channel axis of the
activation's input counted from the end (-1 for Gemm/MatMul outputs, ``-(rank - 1)`` for a
Conv output)."""

LayoutStep = Callable[[GraphIndex, onnx.NodeProto, Position, int, Shapes], Step | None]
"""``(index, node, position, n, shapes) -> Step | None`` (:mod:`lbyl_onnx.graph.layouts`)."""


def no_parameters(
    index: GraphIndex, node: onnx.NodeProto, n: int, channel_axis: int
) -> tuple[dict, Operand | None]:
    """An activation without parameters."""
    return {}, None


def leaky_slope(
    index: GraphIndex, node: onnx.NodeProto, n: int, channel_axis: int
) -> tuple[dict, Operand | None]:
    """``LeakyRelu``: its ``alpha`` as every channel's slope."""
    return {"slope": np.full(n, float(attribute(node, "alpha", 0.01)))}, None


def prelu_slope(
    index: GraphIndex, node: onnx.NodeProto, n: int, channel_axis: int
) -> tuple[dict, Operand | None]:
    """``PRelu``: a scalar slope, or one per channel that must broadcast onto the channel
    axis (``[C,1,1]`` or ``[1,C,1,1]`` for a 4-D Conv output, not ``[C]``) and is then
    sliced with the channels."""
    slope = constant(index, node, 1, "PRelu slope")
    shape = slope.value.shape
    aligned = len(shape) >= -channel_axis and shape[channel_axis] == n
    if slope.value.size != 1 and (slope.value.size != n or not aligned):
        raise Decline(f"PRelu slope of shape {list(shape)} is not per-channel")
    value = np.broadcast_to(slope.value.reshape(-1), (n,)).astype(np.float64)
    return {"slope": value}, (None if slope.value.size == 1 else slope)


def clip_bounds(
    index: GraphIndex, node: onnx.NodeProto, n: int, channel_axis: int
) -> tuple[dict, Operand | None]:
    """``Clip`` with min 0 (ReLU6-like) and a constant max, if any: attributes before opset
    11, inputs 1 and 2 from it on."""
    inputs = index.opset >= 11
    low = None if inputs else attribute(node, "min")
    high = None if inputs else attribute(node, "max")
    if inputs and len(node.input) > 1 and node.input[1]:
        value = index.value(node.input[1])
        if value is None:
            raise Decline("Clip min is not a constant")
        low = float(value.reshape(-1)[0])
    if low != 0:
        raise Decline(f"Clip with min {low} (only min 0, ReLU6-like, is supported)")
    if inputs and len(node.input) > 2 and node.input[2]:
        value = index.value(node.input[2])
        if value is None:
            raise Decline("Clip max is not a constant")
        high = float(value.reshape(-1)[0])
    return {"high": None if high is None else float(high)}, None


@dataclass(frozen=True)
class ActivationRole:
    """An element-wise activation modelled as ``kind`` (a key of
    :data:`~lbyl_onnx.methods.moments.ACTIVATION_FUNCTIONS`: its mean and values), with the
    parameters ``check`` reads from the node."""

    kind: str
    check: ActivationCheck = no_parameters

    def __post_init__(self) -> None:
        if self.kind not in ACTIVATION_FUNCTIONS:
            raise ValueError(f"activation kind '{self.kind}' has no mean and apply functions")

    def matched(
        self, index: GraphIndex, node: onnx.NodeProto, n: int, channel_axis: int
    ) -> tuple[Activation, Operand | None]:
        """The node's :class:`Activation` model and its per-channel slope to slice, if any."""
        parameters, slope = self.check(index, node, n, channel_axis)
        return Activation(self.kind, **parameters), slope


@dataclass(frozen=True)
class ProducerRole:
    """A matrix op whose output channels may be removed: filters as rows, its channels in
    ``layout``."""

    kind: MatrixKind
    layout: Layout
    match: Callable[[GraphIndex, onnx.NodeProto, bool], Produced]


@dataclass(frozen=True)
class ConsumerRole:
    """A matrix op that can lose input channels, reading them in one of ``reads``."""

    kind: MatrixKind
    reads: frozenset[Layout]
    match: Callable[[GraphIndex, onnx.NodeProto, MatrixKind, int, int, bool], Consumer]
    bias: Callable[[GraphIndex, onnx.NodeProto], Operand | None]
    """Where its bias is, if it has one that only it reads."""

    def matched(self, index: GraphIndex, node: onnx.NodeProto, n: int, at: Position) -> Consumer:
        """The consumer reading ``n`` channels at ``at`` (declines what it cannot absorb),
        with the tensor it reads them from and its bias."""
        interleaved = at.layout is Layout.FLAT_INTERLEAVED
        consumer = self.match(index, node, self.kind, n, at.block, interleaved)
        return replace(consumer, channels_tensor=at.channels, bias=self.bias(index, node))


@dataclass(frozen=True)
class OpSpec:
    """One op's roles (module docstring)."""

    producer: ProducerRole | None = None
    consumer: ConsumerRole | None = None
    affine: bool = False
    activation: ActivationRole | None = None
    passes: frozenset[Layout] = frozenset()
    step: LayoutStep | None = None
    coupling: bool = False
    group_internal: bool = False
    approximate: bool = False
    fused_into_conv: bool = False
    keeps_channels: bool = False

    @property
    def channelwise(self) -> bool:
        """Whether its output keeps its first input's channels."""
        return (
            self.keeps_channels
            or self.affine
            or self.coupling
            or self.fused_into_conv
            or self.activation is not None
            or bool(self.passes)
        )


ALL_LAYOUTS = frozenset(Layout)
SPATIAL = frozenset({Layout.SPATIAL})
DENSE_READS = frozenset({Layout.FLAT, Layout.FEATURES, Layout.FLAT_INTERLEAVED})

OPS: dict[str, OpSpec] = {
    # matrix ops
    "Conv": OpSpec(
        producer=ProducerRole(MatrixKind.CONV, Layout.SPATIAL, conv_producer),
        consumer=ConsumerRole(MatrixKind.CONV, SPATIAL, conv_consumer, bias_input),
    ),
    "Gemm": OpSpec(
        producer=ProducerRole(MatrixKind.GEMM, Layout.FEATURES, gemm_producer),
        consumer=ConsumerRole(MatrixKind.GEMM, DENSE_READS, dense_consumer, bias_input),
    ),
    "MatMul": OpSpec(
        producer=ProducerRole(MatrixKind.MATMUL, Layout.FEATURES, matmul_producer),
        consumer=ConsumerRole(MatrixKind.MATMUL, DENSE_READS, dense_consumer, bias_add),
    ),
    # per-channel affine maps and sums
    "BatchNormalization": OpSpec(affine=True, fused_into_conv=True),
    "Add": OpSpec(affine=True, coupling=True, fused_into_conv=True),
    "Mul": OpSpec(affine=True),
    "Sum": OpSpec(coupling=True, fused_into_conv=True),  # Caffe2's residual sums
    # activations
    "Relu": OpSpec(activation=ActivationRole("relu"), group_internal=True, fused_into_conv=True),
    "LeakyRelu": OpSpec(
        activation=ActivationRole("leaky", leaky_slope), group_internal=True, fused_into_conv=True
    ),
    "PRelu": OpSpec(activation=ActivationRole("leaky", prelu_slope), group_internal=True),
    "Clip": OpSpec(
        activation=ActivationRole("clip", clip_bounds), group_internal=True, fused_into_conv=True
    ),
    "Tanh": OpSpec(activation=ActivationRole("tanh"), group_internal=True, fused_into_conv=True),
    # channel-wise pass-through
    "MaxPool": OpSpec(passes=SPATIAL, group_internal=True, approximate=True),
    "AveragePool": OpSpec(passes=SPATIAL, group_internal=True),
    "GlobalAveragePool": OpSpec(passes=SPATIAL),
    "GlobalMaxPool": OpSpec(passes=SPATIAL, approximate=True),
    "Identity": OpSpec(passes=ALL_LAYOUTS, group_internal=True),
    "Dropout": OpSpec(passes=ALL_LAYOUTS, group_internal=True),
    # layout steps
    "Flatten": OpSpec(step=flatten_step),
    "Reshape": OpSpec(step=reshape_step),
    "Squeeze": OpSpec(step=squeeze_step),
    "Transpose": OpSpec(step=transpose_step),
    "Shape": OpSpec(step=shape_step),
    # known to the latency model only: never inside a unit
    "Sigmoid": OpSpec(fused_into_conv=True),
    "HardSigmoid": OpSpec(fused_into_conv=True),
    "HardSwish": OpSpec(fused_into_conv=True),
    "Div": OpSpec(keeps_channels=True),
    "Sub": OpSpec(keeps_channels=True),
    "Pad": OpSpec(keeps_channels=True),
}
"""Every op the tool understands, by op type (default domain)."""


def op_spec(node: onnx.NodeProto) -> OpSpec | None:
    """The table's entry for ``node``; None for an op it does not know (or a custom op)."""
    return OPS.get(node.op_type) if is_standard(node) else None


def ops_where(role: Callable[[OpSpec], object]) -> frozenset[str]:
    """The op types whose entry has ``role`` (e.g. ``lambda spec: spec.fused_into_conv``)."""
    return frozenset(op for op, spec in OPS.items() if role(spec))
