"""The records a unit is made of: nodes and constants by name, consumers, units, declines.

Records refer to nodes by what survives a copy of the model (:class:`NodeRef`: a node's
outputs are unique in a graph), so a unit found in one model can be applied to any copy
of it (:func:`~lbyl_onnx.graph.rewrite.apply_plans` resolves them in the model it edits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import onnx

from ..methods.base import LayerArrays
from ..methods.moments import Activation
from .index import GraphIndex


class _Named(str, Enum):
    """An enumeration whose members compare equal to, and print as, their string values."""

    def __str__(self) -> str:
        return str(self.value)


class MatrixKind(_Named):
    """The matrix op of a producer or a consumer (compares equal to its lower-case name)."""

    CONV = "conv"
    """``Conv``: weight ``N x C x k...``, channels on axis 1 of its input and output."""
    GEMM = "gemm"
    """``Gemm``: ``alpha A B' + beta C``, ``B'`` being ``B`` or ``B^T`` (``transB``)."""
    MATMUL = "matmul"
    """``MatMul`` by a constant ``K x N`` weight, optionally followed by an ``Add``."""


class Layout(_Named):
    """Where a tensor of the consumer walk holds the unit's ``N`` channels."""

    SPATIAL = "spatial"
    """``batch x N x spatial...``: channels on axis 1 (a Conv's output)."""
    SPATIAL_LAST = "spatial_last"
    """``batch x spatial... x N``: an NCHW tensor transposed to NHWC (tf2onnx, before a
    flatten)."""
    FLAT = "flat"
    """``batch x (N * block)``: a flattened spatial tensor, each channel owning ``block``
    consecutive columns."""
    FLAT_INTERLEAVED = "flat_interleaved"
    """``batch x (block * N)``: a flattened channels-last tensor, column ``p * N + c``
    belonging to channel ``c``."""
    FEATURES = "features"
    """``... x N``: channels on the last axis (a Gemm's or MatMul's output)."""

    @property
    def channel_axis(self) -> int:
        """The channels' axis in a tensor of this layout: 1 (spatial) or -1 (features)."""
        if self is Layout.SPATIAL:
            return 1
        if self is Layout.FEATURES:
            return -1
        raise ValueError(f"channels of a {self.value} tensor are not on one axis")


@dataclass(frozen=True)
class NodeRef:
    """A node by what survives a copy of the model: its name (empty where the file gives
    none), its op type and its outputs. Outputs are unique in a graph, so the first one
    finds the node again in any copy (:meth:`resolve`)."""

    name: str
    op_type: str
    output: tuple[str, ...]

    @classmethod
    def of(cls, node: onnx.NodeProto) -> NodeRef:
        return cls(node.name, node.op_type, tuple(node.output))

    def resolve(self, index: GraphIndex) -> onnx.NodeProto:
        """This node in the model ``index`` was built on."""
        node = index.producer.get(self.output[0])
        if node is None or node.op_type != self.op_type:
            raise KeyError(f"{self.op_type} node writing '{self.output[0]}' is not in the model")
        return node


def node_name(node: onnx.NodeProto | NodeRef) -> str:
    """A node's name, or a stand-in from its first output when it has none."""
    return node.name or f"<{node.op_type} -> {node.output[0]}>"


@dataclass(frozen=True)
class Operand:
    """A constant input of a node: ``node.input[index]`` (the tensor ``tensor`` when it was
    matched) and its value."""

    node: NodeRef
    index: int
    value: np.ndarray
    tensor: str

    @classmethod
    def of(cls, node: onnx.NodeProto, index: int, value: np.ndarray) -> Operand:
        return cls(NodeRef.of(node), index, value, node.input[index])


@dataclass(frozen=True)
class Consumer:
    """A node that reads the unit's channels and absorbs ``S``.

    ``kind`` says how its weight lies: ``conv`` (``O x N x k...``), ``gemm`` or ``matmul``;
    ``block`` is the number of consecutive input columns each channel owns after a flatten
    (``h*w``), 1 when there is none. ``transposed`` means the weight is stored
    ``O x (N*block)`` (Gemm transB).
    """

    node: NodeRef
    kind: MatrixKind
    weight: Operand
    block: int = 1
    transposed: bool = False
    interleaved: bool = False
    """Columns are ``p * N + c`` (a channels-last flatten) instead of ``c * block + p``."""
    channels_tensor: str = ""
    """The tensor holding the unit's channels right before this consumer (before a flatten)."""
    bias: Operand | None = None
    """The consumer's bias (Conv input 2, Gemm C, the constant of an Add after a MatMul)."""
    alpha: float = 1.0
    """Gemm's ``alpha`` (1 for the other ops): the product's factor."""
    beta: float = 1.0
    """Gemm's ``beta`` (1 for the other ops): the bias's factor."""


