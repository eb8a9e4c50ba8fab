"""Everything that knows ONNX: loading and saving, finding prunable units, rewriting them."""
