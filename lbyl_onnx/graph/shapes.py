"""Shapes, parameter and MAC counts of a model."""

from __future__ import annotations

import contextlib
from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

from .index import attribute, constant_node_value

Shape = list[int | str | None]


def declared_dims(type_proto: onnx.TypeProto) -> Shape | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims: Shape = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def infer_shapes(
    model: onnx.ModelProto, fixed_inputs: dict[str, list[int]] | None = None
) -> dict[str, Shape]:
    """Shapes of every tensor ONNX shape inference can reach (the model is not changed).

    ``fixed_inputs`` replaces the declared shapes of graph inputs (e.g. batch 1) first.
    Inference runs on a light copy: large floating-point initializers are replaced by graph
    inputs of the same type and shape, so no weight is copied or serialized.
    """
    work = without_large_weights(model)
    for entry in work.graph.input:
        if fixed_inputs and entry.name in fixed_inputs:
            dims = entry.type.tensor_type.shape.dim
            for d, value in zip(dims, fixed_inputs[entry.name], strict=False):
                d.Clear()
                d.dim_value = int(value)
    with contextlib.suppress(onnx.shape_inference.InferenceError, RuntimeError):
        work = onnx.shape_inference.infer_shapes(work, data_prop=True)
    shapes: dict[str, Shape] = {}
    graph = work.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        dims = declared_dims(info.type)
        if dims is not None:
            shapes[info.name] = dims
    for init in graph.initializer:
        shapes[init.name] = [int(d) for d in init.dims]
    return shapes


def without_large_weights(
    model: onnx.ModelProto, limit: int = 1024, any_type_limit: int = 2**16
) -> onnx.ModelProto:
    """A copy whose floating-point initializers over ``limit`` elements, and initializers of
    any type over ``any_type_limit`` (quantized weights; shape-carrying integer tensors are
    far smaller), are graph inputs of the same type and shape: for shape inference and the
    checker, without a copy of the weights."""
    light = onnx.ModelProto()
    graph = model.graph
    light.CopyFrom(onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import))
    light.functions.extend(model.functions)  # nodes may call model-local functions
    light.graph.name = graph.name
    light.graph.node.extend(graph.node)
    light.graph.output.extend(graph.output)
    light.graph.value_info.extend(graph.value_info)
    listed = {entry.name for entry in graph.input}
    light.graph.input.extend(graph.input)
    for init in graph.initializer:
        elements = np.prod(init.dims, dtype=np.int64)
        if elements > any_type_limit or (init.data_type in _FLOAT_TYPES and elements > limit):
            if init.name not in listed:
                light.graph.input.append(
                    onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
                )
        else:
            light.graph.initializer.append(init)
    return light


def static_input_dims(model: onnx.ModelProto, value: int = 1) -> dict[str, list[int]]:
    """Each graph input's shape with unknown dimensions set to ``value``."""
    result = {}
    for entry in model.graph.input:
        dims = declared_dims(entry.type) or []
        result[entry.name] = [d if isinstance(d, int) else value for d in dims]
    return result


def batch_one_dims(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None
) -> dict[str, list[int]]:
    """The inputs' dimensions at which MACs are counted: ``input_shapes`` where given, else
    the declared ones with every unknown dimension 1; the batch 1 in both."""
    dims = static_input_dims(model, 1)
    for name, shape in (input_shapes or {}).items():
        dims[name] = [1, *shape[1:]] if shape else shape
    return dims


def count_parameters(model: onnx.ModelProto) -> int:
    """Elements of every floating-point initializer, ``Constant`` node and ``ConstantOfShape``
    of a constant shape (weights generated at load time)."""
    total = 0
    for init in model.graph.initializer:
        if init.data_type in _FLOAT_TYPES:
            total += int(np.prod(init.dims, dtype=np.int64))
    shapes = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = constant_node_value(node)
            if value is not None and np.issubdtype(value.dtype, np.floating):
                total += int(value.size)
        elif node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            fill = attribute(node, "value")
            if fill is None or fill.data_type in _FLOAT_TYPES:
                total += int(np.prod(numpy_helper.to_array(shapes[node.input[0]]), dtype=np.int64))
    return total


_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}


def count_macs(model: onnx.ModelProto, shapes: dict[str, Shape]) -> int:
    """Multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul at the shapes given
    (see :func:`node_macs`)."""
    return sum(node_macs(node, shapes) for node in model.graph.node)


def node_macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int:
    """Conv: ``|output| * C_in/group * prod(kernel)``; ConvTranspose: ``|input| * C_out/group
    * prod(kernel)``; Gemm/MatMul: ``|output| * K``; other nodes and unknown shapes: 0."""
    op = node.op_type
    if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.input) < 2:
        return 0
    w = _known(shapes.get(node.input[1]))
    y = _known(shapes.get(node.output[0]))
    x = _known(shapes.get(node.input[0]))
    if w is None:
        return 0
    if op == "Conv" and y is not None:
        return int(np.prod(y, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if op == "ConvTranspose" and x is not None:
        return int(np.prod(x, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if op == "Gemm" and y is not None:
        k = w[1] if attribute(node, "transB", 0) else w[0]
        return int(np.prod(y, dtype=np.int64)) * k
    if op == "MatMul" and y is not None and len(w) >= 2:
        return int(np.prod(y, dtype=np.int64)) * w[-2]
    return 0


def _known(shape: Shape | None) -> list[int] | None:
    if shape is None or any(not isinstance(d, int) for d in shape):
        return None
    return [int(d) for d in shape]


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the main graph has."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


NUMPY_TYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT64: np.uint64,
    onnx.TensorProto.UINT32: np.uint32,
    onnx.TensorProto.UINT16: np.uint16,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
    onnx.TensorProto.STRING: np.object_,
}
"""The element types onnxruntime's Python API takes as NumPy arrays (strings as ``object``
arrays of ``str``), with their NumPy types. The others (bfloat16, the float8 and 4-bit
types, complex) have NumPy types through ``ml_dtypes`` or NumPy, but onnxruntime takes no
such array (or has no kernel for the type): nothing can be fed to an input of theirs."""


def type_name(elem: int) -> str:
    """An element type's ONNX name (``INT16``), or its number where onnx does not know it."""
    try:
        return onnx.TensorProto.DataType.Name(elem)
    except ValueError:
        return str(elem)


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (old exporters list weights as inputs)."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def unfixed_inputs(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None) -> list[str]:
    """The inputs with a dimension other than the batch that is neither declared nor given
    in ``input_shapes``."""
    unfixed = []
    for entry in real_inputs(model):
        if input_shapes and entry.name in input_shapes:
            continue
        dims = declared_dims(entry.type) or []
        if any(not (isinstance(d, int) and d > 0) for d in dims[1:]):
            unfixed.append(entry.name)
    return unfixed