@dataclass(frozen=True)
class Approximation:
    """An op the compensation is folded through approximately (the op table's flag): a max
    does not commute with sums of channels, so ``S`` folded into a reader after it only
    approximates the removed channels there."""

    op_type: str
    where: str
    """``between activation and consumer``, or ``inside the group`` (a residual group)."""

    @property
    def note(self) -> str:
        return f"{self.op_type} {self.where}: compensation approximate"


@dataclass
class Unit:
    """One producer whose output channels may be removed, and everything that reads them."""

    name: str
    producer: NodeRef
    kind: MatrixKind
    layout: Layout
    """Where the channels lie in the producer's output and in :attr:`record`."""
    weight: Operand
    weight_axis: int
    """The producer weight's axis of output channels (Conv 0; Gemm 0 with transB, else 1;
    MatMul 1)."""
    bias: Operand | None
    bn: NodeRef | None
    bn_params: list[Operand]
    activation: NodeRef | None
    slope: Operand | None
    consumers: list[Consumer]
    tensors: list[str]
    """Every tensor whose channel count changes (their recorded shapes go stale)."""
    arrays: LayerArrays
    activation_model: Activation = field(default_factory=lambda: Activation("identity"))
    """The activation as the data-free moment formulas see it."""
    reshapes: list[tuple[Operand, int, int]] = field(default_factory=list)
    """Reshape targets ``(operand, position, block)``: the entry at ``position`` (``N*block``)
    becomes ``m*block``."""
    record: str = ""
    """Where the channels ``S`` acts on can be observed: the tensor every consumer reads
    (before any flatten), else the activation output."""
    remarks: list[str] = field(default_factory=list)
    """What the report says of the unit's structure (a depthwise coupling, a residual group)."""
    approximations: list[Approximation] = field(default_factory=list)
    """Where the compensation is folded through an op approximately (:attr:`approximate`)."""
    extra_slices: list[tuple[Operand, int]] = field(default_factory=list)
    """Further per-channel constants to slice, with their channel axis (a depthwise conv's
    kernels, bias and normalisation; the other producers of a residual group)."""
    regroup: list[NodeRef] = field(default_factory=list)
    """Depthwise convs whose ``group`` attribute becomes the kept count."""
    producers: list[NodeRef] = field(default_factory=list)
    """Every node whose output channels are the unit's channels (the producer first)."""

    def __post_init__(self) -> None:
        if not self.producers:
            self.producers = [self.producer]

    @property
    def channels(self) -> int:
        return self.arrays.channels

    @property
    def approximate(self) -> bool:
        """Whether the compensation passes through an op it does not commute with (a max
        pool), so that the consumers see the removed channels only approximately."""
        return bool(self.approximations)

    @property
    def notes(self) -> list[str]:
        """The remarks, then a sentence per approximation (as the report prints them)."""
        return [*self.remarks, *(a.note for a in self.approximations)]


@dataclass(frozen=True)
class Declined:
    """A candidate producer left untouched, and why (one line)."""

    name: str
    op_type: str
    reason: str


def units_by_tensor(units: list[Unit]) -> tuple[dict[str, int], dict[str, int]]:
    """For each node output, the position in ``units`` of the unit whose channels the node
    writes (its producers), and of the unit whose channels it reads (its consumers)."""
    writes = {p.output[0]: i for i, u in enumerate(units) for p in u.producers}
    reads = {c.node.output[0]: i for i, u in enumerate(units) for c in u.consumers}
    return writes, reads


def channel_axis(value: np.ndarray, channels: int) -> int:
    """The axis of a per-channel vector (``[C]``, ``[C,1,1]``, ``[1,C,1,1]``, ``[1,C]``)."""
    return next((a for a, d in enumerate(value.shape) if d == channels), 0)
