"""What each model input is: an image (``NCHW`` or ``NHWC``, its size) or a dense tensor."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..graph.index import GraphIndex
from ..graph.shapes import real_inputs
from .images import IMAGE_SIDE

FLOATING_INPUTS = (
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
)
"""The input types synthetic inputs are made for (as float32, then cast to the type)."""


@dataclass(frozen=True)
class InputSpec:
    """How one model input is synthesised: ``layout`` is ``NCHW``, ``NHWC`` (images) or
    ``dense`` (standard normal); ``shape`` has the batch dimension first (``-1`` if free)."""

    name: str
    layout: str
    shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return self.shape[1] if self.layout == "NCHW" else self.shape[-1]

    @property
    def size(self) -> tuple[int, int]:
        return (self.shape[2], self.shape[3]) if self.layout == "NCHW" else self.shape[1:3]


def _dims(info: onnx.ValueInfoProto) -> list[int | None]:
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in info.type.tensor_type.shape.dim
    ]


def _transposed_to_nchw(index: GraphIndex, name: str) -> bool:
    readers = index.readers.get(name, [])
    return bool(readers) and all(
        r.node.op_type == "Transpose" and list(_perm(r.node)) == [0, 3, 1, 2] for r in readers
    )


def _perm(node: onnx.NodeProto) -> list[int]:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return []


def input_specs(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None
) -> list[InputSpec]:
    """The synthesis plan of every real (non-weight) float input of ``model``.

    ``input_shapes`` (name -> full shape, as ``PruneConfig.input_shapes``) fixes dimensions;
    otherwise a symbolic image side becomes :data:`IMAGE_SIDE`, a symbolic channel count 3,
    any other symbolic non-batch dimension 1. The batch dimension is ``-1`` when free, else
    the model's fixed batch. Raises ``ValueError`` for an input that is not floating point
    (token ids, masks): nothing is known of its values.
    """
    index = GraphIndex(model)
    specs = []
    for info in real_inputs(model):
        elem = info.type.tensor_type.elem_type
        if elem not in FLOATING_INPUTS:
            raise ValueError(f"input '{info.name}' is not floating point: cannot synthesise it")
        dims = _dims(info)
        given = (input_shapes or {}).get(info.name)
        if given is not None:
            dims = [dims[0] if dims else None, *[int(d) for d in given[1:]]]
        batch = dims[0] if dims and dims[0] else -1
        if len(dims) == 4:
            nhwc = _transposed_to_nchw(index, info.name) or (
                dims[3] in (1, 3, 4) and dims[1] not in (1, 3, 4)
            )
            if nhwc:
                h, w, c = dims[1] or IMAGE_SIDE, dims[2] or IMAGE_SIDE, dims[3] or 3
                specs.append(InputSpec(info.name, "NHWC", (batch, h, w, c)))
            else:
                c, h, w = dims[1] or 3, dims[2] or IMAGE_SIDE, dims[3] or IMAGE_SIDE
                specs.append(InputSpec(info.name, "NCHW", (batch, c, h, w)))
        else:
            rest = tuple(d or 1 for d in dims[1:])
            specs.append(InputSpec(info.name, "dense", (batch, *rest)))
    return specs


def to_layout(images: np.ndarray, layout: str) -> np.ndarray:
    """``[n, C, H, W]`` images in ``layout``."""
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1) if layout == "NHWC" else images)
