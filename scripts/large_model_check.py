"""Run ``lbyl-onnx`` on a real model larger than 2 GB and print its time and peak memory.

The model, written into a temporary folder with its weights as external data (a protobuf
message cannot exceed 2 GiB, so a model this large can only exist in that form):

- ``a [N, D] -> Gemm(W: D x D, transB=1) -> big``: one ``D x D`` float32 weight (the default
  ``D = 24000`` is 2.30 GB; note that 23000 x 23000 float32 is 2.116e9 bytes, *under* the
  2**31 - 1 byte limit). Its output is a graph output, so it is declined and passes through,
  and the pruned model is still over 2 GB;
- ``x [N, 3, 32, 32] -> conv0 -> Relu -> conv1 -> Relu -> head``: a small chain that is pruned.

The weight is written straight to the data file (never held as a protobuf), so building the
model costs one ``D x D`` array of memory. The command runs in a child process; its peak
resident memory is read from ``getrusage(RUSAGE_CHILDREN)`` after it exits.

    python scripts/large_model_check.py                # D = 24000, about 2.3 GB of disk twice
    python scripts/large_model_check.py --dim 8000 --keep  # a small run, folder kept
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


def build(folder: Path, dim: int, seed: int = 0) -> Path:
    """Write ``large.onnx`` and ``large.onnx.data`` into ``folder``; returns the model path."""
    rng = np.random.default_rng(seed)
    data_name = "large.onnx.data"
    big = TensorProto(name="big.W", data_type=TensorProto.FLOAT, dims=[dim, dim])
    with open(folder / data_name, "wb") as stream:
        rows = max(1, 2**26 // dim)  # about 256 MB at a time
        for start in range(0, dim, rows):
            block = rng.standard_normal((min(rows, dim - start), dim), dtype=np.float32)
            (block / np.float32(np.sqrt(dim))).tofile(stream)
    big.data_location = TensorProto.EXTERNAL
    for key, value in (("location", data_name), ("offset", "0"), ("length", str(dim * dim * 4))):
        entry = big.external_data.add()
        entry.key, entry.value = key, value

    def filters(n: int, c: int, k: int) -> np.ndarray:
        return (rng.standard_normal((n, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)

    small = {
        "conv0.W": filters(32, 3, 3),
        "conv0.b": np.zeros(32, np.float32),
        "conv1.W": filters(32, 32, 3),
        "conv1.b": np.zeros(32, np.float32),
        "head.W": filters(8, 32, 1),
        "big.b": np.zeros(dim, np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["a", "big.W", "big.b"], ["big"], "big", transB=1),
        helper.make_node("Conv", ["x", "conv0.W", "conv0.b"], ["z0"], "conv0", pads=[1] * 4),
        helper.make_node("Relu", ["z0"], ["r0"], "relu0"),
        helper.make_node("Conv", ["r0", "conv1.W", "conv1.b"], ["z1"], "conv1", pads=[1] * 4),
        helper.make_node("Relu", ["z1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "head.W"], ["y"], "head"),
    ]
    graph = helper.make_graph(
        nodes,
        "large",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", dim]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32]),
        ],
        [
            helper.make_tensor_value_info("big", TensorProto.FLOAT, ["N", dim]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 32, 32]),
        ],
        [big, *(numpy_helper.from_array(v, k) for k, v in small.items())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "large.onnx"
    path.write_bytes(model.SerializeToString())
    onnx.checker.check_model(str(path))  # by path: the weights stay on disk
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=24000, help="side of the big Gemm weight")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--dir", default=None, help="where to make the temporary folder")
    parser.add_argument("args", nargs="*", help="extra lbyl-onnx options (after --)")
    options = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="lbyl-large-", dir=options.dir))
    try:
        start = time.perf_counter()
        source = build(folder, options.dim)
        built = time.perf_counter() - start
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(f"model: {source} ({size / 1e9:.3f} GB with its data), built in {built:.1f} s")
        out = folder / "out.onnx"
        command = [sys.executable, "-m", "lbyl_onnx.cli", str(source), str(out), *options.args]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        start = time.perf_counter()
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
        tail = (result.stdout + result.stderr).strip().splitlines()[-12:]
        print("\n".join(f"  | {line}" for line in tail))
        print(f"exit code {result.returncode}")
        print(f"time {elapsed:.1f} s, peak RSS {peak / 2**30:.2f} GiB")
        written = sorted(p for p in folder.iterdir() if p.name.startswith("out.onnx"))
        for path in written:
            print(f"  wrote {path.name}: {path.stat().st_size / 1e9:.3f} GB")
        return result.returncode
    finally:
        if options.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
