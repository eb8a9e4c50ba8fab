"""The runtime layer: the only code that imports onnxruntime (sessions and batching,
recording tensors, sensitivity, latency profiling, validation)."""
