"""The matrix ops as producers (their filters as rows) and as consumers (their weights'
channel columns); the op table (:mod:`lbyl_onnx.graph.ops`) points to these matchers.

A producer's filters are the rows of ``W`` (``N x d``): Conv ``W[N, C, k...]`` flattened,
Gemm ``B^T`` (``B`` with ``transB``) times ``alpha`` and bias ``beta C``, MatMul ``B^T``
with the constant of a following ``Add`` as its bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .index import GraphIndex, attribute
from .matching import (
    Decline,
    constant,
    optional_constant,
    other_input,
    per_channel_operand,
    sole_reader,
)
from .records import Consumer, MatrixKind, NodeRef, Operand, node_name


@dataclass(frozen=True)
class Produced:
    """A producer's weight and bias as matched, its filters as rows, and where its channels
    go on."""

    weight: Operand
    bias: Operand | None
    rows: np.ndarray
    """``N x d``: one filter per output channel (Gemm's ``alpha`` folded in)."""
    b: np.ndarray
    """``N``: the bias (Gemm's ``beta`` folded in; zeros where there is none)."""
    tensor: str
    """The tensor that carries the channels (after a bias ``Add`` that belongs to it)."""
    weight_axis: int
    """The weight's axis of output channels."""
    channel_axis: int
    """The channels' axis in :attr:`tensor`, counted from the end."""


def conv_producer(index: GraphIndex, node: onnx.NodeProto, depthwise: bool = False) -> Produced:
    """A Conv with ``group == 1`` (or, with ``depthwise``, the depthwise conv of a group: one
    kernel per channel); a bias as input 2 or as a separate per-channel ``Add``
    (``[1, C, 1, 1]``, as paddle2onnx writes it)."""
    group = attribute(node, "group", 1)
    weight = constant(index, node, 1, "weight")
    if group != 1 and not depthwise:
        kind = "depthwise" if group == weight.value.shape[0] else "grouped"
        raise Decline(f"{kind} Conv producer (group={group})")
    n = weight.value.shape[0]
    axis = -(weight.value.ndim - 1)
    bias = optional_constant(index, node, 2, "bias")
    out = node.output[0]
    if bias is None:
        bias = per_channel_operand(index, out, "Add", n, axis)
        if bias is not None:
            out = bias.node.output[0]
    rows = weight.value.reshape(n, -1)
    b = bias.value.reshape(-1) if bias is not None else np.zeros(n, rows.dtype)
    return Produced(weight, bias, rows, b, out, weight_axis=0, channel_axis=axis)


def gemm_producer(index: GraphIndex, node: onnx.NodeProto, depthwise: bool = False) -> Produced:
    """A Gemm without ``transA``, whose bias (if any) is per output feature."""
    if attribute(node, "transA", 0):
        raise Decline("Gemm with transA=1")
    weight = constant(index, node, 1, "weight")
    trans_b = bool(attribute(node, "transB", 0))
    rows = weight.value if trans_b else weight.value.T
    n = rows.shape[0]
    alpha, beta = attribute(node, "alpha", 1.0), attribute(node, "beta", 1.0)
    bias = optional_constant(index, node, 2, "bias")
    b = np.zeros(n)
    if bias is not None:
        if bias.value.size not in (1, n) or (bias.value.ndim == 2 and bias.value.shape[0] != 1):
            raise Decline(f"Gemm bias of shape {list(bias.value.shape)} is not per-channel")
        b = beta * np.broadcast_to(bias.value.reshape(-1), (n,))
    rows = rows if alpha == 1 else alpha * rows
    return Produced(weight, bias, rows, b, node.output[0], 0 if trans_b else 1, channel_axis=-1)


def matmul_producer(index: GraphIndex, node: onnx.NodeProto, depthwise: bool = False) -> Produced:
    """``x @ B`` with ``B`` (``K x N``) constant, optionally followed by the ``Add`` of a
    per-feature bias."""
    weight = constant(index, node, 1, "weight")
    if weight.value.ndim != 2:
        raise Decline("MatMul weight is not 2-D")
    rows = weight.value.T
    n = rows.shape[0]
    out = node.output[0]
    bias = None
    b = np.zeros(n)
    reader = sole_reader(index, out)
    if reader is not None and reader.op_type == "Add":
        other = other_input(reader, out)
        value = index.value(reader.input[other])
        if value is not None and value.size == n and value.shape[-1] == n:
            bias = constant(index, reader, other, "bias")
            b = bias.value.reshape(-1)
            out = reader.output[0]
    return Produced(weight, bias, rows, b, out, weight_axis=1, channel_axis=-1)


def conv_consumer(
    index: GraphIndex, node: onnx.NodeProto, kind: MatrixKind, n: int, block: int, interleaved: bool
) -> Consumer:
    """A Conv with ``group == 1`` reading the ``n`` channels (``block`` is 1 here)."""
    weight = constant(index, node, 1, "consumer weight")
    group = attribute(node, "group", 1)
    if group != 1:
        shape = "depthwise" if weight.value.shape[1] == 1 else "grouped"
        raise Decline(f"consumer '{node_name(node)}' is a {shape} Conv (group={group})")
    if weight.value.shape[1] != n:
        raise Decline(f"consumer '{node_name(node)}' expects {weight.value.shape[1]} channels")
    return Consumer(NodeRef.of(node), kind, weight)


def dense_consumer(
    index: GraphIndex, node: onnx.NodeProto, kind: MatrixKind, n: int, block: int, interleaved: bool
) -> Consumer:
    """A Gemm (without ``transA``) or MatMul whose 2-D weight reads ``n * block`` features."""
    if node.op_type == "Gemm" and attribute(node, "transA", 0):
        raise Decline(f"consumer Gemm '{node_name(node)}' has transA=1")
    weight = constant(index, node, 1, "consumer weight")
    if weight.value.ndim != 2:
        raise Decline(f"consumer '{node_name(node)}' weight is not 2-D")
    transposed = node.op_type == "Gemm" and bool(attribute(node, "transB", 0))
    columns = weight.value.shape[1] if transposed else weight.value.shape[0]
    if columns != n * block:
        raise Decline(
            f"consumer '{node_name(node)}' reads {columns} features, expected {n * block}"
        )
    alpha, beta = attribute(node, "alpha", 1.0), attribute(node, "beta", 1.0)
    gains = {"alpha": alpha, "beta": beta} if node.op_type == "Gemm" else {}
    return Consumer(NodeRef.of(node), kind, weight, block, transposed, interleaved, **gains)


def bias_input(index: GraphIndex, node: onnx.NodeProto) -> Operand | None:
    """A Conv's or Gemm's bias: input 2, where it has one that only it reads (a bias
    correction can then be folded into it)."""
    try:
        return optional_constant(index, node, 2, "consumer bias")
    except Decline:
        return None


def bias_add(index: GraphIndex, node: onnx.NodeProto) -> Operand | None:
    """A MatMul's bias: the constant (at most 2-D) of an ``Add`` that alone reads its output."""
    try:
        reader = sole_reader(index, node.output[0])
        if reader is None or reader.op_type != "Add":
            return None
        other = other_input(reader, node.output[0])
        value = index.value(reader.input[other])
        if value is None or value.ndim > 2:
            return None
        return constant(index, reader, other, "consumer bias")
    except Decline:
        return None
