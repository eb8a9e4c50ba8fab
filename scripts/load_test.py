"""Load test: a model with 1,000 prunable units and one with 1 GiB of weights.

Both are generated into a temporary folder (never committed), then ``lbyl-onnx IN OUT`` runs
on each as a child process; the script prints the wall time, the child's peak resident memory
and the input file size, as a Markdown table (``--markdown`` appends it to
``docs/benchmarks.md`` between the ``load`` markers).

    python scripts/load_test.py [--units 1000] [--gib 1.0] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- load:start -->", "<!-- load:end -->"


def deep_chain(units: int, channels: int = 8, size: int = 8) -> onnx.ModelProto:
    """``units + 1`` Conv 3x3 layers with Relu between: ``units`` prunable units."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "input"
    for i in range(units + 1):
        w = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) / 8
        b = rng.standard_normal(channels).astype(np.float32) / 8
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(
            helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"z{i}"], f"conv{i}", pads=[1] * 4)
        )
        x = f"z{i}"
        if i < units:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], f"relu{i}"))
            x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "deep_chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", channels, size, size])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def wide_mlp(gib: float, hidden: int = 2048) -> onnx.ModelProto:
    """Gemm(F -> hidden) -> Relu -> Gemm(hidden -> 10), ``F`` sized for ``gib`` GiB of weights."""
    features = int(gib * 2**30 / 4 / hidden)
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((hidden, features), dtype=np.float32) / np.sqrt(features)).astype(
        np.float32
    )
    w2 = rng.standard_normal((10, hidden), dtype=np.float32) / np.sqrt(hidden)
    inits = [
        numpy_helper.from_array(w1, "fc1.weight"),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "fc1.bias"),
        numpy_helper.from_array(w2.astype(np.float32), "fc2.weight"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc2.bias"),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["h"], "fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], "relu"),
        helper.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"], ["logits"], "fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "wide_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def measure(path: Path, out: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``lbyl-onnx path out -q`` in a child process."""
    args = [sys.executable, "-c", "from lbyl_onnx.cli import main; main()", str(path), str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen([*args, "-q"], stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "failed")
    return seconds, usage.ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--markdown", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in (
            (f"{args.units} units (Conv 8x8x3x3 chain)", lambda: deep_chain(args.units)),
            (f"{args.gib:g} GiB of weights (wide MLP)", lambda: wide_mlp(args.gib)),
        ):
            path = Path(tmp) / "in.onnx"
            onnx.save(build(), str(path))
            size = path.stat().st_size / 2**20
            seconds, peak = measure(path, Path(tmp) / "out.onnx")
            rows.append(f"| {name} | {size:.0f} | {seconds:.1f} | {peak:.0f} | {peak / size:.1f} |")
            print(rows[-1], flush=True)
            path.unlink()
    table = [
        START,
        "",
        f"Generated by `python scripts/load_test.py --units {args.units} --gib {args.gib:g}`: "
        "`lbyl-onnx IN OUT` (LBYL, ratio 0.3, validation on 8 random samples) as a child "
        "process.",
        "",
        "| model | file MiB | wall s | peak RSS MiB | peak / file |",
        "|---|---|---|---|---|",
        *rows,
        "",
        END,
    ]
    if args.markdown:
        text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
        if START not in text:
            text += f"\n{START}\n{END}\n"
        head, _, rest = text.partition(START)
        DOC.write_text(head + "\n".join(table) + rest.partition(END)[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
