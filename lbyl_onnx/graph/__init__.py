"""The ONNX layer: loading and saving, the graph index and shapes, finding prunable units,
rewriting them. Nothing here solves or runs a model."""
